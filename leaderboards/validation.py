"""The metric report card: what ``python -m bench validate`` measured about each metric.

``validation.json`` holds, per metric and per corruption (noise, bias field, shift, ...), the values
at increasing corruption levels and ``detected_at``: the 1-based index of the first level whose
interval excludes the real-vs-real floor on the worse side, or null when no level did. This module
reads that JSON only (no ``bench`` import) and turns it into:

* :func:`blind_spots` / :func:`blind_text`: the corruptions a metric misses, shown next to the
  headline metrics of the leaderboard ("blind to: bias, shift");
* :func:`validation_matrix`: the model of ``validation.html`` (metrics × corruptions, coloured by
  the level at which each corruption is detected, plus the floor and the seconds per run).

Malformed parts are skipped (a validation report must never break the leaderboard).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from .records import MISSING, fmt_number, metric_sort_key, to_float

logger = logging.getLogger(__name__)

#: Schema versions of ``validation.json`` this module reads.
SUPPORTED_VALIDATION_VERSIONS = frozenset({1})
#: Page name of the validation matrix, relative to the site root.
VALIDATION_PAGE = "validation.html"


def load_validation(path: str | Path) -> dict:
    """Read a ``validation.json``.

    Args:
        path: The file.

    Returns:
        The parsed report.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: It is not a JSON object of a known ``schema_version``.
    """
    path = Path(path)
    with path.open("r", encoding="utf-8") as fh:
        try:
            data = json.load(fh)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a validation report must be a JSON object")
    if data.get("schema_version") not in SUPPORTED_VALIDATION_VERSIONS:
        raise ValueError(f"{path}: unknown schema_version {data.get('schema_version')!r} "
                         f"(this leaderboard reads {sorted(SUPPORTED_VALIDATION_VERSIONS)})")
    return data


def as_validation(validation: dict | str | Path | None) -> dict | None:
    """A parsed report from a dict, a path to ``validation.json`` or None."""
    if validation is None or isinstance(validation, dict):
        return validation
    return load_validation(validation)


def _dict(x: Any) -> dict:
    return x if isinstance(x, dict) else {}


def corruptions(validation: dict) -> list[str]:
    """Corruption names in report order (the ``corruptions`` object, then any only named per metric)."""
    names = [str(k) for k in _dict(validation.get("corruptions"))]
    for per in _dict(validation.get("metrics")).values():
        names += [str(k) for k in _dict(per) if str(k) not in names]
    return list(dict.fromkeys(names))


def _detected_at(result: Any) -> int | None:
    d = _dict(result).get("detected_at")
    return d if isinstance(d, int) and not isinstance(d, bool) and d >= 1 else None


def blind_spots(validation: dict | None, key: str) -> list[str] | None:
    """The corruptions the report card says metric ``key`` misses (``detected_at`` null at every
    level), in report order; None when the report does not cover the metric."""
    if not validation:
        return None
    per = _dict(validation.get("metrics")).get(key)
    if not isinstance(per, dict) or not per:
        return None
    return [c for c in corruptions(validation) if c in per and _detected_at(per[c]) is None]


def blind_text(validation: dict | None, key: str) -> str:
    """``"blind to: bias, shift"``, ``"detects all 5 corruptions"`` or ``""`` (metric not covered)."""
    spots = blind_spots(validation, key)
    if spots is None:
        return ""
    if spots:
        return "blind to: " + ", ".join(spots)
    tested = len(_dict(_dict(validation.get("metrics")).get(key)))
    return f"detects all {tested} corruption{'s' if tested != 1 else ''}"


def _level_class(level: int | None, tested: bool) -> str:
    if not tested:
        return "det-na"
    if level is None:
        return "det-none"
    return f"det-{min(level, 3)}"


def _cell(corruption: str, result: Any, info: dict) -> dict:
    if not isinstance(result, dict):
        return {"cls": "det-na", "text": "", "title": f"{corruption}: not tested", "level": None}
    level = _detected_at(result)
    levels = result.get("levels") if isinstance(result.get("levels"), list) else info.get("levels")
    levels = levels if isinstance(levels, list) else []
    values = result.get("values") if isinstance(result.get("values"), list) else []
    cis = result.get("ci") if isinstance(result.get("ci"), list) else []
    unit = f" {info['unit']}" if isinstance(info.get("unit"), str) and info["unit"] else ""
    parts = []
    for i, v in enumerate(values):
        lv = fmt_number(to_float(levels[i]), 3) if i < len(levels) else str(i + 1)
        ci = cis[i] if i < len(cis) and isinstance(cis[i], list) and len(cis[i]) == 2 else None
        ci_text = f" [{fmt_number(to_float(ci[0]), 3)}, {fmt_number(to_float(ci[1]), 3)}]" if ci else ""
        parts.append(f"level {i + 1} ({lv}{unit}): {fmt_number(to_float(v), 4)}{ci_text}")
    head = (f"{corruption}: detected at level {level}" if level is not None
            else f"{corruption}: not detected at any level")
    mono = result.get("monotone")
    tail = "" if mono is None else ("; monotone in the level" if mono else "; NOT monotone in the level")
    return {"cls": _level_class(level, True),
            "text": f"L{level}" if level is not None else "missed",
            "title": head + tail + ("\n" + "\n".join(parts) if parts else ""),
            "level": level, "monotone": mono}


def validation_matrix(validation: dict) -> dict:
    """The model of ``validation.html``.

    Returns:
        ``{"suite", "version", "n", "seed", "reference", "corruptions": [{"name", "levels", "unit",
        "description"}], "rows": [{"key", "axis", "cells": [{"cls", "text", "title", "level"}],
        "floor", "floor_title", "seconds", "blind"}]}``; rows in the preferred metric order,
        headline metrics marked with their axis.
    """
    names = corruptions(validation)
    info = _dict(validation.get("corruptions"))
    floors = _dict(validation.get("floor"))
    seconds = _dict(validation.get("seconds"))
    metrics = _dict(validation.get("metrics"))
    axis_of: dict[str, str] = {}
    for axis, keys in _dict(validation.get("headline")).items():
        for k in keys if isinstance(keys, list) else []:
            axis_of.setdefault(str(k), str(axis))
    keys = list(dict.fromkeys([str(k) for k in metrics] + [str(k) for k in floors]))
    keys.sort(key=lambda k: (k not in axis_of, metric_sort_key(k)))
    rows = []
    for key in keys:
        per = _dict(metrics.get(key))
        fl = _dict(floors.get(key))
        ci = fl.get("ci") if isinstance(fl.get("ci"), list) and len(fl.get("ci")) == 2 else None
        floor_text = fmt_number(to_float(fl.get("value")))
        if ci and floor_text != MISSING:
            floor_text += f" [{fmt_number(to_float(ci[0]), 3)}, {fmt_number(to_float(ci[1]), 3)}]"
        direction = fl.get("direction") if isinstance(fl.get("direction"), str) else ""
        sec = to_float(seconds.get(key))
        rows.append({
            "key": key,
            "axis": axis_of.get(key, ""),
            "cells": [_cell(c, per.get(c), _dict(info.get(c))) for c in names],
            "floor": floor_text,
            "direction": {"higher": "↑", "lower": "↓", "target": "target: real"}.get(direction, ""),
            "seconds": MISSING if sec is None else (f"{sec:.2g}" if sec < 10 else f"{sec:.0f}"),
            "blind": blind_spots(validation, key) or [],
        })
    cols = []
    for c in names:
        ci = _dict(info.get(c))
        levels = ci.get("levels") if isinstance(ci.get("levels"), list) else []
        cols.append({"name": c, "unit": str(ci.get("unit") or ""),
                     "levels": ", ".join(fmt_number(to_float(v), 3) for v in levels),
                     "description": str(ci.get("description") or "")})
    suite = _dict(validation.get("suite"))
    ref = _dict(validation.get("reference"))
    return {"suite": str(suite.get("name") or "?"), "version": suite.get("version"),
            "n": validation.get("n"), "seed": validation.get("seed"),
            "reference": str(ref.get("name") or "?"), "reference_hash": str(ref.get("content_hash") or ""),
            "corruptions": cols, "rows": rows}
