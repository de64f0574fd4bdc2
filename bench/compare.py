"""Compare two run records (a base and a head checkpoint): per-metric deltas, a 95% CI of each
difference, a two-sided p-value, a family-wise (Holm–Bonferroni) decision across all metrics, and a
better / worse / no-significant-change verdict per metric and per axis for a pull-request gate.

``python -m bench compare BASE HEAD [--fail-on-regression] [--force] [--format markdown|json]
[--out FILE]`` — BASE and HEAD are run folders or ``record.json`` paths.

**Refusal.** Two runs are compared only when :func:`leaderboards.verdicts.comparability` agrees:
same suite (name and version), same number of prompts N, same reference cohort (name and content
hash) and same grid. Otherwise :class:`CompareError` lists every difference (``N differs: 8 vs 16``)
and the CLI exits 2 with one ``error:`` line per difference. ``--force`` compares anyway; the report
then opens with the differences that were overridden (markdown banner, JSON ``overridden``).

**What is tested.** For ``higher``/``lower`` metrics the statistic is the value: ``delta = head −
base``. For ``target`` metrics (closest to the real-vs-real floor is best, e.g. ``ms_ssim_diversity``)
it is the distance to the floor, :func:`leaderboards.verdicts.badness`: ``delta = |head − floor_head|
− |base − floor_base|`` (negative = closer to real data = better); the floors are held fixed.

**Interval and p-value** of ``delta`` come from the first rule that applies:

* ``paired-bootstrap-per-sample`` — both runs used the same prompts (same ``subject_id`` set in
  ``record["prompts"]``; a different order is matched by subject id) and the metric recorded
  per-prompt values (``details.per_sample``, e.g. SSIM, latent cosine) whose mean is the metric
  value: the prompts are resampled with replacement (the same indices for both runs) and the
  statistic is recomputed from the resampled means.
* ``paired-bootstrap-fd`` — same prompts, a Fréchet-distance metric (family ``fid`` or a latent
  ``.../fd``) and the run folders hold the saved features
  (``features/<extractor>/{generated,reference}.npy``) with identical reference features: the
  same resampled prompt indices ``idx`` are used for both runs and the statistic is recomputed from
  ``FD(gen_head[idx], ref[idx])`` and ``FD(gen_base[idx], ref[idx])``; the bootstrap distribution
  is shifted by its bias estimate (resampling duplicates rows, which biases FD upwards).
* ``independent-ci`` — otherwise: each recorded CI is read as a normal interval,
  ``se = (ci_high − ci_low) / (2·1.96)``, the difference has ``se_d = sqrt(se_base² + se_head²)``
  (conservative when the runs are positively correlated, e.g. share the reference set), CI
  ``delta ± 1.96·se_d`` and ``p = 2·(1 − Φ(|delta| / se_d))`` (for target metrics the se of the
  distance to the floor is approximated by the se of the value).
* ``no-ci`` — no CI recorded for a run: not tested, not in the Holm family, no significant change.

Bootstrap rules: 95% percentile interval of the ``B`` bootstrap deltas ``d*`` and the two-sided
``p = min(1, 2·min(#{d* ≤ 0} + 1, #{d* ≥ 0} + 1) / (B + 1))``. Seed 0; ``B = max(1000, ⌈4·m/α⌉)``
for ``m`` compared metrics, so that the smallest attainable p (``2/(B+1)``) is below Holm's first
threshold ``α/m`` with a margin.

**Tolerance** (per metric; the report says which one each metric used): the ``tolerance`` the
suite file gives the metric (or its family key) when set — it always wins, 0 included; else the
half-width of the real-vs-real floor's bootstrap interval (:func:`leaderboards.verdicts.floor_ci`,
the larger of base's and head's; for records without one but with ``details.floor_per_sample``, the
percentile interval of its mean computed here): a change smaller than what resampling real data
moves the metric by is not a regression; else 0.

**Family-wise correction.** The ``m`` metrics with a p-value form one family; Holm's step-down
procedure (Holm 1979) at family-wise ``α = 0.05`` sorts them by p and rejects while
``p_(i) ≤ α / (m − i + 1)``. A change is **significant** only when Holm rejects **and**
``|delta| > tolerance``; it is then ``better`` or ``worse`` by the metric's direction. Each axis
(realism, diversity, conformance, privacy) gets one summary line from its headline metrics
(:func:`leaderboards.verdicts.headline`; the axis's other metrics, by their ``axis``, are listed
after). ``--fail-on-regression`` exits 1 when any metric is significantly worse.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from bench.compare_stats import (ALPHA, N_BOOT, SEED, Z95, _boot_fd, _independent_se, _indices,  # noqa: F401
                                 _percentile, bootstrap_p, holm, independent_ci, normal_p, paired_fd_ci,
                                 paired_mean_ci)
from bench.records import load_record
from leaderboards import verdicts

log = logging.getLogger("braingenbench.compare")


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


# ------------------------------------------------------------------------------------- helpers
_f = verdicts.to_float


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


def _resolve(path: str | Path) -> tuple[dict, Path]:
    """Load a record from a run folder or record.json; return it with its run folder."""
    p = Path(path)
    rec = load_record(p)
    return rec, (p if p.is_dir() else p.parent)


def check_compatible(base: dict, head: dict) -> list[str]:
    """Reasons why two records are not comparable (empty when they are): one line per difference in
    suite (name, version), N, reference (name, content hash) or grid, from
    :func:`leaderboards.verdicts.comparability_differences`."""
    return verdicts.comparability_differences(base, head)


def _prompt_ids(rec: dict) -> list:
    return [p.get("subject_id") if isinstance(p, dict) else None for p in rec.get("prompts") or []]


def same_prompts(base: dict, head: dict) -> bool:
    """True when both runs used the same prompts (same subject ids, same order)."""
    ids_b, ids_h = _prompt_ids(base), _prompt_ids(head)
    return bool(ids_b) and None not in ids_b and ids_b == ids_h


def prompt_alignment(base: dict, head: dict) -> np.ndarray | None:
    """Indices ``perm`` with ``head prompt perm[i] == base prompt i`` when both runs used the same
    prompts, possibly in another order (unique subject ids); None when the prompt sets differ."""
    ids_b, ids_h = _prompt_ids(base), _prompt_ids(head)
    if same_prompts(base, head):
        return np.arange(len(ids_b))
    try:
        unique = len(set(ids_b)) == len(ids_b) == len(set(ids_h)) == len(ids_h)
    except TypeError:  # unhashable ids
        return None
    if not ids_b or None in ids_b or not unique or set(ids_b) != set(ids_h):
        return None
    pos = {s: i for i, s in enumerate(ids_h)}
    return np.array([pos[s] for s in ids_b], dtype=np.int64)


def tolerances(base: dict, head: dict) -> tuple[dict[str, float], str]:
    """The tolerances the suite sets explicitly: from the record's suite metrics list, else the suite
    file (older records). Metrics without one get a floor-derived tolerance (:func:`metric_tolerance`).

    Returns:
        ``({metric key: tolerance}, where they came from)``.
    """
    for rec in (head, base):
        specs = (rec.get("suite") or {}).get("metrics")
        if isinstance(specs, list):
            tol = {s["key"]: float(s["tolerance"]) for s in specs
                   if isinstance(s, dict) and "key" in s and _f(s.get("tolerance")) is not None}
            return tol, "the record's suite"
    name = (head.get("suite") or {}).get("name")
    try:
        from bench.suite import load_suite

        suite = load_suite(name)
    except Exception as e:  # noqa: BLE001 - a custom suite file need not be installed here
        log.info("suite %r not found (%s); no explicit tolerances", name, e)
        return {}, "none (suite file not found)"
    version = (head.get("suite") or {}).get("version")
    if version is not None and suite.version != version:
        log.warning("suite %r is version %s here, the records are version %s; using its tolerances anyway",
                    name, suite.version, version)
    tol = {m.key: float(m.tolerance) for m in suite.metrics if m.tolerance is not None}
    return tol, f"suite file {suite.path or name} (version {suite.version})"


def _floor_samples_half_width(entry: dict, n_boot: int, seed: int) -> float | None:
    d = entry.get("details") if isinstance(entry.get("details"), dict) else {}
    fps = d.get("floor_per_sample")
    if not isinstance(fps, list) or len(fps) < 2:
        return None
    v = np.array([np.nan if _f(x) is None else float(x) for x in fps])
    if not np.all(np.isfinite(v)):
        return None
    ci = _percentile(v[_indices(v.size, n_boot, seed)].mean(axis=1))
    return None if ci is None else (ci[1] - ci[0]) / 2


def metric_tolerance(key: str, eb: dict, eh: dict, explicit: dict[str, float], *, n_boot: int = N_BOOT,
                     seed: int = SEED) -> tuple[float, str]:
    """The tolerance of one metric and its source (``TOL_*``): the suite's (key, else family key)
    when set; else the half-width of the floor's bootstrap interval (larger of base and head); else 0."""
    for k in (key, key.split("/", 1)[0]):
        if k in explicit:
            return float(explicit[k]), TOL_SUITE
    widths = [(ci[1] - ci[0]) / 2 for ci in (verdicts.floor_ci(eb), verdicts.floor_ci(eh)) if ci is not None]
    if widths:
        return float(max(widths)), TOL_FLOOR
    widths = [w for w in (_floor_samples_half_width(e, n_boot, seed) for e in (eb, eh)) if w is not None]
    if widths:
        return float(max(widths)), TOL_FLOOR_SAMPLES
    return 0.0, TOL_NONE


def _per_sample(entry: dict) -> np.ndarray | None:
    d = entry.get("details") if isinstance(entry.get("details"), dict) else {}
    ps = d.get("per_sample")
    if not isinstance(ps, list) or not ps:
        return None
    arr = np.array([np.nan if _f(v) is None else float(v) for v in ps], dtype=np.float64)
    return arr


def _extractor_of(entry: dict) -> str | None:
    for src in ("details", "config"):
        d = entry.get(src)
        if isinstance(d, dict) and isinstance(d.get("extractor"), str):
            return d["extractor"]
    return None


def _is_fd(key: str, entry: dict) -> bool:
    fam = entry.get("family")
    return fam == "fid" or (key.rsplit("/", 1)[-1] == "fd" and fam in ("latent_similarity", "latent", None, ""))


def _load_features(run_dir: Path, extractor: str, which: str) -> np.ndarray | None:
    p = run_dir / "features" / extractor / f"{which}.npy"
    if not p.is_file():
        return None
    try:
        return np.load(p, allow_pickle=False).astype(np.float64)
    except (OSError, ValueError) as e:
        log.warning("%s is unreadable (%s); falling back to the independent rule", p, e)
        return None


def _better(delta: float, direction: str) -> bool:
    return delta > 0 if direction == "higher" else delta < 0


# ---------------------------------------------------------------------------------------- main
def _compare_metric(key: str, eb: dict, eh: dict, *, align: np.ndarray | None, dirs: tuple[Path, Path],
                    tol: tuple[float, str], n_boot: int, seed: int) -> MetricDiff:
    """Delta, CI and p-value of one metric (the verdict is set later, after Holm). ``align``: see
    :func:`prompt_alignment` (None: unpaired)."""
    d = verdicts.direction(eh) or verdicts.direction(eb)
    axis = eh.get("axis") if eh.get("axis") in verdicts.AXES else (eb.get("axis") if eb.get("axis") in verdicts.AXES
                                                                     else None)
    vb, vh = _f(eb.get("value")), _f(eh.get("value"))
    md = MetricDiff(key=key, higher_is_better=None if d in (None, "target") else d == "higher", base=vb, head=vh,
                    tolerance=tol[0], tolerance_source=tol[1], direction=d, axis=axis)
    if vb is None or vh is None:
        md.note = "no value in " + " and ".join(n for n, v in (("base", vb), ("head", vh)) if v is None)
        return md
    md.value_delta = vh - vb
    notes: list[str] = []
    if d == "target":
        fb, fh = _f(eb.get("floor")), _f(eh.get("floor"))
        if fb is None or fh is None:
            md.note = "target metric without a floor in " + " and ".join(
                n for n, v in (("base", fb), ("head", fh)) if v is None) + ": distance to real data unknown"
            return md
        md.base_distance, md.head_distance = abs(vb - fb), abs(vh - fh)

        def stat(b, h):
            return np.abs(h - fh) - np.abs(b - fb)
    else:
        def stat(b, h):
            return h - b
    md.delta = float(stat(vb, vh))
    boot: np.ndarray | None = None  # bootstrap distribution of the statistic, centred as it will be tested
    if align is not None:
        pb, ph = _per_sample(eb), _per_sample(eh)
        ph = ph[align] if ph is not None and ph.shape == align.shape else ph
        if _is_fd(key, eb) and _is_fd(key, eh):
            ex = _extractor_of(eh) or _extractor_of(eb)
            feats = None
            if ex:
                gb, rb = (_load_features(dirs[0], ex, w) for w in ("generated", "reference"))
                gh, rh = (_load_features(dirs[1], ex, w) for w in ("generated", "reference"))
                if gh is not None and rh is not None and gh.shape[0] == rh.shape[0] == align.size:
                    gh, rh = gh[align], rh[align]
                if any(a is None for a in (gb, rb, gh, rh)):
                    notes.append(f"paired FD bootstrap not possible: features/{ex}/*.npy missing in a run folder")
                elif rb.shape != rh.shape or not np.allclose(rb, rh, rtol=1e-5, atol=1e-6):
                    notes.append(f"paired FD bootstrap not possible: the {ex} reference features differ "
                                 "between the runs (different extractor weights?)")
                else:
                    feats = (gb, gh, rb)
            else:
                notes.append("paired FD bootstrap not possible: no extractor recorded")
            if feats is not None:
                res = _boot_fd(*feats, n_boot=n_boot, seed=seed)
                if res is not None:
                    full_b, full_h, bb, bh = res
                    raw = stat(bb, bh)
                    full = float(stat(full_b, full_h))
                    if np.sum(np.isfinite(raw)) >= 10:
                        if not math.isclose(full, md.delta, rel_tol=1e-3, abs_tol=1e-9):
                            notes.append(f"FD recomputed from the saved features ({full:.4g}) differs from the "
                                         f"recorded delta ({md.delta:.4g}); the interval is centred on the "
                                         "recorded one")
                            full_centre = md.delta
                        else:
                            full_centre = full
                        # bias shift: the bootstrap mean minus the full-set statistic estimates the bias
                        boot = raw - float(np.nanmean(raw)) + full_centre
                        md.rule = RULE_FD
        elif pb is not None and ph is not None:
            if pb.shape == ph.shape and np.all(np.isfinite(pb)) and np.all(np.isfinite(ph)) and \
                    math.isclose(float(pb.mean()), vb, rel_tol=1e-6, abs_tol=1e-9) and \
                    math.isclose(float(ph.mean()), vh, rel_tol=1e-6, abs_tol=1e-9) and pb.size >= 2:
                idx = _indices(pb.size, n_boot, seed)
                boot = stat(pb[idx].mean(axis=1), ph[idx].mean(axis=1))
                md.rule = RULE_PER_SAMPLE
            else:
                notes.append("per-sample values are not the per-prompt terms of the value; not paired")
    ci: tuple[float, float] | None = None
    if boot is not None:
        ci, md.p_value = _percentile(boot), bootstrap_p(boot)
        if ci is None or md.p_value is None:
            boot, md.rule, md.p_value, ci = None, RULE_NONE, None, None
    if boot is None:
        se = _independent_se(eb, eh)
        if se is not None:
            ci = (md.delta - Z95 * se, md.delta + Z95 * se)
            md.p_value = normal_p(md.delta, se)
            md.rule = RULE_INDEPENDENT
            if d == "target":
                notes.append("se of |value − floor| approximated by the se of the value")
        else:
            md.rule = RULE_NONE
            notes.append("no CI recorded: cannot test")
    if ci is not None:
        md.ci_low, md.ci_high = ci
    if d is None:
        notes.append("direction unknown")
    md.note = "; ".join(notes)
    return md


def _decide(diffs: list[MetricDiff], alpha: float) -> None:
    """Holm across the metrics with a p-value, then the verdict of each metric."""
    reject, adjusted = holm([m.p_value for m in diffs], alpha)
    for m, r, pa in zip(diffs, reject, adjusted):
        m.holm_reject, m.p_holm = r, pa
        if m.delta is None:
            m.verdict = NA
            continue
        extra: list[str] = []
        if m.p_value is None or m.direction is None:
            m.verdict = SAME
        elif not r:
            m.verdict = SAME
            if m.p_value <= alpha and abs(m.delta) > m.tolerance:
                extra.append(f"p = {m.p_value:.3g} before correction, not significant after Holm")
        elif abs(m.delta) <= m.tolerance:
            m.verdict = SAME
            extra.append(f"significant but |Δ| ≤ tolerance {m.tolerance:.4g}")
        else:
            m.verdict = BETTER if _better(m.delta, m.direction) else WORSE
        m.note = "; ".join([n for n in (m.note, *extra) if n])


def _axis_of(m: MetricDiff, head_lines: dict[str, list[str]]) -> str | None:
    if m.axis:
        return m.axis
    return next((a for a, keys in head_lines.items() if m.key in keys), None)


def summarise_axes(diffs: list[MetricDiff], record: dict) -> list[AxisSummary]:
    """One :class:`AxisSummary` per axis: decided by the axis's headline metrics
    (:func:`leaderboards.verdicts.headline` of ``record``), or by all its metrics when it has none;
    its other metrics (by ``axis``) are listed after."""
    lines = verdicts.headline(record)
    compared = [m for m in diffs if m.verdict != NA]
    out = []
    for axis in verdicts.AXES:
        hl = [m for m in compared if m.key in lines.get(axis, [])]
        rest = [m for m in compared if m not in hl and _axis_of(m, lines) == axis]
        for m in hl:
            m.headline = True
        scope, others = (hl, rest) if hl else (rest, [])
        label = "headline metrics" if hl else "metrics"
        better = [m.key for m in scope if m.verdict == BETTER]
        worse = [m.key for m in scope if m.verdict == WORSE]
        ob = [m.key for m in others if m.verdict == BETTER]
        ow = [m.key for m in others if m.verdict == WORSE]
        n = len(scope)
        if not n:
            verdict, detail = UNMEASURED, "no metric of this axis in both runs"
        else:
            verdict = MIXED if better and worse else WORSE if worse else BETTER if better else SAME
            parts = []
            if better:
                parts.append(f"{len(better)} of {n} {label} improved significantly")
            if worse:
                parts.append(f"{len(worse)} of {n} {label} significantly worse: {', '.join(worse)}")
            if not parts:
                parts.append(f"0 of {n} {label} changed significantly")
            if not hl:
                parts.append("no headline metric")
            if others:
                o = [f"{len(ob)} better ({', '.join(ob)})" if ob else "",
                     f"{len(ow)} worse ({', '.join(ow)})" if ow else ""]
                o = [x for x in o if x]
                parts.append(f"other metrics ({len(others)}): {', '.join(o) if o else 'no significant change'}")
            detail = "; ".join(parts)
        out.append(AxisSummary(axis=axis, verdict=verdict, text=f"{axis}: {verdict} ({detail})",
                               headline=[m.key for m in hl], others=[m.key for m in others] if hl else [],
                               better=[m.key for m in (hl or rest) if m.verdict == BETTER] + ob,
                               worse=[m.key for m in (hl or rest) if m.verdict == WORSE] + ow))
    return out


def auto_n_boot(m: int, alpha: float = ALPHA) -> int:
    """``max(1000, ⌈4·m/α⌉)``: resamples enough for the smallest bootstrap p (``2/(B+1)``) to pass
    Holm's first threshold ``α/m`` with a factor-2 margin."""
    return max(N_BOOT, math.ceil(4 * max(m, 1) / alpha))


def compare(base_path: str | Path, head_path: str | Path, *, force: bool = False, n_boot: int | None = None,
            seed: int = SEED, alpha: float = ALPHA) -> Comparison:
    """Compare two run records.

    Args:
        base_path: Run folder or ``record.json`` of the base (e.g. ``main``'s checkpoint).
        head_path: Run folder or ``record.json`` of the head (the pull request's checkpoint).
        force: Compare even when suite, N, reference cohort or grid differ (the report lists them).
        n_boot: Bootstrap resamples (default :func:`auto_n_boot` of the number of compared metrics).
        seed: Bootstrap seed.
        alpha: Family-wise error rate of the Holm–Bonferroni correction.

    Returns:
        The :class:`Comparison`.

    Raises:
        CompareError: The records are not comparable and ``force`` is False.
        bench.records.RecordError: A record cannot be read.
    """
    base, base_dir = _resolve(base_path)
    head, head_dir = _resolve(head_path)
    problems = check_compatible(base, head)
    notes: list[str] = []
    if problems and not force:
        raise CompareError("refusing to compare: " + "; ".join(problems)
                           + ". Re-run both checkpoints on the same suite, N, reference and grid, or pass --force",
                           problems)
    align = prompt_alignment(base, head)
    paired = align is not None
    if not paired:
        notes.append("the runs used different prompts: every CI uses the independence approximation")
    elif not same_prompts(base, head):
        notes.append("the runs used the same prompts in a different order: paired after matching them by subject id")
    explicit, explicit_source = tolerances(base, head)
    mb, mh = base.get("metrics") or {}, head.get("metrics") or {}
    keys = [k for k in mh if k in mb]
    only = sorted(set(mb) ^ set(mh))
    if only:
        notes.append("metrics in only one run (not compared): " + ", ".join(only))
    entries = {k: (mb[k] if isinstance(mb[k], dict) else {}, mh[k] if isinstance(mh[k], dict) else {}) for k in keys}
    if n_boot is None:
        n_boot = auto_n_boot(sum(_f(eb.get("value")) is not None and _f(eh.get("value")) is not None
                                 for eb, eh in entries.values()), alpha)
    diffs = [_compare_metric(k, eb, eh, align=align, dirs=(base_dir, head_dir),
                             tol=metric_tolerance(k, eb, eh, explicit, n_boot=n_boot, seed=seed),
                             n_boot=n_boot, seed=seed) for k, (eb, eh) in entries.items()]
    _decide(diffs, alpha)
    m = sum(d.p_value is not None for d in diffs)
    if m and any(d.rule in (RULE_PER_SAMPLE, RULE_FD) for d in diffs) and 2 / (n_boot + 1) > alpha / m:
        notes.append(f"with {n_boot} bootstrap resamples the smallest bootstrap p-value ({2 / (n_boot + 1):.3g}) is "
                     f"above Holm's first threshold α/m = {alpha / m:.3g}: bootstrap-tested metrics cannot be "
                     "significant; use more resamples")
    tol_source = (f"per metric (see each row): the suite's tolerance where set ({explicit_source}), else the "
                  "half-width of the real-vs-real floor's bootstrap interval, else 0")
    return Comparison(base=base, head=head, base_path=str(base_path), head_path=str(head_path), paired=paired,
                      metrics=diffs, tolerance_source=tol_source, notes=notes, n_boot=n_boot, seed=seed,
                      alpha=alpha, overridden=list(problems), axes=summarise_axes(diffs, head))


from bench.compare_report import to_json, to_markdown  # noqa: E402,F401  (rendering lives there)
