"""End to end: suite -> cohort -> generator -> features -> metrics -> record, on a small phantom."""

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bench.records import load_record
from bench.prompts import match_floor, select_prompts
from bench.runner import RunConfig, run

SUITE = """
name: tiny
version: 1
description: a tiny suite for tests
reference: {{name: phantom, args: {{n_subjects: {n}, seed: 3}}}}
grid: 3mm
n_prompts: 12
seed: 0
metrics:
  - {{name: fid, args: {{extractor: {extractor}}}}}
  - {{name: ssim}}
"""


@pytest.fixture(scope="module")
def suite_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("suite") / "tiny.yaml"
    p.write_text(SUITE.format(n=48, extractor="deepbet"))
    return p


@pytest.fixture(scope="module")
def runs(tmp_path_factory, suite_file):
    out = tmp_path_factory.mktemp("runs")
    recs = {g: run(RunConfig(generator=g, suite=suite_file, out=out, quiet=True)) for g in ("retrieval", "template")}
    return out, recs


def test_records_carry_floor_ci_and_provenance(runs):
    _, recs = runs
    for g, path in recs.items():
        rec = load_record(path)
        assert rec["status"] == "complete" and rec["generator"]["name"] == g
        assert rec["reference"]["synthetic"] is True and len(rec["reference"]["content_hash"]) == 64
        assert rec["extractors"]["deepbet"]["weights_sha256"]
        assert set(rec["timings"]) >= {"cohort", "generate", "metrics", "total"}
        for key in ("fid-deepbet", "ssim"):
            m = rec["metrics"][key]
            assert m["value"] is not None and m["floor"] is not None and m["n"] == 12
            assert m["ci_low"] <= m["value"] <= m["ci_high"] or np.isclose(m["ci_low"], m["value"])
        assert len(rec["prompts"]) == 12


def test_retrieval_beats_template(runs):
    _, recs = runs
    r, t = (load_record(recs[g])["metrics"] for g in ("retrieval", "template"))
    assert r["fid-deepbet"]["value"] < t["fid-deepbet"]["value"]
    # the floor does not depend on the generator
    assert r["fid-deepbet"]["floor"] == t["fid-deepbet"]["floor"]
    assert r["ssim"]["floor"] == t["ssim"]["floor"]


def test_same_command_twice_same_numbers(runs, suite_file, tmp_path):
    _, recs = runs
    again = run(RunConfig(generator="template", suite=suite_file, out=tmp_path, quiet=True, resume=False))
    a, b = load_record(recs["template"])["metrics"], load_record(again)["metrics"]
    for k in a:
        assert a[k]["value"] == b[k]["value"] and a[k]["ci_low"] == b[k]["ci_low"]


def test_resume_after_partial_loss(runs, suite_file):
    out, recs = runs
    run_dir = recs["template"].parent
    before = load_record(recs["template"])["metrics"]
    kept = run_dir / "samples" / "shard_0000.npz"
    mtime = kept.stat().st_mtime_ns
    (run_dir / "samples" / "shard_0001.npz").unlink()
    (run_dir / "metrics" / "ssim.json").unlink()
    (run_dir / "record.json").unlink()
    path = run(RunConfig(generator="template", suite=suite_file, out=out, quiet=True))
    assert path == recs["template"]
    assert kept.stat().st_mtime_ns == mtime  # finished shard reused, not regenerated
    after = load_record(path)["metrics"]
    assert {k: v["value"] for k, v in after.items()} == {k: v["value"] for k, v in before.items()}


def test_folder_adapter_reproduces_retrieval(runs, suite_file, tmp_path):
    out, recs = runs
    rec = load_record(recs["retrieval"])
    run_dir = recs["retrieval"].parent
    vols = np.concatenate([np.load(p)["volumes"] for p in sorted((run_dir / "samples").glob("shard_*.npz"))])
    from cohorts.grid import GRIDS

    rows = ["file,subject_id"]
    for i, (p, v) in enumerate(zip(rec["prompts"], vols)):
        nib.save(nib.Nifti1Image(v[0], GRIDS["3mm"].affine), str(tmp_path / f"s{i}.nii.gz"))
        rows.append(f"s{i}.nii.gz,{p['subject_id']}")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    path = run(RunConfig(generator="folder", suite=suite_file, out=out, quiet=True,
                         generator_args={"path": str(tmp_path)}))
    got = load_record(path)["metrics"]
    for k, m in rec["metrics"].items():
        assert got[k]["value"] == pytest.approx(m["value"], rel=1e-9)


def test_replaced_sample_bytes_start_a_new_run(runs, suite_file, tmp_path):
    """Resume is keyed on content: the same command over a folder whose files changed (same paths)
    makes a new run with the new numbers instead of returning the old record."""
    out, recs = runs
    rec = load_record(recs["template"])
    vols = np.concatenate([np.load(p)["volumes"] for p in sorted((recs["template"].parent / "samples").glob("shard_*.npz"))])
    from cohorts.grid import GRIDS

    rows = ["file,subject_id"]
    for i, (p, v) in enumerate(zip(rec["prompts"], vols)):
        nib.save(nib.Nifti1Image(v[0], GRIDS["3mm"].affine), str(tmp_path / f"s{i}.nii.gz"))
        rows.append(f"s{i}.nii.gz,{p['subject_id']}")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    cfg = RunConfig(generator="folder", suite=suite_file, out=out, quiet=True, generator_args={"path": str(tmp_path)})
    first = run(cfg)
    assert run(cfg) == first  # unchanged content: the same run is resumed
    blurred = vols[0, 0] * 0.5  # overwrite one sample at the same path
    nib.save(nib.Nifti1Image(blurred, GRIDS["3mm"].affine), str(tmp_path / "s0.nii.gz"))
    second = run(cfg)
    assert second.parent != first.parent
    a, b = load_record(first), load_record(second)
    assert a["generator"]["info"]["files_sha256"] != b["generator"]["info"]["files_sha256"]
    assert a["metrics"]["ssim"]["value"] != b["metrics"]["ssim"]["value"]


def test_folder_adapter_missing_manifest_is_clear(suite_file, tmp_path):
    p = subprocess.run([sys.executable, "-m", "bench", "--quiet", "run", "--generator", "folder", "--suite",
                        str(suite_file), "--out", str(tmp_path), "--generator-args", f"path={tmp_path}"],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "manifest.csv: manifest not found" in p.stderr


def test_cli_prints_table(runs, suite_file):
    out, _ = runs
    p = subprocess.run([sys.executable, "-m", "bench", "--quiet", "run", "--generator", "template", "--suite",
                        str(suite_file), "--out", str(out)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "fid-deepbet" in p.stdout and "real-vs-real" in p.stdout and "record:" in p.stdout
    assert "SYNTHETIC" in p.stdout


def test_floor_matching_prefers_modality_sex_age(runs):
    from cohorts.phantom import PhantomCohort

    cohort = PhantomCohort.get("3mm", n_subjects=48, seed=3, quiet=True)
    refs = select_prompts(cohort, 8, 0)
    floor = match_floor(refs, cohort.split("train"), 0)
    assert len({s.subject_id for s in floor}) == len(floor)
    assert not {s.subject_id for s in floor} & {s.subject_id for s in refs}
    assert sum(f.modality == r.modality for f, r in zip(floor, refs)) >= 6


def test_cli_explain_writes_attention_maps(suite_file, tmp_path):
    p = subprocess.run([sys.executable, "-m", "bench", "--quiet", "explain", "--generator", "ldm3d", "--suite",
                        str(suite_file), "--prompt", "FLAIR brain MRI of a 70-year-old man with large lateral "
                        "ventricles.", "--out", str(tmp_path), "--generator-args", "steps=2"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    index = json.loads((tmp_path / "index.json").read_text())
    assert (tmp_path / "volume.nii.gz").exists() and len(list((tmp_path / "maps").glob("*.png"))) > 5
    assert index


def test_cli_explain_refuses_generator_without_maps(suite_file, tmp_path):
    p = subprocess.run([sys.executable, "-m", "bench", "--quiet", "explain", "--generator", "template", "--suite",
                        str(suite_file), "--prompt", "T1", "--out", str(tmp_path)], capture_output=True, text=True)
    assert p.returncode == 2 and "does not expose attention maps" in p.stderr


class _AlwaysFails:
    """A metric that raises (a partial run's stand-in)."""

    name = "always_fails"
    higher_is_better = False
    axis = "realism"

    def compute(self, sets, *, seed):
        raise RuntimeError("this metric always fails")

    def config(self):
        return {}

    def extractors(self):
        return []

    def axis_of(self, sub):
        return self.axis


def test_failed_metric_makes_a_partial_record_and_strict_exits_1(tmp_path, capsys):
    from bench import registry
    from bench.cli import main

    if "always_fails" not in registry.metrics:
        registry.metrics.register("always_fails", _AlwaysFails, description="raises (tests)")
    suite = tmp_path / "partial.yaml"
    suite.write_text(SUITE.format(n=48, extractor="deepbet").replace("name: tiny", "name: partial")
                     .replace("  - {name: ssim}", "  - {name: ssim}\n  - {name: always_fails}"))
    args = ["--quiet", "run", "--generator", "template", "--suite", str(suite), "--out", str(tmp_path / "runs"),
            "--limit", "8"]
    assert main(args) == 0  # without --strict the run succeeds and says what failed
    out = capsys.readouterr()
    assert "failed metrics" in out.out and "always_fails" in out.out
    rec = load_record(next((tmp_path / "runs").glob("*/record.json")))
    assert rec["status"] == "partial" and rec["failed_metrics"] == ["always_fails"]
    assert rec["metrics"]["ssim"]["value"] is not None
    assert main(args + ["--strict"]) == 1
    assert "error: 1 metric(s) failed: always_fails" in capsys.readouterr().err
