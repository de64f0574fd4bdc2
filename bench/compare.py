"""Compare two run records (a base and a head checkpoint): per-metric deltas, a 95% CI of each
difference, and a better / worse / no-significant-change verdict for a pull-request gate.

``python -m bench compare BASE HEAD [--fail-on-regression] [--force] [--format markdown|json]
[--out FILE]`` — BASE and HEAD are run folders or ``record.json`` paths.

For every metric key present (with a value) in both records, ``delta = head - base`` and its 95% CI
come from the first rule that applies:

* ``paired-bootstrap-per-sample`` — both runs used the same prompts (same ``subject_id`` sequence
  in ``record["prompts"]``) and the metric recorded per-prompt values (``details.per_sample``, e.g.
  SSIM, latent cosine) whose mean is the metric value: the prompts are resampled with replacement
  and the mean of the paired differences is recomputed (percentile interval).
* ``paired-bootstrap-fd`` — same prompts, a Fréchet-distance metric (family ``fid`` or a latent
  ``.../fd``) and the run folders hold the saved features
  (``features/<extractor>/{generated,reference}.npy``) with identical reference features: the
  same resampled prompt indices ``idx`` are used for both runs and
  ``FD(gen_head[idx], ref[idx]) - FD(gen_base[idx], ref[idx])`` is recomputed; the percentile
  interval is shifted by the bootstrap bias estimate (resampling duplicates rows, which biases
  FD upwards).
* ``independent-ci`` — otherwise: each recorded CI is read as a normal interval,
  ``se = (ci_high - ci_low) / (2 * 1.96)``, and the difference CI is
  ``delta ± 1.96 * sqrt(se_base² + se_head²)`` (conservative when the runs are positively
  correlated, e.g. share the reference set).

Verdict: a change is significant when the CI of the difference excludes 0 **and**
``|delta| > tolerance`` (the metric's ``tolerance`` from the suite file, 0 when not given); it is
then ``better`` or ``worse`` according to ``higher_is_better``. Bootstrap: seed 0, 1000 resamples.

Records of different suites, reference cohorts (content hash) or grids are refused (exit 2)
unless ``--force``.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.records import load_record

log = logging.getLogger("braingenbench.compare")

Z95 = 1.959963984540054
N_BOOT = 1000
SEED = 0

RULE_PER_SAMPLE = "paired-bootstrap-per-sample"
RULE_FD = "paired-bootstrap-fd"
RULE_INDEPENDENT = "independent-ci"
RULE_NONE = "no-ci"

RULE_TEXT = {
    RULE_PER_SAMPLE: "same prompts, per-prompt values recorded: paired bootstrap over prompts of the mean "
                     "difference (head − base), 95% percentile interval",
    RULE_FD: "same prompts, saved features: paired bootstrap over prompts, FD(gen_head[idx], ref[idx]) − "
             "FD(gen_base[idx], ref[idx]) with the same resampled indices for both runs, 95% percentile "
             "interval shifted by the bootstrap bias estimate",
    RULE_INDEPENDENT: "independence approximation from the recorded CIs: se = (ci_high − ci_low)/(2·1.96), "
                      "delta ± 1.96·sqrt(se_base² + se_head²)",
    RULE_NONE: "no CI recorded for one of the runs: the difference cannot be tested",
}

VERDICT_RULE = ("significant when the 95% CI of the difference excludes 0 and |delta| > tolerance "
                "(per metric, from the suite file; 0 when not set); direction from higher_is_better")

BETTER, WORSE, SAME, NA = "better", "worse", "no significant change", "not compared"


class CompareError(ValueError):
    """The two records cannot be compared (different suites, cohorts or grids, or unreadable)."""


@dataclass
class MetricDiff:
    """The comparison of one metric key.

    Attributes:
        key: Metric key in both records.
        higher_is_better: Direction (from the head record, else the base).
        base: Base value.
        head: Head value.
        delta: ``head - base``.
        ci_low: Lower bound of the 95% CI of ``delta``.
        ci_high: Upper bound of the 95% CI of ``delta``.
        tolerance: Tolerance used for the verdict.
        rule: Which CI rule was applied (``RULE_*``).
        verdict: ``better``, ``worse``, ``no significant change`` or ``not compared``.
        note: Why a rule was not applicable, or why the metric was not compared.
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

    @property
    def significant(self) -> bool:
        """True for a better or worse verdict."""
        return self.verdict in (BETTER, WORSE)


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

    @property
    def regressions(self) -> list[MetricDiff]:
        """Metrics that are significantly worse in head."""
        return [m for m in self.metrics if m.verdict == WORSE]

    def to_dict(self) -> dict:
        """Plain-JSON form (used by ``--format json``)."""
        return {
            "base": _summary(self.base, self.base_path), "head": _summary(self.head, self.head_path),
            "paired_prompts": self.paired, "n_boot": self.n_boot, "seed": self.seed,
            "tolerance_source": self.tolerance_source, "verdict_rule": VERDICT_RULE,
            "rules": {r: RULE_TEXT[r] for r in sorted({m.rule for m in self.metrics if m.verdict != NA})},
            "notes": self.notes, "regression": bool(self.regressions),
            "metrics": [asdict(m) for m in self.metrics],
        }


# ------------------------------------------------------------------------------------- helpers
def _f(x: Any) -> float | None:
    if isinstance(x, bool) or x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _summary(rec: dict, path: str) -> dict:
    return {"path": path, "run_id": rec.get("run_id"), "generator": rec.get("generator", {}).get("name"),
            "args": rec.get("generator", {}).get("args"), "seed": rec.get("seed"),
            "checkpoint": _checkpoint(rec)}


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
    """Reasons why two records are not comparable (empty when they are)."""
    out = []
    bs, hs = base.get("suite", {}), head.get("suite", {})
    if bs.get("name") != hs.get("name"):
        out.append(f"different suites: base {bs.get('name')!r}, head {hs.get('name')!r}")
    bref, href = base.get("reference", {}) or {}, head.get("reference", {}) or {}
    if (bref.get("name"), bref.get("content_hash")) != (href.get("name"), href.get("content_hash")):
        out.append(f"different reference cohorts: base {bref.get('name')!r} "
                   f"({str(bref.get('content_hash'))[:12]}), head {href.get('name')!r} "
                   f"({str(href.get('content_hash'))[:12]})")
    if json.dumps(bs.get("grid"), sort_keys=True) != json.dumps(hs.get("grid"), sort_keys=True):
        out.append(f"different grids: base {bs.get('grid')}, head {hs.get('grid')}")
    return out


def same_prompts(base: dict, head: dict) -> bool:
    """True when both runs used the same prompts (same subject ids, same order)."""
    bp, hp = base.get("prompts") or [], head.get("prompts") or []
    ids_b = [p.get("subject_id") if isinstance(p, dict) else None for p in bp]
    ids_h = [p.get("subject_id") if isinstance(p, dict) else None for p in hp]
    return bool(ids_b) and None not in ids_b and ids_b == ids_h


def tolerances(base: dict, head: dict) -> tuple[dict[str, float], str]:
    """Per-metric tolerances: from the record's suite metrics list, else the suite file, else none.

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
        log.info("suite %r not found (%s); tolerances are 0", name, e)
        return {}, "none (suite file not found; 0 for every metric)"
    version = (head.get("suite") or {}).get("version")
    if version is not None and suite.version != version:
        log.warning("suite %r is version %s here, the records are version %s; using its tolerances anyway",
                    name, suite.version, version)
    tol = {m.key: float(m.tolerance) for m in suite.metrics if m.tolerance is not None}
    return tol, f"suite file {suite.path or name} (version {suite.version})"


def _tolerance_for(key: str, tol: dict[str, float]) -> float:
    if key in tol:
        return tol[key]
    return tol.get(key.split("/", 1)[0], 0.0)


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


def _percentile(vals: np.ndarray) -> tuple[float, float] | None:
    vals = vals[np.isfinite(vals)]
    if vals.size < 10:
        return None
    a = (1 - 0.95) / 2
    return float(np.quantile(vals, a)), float(np.quantile(vals, 1 - a))


def _indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, (n_boot, n))


def paired_mean_ci(base: np.ndarray, head: np.ndarray, *, n_boot: int = N_BOOT, seed: int = SEED
                   ) -> tuple[float, float] | None:
    """Percentile CI of ``mean(head - base)`` over prompts resampled with replacement."""
    diff = head - base
    if diff.size < 2 or not np.all(np.isfinite(diff)):
        return None
    means = diff[_indices(diff.size, n_boot, seed)].mean(axis=1)
    return _percentile(means)


def paired_fd_ci(gen_base: np.ndarray, gen_head: np.ndarray, ref: np.ndarray, *, n_boot: int = N_BOOT,
                 seed: int = SEED) -> tuple[float, float, float] | None:
    """Bias-shifted paired-bootstrap CI of ``FD(gen_head, ref) - FD(gen_base, ref)``.

    Returns:
        ``(delta on the full sets, ci_low, ci_high)`` or None when too few prompts.
    """
    from metrics.functional.frechet import frechet_distance_from_features as fd

    n = ref.shape[0]
    if n < 3 or gen_base.shape != gen_head.shape or gen_base.shape[0] != n:
        return None
    delta = fd(gen_head, ref) - fd(gen_base, ref)
    boot = np.empty(n_boot)
    for b, idx in enumerate(_indices(n, n_boot, seed)):
        try:
            boot[b] = fd(gen_head[idx], ref[idx]) - fd(gen_base[idx], ref[idx])
        except ValueError:
            boot[b] = np.nan
    ci = _percentile(boot)
    if ci is None:
        return None
    bias = float(np.nanmean(boot) - delta)
    return float(delta), ci[0] - bias, ci[1] - bias


def independent_ci(delta: float, base: dict, head: dict) -> tuple[float, float] | None:
    """``delta ± 1.96·sqrt(se_b² + se_h²)`` with ``se = (ci_high - ci_low) / (2·1.96)``."""
    ses = []
    for e in (base, head):
        lo, hi = _f(e.get("ci_low")), _f(e.get("ci_high"))
        if lo is None or hi is None or hi < lo:
            return None
        ses.append((hi - lo) / (2 * Z95))
    half = Z95 * math.sqrt(ses[0] ** 2 + ses[1] ** 2)
    return delta - half, delta + half


def verdict(delta: float, ci: tuple[float, float] | None, tolerance: float, hib: bool | None) -> str:
    """Apply the verdict rule (see :data:`VERDICT_RULE`)."""
    if ci is None or hib is None:
        return SAME
    excludes_zero = ci[0] > 0 or ci[1] < 0
    if not excludes_zero or abs(delta) <= tolerance:
        return SAME
    return BETTER if (delta > 0) == hib else WORSE


# ---------------------------------------------------------------------------------------- main
def _compare_metric(key: str, eb: dict, eh: dict, *, paired: bool, dirs: tuple[Path, Path],
                    tol: float, n_boot: int, seed: int) -> MetricDiff:
    hib = eh.get("higher_is_better") if isinstance(eh.get("higher_is_better"), bool) else \
        (eb.get("higher_is_better") if isinstance(eb.get("higher_is_better"), bool) else None)
    vb, vh = _f(eb.get("value")), _f(eh.get("value"))
    md = MetricDiff(key=key, higher_is_better=hib, base=vb, head=vh, tolerance=tol)
    if vb is None or vh is None:
        md.note = "no value in " + " and ".join(n for n, v in (("base", vb), ("head", vh)) if v is None)
        return md
    md.delta = vh - vb
    notes: list[str] = []
    ci: tuple[float, float] | None = None
    if paired:
        pb, ph = _per_sample(eb), _per_sample(eh)
        if _is_fd(key, eb) and _is_fd(key, eh):
            ex = _extractor_of(eh) or _extractor_of(eb)
            feats = None
            if ex:
                gb, rb = (_load_features(dirs[0], ex, w) for w in ("generated", "reference"))
                gh, rh = (_load_features(dirs[1], ex, w) for w in ("generated", "reference"))
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
                res = paired_fd_ci(*feats, n_boot=n_boot, seed=seed)
                if res is not None:
                    full, lo, hi = res
                    if not math.isclose(full, md.delta, rel_tol=1e-3, abs_tol=1e-9):
                        notes.append(f"FD recomputed from the saved features ({full:.4g}) differs from the "
                                     f"recorded delta ({md.delta:.4g}); the interval is centred on the recorded one")
                        lo, hi = lo - full + md.delta, hi - full + md.delta
                    ci, md.rule = (lo, hi), RULE_FD
        elif pb is not None and ph is not None:
            if pb.shape == ph.shape and np.all(np.isfinite(pb)) and np.all(np.isfinite(ph)) and \
                    math.isclose(float(pb.mean()), vb, rel_tol=1e-6, abs_tol=1e-9) and \
                    math.isclose(float(ph.mean()), vh, rel_tol=1e-6, abs_tol=1e-9):
                c = paired_mean_ci(pb, ph, n_boot=n_boot, seed=seed)
                if c is not None:
                    ci, md.rule = c, RULE_PER_SAMPLE
            else:
                notes.append("per-sample values are not the per-prompt terms of the value; not paired")
    if ci is None:
        ci = independent_ci(md.delta, eb, eh)
        md.rule = RULE_INDEPENDENT if ci is not None else RULE_NONE
    if ci is not None:
        md.ci_low, md.ci_high = ci
    md.verdict = verdict(md.delta, ci, tol, hib)
    if ci is None:
        notes.append("no CI recorded: cannot test")
    if hib is None:
        notes.append("direction unknown")
    if ci is not None and md.verdict == SAME and (ci[0] > 0 or ci[1] < 0):
        notes.append(f"significant but |delta| ≤ tolerance {tol:g}")
    md.note = "; ".join(notes)
    return md


def compare(base_path: str | Path, head_path: str | Path, *, force: bool = False, n_boot: int = N_BOOT,
            seed: int = SEED) -> Comparison:
    """Compare two run records.

    Args:
        base_path: Run folder or ``record.json`` of the base (e.g. ``main``'s checkpoint).
        head_path: Run folder or ``record.json`` of the head (the pull request's checkpoint).
        force: Compare even when suites, reference cohorts or grids differ.
        n_boot: Bootstrap resamples.
        seed: Bootstrap seed.

    Returns:
        The :class:`Comparison`.

    Raises:
        CompareError: The records are not comparable and ``force`` is False.
        bench.records.RecordError: A record cannot be read.
    """
    base, base_dir = _resolve(base_path)
    head, head_dir = _resolve(head_path)
    problems = check_compatible(base, head)
    notes = []
    if problems:
        if not force:
            raise CompareError("refusing to compare: " + "; ".join(problems)
                               + ". Re-run both checkpoints on the same suite and reference, or pass --force")
        notes += [f"--force: {p}" for p in problems]
    if (base.get("suite") or {}).get("version") != (head.get("suite") or {}).get("version"):
        notes.append(f"suite versions differ: base {base['suite'].get('version')}, "
                     f"head {head['suite'].get('version')}")
    paired = same_prompts(base, head)
    if not paired:
        notes.append("the runs used different prompts: every CI uses the independence approximation")
    tol, tol_source = tolerances(base, head)
    mb, mh = base.get("metrics") or {}, head.get("metrics") or {}
    keys = [k for k in mh if k in mb]
    only = sorted(set(mb) ^ set(mh))
    if only:
        notes.append("metrics in only one run (not compared): " + ", ".join(only))
    diffs = [_compare_metric(k, mb[k] if isinstance(mb[k], dict) else {}, mh[k] if isinstance(mh[k], dict) else {},
                             paired=paired, dirs=(base_dir, head_dir), tol=_tolerance_for(k, tol),
                             n_boot=n_boot, seed=seed) for k in keys]
    return Comparison(base=base, head=head, base_path=str(base_path), head_path=str(head_path), paired=paired,
                      metrics=diffs, tolerance_source=tol_source, notes=notes, n_boot=n_boot, seed=seed)


# ------------------------------------------------------------------------------------ markdown
def _md(text: Any) -> str:
    s = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    s = " ".join(s.splitlines())
    for ch in "\\`*_[]|#~":
        s = s.replace(ch, "\\" + ch)
    return s


def _code(text: Any) -> str:
    """A markdown code span (no backslash escapes inside; ``|`` escaped for tables)."""
    s = " ".join(str(text).splitlines()).replace("`", "'").replace("|", "\\|")
    return f"`{s}`"


def _num(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "—"
    return f"{x:+.4g}" if signed else f"{x:.4g}"


_ICON = {BETTER: "🟢 better", WORSE: "🔴 worse", SAME: "⚪ no significant change", NA: "— not compared"}
_RULE_SHORT = {RULE_PER_SAMPLE: "paired (per prompt)", RULE_FD: "paired (FD features)",
               RULE_INDEPENDENT: "independent CIs", RULE_NONE: "none"}


def to_markdown(c: Comparison) -> str:
    """The pull-request comment for a comparison."""
    def who(rec: dict) -> str:
        g = rec.get("generator", {})
        args = g.get("args") or {}
        a = ", ".join(f"{k}={v}" for k, v in sorted(args.items())) if isinstance(args, dict) else str(args)
        ck = _checkpoint(rec)
        return (f"{_code(rec.get('run_id'))} — {_md(g.get('name'))}" + (f" ({_md(a)})" if a else "")
                + (f", checkpoint sha256 {_code(ck[:12])}" if ck else "") + f", seed {_md(rec.get('seed'))}")

    worse, better = c.regressions, [m for m in c.metrics if m.verdict == BETTER]
    head = (f"{len(worse)} regression{'s' if len(worse) != 1 else ''} "
            f"({', '.join(_code(m.key) for m in worse)})" if worse else "no regression")
    ref = c.head.get("reference") or {}
    lines = [
        "## BrainGenBench: checkpoint comparison",
        "",
        f"- **base**: {who(c.base)}",
        f"- **head**: {who(c.head)}",
        f"- suite {_code(c.head['suite'].get('name'))} v{_md(c.head['suite'].get('version'))}, reference "
        f"{_code(ref.get('name'))} ({_md(str(ref.get('content_hash'))[:12])})"
        + (" — **SYNTHETIC** data" if ref.get("synthetic") else "")
        + f", n = {_md(c.head['suite'].get('n_prompts'))} prompts, "
        + ("same prompts in both runs (paired)" if c.paired else "different prompts (unpaired)"),
        "",
        f"**Result:** {'🔴 ' if worse else '✅ '}{head}; {len(better)} better, "
        f"{sum(m.verdict == SAME for m in c.metrics)} without significant change.",
        "",
        "| metric | dir | base | head | Δ (head − base) | 95% CI of Δ | tolerance | rule | verdict |",
        "|---|:-:|--:|--:|--:|--:|--:|---|---|",
    ]
    for m in c.metrics:
        arrow = "" if m.higher_is_better is None else ("↑" if m.higher_is_better else "↓")
        ci = "—" if m.ci_low is None else f"[{_num(m.ci_low, True)}, {_num(m.ci_high, True)}]"
        verdict_text = _ICON[m.verdict] + (f" ({_md(m.note)})" if m.note else "")
        lines.append(f"| {_code(m.key)} | {arrow} | {_num(m.base)} | {_num(m.head)} | {_num(m.delta, True)} | "
                     f"{ci} | {m.tolerance:g} | {_RULE_SHORT[m.rule]} | {verdict_text} |")
    used = sorted({m.rule for m in c.metrics if m.verdict != NA})
    lines += ["", "<details><summary>How this is decided</summary>", "",
              f"- **Verdict**: {VERDICT_RULE}.",
              f"- **Tolerances**: {_md(c.tolerance_source)}."]
    lines += [f"- **{_RULE_SHORT[r]}** (`{r}`): {RULE_TEXT[r]}." for r in used]
    lines += [f"- Bootstrap: {c.n_boot} resamples, seed {c.seed}.", ""]
    if c.notes:
        lines += ["Notes:", ""] + [f"- {_md(n)}" for n in c.notes] + [""]
    lines += ["</details>", ""]
    return "\n".join(lines)


def to_json(c: Comparison) -> str:
    """The comparison as indented JSON."""
    return json.dumps(c.to_dict(), indent=2, ensure_ascii=False, default=str)
