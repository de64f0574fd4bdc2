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

Layout: this module is the entry (:func:`compare`, Holm and the verdicts, the axis lines); the result
types and texts are in :mod:`bench.compare_types`, prompt pairing, tolerances and the test of one
metric in :mod:`bench.compare_pairs`, the statistics in :mod:`bench.compare_stats` and the rendering
in :mod:`bench.compare_report` (all re-exported here).
"""

from __future__ import annotations

import math
from pathlib import Path

from bench.compare_pairs import (_compare_metric, _extractor_of, _floor_samples_half_width, _is_fd, _load_features,
                                 _per_sample, _prompt_ids, metric_tolerance, prompt_alignment, same_prompts,
                                 tolerances)
from bench.compare_report import to_json, to_markdown  # (rendering lives there)
from bench.compare_stats import (ALPHA, N_BOOT, SEED, Z95, _boot_fd, _independent_se, _indices,
                                 _percentile, bootstrap_p, holm, independent_ci, normal_p, paired_fd_ci,
                                 paired_mean_ci)
from bench.compare_types import (BETTER, CORRECTION, CORRECTION_TEXT, MIXED, NA, RULE_FD, RULE_INDEPENDENT, RULE_NONE,
                                 RULE_PER_SAMPLE, RULE_TEXT, SAME, TOL_FLOOR, TOL_FLOOR_SAMPLES, TOL_NONE, TOL_SUITE,
                                 TOL_TEXT, UNMEASURED, VERDICT_RULE, WORSE, AxisSummary, Comparison, CompareError,
                                 MetricDiff, _checkpoint, _summary)
from bench.records import load_record
from core.axes import axes_for
from leaderboards import verdicts

#: every name importable from ``bench.compare``: the entry points defined here and, re-exported, the
#: types, per-metric helpers, statistics and rendering that live in the sibling ``compare_*`` modules
__all__ = [
    "compare", "check_compatible", "summarise_axes", "auto_n_boot", "_resolve", "_better", "_decide", "_axis_of",
    # compare_types
    "RULE_PER_SAMPLE", "RULE_FD", "RULE_INDEPENDENT", "RULE_NONE", "RULE_TEXT", "CORRECTION", "CORRECTION_TEXT",
    "VERDICT_RULE", "TOL_SUITE", "TOL_FLOOR", "TOL_FLOOR_SAMPLES", "TOL_NONE", "TOL_TEXT", "BETTER", "WORSE", "SAME",
    "NA", "MIXED", "UNMEASURED", "CompareError", "MetricDiff", "AxisSummary", "Comparison", "_summary", "_checkpoint",
    # compare_pairs
    "_prompt_ids", "same_prompts", "prompt_alignment", "tolerances", "_floor_samples_half_width", "metric_tolerance",
    "_per_sample", "_extractor_of", "_is_fd", "_load_features", "_compare_metric",
    # compare_stats
    "ALPHA", "N_BOOT", "SEED", "Z95", "_boot_fd", "_independent_se", "_indices", "_percentile", "bootstrap_p", "holm",
    "independent_ci", "normal_p", "paired_fd_ci", "paired_mean_ci",
    # compare_report
    "to_json", "to_markdown",
]

_f = verdicts.to_float


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


def _better(delta: float, direction: str) -> bool:
    return delta > 0 if direction == "higher" else delta < 0


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
    for axis in axes_for(record.get("task")):
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
