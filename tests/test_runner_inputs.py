"""The runner as a user meets it: the folder adapter with the user's own prompts, bad inputs refused
before any metric runs (one ``error:`` line, exit 2), progress in a redirected log, suites with
``include:``/``task:``, the record schema, the executor's store and files that honour the umask."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import weakref
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bench.records import load_record
from cohorts.grid import GRIDS

GRID = GRIDS["3mm"]
SUITE = """
name: tiny-inputs
version: 1
description: a tiny suite for the input tests
reference: {name: phantom, args: {n_subjects: 48, seed: 3}}
grid: 3mm
n_prompts: 12
seed: 0
metrics:
  - {name: fid, args: {extractor: deepbet}}
  - {name: ssim}
  - {name: histogram}
"""
OWN_PROMPTS = ["T1-weighted brain MRI of a 71-year-old female.", "T2-weighted brain MRI of a 30-year-old male.",
               "FLAIR brain MRI of a 55-year-old female.", "PD-weighted brain MRI of a 45-year-old male.",
               "T1-weighted brain MRI of a 25-year-old male.", "T2-weighted brain MRI of an 80-year-old female.",
               "FLAIR brain MRI of a 62-year-old male.", "PD-weighted brain MRI of a 38-year-old female."]


def bench_cli(*args: str, log: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m bench ARGS`` in a subprocess (stderr to ``log`` when given)."""
    if log is None:
        return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True)
    with open(log, "w") as fh:
        return subprocess.run([sys.executable, "-m", "bench", *args], stdout=subprocess.PIPE, stderr=fh, text=True)


@pytest.fixture(scope="module")
def suite_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("suite") / "tiny-inputs.yaml"
    p.write_text(SUITE)
    return p


@pytest.fixture(scope="module")
def cohort(suite_file):
    from bench.runner import resolve_cohort
    from bench.suite import load_suite

    s = load_suite(suite_file)
    return resolve_cohort(s.reference, s.grid, s.reference_args, quiet=True)


def write_folder(folder: Path, cohort, prompts: list[str], bad: tuple[str, object] | None = None) -> Path:
    """NIfTI samples (held-out volumes of the matching modality) and a ``file,prompt`` manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    from cohorts.captions import parse_caption

    pool = sorted(cohort.split("test"), key=lambda s: s.subject_id)
    rows = ["file,prompt"]
    for i, text in enumerate(prompts):
        modality = parse_caption(text)["modality"]
        subject = next(s for s in pool if s.modality == modality)
        nib.save(nib.Nifti1Image(cohort.load_volume(subject), GRID.affine), str(folder / f"s{i}.nii.gz"))
        rows.append(f"s{i}.nii.gz,\"{text}\"")
    if bad is not None:
        name, data = bad
        if isinstance(data, bytes):
            (folder / name).write_bytes(data)
        else:
            nib.save(nib.Nifti1Image(np.asarray(data, np.float32), GRID.affine), str(folder / name))
        rows.append(f"{name},\"{prompts[0]}\"")
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
    return folder


# ----------------------------------------------------------------------------- the user's own prompts
def test_folder_scores_the_users_own_prompts_under_its_name(suite_file, cohort, tmp_path):
    folder = write_folder(tmp_path / "samples", cohort, OWN_PROMPTS)
    out = tmp_path / "runs"
    p = bench_cli("--quiet", "run", "--generator", "folder", "--generator-args", f"path={folder},name=mymodel",
                  "--suite", str(suite_file), "--out", str(out))
    assert p.returncode == 0, p.stderr
    assert "mymodel on suite tiny-inputs" in p.stdout
    (record,) = out.glob("*/record.json")
    assert record.parent.name.startswith("tiny-inputs-mymodel-")
    rec = load_record(record)
    assert rec["generator"]["display_name"] == "mymodel" and rec["prompt_source"] == "generator"
    assert [q["text"] for q in rec["prompts"]] == OWN_PROMPTS and rec["suite"]["n_prompts"] == 8
    # each prompt's reference is a real test subject of the requested modality and sex
    by_id = {s.subject_id: s for s in cohort.subjects}
    from cohorts.captions import parse_caption

    test = cohort.split("test")
    for q in rec["prompts"]:  # the same modality, then sex, whenever the test split has one
        want, ref = parse_caption(q["text"]), by_id[q["reference_subject_id"]]
        assert ref.split == "test"
        if any(s.modality == want["modality"] for s in test):
            assert ref.modality == want["modality"], (q, ref)
        if any(s.modality == want["modality"] and s.sex == want["sex"] for s in test):
            assert ref.sex == want["sex"], (q, ref)
    # realism against the matched real volumes; the paired metric is skipped, with the reason
    assert rec["metrics"]["fid-deepbet"]["value"] is not None and rec["metrics"]["histogram/w1"]["value"] is not None
    assert "ssim" not in rec["metrics"] and "prompt's own real volume" in rec["skipped_metrics"]["ssim"]
    assert rec["status"] == "complete"


def test_folder_with_the_suites_captions_is_scored_on_the_suite_prompts(suite_file, cohort, tmp_path):
    """A manifest of the suite's own captions (no subject_id column) keeps every metric, SSIM included."""
    from bench.prompts import select_prompts

    texts = [s.caption for s in select_prompts(cohort, 12, 0)]
    folder = tmp_path / "suite-samples"
    folder.mkdir()
    rows = ["file,prompt"]
    subjects = {s.caption: s for s in cohort.subjects}
    for i, t in enumerate(texts):
        nib.save(nib.Nifti1Image(cohort.load_volume(subjects[t]), GRID.affine), str(folder / f"s{i}.nii.gz"))
        rows.append(f"s{i}.nii.gz,\"{t}\"")
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
    from bench.runner import RunConfig, run

    rec = load_record(run(RunConfig(generator="folder", suite=suite_file, out=tmp_path / "runs", quiet=True,
                                    generator_args={"path": str(folder)})))
    assert rec["prompt_source"] == "suite" and rec["skipped_metrics"] == {}
    assert rec["metrics"]["ssim"]["value"] == pytest.approx(1.0)  # each sample is its caption's own volume


# ----------------------------------------------------------------------------- bad inputs
def _truncated_nifti(tmp_path: Path) -> bytes:
    path = tmp_path / "full.nii"
    nib.save(nib.Nifti1Image(np.ones(GRID.shape, np.float32), GRID.affine), str(path))
    data = path.read_bytes()
    return data[:len(data) // 2]


@pytest.mark.parametrize("kind, expect", [
    ("4d", "a 4-D image of shape (48, 64, 56, 2)"),
    ("2d", "a 2-D image of shape (48, 64)"),
    ("truncated", "truncated or corrupt"),
    ("nan", "NaN/inf voxels"),
    ("header", "not a readable NIfTI image"),
])
def test_bad_sample_file_is_one_error_line_before_any_metric(suite_file, cohort, tmp_path, kind, expect):
    nan = np.ones(GRID.shape, np.float32)
    nan[3, 4, 5] = np.nan
    bad = {"4d": ("bad.nii.gz", np.ones((*GRID.shape, 2))), "2d": ("bad.nii.gz", np.ones((48, 64))),
           "truncated": ("bad.nii", _truncated_nifti(tmp_path)), "nan": ("bad.nii.gz", nan),
           "header": ("bad.nii.gz", b"this is not a nifti file")}[kind]
    folder = write_folder(tmp_path / "samples", cohort, OWN_PROMPTS[:3], bad=bad)
    out = tmp_path / "runs"
    p = bench_cli("--quiet", "run", "--generator", "folder", "--generator-args", f"path={folder}",
                  "--suite", str(suite_file), "--out", str(out))
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in p.stderr, p.stderr
    assert bad[0] in lines[0] and expect in lines[0]
    assert not list(out.glob("*/metrics/*.json"))  # no metric ran


@pytest.mark.parametrize("limit", ["0", "-3"])
def test_limit_below_one_is_refused(suite_file, tmp_path, limit):
    p = bench_cli("--quiet", "run", "--generator", "template", "--suite", str(suite_file), "--out",
                  str(tmp_path / "runs"), "--limit", limit)
    assert p.returncode == 2 and p.stderr.strip() == f"error: --limit must be >= 1 (the number of prompts to use), got {limit}"
    assert not (tmp_path / "runs").exists()


def test_extractor_arg_typo_is_refused_before_any_work(suite_file, tmp_path):
    p = bench_cli("--quiet", "run", "--generator", "template", "--suite", str(suite_file), "--out",
                  str(tmp_path / "runs"), "--extractor-args", "batchsize=2")
    assert p.returncode == 2
    assert "--extractor-args ['batchsize'] are not accepted by any extractor this suite uses (deepbet)" in p.stderr
    assert "did you mean 'batch_size'" in p.stderr
    assert not (tmp_path / "runs").exists()  # refused before the run folder was made


def test_unknown_extractor_in_a_suite_is_refused_before_any_work(tmp_path):
    suite = tmp_path / "s.yaml"
    suite.write_text(SUITE.replace("extractor: deepbet", "extractor: deepbat"))
    p = bench_cli("--quiet", "run", "--generator", "template", "--suite", str(suite), "--out", str(tmp_path / "runs"))
    assert p.returncode == 2 and "unknown extractor 'deepbat'; did you mean 'deepbet'" in p.stderr
    assert not (tmp_path / "runs").exists()


# ----------------------------------------------------------------------------- progress in a log file
def test_redirected_log_has_progress_lines_and_no_carriage_returns(suite_file, tmp_path):
    log = tmp_path / "run.log"
    p = bench_cli("run", "--generator", "template", "--suite", str(suite_file), "--out", str(tmp_path / "runs"),
                  "--limit", "9", log=log)
    assert p.returncode == 0
    text = log.read_text()
    assert "\r" not in text
    assert "generate: 2/2 tasks (100%)" in text
    assert "deepbet features of generated: 2/2 tasks (100%)" in text
    assert "metrics: 3/3 metrics (100%)" in text
    assert len([ln for ln in text.splitlines() if "WARNING" in ln]) == len(
        {ln for ln in text.splitlines() if "WARNING" in ln})  # each warning once


# ----------------------------------------------------------------------------- suites
def test_full_suite_includes_quick_and_2mm_suites_ship():
    from bench.suite import load_suite

    quick, full = load_suite("quick"), load_suite("full")
    assert full.metrics == quick.metrics and full.headline == quick.headline and full.n_prompts == 100
    assert (full.name, quick.n_prompts, full.task) == ("full", 16, "text-to-volume")
    for name, n in (("quick-2mm", 16), ("full-2mm", 100)):
        s = load_suite(name)
        assert s.grid.name == "2mm" and s.n_prompts == n and s.metrics == quick.metrics


def test_suite_include_cycle_and_unknown_task_are_clear(tmp_path):
    from bench.suite import SuiteError, load_suite

    (tmp_path / "a.yaml").write_text("include: b.yaml\nname: a\n")
    (tmp_path / "b.yaml").write_text("include: a.yaml\nname: b\n")
    with pytest.raises(SuiteError, match="include cycle"):
        load_suite(tmp_path / "a.yaml")
    (tmp_path / "t.yaml").write_text("include: quick\ntask: text-to-volum\n")
    with pytest.raises(SuiteError, match="task 'text-to-volum' is not one this version runs; did you mean "
                                         "'text-to-volume'"):
        load_suite(tmp_path / "t.yaml")


# ----------------------------------------------------------------------------- record schema
def test_load_record_refuses_a_record_that_breaks_the_schema(tmp_path):
    from core.record import RecordError

    bad = tmp_path / "bad" / "record.json"
    bad.parent.mkdir()
    bad.write_text(json.dumps({"schema_version": 1, "run_id": "x", "created": "now", "status": "done",
                               "generator": {"name": "g", "args": {}, "info": {}}, "suite": {"name": "s", "version": 1},
                               "reference": {"name": "r", "content_hash": None}, "seed": 0, "metrics": {}}))
    with pytest.raises(RecordError, match=r"record.json: not a valid run record \(at status: 'done' is not one of"):
        load_record(bad)


# ----------------------------------------------------------------------------- executor store, umask
def test_executor_store_is_released_when_the_executor_closes():
    from bench.executors import LocalExecutor

    class Model:
        pass

    class Task:
        store: dict | None = None

        def bind_store(self, store):
            t = Task()
            t.store = store
            return t

        def __call__(self, item):
            return id(self.store.setdefault("model", Model()))

    ex = LocalExecutor(quiet=True)
    a, b = ex.map(Task(), [0, 1])
    assert a == b  # built once, reused by the second task
    ref = weakref.ref(ex.store["model"])
    ex.close()
    gc.collect()
    assert ex.store == {} and ref() is None


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_honour_the_umask(tmp_path, umask, mode):
    from core.io import atomic_write_json

    old = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "r.json", {"a": float("nan")})
    finally:
        os.umask(old)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == mode
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": None}  # strict JSON: NaN -> null


def test_each_message_is_printed_once():
    import io
    import logging
    import warnings

    from bench.console import setup_logging

    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        setup_logging(quiet=True, stream=stream)
        log = logging.getLogger("bgb_once_test")
        log.setLevel(logging.NOTSET)
        log.propagate = True
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            logging.captureWarnings(False)  # a CLI call earlier in this process may have routed them already
            logging.captureWarnings(True)  # inside the test's own warnings context
            for _ in range(3):
                log.warning("resampling %s", "s0.nii.gz")
                log.info("a note")  # below --quiet's level
                warnings.warn("a library warning", UserWarning, stacklevel=1)
            log.warning("resampling %s", "s1.nii.gz")
    finally:
        logging.captureWarnings(False)
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    lines = stream.getvalue().splitlines()
    assert sum("resampling s0.nii.gz" in ln for ln in lines) == 1 and sum("s1.nii.gz" in ln for ln in lines) == 1
    assert sum("UserWarning: a library warning" in ln for ln in lines) == 1
    assert not any("a note" in ln for ln in lines)
    stream = io.StringIO()  # not quiet: an info line repeated per shard is shown once too
    try:
        setup_logging(stream=stream)
        for _ in range(3):
            logging.getLogger("bgb_once_test").info("MS-SSIM at shape %s: 4 scales", (48, 64, 56))
        logging.getLogger("bgb_once_test").info("progress: %d/%d", 2, 13)
    finally:
        logging.captureWarnings(False)
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    lines = stream.getvalue().splitlines()
    assert sum("MS-SSIM at shape" in ln for ln in lines) == 1 and sum("progress: 2/13" in ln for ln in lines) == 1


def test_progress_is_log_lines_without_carriage_returns_when_not_a_terminal(caplog):
    import io
    import logging

    from core.progress import Progress

    stream = io.StringIO()  # not a terminal: no bar
    with caplog.at_level(logging.INFO, logger="braingenbench.progress"):
        with Progress("phantom 3mm", 3, unit="subject", every=0.0, stream=stream) as p:
            for _ in range(3):
                p.update()
        with Progress("quiet stage", 3, quiet=True, every=0.0, stream=stream) as q:
            q.update()
    assert stream.getvalue() == ""
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("phantom 3mm: 1/3 subjects (33%)") and "left" in lines[0]
    assert lines[-1].startswith("phantom 3mm: 3/3 subjects (100%)") and len(lines) == 3


def test_training_progress_resumes_counting_and_shows_the_loss_in_a_redirected_log(caplog):
    """A resumed training stage starts at its step; the time left counts only this run's steps."""
    import io
    import logging

    from core.progress import Progress

    with caplog.at_level(logging.INFO, logger="braingenbench.progress"):
        with Progress("diffusion", 100, unit="step", every=0.0, stream=io.StringIO(), initial=60) as p:
            p.set_postfix(loss="0.1234")
            p.update()
    line = caplog.records[-1].getMessage()
    assert line.startswith("diffusion: 61/100 steps (61%)") and line.endswith(", loss 0.1234"), line
