"""Report generation: speed of the report metrics and of the captioners on the report-quick volumes.

    pytest benchmarks/bench_reports.py -o python_files='bench_*.py' --benchmark-only

Times, on the 400-subject phantom at 3 mm (the ``report-quick`` cohort): ``report_clinical`` and the
text statistics (BLEU-1/4, chrF, ROUGE-L) with their 1000-resample bootstraps for 100 reports, and
``measure-and-describe`` describing 8 volumes (its predictors fitted once, outside the timing).
Measured 2026-12-02 on 2 cores: ``report_clinical`` 0.28 s and the text statistics with bootstraps
0.27 s for 100 reports; ``measure-and-describe`` 39 ms for 8 volumes (5 ms per volume); the whole
``report-quick`` run 11 s with the cohort built (describe 0.7 s, metrics 9.5 s, most of it loading
MiniLM for the embedding cosine).
"""

from __future__ import annotations

import numpy as np
import pytest

from cohorts.grid import GRIDS

GRID = GRIDS["3mm"]


@pytest.fixture(scope="module")
def data(bench_home):
    from bench.report import report_set
    from cohorts.captions import parse_caption
    from cohorts.phantom import PhantomCohort

    cohort = PhantomCohort.get("3mm", n_subjects=400, seed=0, quiet=True)
    ps = report_set(cohort, 100, 0, "train")
    captions = [s.caption for s in ps.reference]
    others = [s.caption for s in ps.floor]
    return {"cohort": cohort, "captions": captions, "others": others,
            "truth": [parse_caption(c) for c in captions], "stated": [parse_caption(c) for c in others],
            "train": [s.attributes() for s in cohort.split("train")], "subjects": ps.reference}


def test_report_clinical_100_reports(benchmark, data):
    from metrics.reports import clinical_results

    res = benchmark(clinical_results, data["stated"], data["truth"], data["stated"], data["train"], n_boot=1000, seed=0)
    assert 0.0 < res["accuracy"].value < 0.6  # other subjects' captions: the floor


def test_text_statistics_and_bootstrap_100_reports(benchmark, data):
    from metrics.functional.bootstrap import bootstrap_ci
    from metrics.functional.text import bleu_stats, chrf_stats, corpus_from_stats, rouge_l

    def run():
        out = {}
        for name, st, metric, order in (("bleu1", bleu_stats(data["others"], data["captions"], 1), "bleu", 1),
                                        ("bleu4", bleu_stats(data["others"], data["captions"], 4), "bleu", 4),
                                        ("chrf", chrf_stats(data["others"], data["captions"]), "chrf", 0)):
            out[name] = bootstrap_ci(lambda s, st=st, m=metric, o=order: corpus_from_stats(st[s], m, o), len(st),
                                     n_boot=1000, seed=0)
        out["rouge_l"] = rouge_l(data["others"], data["captions"]).mean()
        return out

    res = benchmark(run)
    assert 50 < res["bleu1"].low < res["bleu1"].high < 100


def test_measure_and_describe_8_volumes(benchmark, data):
    from captioners.base import CaptionerContext
    from captioners.measure import MeasureAndDescribe

    cap = MeasureAndDescribe(CaptionerContext(cohort=data["cohort"], grid=GRID))
    vols = data["cohort"].load_volumes(data["subjects"][:8])
    reports = benchmark(cap.describe, vols, seed=0)
    assert len(reports) == 8 and all(r.startswith("Synthetic phantom.") for r in reports)
    assert np.mean([("brain MRI" in r) for r in reports]) == 1.0
