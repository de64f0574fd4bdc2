"""The metric report card: what each metric of a suite detects, from which level, and what it misses.

``python -m bench validate --suite quick --out DIR`` scores a fixed, seeded ladder of corruptions of
the suite's caption-matched held-out real volumes (the ``corrupt`` generator, see
:mod:`generators.corrupt`) through the ordinary runner — the same prompts, features, metrics, floor
and CIs as any generator — and writes ``DIR/validation.json``:

```
{"schema_version": 1, "suite": {...}, "reference": {...}, "n": 16, "seed": 0,
 "corruptions": {kind: {"levels": [l1, l2, l3], "unit": ..., "description": ...}},
 "floor":   {metric key: {"value", "ci": [lo, hi], "direction"}},
 "seconds": {metric key: median seconds per run},
 "metrics": {metric key: {kind: {"levels", "values", "ci": [[lo, hi], ...], "monotone", "detected_at"}}},
 "headline": {axis: [metric keys]}, "runs": {kind: [run folder per level]}}
```

* ``monotone``: the metric gets worse (or stays equal) at every step of the ladder, "worse" in the
  metric's direction (for a target-valued metric: further from the real value).
* ``detected_at``: the first level (1-based) whose interval excludes the real-vs-real floor on the
  worse side, or null: the metric does not see this corruption at any level.

A **report** suite (``task: report``) gets the same card from the ``corrupt-report`` captioner
(:mod:`captioners.corrupt`: each volume's true caption with its numbers wrong, reworded, or with
statements left out). There the floor is the bad end (another subject's caption), so ``detected_at``
is the first level whose interval excludes the **ceiling** — the value of the uncorrupted true
caption (``details.ceiling``: accuracy 1, BLEU 100, an error of 0) — on the worse side
(``"detected_against": "ceiling"``). A good clinical metric detects ``values`` and ``omit`` and not
``wording``; a text metric that detects ``wording`` earlier than ``values`` judges words, not content.

Runs live in ``DIR/runs/`` and resume like any run.
"""

from __future__ import annotations

import json
import logging
import statistics
from dataclasses import dataclass
from pathlib import Path

from captioners.corrupt import REPORT_CORRUPTIONS, check_report_kind
from core.io import atomic_write_json
from generators.corrupt import CORRUPTIONS, check_kind
from leaderboards import verdicts

log = logging.getLogger("braingenbench.validate")

SCHEMA_VERSION = 1
LEVELS = (1, 2, 3)


@dataclass
class ValidateConfig:
    """Everything ``python -m bench validate`` takes (CLI flags equal these fields)."""

    suite: str | Path
    out: Path = Path("validation")
    reference: str | None = None
    corruptions: tuple[str, ...] | None = None  # default: every kind (CORRUPTIONS, or REPORT_CORRUPTIONS)
    seed: int | None = None
    limit: int | None = None
    device: str = "auto"
    resume: bool = True
    quiet: bool = False
    executor: str = "local"


def check_corruptions(names, task: str = "text-to-volume") -> tuple[str, ...]:
    """The requested corruption kinds of a suite's task, checked (an error with a suggestion on a typo)."""
    if task == "report":
        return tuple(check_report_kind(n) for n in names) if names else tuple(REPORT_CORRUPTIONS)
    return tuple(check_kind(n) for n in names) if names else tuple(CORRUPTIONS)


def validate(cfg: ValidateConfig) -> Path:
    """Run the ladder and write ``cfg.out/validation.json``; returns its path."""
    from bench.records import load_record
    from bench.runner import RunConfig, run
    from bench.suite import load_suite

    suite = load_suite(cfg.suite)  # a bad suite fails before any run
    kinds = check_corruptions(cfg.corruptions, suite.task)
    report_task = suite.task == "report"
    out = Path(cfg.out)
    records: dict[str, list[tuple[Path, dict]]] = {}
    total = len(kinds) * len(LEVELS)
    for kind in kinds:
        for level in LEVELS:
            done = sum(len(v) for v in records.values())
            log.info("report card: %s level %d (%d of %d runs)", kind, level, done + 1, total)
            model = ({"generator": None, "captioner": "corrupt-report", "captioner_args": {"kind": kind, "level": level}}
                     if report_task else {"generator": "corrupt", "generator_args": {"kind": kind, "level": level}})
            rc = RunConfig(suite=cfg.suite, **model, reference=cfg.reference, out=out / "runs", seed=cfg.seed, limit=cfg.limit,
                           device=cfg.device, resume=cfg.resume, quiet=cfg.quiet, executor=cfg.executor)
            path = run(rc)
            records.setdefault(kind, []).append((path.parent, load_record(path)))
    report = build_report(records, REPORT_CORRUPTIONS if report_task else CORRUPTIONS,
                          "ceiling" if report_task else "floor")
    dest = out / "validation.json"
    atomic_write_json(dest, report)
    return dest


def _worse_or_equal(prev: float | None, cur: float | None) -> bool:
    return prev is None or cur is None or cur >= prev - 1e-12 * max(1.0, abs(prev))


def excludes_ceiling(entry: dict) -> bool:
    """The interval of a result lies wholly on the worse side of its ``details.ceiling`` (the value of a
    perfect report)."""
    ceiling = verdicts.to_float((entry.get("details") or {}).get("ceiling"))
    lo, hi = verdicts.to_float(entry.get("ci_low")), verdicts.to_float(entry.get("ci_high"))
    if ceiling is None or lo is None or hi is None:
        return False
    tol = 1e-9 * max(1.0, abs(ceiling))
    return hi < ceiling - tol if verdicts.direction(entry) == "higher" else lo > ceiling + tol


def build_report(records: dict[str, list[tuple[Path, dict]]], table: dict | None = None,
                 against: str = "floor") -> dict:
    """The report card from ``{kind: [(run folder, record) for levels 1..3]}`` (pure: no I/O); ``table``:
    the corruption kinds (default :data:`CORRUPTIONS`); ``against``: ``floor`` or ``ceiling`` (what a
    detection excludes)."""
    table = CORRUPTIONS if table is None else table
    detects = excludes_ceiling if against == "ceiling" else verdicts.excludes_floor
    first = next(rec for runs in records.values() for _, rec in runs)
    keys: list[str] = []
    for runs in records.values():
        for _, rec in runs:
            keys += [k for k in rec["metrics"] if k not in keys]
    metrics: dict[str, dict] = {k: {} for k in keys}
    seconds: dict[str, list[float]] = {k: [] for k in keys}
    floor: dict[str, dict] = {}
    for kind, runs in records.items():
        levels = [float(rec["generator"]["info"]["amount"]) for _, rec in runs]
        for key in keys:
            entries = [rec["metrics"].get(key) or {} for _, rec in runs]
            values = [verdicts.to_float(e.get("value")) for e in entries]
            bad = [verdicts.badness(e) for e in entries]
            detected = next((i + 1 for i, e in enumerate(entries) if detects(e)), None)
            metrics[key][kind] = {
                "levels": levels, "values": values,
                "ci": [[verdicts.to_float(e.get("ci_low")), verdicts.to_float(e.get("ci_high"))] for e in entries],
                "monotone": all(_worse_or_equal(a, b) for a, b in zip(bad, bad[1:])) and None not in bad,
                "detected_at": detected,
            }
            for e in entries:
                if verdicts.to_float(e.get("seconds")) is not None:
                    seconds[key].append(float(e["seconds"]))
                if key not in floor and verdicts.to_float(e.get("floor")) is not None:
                    floor[key] = {"value": float(e["floor"]), "ci": list(verdicts.floor_ci(e) or []) or None,
                                  "direction": verdicts.direction(e), "axis": e.get("axis"),
                                  "description": e.get("description", "")}
    return {
        "schema_version": SCHEMA_VERSION,
        "suite": first["suite"], "reference": first["reference"], "n": verdicts.n_of(first), "seed": first["seed"],
        "corruptions": {k: {"levels": list(table[k].levels), "unit": table[k].unit,
                            "description": table[k].description} for k in records},
        "detected_against": against,
        "floor": floor,
        "seconds": {k: round(statistics.median(v), 3) for k, v in seconds.items() if v},
        "metrics": metrics,
        "headline": verdicts.headline(first),
        "runs": {k: [str(p) for p, _ in runs] for k, runs in records.items()},
    }


def summary(report: dict) -> str:
    """A plain-text matrix: metric × corruption, the level first detected (``-`` = never, ``*`` = not
    monotone)."""
    kinds = list(report["corruptions"])
    abbrev = {k: k[:7] for k in kinds}
    rows = [["metric"] + [abbrev[k] for k in kinds] + ["s/run"]]
    for key, per in report["metrics"].items():
        cells = []
        for k in kinds:
            c = per.get(k) or {}
            d = c.get("detected_at")
            cells.append(("-" if d is None else str(d)) + ("" if c.get("monotone") else "*"))
        rows.append([key] + cells + [f"{report['seconds'].get(key, float('nan')):.1f}"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    against = ("the ceiling (the uncorrupted true caption's value)" if report.get("detected_against") == "ceiling"
               else "the real-vs-real floor")
    lines += ["", f"cell: the first level (1-3) whose interval excludes {against} on the worse side; "
                  "'-' never; '*' not monotone along the ladder"]
    return "\n".join(lines)


def load_report(path: str | Path) -> dict:
    """Read a ``validation.json`` (an error naming the file when it is not one)."""
    p = Path(path)
    if p.is_dir():
        p = p / "validation.json"
    try:
        rep = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{p}: cannot read the report card ({e}); write it with `python -m bench validate`") from e
    if not isinstance(rep, dict) or rep.get("schema_version") != SCHEMA_VERSION or "metrics" not in rep:
        raise ValueError(f"{p}: not a validation.json of schema {SCHEMA_VERSION}; re-run `python -m bench validate`")
    return rep
