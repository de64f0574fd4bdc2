"""Report metrics: clinical accuracy and text similarity of reports, and round-trip conformance.

``report_clinical`` (task ``report``, axis ``clinical``): each statement of the volume's true caption
checked in the report (:mod:`metrics.functional.reports`; a number is right within a quarter of the
attribute's interquartile range over the training subjects, ``tolerance=``): ``accuracy`` (correct / true statements),
``hallucination`` (wrong / stated), ``missing``, ``modality_accuracy``, ``sex_accuracy``, ``age_mae``,
``band_agreement`` (the percentile band — below the 25th, 25th-75th, above the 75th — of every
structure), ``<structure>_mae``, ``lesion_count_mae`` and ``lesion_volume_mae``.

``report_text`` (axis ``text``): corpus BLEU-1 and BLEU-4, chrF (``sacrebleu``), ROUGE-L F
(``rouge-score``) and the cosine of MiniLM sentence embeddings, of the report against the true
caption. Each sub-result carries ``clinical_spearman``: the rank correlation, over the reports and
the floor's, of the text score with the clinical accuracy of the same report — how far the text
metric can be trusted as a judge of medical content.

Every result has a paired bootstrap CI over volumes and a **floor**: the same score of the true
caption of *another subject of the same modality* (the runner picks it, seeded) — a report
that is fluent, well-formed and about the wrong brain. The ceiling is the volume's own caption
(accuracy 1, no hallucination, BLEU 100).

``roundtrip`` (task ``text-to-volume``, axis ``conformance``): text -> volume -> report ->
attributes. A captioner (default ``measure-and-describe``) describes each generated volume; its
report is scored like ``report_clinical`` against the **prompt**. The floor is the same round trip
through the caption-matched real volume: what a perfect generator reaches with this captioner.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr

from metrics.base import EvalSets, Input, Metric, MetricResult
from metrics.conformance import RESAMPLING, score_mean
from metrics.functional.bootstrap import BC, bootstrap_ci
from metrics.functional.reports import (IQR_FRACTION, band_agreement, band_limits, errors, flat_values, report_scores,
                                        statement_table, statements, tolerances)

__all__ = ["ReportClinical", "ReportText", "RoundTrip", "clinical_results", "per_report_accuracy"]

def _rule(fraction: float) -> str:
    return (f"{fraction:g} x the training subjects' interquartile range of the attribute "
            "(lesion count >= 1, lesion volume >= 0.5 mL)")


def _fraction(tolerance: float) -> float:
    t = float(tolerance)
    if not 0 < t <= 2:
        raise ValueError(f"tolerance is a fraction of the interquartile range in (0, 2], got {tolerance}")
    return t


def _need(sets: EvalSets, who: str) -> list[dict]:
    if sets.train_attributes is None:
        raise ValueError(f"{who} needs sets.train_attributes (the training subjects' attributes give the tolerances "
                         "and percentile bands); the metric declares Input.TRAIN")
    return sets.train_attributes


def per_report_accuracy(stated: list[dict], truth: list[dict], train_attributes: list[dict], *,
                        fraction: float = IQR_FRACTION) -> np.ndarray:
    """The clinical accuracy (correct / true statements) of each report."""
    tol = tolerances(train_attributes, fraction=fraction)
    return np.array([report_scores(statements(s, t, tol))["accuracy"] for s, t in zip(stated, truth)])


def clinical_results(stated: list[dict], truth: list[dict], floor_stated: list[dict], train_attributes: list[dict],
                     *, n_boot: int, seed: int, fraction: float = IQR_FRACTION,
                     details: dict | None = None) -> dict[str, MetricResult]:
    """The ``report_clinical`` sub-results of ``stated`` (parsed reports) against ``truth``, with
    ``floor_stated`` scored the same way as the floor; a number is right within ``fraction`` of the
    attribute's interquartile range over ``train_attributes``."""
    if not (len(stated) == len(truth) == len(floor_stated)):
        raise ValueError(f"{len(stated)} reports, {len(truth)} truths and {len(floor_stated)} floor reports; "
                         "they must be paired")
    tol, limits = tolerances(train_attributes, fraction=fraction), band_limits(train_attributes)
    common = {"tolerances": tol, "tolerance_rule": _rule(fraction), **(details or {})}
    best = lambda hib: {"ceiling": 1.0 if hib else 0.0}  # noqa: E731 - the value of a perfect report
    out_g = [statements(s, t, tol) for s, t in zip(stated, truth)]
    out_f = [statements(s, t, tol) for s, t in zip(floor_stated, truth)]
    sg, sf = [report_scores(o) for o in out_g], [report_scores(o) for o in out_f]
    res: dict[str, MetricResult] = {}
    for key, hib in (("accuracy", True), ("hallucination", False), ("missing", False)):
        g, f = np.array([s[key] for s in sg]), np.array([s[key] for s in sf])
        ok = np.isfinite(g) & np.isfinite(f)
        if ok.sum():
            extra = {"statements": [statement_table(s, t, tol) for s, t in zip(stated, truth)],
                     "floor_statements": out_f} if key == "accuracy" else {}
            res[key] = score_mean(g[ok], f[ok], higher_is_better=hib, n_boot=n_boot, seed=seed,
                                  details={**common, **best(hib), **extra})
    for attr in ("modality", "sex"):
        idx = [i for i, t in enumerate(truth) if flat_values(t).get(attr)]
        if idx:
            hit = lambda o: np.array([o[i][attr] == "correct" for i in idx], float)  # noqa: E731
            res[f"{attr}_accuracy"] = score_mean(hit(out_g), hit(out_f), higher_is_better=True, n_boot=n_boot,
                                                 seed=seed, details={"unstated_counts_as": "wrong", **best(True),
                                                                     **common})
    bg = np.array([band_agreement(s, t, limits) for s, t in zip(stated, truth)])
    bf = np.array([band_agreement(s, t, limits) for s, t in zip(floor_stated, truth)])
    ok = np.isfinite(bg) & np.isfinite(bf)
    if ok.sum():
        res["band_agreement"] = score_mean(bg[ok], bf[ok], higher_is_better=True, n_boot=n_boot, seed=seed,
                                           details={"bands": "below the 25th / 25th-75th / above the 75th percentile "
                                                             "of the training subjects", "chance": 1 / 3,
                                                    "unstated_counts_as": "disagreement", **best(True), **common})
    keys = sorted({k for t in truth for k in flat_values(t)} - {"modality", "sex"})
    for key in keys:
        eg, ef = errors(stated, truth, key), errors(floor_stated, truth, key)
        ok = np.isfinite(eg) & np.isfinite(ef)
        if ok.sum() >= 3:
            res[f"{key}_mae"] = score_mean(eg[ok], ef[ok], higher_is_better=False, n_boot=n_boot, seed=seed,
                                           details={"unit": "years" if key == "age" else (
                                               "lesions" if key == "lesion_count" else "mL"),
                                               "n_stated": int(np.isfinite(eg).sum()), "n_true": int(
                                                   sum(key in flat_values(t) for t in truth)), **best(False), **common})
    return res


class ReportClinical(Metric):
    """Report statements checked against the volume's true caption (see the module docstring).

    Args:
        tolerance: a number is right within this fraction of the attribute's interquartile range over
            the training subjects.
        n_boot: bootstrap resamples for the CIs.
    """

    axis = "clinical"
    name = "report_clinical"
    higher_is_better = True
    inputs = frozenset({Input.REPORTS, Input.TRAIN})
    description = "clinical accuracy of reports: statements correct / wrong (hallucinated) / missing"

    def __init__(self, *, tolerance: float = IQR_FRACTION, n_boot: int = 1000):
        self.tolerance, self.n_boot = _fraction(tolerance), int(n_boot)

    def config(self) -> dict:
        return {"n_boot": self.n_boot, "tolerance": _rule(self.tolerance), "ci": f"{BC}; volumes resampled (paired), 95%",
                "floor": "the true caption of another subject of the same modality", "ceiling": "the volume's own caption (1.0)"}

    def compute(self, sets: EvalSets, *, seed: int) -> dict[str, MetricResult]:
        if sets.report_attributes is None or sets.floor_attributes is None:
            raise ValueError("report_clinical needs a report run's sets.report_attributes and sets.floor_attributes "
                             "(Input.REPORTS)")
        return clinical_results(sets.report_attributes, sets.attributes, sets.floor_attributes,
                                _need(sets, self.name), n_boot=self.n_boot, seed=seed, fraction=self.tolerance)


class ReportText(Metric):
    """Text similarity of each report to the volume's true caption (see the module docstring).

    Args:
        embedding: also score the cosine of sentence embeddings (``sets.embed_text``, MiniLM).
        tolerance: the clinical accuracy's tolerance (for ``clinical_spearman``), as in ``report_clinical``.
        n_boot: bootstrap resamples for the CIs.
    """

    axis = "text"
    name = "report_text"
    higher_is_better = True
    inputs = frozenset({Input.REPORTS, Input.TRAIN, Input.TEXT_ENCODER})
    description = "text similarity of reports to the true caption: BLEU-1/4, chrF, ROUGE-L, embedding cosine"

    def __init__(self, *, embedding: bool = True, tolerance: float = IQR_FRACTION, n_boot: int = 1000):
        self.embedding, self.tolerance, self.n_boot = bool(embedding), _fraction(tolerance), int(n_boot)

    def config(self) -> dict:
        import rouge_score  # noqa: F401 - its version is recorded below
        import sacrebleu

        from importlib.metadata import version

        return {"n_boot": self.n_boot, "bleu": f"sacrebleu {sacrebleu.__version__}, corpus BLEU, tokenize 13a, "
                                                  "case-sensitive, no smoothing", "chrf": "sacrebleu CHRF defaults (char 6, beta 2)",
                "rouge_l": f"rouge-score {version('rouge-score')} F-measure, no stemming", "embedding": self.embedding,
                "ci": f"{BC}; volumes resampled (paired), 95%", "floor": "the true caption of another subject of the same modality"}

    def _corpus(self, name: str, stats_g: np.ndarray, stats_f: np.ndarray, metric: str, order: int,
                seed: int, details: dict) -> MetricResult:
        from metrics.functional.text import corpus_from_stats

        stat = lambda st: (lambda s: corpus_from_stats(st[s], metric, order))  # noqa: E731
        value, floor = corpus_from_stats(stats_g, metric, order), corpus_from_stats(stats_f, metric, order)
        n = len(stats_g)
        vci = bootstrap_ci(stat(stats_g), n, n_boot=self.n_boot, seed=seed, estimate=value)
        fci = bootstrap_ci(stat(stats_f), n, n_boot=self.n_boot, seed=seed, estimate=floor)
        return MetricResult(value=value, higher_is_better=True, n=n, ci_low=vci.low, ci_high=vci.high, floor=floor,
                            floor_ci=list(fci), details={"scale": "0-100", "ceiling": 100.0,
                                                         **vci.details(RESAMPLING), **details})

    def compute(self, sets: EvalSets, *, seed: int) -> dict[str, MetricResult]:
        from metrics.functional.text import bleu_stats, chrf_stats, corpus_from_stats, cosine, rouge_l

        if sets.reports is None or sets.captions is None or sets.floor_captions is None:
            raise ValueError("report_text needs a report run's sets.reports, sets.captions and sets.floor_captions")
        hyp, ref, flo = sets.reports, sets.captions, sets.floor_captions
        train = _need(sets, self.name)
        acc = np.concatenate([per_report_accuracy(sets.report_attributes, sets.attributes, train, fraction=self.tolerance),
                              per_report_accuracy(sets.floor_attributes, sets.attributes, train, fraction=self.tolerance)])

        def agreement(per_report: np.ndarray) -> dict:  # per-report text score vs clinical accuracy
            ok = np.isfinite(per_report) & np.isfinite(acc)
            rho = spearmanr(per_report[ok], acc[ok]).statistic if ok.sum() >= 3 and np.ptp(per_report[ok]) > 0 else np.nan
            return {"clinical_spearman": None if not np.isfinite(rho) else float(rho),
                    "clinical_spearman_over": "reports and floor reports, per-report score vs clinical accuracy"}

        res: dict[str, MetricResult] = {}
        for name, metric, order in (("bleu1", "bleu", 1), ("bleu4", "bleu", 4), ("chrf", "chrf", 0)):
            sg = bleu_stats(hyp, ref, order) if metric == "bleu" else chrf_stats(hyp, ref)
            sf = bleu_stats(flo, ref, order) if metric == "bleu" else chrf_stats(flo, ref)
            per = np.array([corpus_from_stats(r[None], metric, order) for r in np.concatenate([sg, sf])])
            res[name] = self._corpus(name, sg, sf, metric, order, seed, agreement(per))
        rg, rf = rouge_l(hyp, ref), rouge_l(flo, ref)
        res["rouge_l"] = score_mean(rg, rf, higher_is_better=True, n_boot=self.n_boot, seed=seed,
                                    details={"ceiling": 1.0, **agreement(np.concatenate([rg, rf]))})
        if self.embedding and sets.embed_text is not None:
            e_ref = sets.embed_text(list(ref))
            cg, cf = cosine(sets.embed_text(list(hyp)), e_ref), cosine(sets.embed_text(list(flo)), e_ref)
            res["embedding_cosine"] = score_mean(cg, cf, higher_is_better=True, n_boot=self.n_boot, seed=seed,
                                                 details={"ceiling": 1.0, **agreement(np.concatenate([cg, cf]))})
        return res


class RoundTrip(Metric):
    """Round-trip conformance: the captioner's report of each generated volume scored against its prompt.

    Args:
        captioner: registered captioner that describes the volumes (``ls captioners``).
        tolerance: as in ``report_clinical``.
        n_boot: bootstrap resamples for the CIs.
    """

    axis = "conformance"
    name = "roundtrip"
    higher_is_better = True
    inputs = frozenset({Input.DESCRIBE, Input.TRAIN, Input.PAIRED_REFERENCE})
    description = "round trip text -> volume -> report -> attributes, against the prompt"

    def __init__(self, *, captioner: str = "measure-and-describe", tolerance: float = IQR_FRACTION, n_boot: int = 1000):
        self.captioner, self.tolerance, self.n_boot = str(captioner), _fraction(tolerance), int(n_boot)

    def captioners(self) -> list[str]:
        return [self.captioner]

    def config(self) -> dict:
        return {"captioner": self.captioner, "n_boot": self.n_boot, "tolerance": _rule(self.tolerance),
                "floor": "the same round trip through the caption-matched real volume (a perfect generator's value)",
                "ci": f"{BC}; prompts resampled (paired), 95%"}

    def compute(self, sets: EvalSets, *, seed: int) -> dict[str, MetricResult]:
        if sets.describe is None:
            raise ValueError("roundtrip needs sets.describe (the runner's captioners; Input.DESCRIBE)")
        texts, gen = sets.describe(self.captioner, "generated")
        _, real = sets.describe(self.captioner, "reference")
        out = clinical_results(gen, sets.attributes, real, _need(sets, self.name), n_boot=self.n_boot, seed=seed,
                               fraction=self.tolerance, details={"captioner": self.captioner})
        if "accuracy" in out:
            out["accuracy"].details["reports"] = list(texts)
        return out
