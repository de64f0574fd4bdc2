"""The renderer-neutral table model of the leaderboard: columns, cells, rows and tables, with the
formatting helpers the renderers share. Built by :func:`leaderboards.records.build_tables`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from . import verdicts


#: Record schema versions this package knows how to read.
SUPPORTED_SCHEMA_VERSIONS = frozenset({1})

#: Label of the real-vs-real row.
FLOOR_LABEL = "real vs real (floor)"
#: Label of the floor row of a report-generation table (the true caption of another subject).
REPORT_FLOOR_LABEL = "another subject's caption (floor)"
#: The task kind that describes volumes (volume -> text): its tables rank captioners.
REPORT_TASK = "report"

#: Placeholder shown for a missing, failed or non-finite value.
MISSING = "—"

# Stable preferred column order: a metric key (or its family, or the part before "/") matching an
# entry here sorts by that entry's position; everything else follows alphabetically.
PREFERRED_ORDER = (
    "fid",
    "kid",
    "mmd",
    "ssim",
    "ms_ssim",
    "ms-ssim",
    "precision",
    "recall",
    "density",
    "coverage",
    "prdc",
    "histogram",
    "radiomics",
    "volumes",
    "nn",
    "memorization",
    "conditioning",
)

#: Order of the sub-results of one metric family.
SUB_ORDER = ("precision", "recall", "density", "coverage", "w1", "js", "ks", "fd", "mmd", "cosine")

_MAX_ARGS_CHARS = 48
# Relative tolerance under which per-run floors count as "the same".
_FLOOR_RTOL = 1e-6

# --------------------------------------------------------------------------------------------
# small helpers shared by the renderers
# --------------------------------------------------------------------------------------------


to_float = verdicts.to_float


def fmt_number(value: float | None, digits: int = 4) -> str:
    """Format a number with ``digits`` significant digits; None becomes ``"—"``."""
    if value is None:
        return MISSING
    return f"{value:.{digits}g}"


def format_args(args: Any) -> str:
    """Short ``k=v, ...`` rendering of generator arguments (truncated with an ellipsis)."""
    if not args:
        return ""
    if isinstance(args, dict):
        parts = []
        for key in sorted(args):
            val = args[key]
            parts.append(f"{key}={val if isinstance(val, str) else json.dumps(val, sort_keys=True)}")
        text = ", ".join(parts)
    else:
        text = json.dumps(args, sort_keys=True)
    if len(text) > _MAX_ARGS_CHARS:
        text = text[: _MAX_ARGS_CHARS - 1] + "…"
    return text


def canonical_args(args: Any) -> str:
    """Canonical JSON of generator arguments (for grouping and CSV)."""
    return json.dumps(args if args is not None else {}, sort_keys=True, ensure_ascii=False, default=str)


def reference_of(record: dict) -> dict:
    """The record's ``reference`` object (empty dict if absent or malformed)."""
    ref = record.get("reference")
    return ref if isinstance(ref, dict) else {}


def metric_sort_key(key: str, family: str | None = None) -> tuple[int, int, str]:
    """Sort key implementing the stable preferred column order (fid first, then ssim, ...).

    Sub-results of one metric (``prdc/precision``, ``histogram/w1``) follow :data:`SUB_ORDER`.
    """
    candidates = [key, key.split("/", 1)[0]]
    if family:
        candidates.append(family)
    ranks = [PREFERRED_ORDER.index(c) for c in candidates if c in PREFERRED_ORDER]
    sub = key.rsplit("/", 1)[1] if "/" in key else ""
    sub_rank = SUB_ORDER.index(sub) if sub in SUB_ORDER else len(SUB_ORDER)
    return (min(ranks) if ranks else len(PREFERRED_ORDER), sub_rank if sub else -1, key)


# --------------------------------------------------------------------------------------------
# table model
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """One metric column.

    Attributes:
        key: Metric key in the record (``"fid"``, ``"histogram/w1"``).
        higher_is_better: ``True``/``False`` for ``higher``/``lower`` metrics, None for ``target``
            metrics and when the records do not say.
        description: Human description of the metric (first non-empty one seen).
        family: Metric family, if recorded.
        direction: ``"higher"``, ``"lower"``, ``"target"`` (closest to the real-vs-real floor is best)
            or None (unknown); derived from ``higher_is_better`` when not given.
        axis: Headline axis of the metric (``realism``, ``diversity``, ...), ``""`` if not recorded.
    """

    key: str
    higher_is_better: bool | None = None
    description: str = ""
    family: str = ""
    direction: str | None = None
    axis: str = ""

    def __post_init__(self) -> None:
        if self.direction is None and self.higher_is_better is not None:
            object.__setattr__(self, "direction", "higher" if self.higher_is_better else "lower")
        if self.direction == "target":
            object.__setattr__(self, "higher_is_better", None)

    @property
    def arrow(self) -> str:
        """``"↑"`` (higher is better), ``"↓"`` (lower is better), ``"target: real"`` (the floor is the
        target) or ``""`` (unknown)."""
        return {"higher": "↑", "lower": "↓", "target": "target: real"}.get(self.direction or "", "")

    @property
    def direction_text(self) -> str:
        """Plain-words direction for captions and tooltips."""
        return {"higher": "higher is better", "lower": "lower is better",
                "target": "closest to the real-vs-real value (the floor) is best"}.get(
                    self.direction or "", "direction unknown")


#: Human meaning of :func:`leaderboards.verdicts.versus_floor`, for tooltips and legends.
VERSUS_TEXT = {
    "at floor": "within the real-vs-real floor (intervals overlap): as good as real data",
    "worse": "outside the real-vs-real floor, on the worse side",
    "better": ("better than real data (outside the floor, on the better side): suspicious; the metric "
               "may be blind to something, or the run may copy training data"),
}


#: The same for report tables, whose floor is the true caption of another subject (not real data):
#: beating it is the goal, staying at it means the report says nothing specific about the volume.
REPORT_VERSUS_TEXT = {
    "at floor": "within the floor (intervals overlap): no better than the true caption of another subject",
    "worse": "outside the floor, on the worse side: worse than the true caption of another subject",
    "better": "beats the floor (intervals do not overlap): better than the true caption of another subject",
}
#: Plain-text marks after the ``×floor`` figure of a report table.
REPORT_VERSUS_MARK = {"better": "✓ beats floor", "at floor": "≈ floor", "worse": "✗ worse than floor"}


@dataclass
class Cell:
    """A value with an optional confidence interval and its standing against the floor.

    Attributes:
        value: The finite value, or None when missing / failed / NaN.
        ci_low: Lower CI bound, or None.
        ci_high: Upper CI bound, or None.
        n: Sample count, or None.
        floor: Real-vs-real floor recorded with this metric, or None.
        warnings: Warnings recorded with the metric.
        error: Error message when the metric failed (``details.error``).
        is_best: Whether this is the best value of its column among the runs that may be starred.
        ratio: ``value / floor`` (:func:`leaderboards.verdicts.ratio_to_floor`), or None.
        versus: ``"at floor"``, ``"worse"``, ``"better"`` (:func:`leaderboards.verdicts.versus_floor`)
            or None.
        badness: Ranking number, smaller is better (:func:`leaderboards.verdicts.badness`), or None.
    """

    value: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    n: int | None = None
    floor: float | None = None
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    is_best: bool = False
    ratio: float | None = None
    versus: str | None = None
    badness: float | None = None

    @property
    def missing(self) -> bool:
        """True when there is no finite value to show."""
        return self.value is None

    @property
    def has_ci(self) -> bool:
        """True when both CI bounds are finite."""
        return self.ci_low is not None and self.ci_high is not None

    @property
    def symmetric_ci(self) -> bool:
        """True when the CI is (nearly) symmetric around the value, so ``±`` is honest."""
        if not self.has_ci or self.value is None:
            return False
        up, down = self.ci_high - self.value, self.value - self.ci_low
        half = (self.ci_high - self.ci_low) / 2
        return up >= 0 and down >= 0 and abs(up - down) <= 0.1 * half + 1e-12

    def value_text(self) -> str:
        """The value alone (``"0.012"`` or ``"—"``)."""
        return fmt_number(self.value)

    def ci_text(self) -> str:
        """The uncertainty alone: ``"± 0.0025"``, ``"[0.6, 0.9]"`` or ``""``."""
        if self.value is None or not self.has_ci:
            return ""
        if self.symmetric_ci:
            return f"± {fmt_number((self.ci_high - self.ci_low) / 2, 2)}"
        return f"[{fmt_number(self.ci_low)}, {fmt_number(self.ci_high)}]"

    def text(self) -> str:
        """``"0.012 ± 0.0025"``, ``"0.71 [0.6, 0.9]"``, ``"0.5"`` or ``"—"``."""
        if self.value is None:
            return MISSING
        ci = self.ci_text()
        return f"{fmt_number(self.value)} {ci}" if ci else fmt_number(self.value)

    def ratio_text(self) -> str:
        """The value against the floor, ``"×0.16"`` (1.0 = real data), or ``""`` when undefined."""
        if self.value is None or self.ratio is None:
            return ""
        return f"×{fmt_number(self.ratio, 3)}"

    def versus_mark(self) -> str:
        """A one-character mark for plain text: ``"✗"`` (worse than the floor), ``"⚠"`` (better than
        real data: suspicious) or ``""``."""
        return {"worse": "✗", "better": "⚠"}.get(self.versus or "", "")

    def versus_title(self, report: bool = False) -> str:
        """Tooltip text for the ``×floor`` figure (``report``: of a report table, whose floor is
        another subject's true caption)."""
        if self.value is None or self.floor is None:
            return "no floor recorded" if report else "no real-vs-real floor recorded"
        what = ("floor", "the score of another subject's true caption") if report else \
            ("real-vs-real floor", "real data")
        head = (f"{self.ratio_text()} = value / {what[0]} ({fmt_number(self.floor)}); ×1 is {what[1]}"
                if self.ratio is not None else f"floor {fmt_number(self.floor)} (ratio undefined)")
        why = (REPORT_VERSUS_TEXT if report else VERSUS_TEXT).get(self.versus or "")
        return f"{head}. {why[0].upper() + why[1:]}." if why else head


@dataclass
class Row:
    """A table row: one run, or the real-vs-real floor.

    Attributes:
        label: Display label (generator name + short args, disambiguated by seed/run_id).
        kind: ``"run"`` or ``"floor"``.
        cells: Metric key to cell.
        run_id: Run id (None for the floor row).
        generator: Generator name (None for the floor row).
        args: Generator args (None for the floor row).
        seed: Seed of the run, if recorded.
        record: The source record (None for the floor row).
        role: Generator role (:func:`leaderboards.verdicts.role`; ``""`` for the floor row).
        gate: Memorisation gate (:func:`leaderboards.verdicts.memorisation_gate`): True passed,
            False failed, None not measured.
        gate_reason: The gate's reason, in words.
        n: Number of prompts the run was scored on.
    """

    label: str
    kind: str
    cells: dict[str, Cell]
    run_id: str | None = None
    generator: str | None = None
    args: Any = None
    seed: Any = None
    record: dict | None = field(default=None, repr=False, compare=False)
    role: str = ""
    gate: bool | None = None
    gate_reason: str = ""
    n: int | None = None

    @property
    def is_floor(self) -> bool:
        """True for the real-vs-real row."""
        return self.kind == "floor"

    @property
    def may_star(self) -> bool:
        """Whether the run may get a best marker: a run, not failing the memorisation gate, not a
        memorising baseline and not an oracle (a run without a memorisation metric may)."""
        return not self.is_floor and self.gate is not False and verdicts.may_star(self.role)

    @property
    def gate_note(self) -> str:
        """``"memorisation: <reason>"`` for runs that fail the gate, else ``""``."""
        return f"memorisation: {self.gate_reason}" if self.gate is False else ""


@dataclass
class Table:
    """One leaderboard: the runs that may be ranked together (:func:`leaderboards.verdicts.comparability`:
    same suite name and version, number of prompts, reference cohort and grid).

    Attributes:
        suite: Suite name.
        reference: Reference cohort name.
        reference_hash: Reference content hash ("" if unknown).
        synthetic: Whether the reference is synthetic (any run says so).
        reference_label: Reference label from the record (e.g. "SYNTHETIC phantom — not real MRI").
        columns: All metric columns in the preferred order (the full table).
        rows: Run rows (best first on the ranking column) followed by the floor row, if any.
        notes: Caveats found while building (e.g. one line when floors differ across runs).
        version: Suite version.
        n: Number of prompts of every run in the table.
        grid: Grid name.
        headline: ``{axis: [metric keys]}`` the table leads with (axes in display order).
        rank_key: Key of the column the rows are ranked on (None: no column with a direction).
        comparability: What every run of the table shares (:func:`leaderboards.verdicts.comparability`).
        task: The task kind of its runs (``text-to-volume``, ``follow-up`` or ``report``).
    """

    suite: str
    reference: str
    reference_hash: str
    synthetic: bool
    reference_label: str
    columns: list[Column]
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    version: str = ""
    n: int | None = None
    grid: str = ""
    headline: dict[str, list[str]] = field(default_factory=dict)
    rank_key: str | None = None
    comparability: dict[str, str] = field(default_factory=dict)
    task: str = "text-to-volume"

    @property
    def is_report(self) -> bool:
        """True for a report-generation table (captioners describing volumes)."""
        return self.task == REPORT_TASK

    @property
    def model_word(self) -> str:
        """What a row evaluates: ``"captioner"`` (report tables) or ``"generator"``."""
        return "captioner" if self.is_report else "generator"

    @property
    def title(self) -> str:
        """Human title, e.g. ``"quick v1 · N=16 · 3mm · phantom (ab12cd34ef56)"``."""
        short = f" ({self.reference_hash[:12]})" if self.reference_hash else ""
        version = f" v{self.version}" if self.version else ""
        grid = f" · {self.grid}" if self.grid else ""
        return f"{self.suite}{version} · N={self.n if self.n is not None else '?'}{grid} · {self.reference}{short}"

    @property
    def run_rows(self) -> list[Row]:
        """Rows that are runs (floor excluded)."""
        return [r for r in self.rows if not r.is_floor]

    @property
    def floor_row(self) -> Row | None:
        """The real-vs-real row, if any floor was recorded."""
        return next((r for r in self.rows if r.is_floor), None)

    def column(self, key: str) -> Column | None:
        """The column of a metric key, or None."""
        return next((c for c in self.columns if c.key == key), None)

    @property
    def headline_columns(self) -> list[tuple[str, Column]]:
        """``(axis, column)`` of the headline metrics, axes in display order."""
        out = []
        for axis, keys in self.headline.items():
            out += [(axis, c) for c in (self.column(k) for k in keys) if c is not None]
        return out
