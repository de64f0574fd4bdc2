"""The vocabulary and result types of ``bench compare`` (see :mod:`bench.compare`): the CI rules,
the Holm–Bonferroni and verdict texts, tolerance sources, verdict words, :class:`CompareError`,
:class:`MetricDiff`, :class:`AxisSummary` and :class:`Comparison` (with its plain-JSON form)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

from bench.compare_stats import ALPHA, N_BOOT, SEED
from leaderboards import verdicts

RULE_PER_SAMPLE = "paired-bootstrap-per-sample"
RULE_FD = "paired-bootstrap-fd"
RULE_INDEPENDENT = "independent-ci"
RULE_NONE = "no-ci"

RULE_TEXT = {
    RULE_PER_SAMPLE: "same prompts, per-prompt values recorded: paired bootstrap over prompts (the same "
                     "resampled prompts for both runs), 95% percentile interval; p = 2·min(#{Δ* ≤ 0} + 1, "
                     "#{Δ* ≥ 0} + 1)/(B + 1)",
    RULE_FD: "same prompts, saved features: paired bootstrap over prompts, FD(gen_head[idx], ref[idx]) and "
             "FD(gen_base[idx], ref[idx]) with the same resampled indices for both runs, bootstrap distribution "
             "shifted by its bias estimate; 95% percentile interval, p = 2·min(#{Δ* ≤ 0} + 1, #{Δ* ≥ 0} + 1)"
             "/(B + 1)",
    RULE_INDEPENDENT: "independence approximation from the recorded CIs: se = (ci_high − ci_low)/(2·1.96), "
                      "se_Δ = sqrt(se_base² + se_head²), CI Δ ± 1.96·se_Δ, p = 2·(1 − Φ(|Δ|/se_Δ))",
    RULE_NONE: "no CI recorded for one of the runs: the difference cannot be tested (not in the Holm family)",
}

CORRECTION = "holm-bonferroni"
CORRECTION_TEXT = ("Holm–Bonferroni step-down across the m metrics with a p-value (two-sided): sorted by p, "
                   "reject while p_(i) ≤ α/(m − i + 1); family-wise α = {alpha:g}")
VERDICT_RULE = ("significant only when Holm–Bonferroni rejects at family-wise α = {alpha:g} across the compared "
                "metrics AND |Δ| > tolerance (per metric: the suite's tolerance when set, else the half-width of "
                "the real-vs-real floor's bootstrap interval, else 0); better/worse by the metric's direction "
                "(target metrics: Δ of |value − floor|)")

TOL_SUITE = "suite"
TOL_FLOOR = "floor CI"
TOL_FLOOR_SAMPLES = "floor per-prompt bootstrap"
TOL_NONE = "none"
TOL_TEXT = {
    TOL_SUITE: "the metric's `tolerance` in the suite file",
    TOL_FLOOR: "half-width of the real-vs-real floor's bootstrap interval (floor_ci; the larger of base's and head's)",
    TOL_FLOOR_SAMPLES: "half-width of the 95% percentile bootstrap interval of the floor's per-prompt mean "
                       "(details.floor_per_sample; the record has no floor_ci)",
    TOL_NONE: "0: no suite tolerance and no floor interval recorded",
}

BETTER, WORSE, SAME, NA = "better", "worse", "no significant change", "not compared"
MIXED, UNMEASURED = "mixed", "not measured"


class CompareError(ValueError):
    """The two records cannot be compared (different suite, N, reference cohort or grid).

    Attributes:
        differences: One line per difference, e.g. ``"N differs: 8 vs 16"``.
    """

    def __init__(self, message: str, differences: Sequence[str] = ()):
        super().__init__(message)
        self.differences = list(differences)


@dataclass
class MetricDiff:
    """The comparison of one metric key.

    Attributes:
        key: Metric key in both records.
        higher_is_better: ``True``/``False`` for higher/lower metrics, None for target or unknown.
        base: Base value.
        head: Head value.
        delta: The tested difference, head − base: of the value, or of ``|value − floor|`` for a
            target metric (negative = closer to real data).
        ci_low: Lower bound of the 95% CI of ``delta``.
        ci_high: Upper bound of the 95% CI of ``delta``.
        tolerance: Tolerance used for the verdict (in the units of ``delta``).
        rule: Which CI rule was applied (``RULE_*``).
        verdict: ``better``, ``worse``, ``no significant change`` or ``not compared``.
        note: Why a rule was not applicable, or why the metric was not compared.
        direction: ``higher``, ``lower``, ``target`` or None (unknown).
        axis: ``realism``, ``diversity``, ``conformance``, ``privacy`` or None.
        headline: True when the metric is one of its axis's headline metrics.
        value_delta: ``head − base`` of the values (equal to ``delta`` unless target).
        base_distance: ``|base − floor|`` (target metrics).
        head_distance: ``|head − floor|`` (target metrics).
        tolerance_source: Where the tolerance came from (``TOL_*``).
        p_value: Two-sided p-value of ``delta`` (None when not tested).
        p_holm: Holm-adjusted p-value.
        holm_reject: Holm rejects "no change" at the family-wise α.
    """

    key: str
    higher_is_better: bool | None
    base: float | None
    head: float | None
    delta: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    tolerance: float = 0.0
    rule: str = RULE_NONE
    verdict: str = NA
    note: str = ""
    direction: str | None = None
    axis: str | None = None
    headline: bool = False
    value_delta: float | None = None
    base_distance: float | None = None
    head_distance: float | None = None
    tolerance_source: str = TOL_NONE
    p_value: float | None = None
    p_holm: float | None = None
    holm_reject: bool = False

    @property
    def significant(self) -> bool:
        """True for a better or worse verdict."""
        return self.verdict in (BETTER, WORSE)


@dataclass
class AxisSummary:
    """One axis's line at the top of the report.

    Attributes:
        axis: The axis.
        verdict: ``better``, ``worse``, ``mixed``, ``no significant change`` or ``not measured``.
        text: The line, e.g. ``realism: better (2 of 3 headline metrics improved significantly)``.
        headline: The axis's headline metric keys that were compared.
        others: The axis's other compared metric keys.
        better: Metrics of the axis significantly better (headline first).
        worse: Metrics of the axis significantly worse (headline first).
    """

    axis: str
    verdict: str
    text: str
    headline: list[str] = field(default_factory=list)
    others: list[str] = field(default_factory=list)
    better: list[str] = field(default_factory=list)
    worse: list[str] = field(default_factory=list)


@dataclass
class Comparison:
    """The whole comparison of two records."""

    base: dict
    head: dict
    base_path: str
    head_path: str
    paired: bool
    metrics: list[MetricDiff]
    tolerance_source: str
    notes: list[str] = field(default_factory=list)
    n_boot: int = N_BOOT
    seed: int = SEED
    alpha: float = ALPHA
    overridden: list[str] = field(default_factory=list)
    axes: list[AxisSummary] = field(default_factory=list)

    @property
    def regressions(self) -> list[MetricDiff]:
        """Metrics that are significantly worse in head."""
        return [m for m in self.metrics if m.verdict == WORSE]

    @property
    def family_size(self) -> int:
        """Number of metrics in the Holm family (those with a p-value)."""
        return sum(m.p_value is not None for m in self.metrics)

    def to_dict(self) -> dict:
        """Plain-JSON form (used by ``--format json``)."""
        return {
            "base": _summary(self.base, self.base_path), "head": _summary(self.head, self.head_path),
            "overridden": self.overridden, "forced": bool(self.overridden),
            "axes": {a.axis: asdict(a) for a in self.axes},
            "paired_prompts": self.paired, "n_boot": self.n_boot, "seed": self.seed,
            "correction": {"method": CORRECTION, "alpha": self.alpha, "family_size": self.family_size,
                           "text": CORRECTION_TEXT.format(alpha=self.alpha)},
            "tolerance_source": self.tolerance_source,
            "tolerance_sources": {s: TOL_TEXT[s] for s in sorted({m.tolerance_source for m in self.metrics})},
            "verdict_rule": VERDICT_RULE.format(alpha=self.alpha),
            "rules": {r: RULE_TEXT[r] for r in sorted({m.rule for m in self.metrics if m.verdict != NA})},
            "notes": self.notes, "regression": bool(self.regressions),
            "metrics": [asdict(m) for m in self.metrics],
        }


def _summary(rec: dict, path: str) -> dict:
    return {"path": path, "run_id": rec.get("run_id"), "generator": rec.get("generator", {}).get("name"),
            "args": rec.get("generator", {}).get("args"), "seed": rec.get("seed"),
            "checkpoint": _checkpoint(rec), "n_prompts": verdicts.n_of(rec)}


def _checkpoint(rec: dict) -> str | None:
    info = rec.get("generator", {}).get("info") or {}
    if not isinstance(info, dict):
        return None
    for k in ("checkpoint_sha256", "sha256", "checkpoint_hash"):
        if isinstance(info.get(k), str):
            return info[k]
    return None
