"""One metric of ``bench compare`` (see :mod:`bench.compare`): pairing the two runs' prompts, the
tolerance of each metric, and the delta, 95% CI, p-value and CI rule of one metric
(:func:`_compare_metric`; the verdict is decided later, after Holm)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from bench.compare_stats import (N_BOOT, SEED, Z95, _boot_fd, _independent_se, _indices, _percentile, bootstrap_p,
                                 normal_p)
from bench.compare_types import (RULE_FD, RULE_INDEPENDENT, RULE_NONE, RULE_PER_SAMPLE, TOL_FLOOR, TOL_FLOOR_SAMPLES,
                                 TOL_NONE, TOL_SUITE, MetricDiff)
from leaderboards import verdicts

log = logging.getLogger("braingenbench.compare")

_f = verdicts.to_float


# ------------------------------------------------------------------------------- prompts, tolerances
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


# ------------------------------------------------------------------------------------- one metric
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
