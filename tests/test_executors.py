"""Executors: retries, resume after an interruption, and the Ray executor (a local cluster started
by the test) giving the same record as the local one, also when a worker is killed mid-run."""

import os
from pathlib import Path

import numpy as np
import pytest

from bench import registry
from bench.executors import LocalExecutor, TaskFailed, make_executor
from bench.records import load_record
from bench.runner import RunConfig, run

SUITE = """
name: tiny-exec
version: 1
description: executor tests
reference: {name: phantom, args: {n_subjects: 48, seed: 3}}
grid: 3mm
n_prompts: 12
seed: 0
metrics:
  - {name: fid, args: {extractor: deepbet}}
  - {name: ssim}
  - {name: histogram}
  - {name: through_plane}
  - {name: ms_ssim_diversity}
"""

if "faulty" not in registry.generators:
    registry.generators.register("faulty", "tests._faulty:FaultyGenerator", description="fails once (tests)")


@pytest.fixture(scope="module")
def suite_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("suite") / "tiny-exec.yaml"
    p.write_text(SUITE)
    return p


def _values(path) -> dict:
    rec = load_record(path)
    return {k: (m["value"], m["ci_low"], m["ci_high"], m["floor"]) for k, m in rec["metrics"].items()}


def _calls(marker: Path) -> list[str]:
    p = Path(f"{marker}.calls")
    return p.read_text().split() if p.exists() else []


# ------------------------------------------------------------------------------------------ units
class _Flaky:
    def __init__(self, fails: int):
        self.fails, self.seen = fails, {}

    def __call__(self, x):
        self.seen[x] = self.seen.get(x, 0) + 1
        if self.seen[x] <= self.fails:
            raise OSError(f"transient failure on {x}")
        return x * x


def test_local_executor_retries_then_gives_up():
    ex = LocalExecutor(max_retries=2)
    assert ex.map(_Flaky(2), [1, 2, 3]) == [1, 4, 9]
    assert ex.stats["retries"] == 6 and ex.stats["tasks"] == 3
    with pytest.raises(TaskFailed, match="after 3 attempts.*transient failure on 5"):
        LocalExecutor(max_retries=2).map(_Flaky(3), [5], desc="square")


def test_make_executor_names():
    with pytest.raises(ValueError, match="did you mean 'ray'"):
        make_executor("rai")
    with pytest.raises(ValueError, match="only used with --executor ray"):
        make_executor("local", ray_address="auto")


# ------------------------------------------------------------------------------ runs (local)
@pytest.fixture(scope="module")
def local_record(suite_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs-local")
    marker = out / "unused.marker"
    marker.write_text("no fault")  # the fault has "already happened": a clean run
    return run(RunConfig(generator="faulty", suite=suite_file, out=out, quiet=True,
                         generator_args={"marker": str(marker), "fault": "raise"}))


def test_failed_task_is_retried_locally(suite_file, tmp_path, local_record):
    marker = tmp_path / "m"
    path = run(RunConfig(generator="faulty", suite=suite_file, out=tmp_path / "runs", quiet=True,
                         generator_args={"marker": str(marker), "fault": "raise"}))
    assert marker.read_text() == "raise"
    assert len(_calls(marker)) == 3  # two shards of 8 + 4 prompts, the second one twice
    assert _values(path) == _values(local_record)


def test_interrupted_run_resumes_without_redoing_shards(suite_file, tmp_path, local_record):
    marker = tmp_path / "m"
    cfg = RunConfig(generator="faulty", suite=suite_file, out=tmp_path / "runs", quiet=True,
                    generator_args={"marker": str(marker), "fault": "interrupt"})
    with pytest.raises(KeyboardInterrupt):
        run(cfg)
    first = _calls(marker)
    assert len(first) == 2  # shard 0 finished and was saved; shard 1 was interrupted
    path = run(cfg)
    assert _calls(marker)[len(first):] == first[1:]  # only the interrupted shard is generated again
    assert _values(path) == _values(local_record)


# -------------------------------------------------------------------------------- runs (ray)
@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    yield ray
    if ray.is_initialized():
        ray.shutdown()


def test_ray_executor_gives_the_local_record_even_when_a_worker_dies(ray_cluster, suite_file, tmp_path,
                                                                      local_record):
    marker = tmp_path / "m"
    path = run(RunConfig(generator="faulty", suite=suite_file, out=tmp_path / "runs", quiet=True,
                         executor="ray", generator_args={"marker": str(marker), "fault": "crash"}))
    assert marker.read_text() == "crash"  # a worker process died on the second shard ...
    assert len(_calls(marker)) == 3  # ... and its task ran again on another worker
    rec = load_record(path)
    assert rec["executor"]["name"] == "ray"
    assert _values(path) == _values(local_record)  # bit-identical metrics, CIs and floors
    a = sorted(Path(path).parent.joinpath("samples").glob("*.npz"))
    b = sorted(Path(local_record).parent.joinpath("samples").glob("*.npz"))
    assert [x.name for x in a] == [x.name for x in b] == ["shard_0000.npz", "shard_0001.npz"]
    for x, y in zip(a, b):
        with np.load(x) as zx, np.load(y) as zy:
            np.testing.assert_array_equal(zx["volumes"], zy["volumes"])
