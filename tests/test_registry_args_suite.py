import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.args import ArgumentError, bind_args, parse_kv
from bench.cache import FeatureCache
from core.io import array_key, hash_obj
from bench.registry import Registry, UnknownNameError
from bench.suite import SuiteError, load_suite


def test_registry_aliases_lazy_and_did_you_mean():
    reg = Registry("widget")
    reg.register("alpha", "json:dumps", aliases=("a",))
    reg.register("beta", 42)
    assert reg.get("alpha") is json.dumps  # lazy target imported on first use
    assert reg.get("A") is json.dumps  # alias, case-insensitive
    assert reg.get("beta") == 42
    with pytest.raises(UnknownNameError) as e:
        reg.get("alpah")
    assert "unknown widget 'alpah'" in str(e.value) and "did you mean 'alpha'" in str(e.value)
    with pytest.raises(ValueError):
        reg.register("alpha", 1)


def test_registry_entry_points(monkeypatch):
    import core.registry as r

    class EP:
        name, value = "plug", "json:loads"
        dist = type("D", (), {"name": "thirdparty"})()

    monkeypatch.setattr(r, "entry_points", lambda group: [EP()] if group == "g" else [])
    reg = Registry("thing", "g")
    reg.register("builtin", 1)
    assert reg.get("plug") is json.loads
    assert reg.entry("plug").source == "plugin:thirdparty"


def test_cli_unknown_generator_exit_2():
    p = subprocess.run([sys.executable, "-m", "bench", "run", "--generator", "nosuch", "--suite", "quick"],
                       capture_output=True, text=True)
    assert p.returncode == 2
    assert "unknown generator 'nosuch'" in p.stderr and "retrieval" in p.stderr


def test_parse_and_bind_args():
    class G:
        def __init__(self, context, *, steps: int = 50, guidance: float = 3.0, fast: bool = False,
                     checkpoint: str = ""):
            pass

    raw = parse_kv("steps=20, guidance=1.5,fast=true,checkpoint=/x/y.safetensors")
    args = bind_args(G, raw, "generator 'g'")
    assert args == {"steps": 20, "guidance": 1.5, "fast": True, "checkpoint": "/x/y.safetensors"}
    with pytest.raises(ArgumentError, match="did you mean 'steps'"):
        bind_args(G, {"step": "3"}, "generator 'g'")
    with pytest.raises(ArgumentError, match="not a valid int"):
        bind_args(G, {"steps": "many"}, "generator 'g'")
    with pytest.raises(ArgumentError):
        parse_kv("novalue")


def test_builtin_suites_load():
    for name in ("quick", "full"):
        s = load_suite(name)
        assert s.grid.name == "3mm" and s.reference == "phantom"
        assert {"fid-deepbet", "ssim", "radiomics", "histogram"} <= {m.key for m in s.metrics}
    assert load_suite("quick").n_prompts <= 16 and load_suite("full").n_prompts >= 100


def test_suite_unknown_key_names_file(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("name: s\nreference: phantom\ngrid: 3mm\nn_prompts: 2\nmetrics: [ssim]\nmetrix: []\n")
    with pytest.raises(SuiteError, match=r"s\.yaml: unknown key 'metrix' in the suite; did you mean 'metrics'"):
        load_suite(p)


def test_feature_cache_is_content_addressed(tmp_path):
    cache = FeatureCache(tmp_path)
    vols = np.random.default_rng(0).random((3, 1, 4, 4, 4)).astype(np.float32)
    calls = []

    def compute(v):
        calls.append(len(v))
        return v.reshape(len(v), -1).mean(1, keepdims=True)

    fp = {"name": "mean", "version": 1}
    a = cache.get_or_compute(fp, vols, compute)
    b = cache.get_or_compute(fp, vols[::-1].copy(), compute)  # same content, other order: all hits
    assert calls == [3] and np.allclose(a[::-1], b)
    cache.get_or_compute({"name": "mean", "version": 2}, vols, compute)  # new fingerprint: recomputed
    assert calls == [3, 3]
    assert array_key(vols[0]) != array_key(vols[1]) and hash_obj({"a": 1, "b": 2}) == hash_obj({"b": 2, "a": 1})
