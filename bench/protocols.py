"""Published evaluation protocols, each a card (``bench/protocol_cards/<name>.yaml``) that fixes the
extractor, its weights file (name, source, sha256), preprocessing, sample-count and reference-set rules and
aggregation, and says who used it and what they reported. ``python -m bench ls protocols`` lists them; each
runs as the suite ``protocol-<name>`` (``docs/protocols.md``).

Also :func:`missing_weights_skips`: before any feature is extracted, the metrics whose extractor's weights
file is absent are skipped (one warning per extractor naming the file, its source and where to put it; a
reason per metric in the record's ``skipped_metrics``), so the weight-free parts of a protocol still run.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bench import registry

log = logging.getLogger("braingenbench.bench")

__all__ = ["Protocol", "ProtocolError", "CARDS_DIR", "load_card", "missing_weights_skips",
           "HAGAN_FID", "MEDMETRIC", "MAISI_25D", "VLM3D_MRI"]

CARDS_DIR = Path(__file__).parent / "protocol_cards"
_REQUIRED = {"name", "title", "source", "used_by", "reported", "extractor", "weights", "preprocessing", "samples",
             "reference_set", "aggregation", "suite", "comparable", "not_reproduced"}
_WEIGHTS = {"file", "source", "sha256", "sha256_note"}


class ProtocolError(ValueError):
    """A malformed protocol card (names the file and the key)."""


@dataclass(frozen=True)
class Protocol:
    """One published evaluation protocol (see the module docstring; the fields are the card's keys)."""

    name: str
    title: str
    source: str
    used_by: tuple[str, ...]
    reported: str
    extractor: str
    weights_file: str
    weights_source: str
    weights_sha256: str | None
    sha256_note: str
    preprocessing: tuple[str, ...]
    samples: str
    reference_set: str
    aggregation: str
    suite: str
    comparable: str
    not_reproduced: tuple[str, ...]
    path: Path = field(compare=False, default=Path())

    def summary(self) -> str:
        sha = self.weights_sha256 or "null (no published sha256; pass --extractor-args sha256=...)"
        return (f"{self.title}. Extractor {self.extractor}, weights {self.weights_file} (sha256 {sha}); "
                f"preprocessing: {'; '.join(self.preprocessing)}; source: {self.source}; suite {self.suite}")


def load_card(name_or_path: str | Path) -> Protocol:
    """Read and check a card: every key present, no unknown key, sha256 null (with a note) or 64 hex digits."""
    p = Path(name_or_path)
    if p.suffix not in (".yaml", ".yml"):
        p = CARDS_DIR / f"{name_or_path}.yaml"
    if not p.is_file():
        raise ProtocolError(f"{p}: protocol card not found (cards: {', '.join(sorted(c.stem for c in CARDS_DIR.glob('*.yaml')))})")
    raw = yaml.safe_load(p.read_text())
    if not isinstance(raw, dict):
        raise ProtocolError(f"{p}: a protocol card must be a YAML mapping")
    missing, unknown = sorted(_REQUIRED - set(raw)), sorted(set(raw) - _REQUIRED)
    if missing or unknown:
        raise ProtocolError(f"{p}: missing keys {missing}, unknown keys {unknown}")
    w = raw["weights"]
    if not isinstance(w, dict) or set(w) != _WEIGHTS:
        raise ProtocolError(f"{p}: weights must have exactly the keys {sorted(_WEIGHTS)}")
    sha = w["sha256"]
    if sha is not None and not re.fullmatch(r"[0-9a-f]{64}", str(sha)):
        raise ProtocolError(f"{p}: weights.sha256 must be 64 lower-case hex digits or null, got {sha!r}")
    if not str(w["sha256_note"]).strip():
        raise ProtocolError(f"{p}: weights.sha256_note must say where the hash comes from (or why there is none)")
    if raw["name"] != p.stem:
        raise ProtocolError(f"{p}: name {raw['name']!r} differs from the file name {p.stem!r}")

    def lines(v) -> tuple[str, ...]:
        return tuple(str(x).strip() for x in (v if isinstance(v, list) else [v]))

    return Protocol(name=str(raw["name"]), title=str(raw["title"]).strip(), source=str(raw["source"]).strip(),
                    used_by=lines(raw["used_by"]), reported=str(raw["reported"]).strip(),
                    extractor=str(raw["extractor"]), weights_file=str(w["file"]), weights_source=str(w["source"]),
                    weights_sha256=sha, sha256_note=str(w["sha256_note"]).strip(),
                    preprocessing=lines(raw["preprocessing"]), samples=str(raw["samples"]).strip(),
                    reference_set=str(raw["reference_set"]).strip(), aggregation=str(raw["aggregation"]).strip(),
                    suite=str(raw["suite"]), comparable=str(raw["comparable"]).strip(),
                    not_reproduced=lines(raw["not_reproduced"]), path=p)


HAGAN_FID = load_card("hagan-fid")
MEDMETRIC = load_card("medmetric")
MAISI_25D = load_card("maisi-2.5d")
VLM3D_MRI = load_card("vlm3d-mri")


def missing_weights_skips(metrics, extractor_args: dict) -> dict[str, str]:
    """``metric key -> reason`` for the metrics whose extractor reports missing weights.

    An extractor class may define ``missing_weights(**extractor_args) -> str | None`` (the protocol
    extractors do); each missing one is logged once, as a warning naming the file, its source and where
    to put it.
    """
    status: dict[str, str | None] = {}
    skips: dict[str, str] = {}
    for spec, metric in metrics:
        for name in metric.extractors():
            canonical = registry.extractors.canonical(name)
            if canonical not in status:
                try:
                    check = getattr(registry.extractors.get(name), "missing_weights", None)
                except Exception:  # noqa: BLE001 - an extractor that cannot even be imported fails in its metric,
                    check = None   # recorded there as before, not here for the whole run
                status[canonical] = check(**extractor_args) if check is not None else None
                if status[canonical]:
                    log.warning("%s; metrics using %s are skipped", status[canonical], canonical)
            if status[canonical]:
                skips[spec.key] = (f"the weights of extractor {canonical} are not installed (which file and where "
                                   "to get it: `python -m bench ls protocols`, docs/protocols.md)")
    return skips
