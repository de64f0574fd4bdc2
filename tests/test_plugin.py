"""Third-party generators: install examples/plugin_generator, discover it through its entry point, run it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "examples" / "plugin_generator"

SUITE = """
name: plugin-tiny
version: 1
description: a tiny suite for the plugin test
reference: {name: phantom, args: {n_subjects: 12, seed: 5}}
grid: 3mm
n_prompts: 3
seed: 0
metrics:
  - {name: ssim}
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """``pip install --no-deps --no-build-isolation --target DIR`` of a copy of the plugin (offline; the
    source tree stays clean). Needs setuptools >= 61 in the venv (and ``wheel`` below setuptools 70.1)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        st = tuple(int(x) for x in version("setuptools").split(".")[:2])
    except PackageNotFoundError:
        pytest.skip("setuptools is not installed in this venv; pip install 'setuptools>=70.1' to build the plugin")
    if st < (61, 0) or (st < (70, 1) and not _has("wheel")):
        pytest.skip(f"setuptools {st} cannot build the plugin offline; pip install 'setuptools>=70.1'")
    work = tmp_path_factory.mktemp("plugin")
    src = work / "src"
    shutil.copytree(PLUGIN, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = work / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                           "--quiet", "--disable-pip-version-check", "--target", str(target), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return target


def _has(dist: str) -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        version(dist)
        return True
    except PackageNotFoundError:
        return False


def _env(target: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(target), str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def test_install_writes_the_entry_point(installed):
    eps = list(installed.glob("bgb_plugin_example-*.dist-info/entry_points.txt"))
    assert len(eps) == 1
    text = eps[0].read_text()
    assert "[braingenbench.generators]" in text and "constant = bgb_plugin_example:ConstantGenerator" in text


def test_entry_point_discovered_on_sys_path(installed):
    code = ("import json; from importlib.metadata import entry_points; "
            "print(json.dumps([[e.name, e.value, e.dist.name] for e in entry_points(group='braingenbench.generators')]))")
    out = subprocess.run([sys.executable, "-c", code], env=_env(installed), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert ["constant", "bgb_plugin_example:ConstantGenerator", "bgb-plugin-example"] in json.loads(out.stdout)


def test_bench_ls_lists_the_plugin(installed):
    out = subprocess.run([sys.executable, "-m", "bench", "ls", "generators"], env=_env(installed), cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("constant "))
    assert "[plugin:bgb-plugin-example]" in line
    # built-ins are still there and are not marked as plugins
    assert any(ln.startswith("retrieval ") and "[plugin" not in ln for ln in out.stdout.splitlines())


def test_run_with_the_plugin(installed, tmp_path):
    suite = tmp_path / "plugin-tiny.yaml"
    suite.write_text(SUITE)
    out = subprocess.run([sys.executable, "-m", "bench", "--quiet", "run", "--generator", "constant", "--suite", str(suite),
                          "--generator-args", "value=0.25", "--out", str(tmp_path / "runs")],
                         env=_env(installed), cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    rec_path = next((tmp_path / "runs").glob("*/record.json"))
    rec = json.loads(rec_path.read_text())
    assert rec["generator"]["name"] == "constant" and rec["generator"]["args"] == {"value": 0.25}
    assert rec["generator"]["info"]["package"] == "bgb-plugin-example"
    import numpy as np

    with np.load(next((rec_path.parent / "samples").glob("shard_*.npz"))) as z:
        vols = z["volumes"]
    assert vols.shape == (3, 1, 48, 64, 56)
    assert set(np.unique(vols).tolist()) == {0.0, 0.25}
    assert rec["metrics"]["ssim"]["value"] is not None and rec["metrics"]["ssim"]["n"] == 3


def test_unknown_plugin_arg_is_an_error(installed, tmp_path):
    suite = tmp_path / "plugin-tiny.yaml"
    suite.write_text(SUITE)
    out = subprocess.run([sys.executable, "-m", "bench", "--quiet", "run", "--generator", "constant", "--suite", str(suite),
                          "--generator-args", "valeu=0.25", "--out", str(tmp_path / "runs")],
                         env=_env(installed), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "valeu" in (out.stderr + out.stdout)
