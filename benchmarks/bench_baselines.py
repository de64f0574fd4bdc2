"""Baselines and the conformance / through-plane metrics: speed, and the issue-5 acceptance figures.

    pytest benchmarks/bench_baselines.py -o python_files='bench_*.py' --benchmark-only
    python benchmarks/bench_baselines.py [--generators retrieval,template,pca,ldm3d,ldm3d-uncond,slice2d]
                                         [--suite quick] [--out runs/baselines]

The pytest part times, on the 400-subject phantom at 3 mm: fitting the conformance predictors on the
260 training volumes and scoring 16 volumes, the through-plane statistic, fitting ``pca`` and
generating with it, and one ``slice2d`` volume (when the checkpoint is present).

The script part runs the suite for each generator and prints the conformance and through-plane
results next to their real-data ceilings/floors (the README figures).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import pytest

from cohorts.grid import GRIDS

GRID = GRIDS["3mm"]


def conformance_extra(cohort) -> dict:
    """The ``EvalSets`` fields the conformance metric reads, built from a cohort."""
    from cohorts.atlas import atlas_on_grid

    return {"atlas": atlas_on_grid(cohort.grid), "train_attributes": [s.attributes() for s in cohort.split("train")],
            "cohort_hash": cohort.content_hash}


# ------------------------------------------------------------------------------------------ pytest
@pytest.fixture(scope="module")
def phantom():
    from cohorts.phantom import PhantomCohort

    cohort = PhantomCohort.get("3mm", n_subjects=400, seed=0, quiet=True)
    train = cohort.split("train")
    test = sorted(cohort.split("test"), key=lambda s: s.subject_id)[:16]
    return cohort, cohort.load_volumes(train), test, cohort.load_volumes(test)


def test_conformance_fit_and_score(benchmark, phantom, tmp_path, monkeypatch):
    from cohorts.captions import parse_caption
    from metrics.base import EvalSets
    from metrics.conformance import Conformance

    cohort, train_vols, test, test_vols = phantom
    monkeypatch.setenv("BRAINGENBENCH_HOME", str(tmp_path))  # cold predictor cache
    sets = EvalSets(generated=test_vols, reference=test_vols, floor=test_vols, brain_mask=cohort.brain_mask(),
                    features=lambda e, s: None, train=train_vols, attributes=[parse_caption(s.caption) for s in test],
                    **conformance_extra(cohort))
    res = benchmark.pedantic(lambda: Conformance(cache=False).compute(sets, seed=0), rounds=1, iterations=1)
    benchmark.extra_info.update({k: round(r.floor, 3) for k, r in res.items()})


def test_through_plane(benchmark, phantom):
    from metrics.consistency import through_plane_statistic

    cohort, _, _, vols = phantom
    benchmark.pedantic(lambda: through_plane_statistic(vols, cohort.brain_mask()), rounds=1, iterations=1)


def test_pca_fit_and_generate(benchmark, phantom):
    from cohorts.captions import parse_caption
    from generators.base import GeneratorContext, Prompt
    from generators.pca import PCAGenerator

    cohort, _, test, _ = phantom
    prompts = [Prompt(s.caption, parse_caption(s.caption)) for s in test]

    def go():
        return PCAGenerator(GeneratorContext(cohort=cohort, grid=GRID, quiet=True)).generate(prompts, seed=0)

    benchmark.pedantic(go, rounds=1, iterations=1)


def test_slice2d_one_volume(benchmark, phantom):
    from generators.slice2d.model import SHIPPED

    if not SHIPPED.exists():
        pytest.skip(f"{SHIPPED} not trained yet (python -m generators.slice2d.train ...)")
    from cohorts.captions import parse_caption
    from generators.base import GeneratorContext, Prompt
    from generators.slice2d import Slice2dGenerator

    cohort, _, test, _ = phantom
    gen = Slice2dGenerator(GeneratorContext(cohort=cohort, grid=GRID, quiet=True))
    p = [Prompt(test[0].caption, parse_caption(test[0].caption))]
    benchmark.pedantic(lambda: gen.generate(p, seed=0), rounds=1, iterations=1)


# ------------------------------------------------------------------------------------------ script
def summarise(rec: dict) -> dict[str, tuple]:
    out = {}
    for key, m in rec["metrics"].items():
        if key.startswith(("conformance/", "through_plane")):
            out[key] = (m["value"], m["ci_low"], m["ci_high"], m["floor"], (m.get("details") or {}).get("chance"))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--generators", default="retrieval,template,pca,ldm3d,ldm3d-uncond,slice2d")
    ap.add_argument("--suite", default="quick")
    ap.add_argument("--out", default="runs/baselines")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from bench.records import load_record
    from bench.runner import RunConfig, run

    rows = {}
    for g in args.generators.split(","):
        t0 = time.perf_counter()
        rec = load_record(run(RunConfig(generator=g, suite=args.suite, out=Path(args.out), quiet=True)))
        rows[g] = summarise(rec)
        logging.info("%s done in %.0f s (generate %.0f s)", g, time.perf_counter() - t0, rec["timings"]["generate"])
    keys = sorted({k for r in rows.values() for k in r})
    print("| metric | " + " | ".join(rows) + " | real (floor) | chance |")
    print("|---" * (len(rows) + 3) + "|")
    for k in keys:
        cells, floor, chance = [], None, None
        for g in rows:
            v = rows[g].get(k)
            if v is None or v[0] is None:
                cells.append("–")
                continue
            cells.append(f"{v[0]:.3g} [{v[1]:.3g}, {v[2]:.3g}]" if v[1] is not None else f"{v[0]:.3g}")
            floor, chance = v[3], v[4]
        fl = f"{floor:.3g}" if isinstance(floor, (int, float)) else "–"
        ch = f"{chance:.3g}" if isinstance(chance, (int, float)) else "–"
        print(f"| {k} | " + " | ".join(cells) + f" | {fl} | {ch} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
