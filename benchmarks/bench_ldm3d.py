"""Benchmark: ldm3d sampling seconds per volume at 3 mm (48x64x56), and its training step times.

Run: ``pytest benchmarks/bench_ldm3d.py --benchmark-only`` (or ``python benchmarks/bench_ldm3d.py``
for a plain table).

* ``test_ldm3d_sampling_in_bench_run`` measures what a user meets: ``python -m bench run --generator
  ldm3d`` in a fresh process (the run's allocator policy, shards, text encoder, decoding and masking
  all included) on a one-metric suite of ``BGB_BENCH_N`` prompts (default 8), and reads the
  ``generate`` stage time from the record. Target: <= 3 s/volume on 2 CPU cores with the generator's
  default sampler.
* ``test_ldm3d_sampling_seconds_per_volume``: the bare ``generate`` call (50 DDIM steps, guidance 3),
  for comparison with the above.

Uses the shipped checkpoint when present, else the bundled config with seeded random weights (the same
cost). ``BGB_BENCH_THREADS`` sets torch threads (default 2).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cohorts.grid import get_grid
from generators.base import GeneratorContext, Prompt

N = int(os.environ.get("BGB_BENCH_N", "8"))
THREADS = int(os.environ.get("BGB_BENCH_THREADS", "2"))
STEPS = 50
GUIDANCE = 3.0
GRID = get_grid("3mm")
PROMPTS = [f"Synthetic phantom. {m}-weighted brain MRI of a {a}-year-old {s}. Lateral ventricles {v:.1f} mL "
           f"({p}th percentile), third ventricle 1.2 mL (55th percentile); grey matter 620.4 mL."
           for m, a, s, v, p in zip(["T1", "T2", "PD", "FLAIR"] * 4, range(25, 90, 4), ["woman", "man"] * 8,
                                    np.linspace(10, 60, 16), range(5, 96, 6))]


class _NoMaskCohort:
    def brain_mask(self):
        return np.ones(GRID.shape, bool)


def _checkpoint() -> str:
    from generators.ldm3d.checkpoint import SHIPPED, save_checkpoint
    from generators.ldm3d.config import load_config
    from generators.ldm3d.model import build_model

    if SHIPPED.exists():
        return str(SHIPPED)
    torch.manual_seed(0)
    model = build_model(load_config("phantom_3mm"), GRID.shape)
    path = Path(tempfile.mkdtemp(prefix="bgb-ldm3d-bench-")) / "random.safetensors"
    save_checkpoint(model, path, {"note": "random weights for benchmarking"})
    return str(path)


def _generator(batch_size: int = N):
    from generators.ldm3d.generator import Ldm3dGenerator

    ctx = GeneratorContext(cohort=_NoMaskCohort(), grid=GRID, quiet=True)  # type: ignore[arg-type]
    return Ldm3dGenerator(ctx, checkpoint=_checkpoint(), steps=STEPS, guidance=GUIDANCE, scheduler="ddim",
                          batch_size=batch_size)


def test_ldm3d_sampling_seconds_per_volume(benchmark):
    torch.set_num_threads(THREADS)
    gen = _generator()
    prompts = [Prompt(t) for t in PROMPTS[:N]]
    out = benchmark.pedantic(lambda: gen.generate(prompts, seed=0), rounds=1, iterations=1)
    assert out.volumes.shape == (N, 1, *GRID.shape)
    spv = benchmark.stats.stats.mean / N
    benchmark.extra_info.update({"volumes": N, "steps": STEPS, "guidance": GUIDANCE, "scheduler": "ddim",
                                 "threads": THREADS, "seconds_per_volume": spv})


SUITE = """name: bench-ldm3d-sampling
version: 1
description: one cheap metric, so that the run's time is its generation
reference: {name: phantom, args: {n_subjects: 400, seed: 0}}
grid: 3mm
n_prompts: %d
seed: 0
metrics: [{name: histogram}]
"""


def sampling_in_bench_run(n: int = N, generator_args: str = "") -> dict:
    """Run ``python -m bench run --generator ldm3d`` on ``n`` prompts in a fresh process; returns the
    record's timings and ``seconds_per_volume`` of its generation stage."""
    with tempfile.TemporaryDirectory(prefix="bgb-ldm3d-run-") as tmp:
        suite = Path(tmp) / "suite.yaml"
        suite.write_text(SUITE % n)
        cmd = [sys.executable, "-m", "bench", "--quiet", "run", "--generator", "ldm3d", "--suite", str(suite),
               "--out", str(Path(tmp) / "runs")]
        if generator_args:
            cmd += ["--generator-args", generator_args]
        env = dict(os.environ, OMP_NUM_THREADS=str(THREADS))
        subprocess.run(cmd, check=True, env=env, cwd=Path(__file__).resolve().parents[1])
        record = json.loads(next((Path(tmp) / "runs").glob("*/record.json")).read_text())
    timings = record.get("timings", {})
    return {"timings": timings, "seconds_per_volume": timings["generate"] / n,
            "generator": record.get("generator", {}).get("args")}


def test_ldm3d_sampling_in_bench_run(benchmark):
    out = benchmark.pedantic(sampling_in_bench_run, rounds=1, iterations=1)
    benchmark.extra_info.update({"volumes": N, "threads": THREADS, **out})


def _train_steps(gen, n_steps: int = 3) -> tuple[float, float]:
    """Mean seconds of an autoencoder step (batch 2) and a diffusion step (batch 8)."""
    from generators.ldm3d.model import make_scheduler

    model = gen.model.train()
    cfg = model.config
    x = torch.rand(cfg.training.autoencoder.batch_size, 1, *GRID.shape)
    opt = torch.optim.AdamW(model.autoencoder.parameters(), 1e-5)
    times = []
    for _ in range(n_steps + 1):
        t0 = time.perf_counter()
        rec, mu, sigma = model.autoencoder(x)
        loss = (rec - x).abs().mean() + 1e-6 * (mu.pow(2) + sigma.pow(2)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    ae = float(np.mean(times[1:]))
    b = cfg.training.diffusion.batch_size
    sched = make_scheduler(cfg)
    params = list(model.unet.parameters()) + list(model.conditioner.parameters())
    opt = torch.optim.AdamW(params, 1e-5)
    z = torch.randn(b, *model.padded_latent_shape)
    ctx = torch.randn(b, model.conditioner.n_tokens, cfg.conditioning.context_dim)
    times = []
    for _ in range(n_steps + 1):
        t0 = time.perf_counter()
        t = torch.randint(0, 1000, (b,))
        noise = torch.randn_like(z)
        loss = torch.nn.functional.mse_loss(model.eps(sched.add_noise(z, noise, t), t, ctx), noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    model.eval()
    return ae, float(np.mean(times[1:]))


def test_ldm3d_train_step_seconds(benchmark):
    torch.set_num_threads(THREADS)
    gen = _generator()
    ae, diff = benchmark.pedantic(lambda: _train_steps(gen), rounds=1, iterations=1)
    benchmark.extra_info.update({"autoencoder_step_s(batch 2)": ae, "diffusion_step_s(batch 8)": diff})


if __name__ == "__main__":
    torch.set_num_threads(THREADS)
    gen = _generator()
    print("params", gen.model.param_counts())
    gen.generate([Prompt(PROMPTS[0])], seed=0)  # warm-up (allocator, text encoder)
    t0 = time.perf_counter()
    gen.generate([Prompt(t) for t in PROMPTS[:N]], seed=0)
    dt = time.perf_counter() - t0
    print(f"sampling: {dt / N:.2f} s/volume ({N} prompts, {STEPS} DDIM steps, guidance {GUIDANCE}, {GRID.shape})")
    ae, diff = _train_steps(gen)
    print(f"train step: autoencoder {ae:.2f} s (batch 2), diffusion {diff:.2f} s (batch 8)")
    for args in ("", "scheduler=ddim,steps=50"):
        r = sampling_in_bench_run(N, args)
        print(f"inside bench run ({args or 'defaults'}): {r['seconds_per_volume']:.2f} s/volume "
              f"(generate stage {r['timings']['generate']:.1f} s for {N} prompts)")
