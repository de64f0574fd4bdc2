"""The run record's schema (``core/record.schema.json``): one owner, validated on write and on read.

The runner validates a record before writing it; ``bench.records.load_record`` (and so ``compare``)
and the leaderboards validate every record they read, and skip or refuse one that does not conform
with a message naming the file and the first violation.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = ["SCHEMA_PATH", "SCHEMA_VERSION", "RecordError", "record_problem", "validate_record"]

SCHEMA_VERSION = 1
SCHEMA_PATH = Path(__file__).resolve().with_name("record.schema.json")


class RecordError(ValueError):
    """A record that cannot be used; the message names the file and the problem."""


@lru_cache(maxsize=1)
def _validator():
    import jsonschema

    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return jsonschema.Draft202012Validator(schema)


def record_problem(record: Any) -> str | None:
    """The first schema violation of ``record`` as ``"at <path>: <message>"``, or None when it conforms."""
    errors = sorted(_validator().iter_errors(record), key=lambda e: (len(e.path), list(map(str, e.path))))
    if not errors:
        return None
    e = errors[0]
    where = "/".join(str(p) for p in e.path) or "top level"
    return f"at {where}: {e.message}"


def validate_record(record: Any, where: str = "<record>") -> None:
    """Raise :class:`RecordError` naming ``where`` when ``record`` does not conform to the schema."""
    problem = record_problem(record)
    if problem is not None:
        raise RecordError(f"{where}: not a valid run record ({problem}); see {SCHEMA_PATH.name}")
