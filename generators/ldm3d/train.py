"""Train ldm3d on a cohort's train split: autoencoder first, then latent diffusion.

Usage::

    python -m generators.ldm3d.train --cohort phantom --grid 3mm \\
        --config generators/ldm3d/configs/phantom_3mm.yaml --out runs/ldm3d-train \\
        [--stage autoencoder|diffusion|all] [--resume] [--max-minutes M] [--ship PATH]

Stage 1 fits the KL autoencoder (L1 + KL + L1 on finite differences; no GAN, no perceptual loss —
a CPU budget). Its posteriors (mean, std) for the train volumes, the caption token embeddings and
the attribute features are then computed ONCE and cached in ``OUT/``; stage 2 trains the
cross-attention UNet on latents sampled from those cached posteriors (Rombach et al. 2022;
Pinaya et al. 2022) with caption dropout for classifier-free guidance (Ho & Salimans 2022).

Everything is resumable: ``OUT/state_<stage>.pt`` (weights, optimiser, step, elapsed time, loss
history; read back with ``torch.load(weights_only=True)``) is rewritten atomically every
``training.checkpoint_minutes``. The batch order and noise of step ``s`` derive from
``(seed, stage, s)``, so a resumed run draws what the uninterrupted run would have. During stage 2
every checkpoint also exports ``OUT/ldm3d_last.safetensors`` (float32, EMA weights) and, with
``--ship``, a float16 copy for the package.
"""

from __future__ import annotations

import argparse
import copy
import csv
import datetime as _dt
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.data.subject import Cohort
from generators.ldm3d.checkpoint import save_checkpoint
from generators.ldm3d.conditioning import attribute_features, compute_stats, get_caption_parser
from generators.ldm3d.config import Ldm3dConfig, load_config
from generators.ldm3d.model import Ldm3d, build_model, make_scheduler

logger = logging.getLogger("generators.ldm3d.train")

STAGES = ("autoencoder", "diffusion")


# ----------------------------------------------------------------------------- helpers
def _atomic_torch_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load_state(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise RuntimeError(f"{path}: cannot read training state ({e}); delete it and train without --resume") from e


def _step_rng(seed: int, stage: int, step: int) -> tuple[np.random.Generator, torch.Generator]:
    g = torch.Generator().manual_seed((seed * 1_000_003 + stage * 7_919_111 + step) % (2**62))
    return np.random.default_rng([seed, stage, step]), g


def _write_curve(history: list[list[float]], columns: list[str], out: Path, title: str) -> None:
    """Loss history -> CSV + PNG (matplotlib, Agg)."""
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        w.writerows(history)
    if len(history) < 2:
        return
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return
    h = np.asarray(history, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    k = max(1, len(h) // 50)
    smooth = np.convolve(h[:, 2], np.ones(k) / k, mode="valid")
    ax.plot(h[:, 0], h[:, 2], alpha=0.3, lw=0.7, label="loss")
    ax.plot(h[k - 1:, 0], smooth, lw=1.5, label=f"running mean ({k})")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(columns[2])
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=100)
    plt.close(fig)


def resolve_cohort(name: str, grid: str, n_subjects: int = 400, seed: int = 0, quiet: bool = False) -> Cohort:
    """A cohort folder path, or a registered cohort name (``phantom`` is built/cached on demand)."""
    p = Path(name)
    if p.is_dir():
        return Cohort.load(p)
    if name.lower() == "phantom":
        try:
            from bench.data.phantom import PhantomCohort  # type: ignore[import-not-found]
        except ImportError as e:
            raise RuntimeError(f"cohort 'phantom' is not available ({e}); pass a prepared cohort folder "
                               "as --cohort DIR") from e
        return PhantomCohort.get(grid, n_subjects=n_subjects, seed=seed, quiet=quiet)
    from bench.registry import cohorts

    obj = cohorts.get(name)
    if hasattr(obj, "get"):
        return obj.get(grid)
    raise RuntimeError(f"cohort {name!r} cannot be built here; prepare it (python -m bench cohort prepare ...) "
                       "and pass its folder as --cohort DIR")


# ----------------------------------------------------------------------------- trainer
class Trainer:
    """Two-stage ldm3d training on ``cohort``'s train split, checkpointing into ``out``.

    Args:
        cohort: the reference cohort (only its ``train`` split is used).
        config: the model/training config.
        out: output folder (states, caches, curves, exported checkpoints).
        ship: optional path that receives a float16 copy of every exported checkpoint.
        quiet: no progress bars.
    """

    def __init__(self, cohort: Cohort, config: Ldm3dConfig, out: str | Path, *, ship: str | Path | None = None,
                 quiet: bool = False):
        self.cohort, self.config, self.out = cohort, config, Path(out)
        self.ship = Path(ship) if ship else None
        self.quiet = quiet
        self.out.mkdir(parents=True, exist_ok=True)
        self.train_subjects = sorted(cohort.split("train"), key=lambda s: s.subject_id)
        if not self.train_subjects:
            raise RuntimeError(f"cohort {cohort.name!r} ({cohort.root}) has no 'train' subjects; "
                               "ldm3d trains on the train split only")
        if config.grid != cohort.grid.name:
            logger.warning("config grid %r differs from the cohort grid %r; training on the cohort grid",
                           config.grid, cohort.grid.name)
        torch.manual_seed(config.training.seed)
        self.model: Ldm3d = build_model(config, cohort.grid.shape)
        self.scheduler = make_scheduler(config)
        (self.out / "config.yaml").write_text(_yaml_dump(config.to_dict()))

    # -------------------------------------------------------------- utilities
    def _deadline(self, stage_cfg, elapsed: float, max_minutes: float | None) -> float:
        now = time.monotonic()
        limits = [float("inf")]
        if stage_cfg.max_minutes and stage_cfg.max_minutes > 0:
            limits.append(now + stage_cfg.max_minutes * 60 - elapsed)
        if max_minutes is not None and max_minutes > 0:
            limits.append(now + max_minutes * 60)
        return min(limits)

    def _progress(self, total: int, initial: int, desc: str):
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, disable=self.quiet, mininterval=5.0,
                    dynamic_ncols=True, file=sys.stderr)

    def _volumes(self) -> torch.Tensor:
        path = self.out / "train_volumes.npy"
        ids_path = self.out / "train_volumes.ids"
        ids = "\n".join(s.subject_id for s in self.train_subjects)
        if path.exists() and ids_path.exists() and ids_path.read_text() == ids:
            return torch.from_numpy(np.load(path))
        logger.info("loading %d train volumes of cohort %s", len(self.train_subjects), self.cohort.name)
        vols = self.cohort.load_volumes(self.train_subjects)
        np.save(path, vols)
        ids_path.write_text(ids)
        return torch.from_numpy(vols)

    # -------------------------------------------------------------- stage 1
    def train_autoencoder(self, *, resume: bool = False, max_minutes: float | None = None) -> dict:
        cfg = self.config.training
        acfg = cfg.autoencoder
        ae = self.model.autoencoder
        opt = torch.optim.AdamW(ae.parameters(), lr=acfg.lr, weight_decay=0.0)
        state_path = self.out / "state_autoencoder.pt"
        step, elapsed, history = 0, 0.0, []
        if resume and state_path.exists():
            st = _load_state(state_path)
            ae.load_state_dict(st["autoencoder"])
            opt.load_state_dict(st["optimizer"])
            step, elapsed, history = int(st["step"]), float(st["elapsed"]), list(st["history"])
            for group in opt.param_groups:  # the config is authoritative for the learning rate
                group["lr"] = acfg.lr
            logger.info("resumed autoencoder at step %d (%.1f min)", step, elapsed / 60)
        vols = self._volumes()
        n = vols.shape[0]
        deadline = self._deadline(acfg, elapsed, max_minutes)
        t_start, last_ckpt = time.monotonic(), time.monotonic()
        elapsed0 = elapsed

        def save(done: bool):
            nonlocal last_ckpt
            _atomic_torch_save({"autoencoder": ae.state_dict(), "optimizer": opt.state_dict(), "step": step,
                                "elapsed": elapsed0 + time.monotonic() - t_start, "history": history,
                                "done": done}, state_path)
            _write_curve(history, ["step", "time_s", "loss", "l1", "kl", "grad"], self.out / "loss_autoencoder",
                         "autoencoder")
            last_ckpt = time.monotonic()

        ae.train()
        bar = self._progress(acfg.steps, step, "autoencoder")
        try:
            while step < acfg.steps and time.monotonic() < deadline:
                rng, _ = _step_rng(cfg.seed, 1, step)
                idx = rng.choice(n, size=min(acfg.batch_size, n), replace=False)
                x = vols[torch.from_numpy(idx)]
                rec, mu, sigma = ae(x)
                l1 = (rec - x).abs().mean()
                kl = 0.5 * (mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2) + 1e-12) - 1).sum(dim=(1, 2, 3, 4)).mean()
                gl = sum(((rec.diff(dim=d) - x.diff(dim=d)).abs().mean() for d in (2, 3, 4)), torch.zeros(())) / 3
                loss = l1 + acfg.kl_weight * kl + acfg.grad_weight * gl
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(ae.parameters(), cfg.grad_clip)
                opt.step()
                step += 1
                history.append([step, round(elapsed0 + time.monotonic() - t_start, 2), float(loss.detach()),
                                float(l1.detach()), float(kl.detach()), float(gl.detach())])
                bar.update(1)
                if step % 10 == 0:
                    bar.set_postfix(loss=f"{np.mean([h[2] for h in history[-50:]]):.4f}",
                                    l1=f"{np.mean([h[3] for h in history[-50:]]):.4f}")
                if step % 100 == 0:
                    logger.info("autoencoder step %d loss %.4f l1 %.4f kl %.1f grad %.4f", step,
                                *(np.mean([h[j] for h in history[-100:]]) for j in (2, 3, 4, 5)))
                if time.monotonic() - last_ckpt > cfg.checkpoint_minutes * 60:
                    save(False)
        finally:
            bar.close()
            save(step >= acfg.steps)
        ae.eval()
        logger.info("autoencoder: %d steps, %.1f min, last-100 L1 %.4f", step,
                    (elapsed0 + time.monotonic() - t_start) / 60,
                    np.mean([h[3] for h in history[-100:]]) if history else float("nan"))
        return {"steps": step, "minutes": round((elapsed0 + time.monotonic() - t_start) / 60, 2),
                "final_l1": float(np.mean([h[3] for h in history[-100:]])) if history else None}

    # -------------------------------------------------------------- caches
    def _load_autoencoder(self) -> dict:
        path = self.out / "state_autoencoder.pt"
        if not path.exists():
            raise RuntimeError(f"{path}: no trained autoencoder; run --stage autoencoder first (same --out)")
        st = _load_state(path)
        self.model.autoencoder.load_state_dict(st["autoencoder"])
        self.model.autoencoder.eval()
        return st

    @torch.no_grad()
    def latent_cache(self, ae_step: int) -> dict:
        """Posterior mean/std of every train volume + text tokens + attribute features (computed once)."""
        path = self.out / "latents.pt"
        ids = [s.subject_id for s in self.train_subjects]
        if path.exists():
            c = _load_state(path)
            if c.get("ae_step") == ae_step and c.get("ids") == ids and \
                    c.get("max_tokens") == self.config.conditioning.max_tokens:
                return c
        from generators.text import get_text_encoder

        vols = self._volumes()
        logger.info("encoding %d train volumes once (autoencoder step %d)", len(ids), ae_step)
        mus, sigmas = [], []
        for i in range(0, len(vols), 8):
            mu, sigma = self.model.encode_dist(vols[i:i + 8])
            mus.append(mu)
            sigmas.append(sigma)
        mu, sigma = torch.cat(mus), torch.cat(sigmas)
        g = torch.Generator().manual_seed(self.config.training.seed)
        z = mu + sigma * torch.randn(mu.shape, generator=g)
        scale = 1.0 / float(z.std())
        cond = self.config.conditioning
        te = get_text_encoder(cond.text_encoder, "cpu", cond.max_tokens)
        captions = [s.caption for s in self.train_subjects]
        toks, masks = [], []
        for i in range(0, len(captions), 32):
            t, m = te.encode_tokens(captions[i:i + 32])
            toks.append(t.half())
            masks.append(m)
        parse, parser_name = get_caption_parser()
        parsed = [parse(c) for c in captions]
        stats = compute_stats(parsed)
        attrs = torch.from_numpy(np.stack([attribute_features(p, stats) for p in parsed]))
        n_trunc = sum(len(te.tokenizer(c)["input_ids"]) > cond.max_tokens for c in captions)
        if n_trunc:
            logger.warning("%d train caption(s) exceed conditioning.max_tokens=%d and are truncated", n_trunc,
                           cond.max_tokens)
        c = {"ae_step": ae_step, "ids": ids, "mu": mu, "sigma": sigma, "scale": scale, "tokens": torch.cat(toks),
             "mask": torch.cat(masks), "attrs": attrs, "stats": [[k, *v] for k, v in stats.items()],
             "parser": parser_name, "max_tokens": cond.max_tokens, "text_fingerprint": te.fingerprint,
             "text_model": te.model_dir.name, "text_dim": te.dim, "n_truncated": n_trunc}
        _atomic_torch_save(c, path)
        logger.info("latent cache: %s, latent scale %.4f", tuple(mu.shape), scale)
        return c

    # -------------------------------------------------------------- stage 2
    def train_diffusion(self, *, resume: bool = False, max_minutes: float | None = None) -> dict:
        cfg = self.config.training
        dcfg = cfg.diffusion
        ae_state = self._load_autoencoder()
        cache = self.latent_cache(int(ae_state["step"]))
        model = self.model
        model.latent_scale.fill_(cache["scale"])
        model.conditioner.set_stats({k: (m, s) for k, m, s in cache["stats"]})
        params = list(model.unet.parameters()) + list(model.conditioner.parameters())
        opt = torch.optim.AdamW(params, lr=dcfg.lr, weight_decay=0.0)
        ema_modules = {"unet": copy.deepcopy(model.unet).eval(), "conditioner": copy.deepcopy(model.conditioner).eval()}
        for m in ema_modules.values():
            m.requires_grad_(False)
        state_path = self.out / "state_diffusion.pt"
        step, elapsed, history = 0, 0.0, []
        if resume and state_path.exists() and _load_state(state_path).get("ae_step") != int(ae_state["step"]):
            logger.warning("%s was trained on latents of another autoencoder state (step %s, now %s); "
                           "starting the diffusion stage from scratch", state_path,
                           _load_state(state_path).get("ae_step"), int(ae_state["step"]))
            resume = False
        if resume and state_path.exists():
            st = _load_state(state_path)
            model.unet.load_state_dict(st["unet"])
            model.conditioner.load_state_dict(st["conditioner"])
            ema_modules["unet"].load_state_dict(st["ema_unet"])
            ema_modules["conditioner"].load_state_dict(st["ema_conditioner"])
            opt.load_state_dict(st["optimizer"])
            step, elapsed, history = int(st["step"]), float(st["elapsed"]), list(st["history"])
            logger.info("resumed diffusion at step %d (%.1f min)", step, elapsed / 60)
        mu, sigma, scale = cache["mu"], cache["sigma"], float(cache["scale"])
        tokens, mask, attrs = cache["tokens"], cache["mask"], cache["attrs"]
        n = mu.shape[0]
        T = self.config.scheduler.num_train_timesteps
        p_drop = self.config.conditioning.caption_dropout
        deadline = self._deadline(dcfg, elapsed, max_minutes)
        t_start, last_ckpt = time.monotonic(), time.monotonic()
        elapsed0 = elapsed
        ae_info = {"steps": int(ae_state["step"]), "minutes": round(float(ae_state["elapsed"]) / 60, 2),
                   "final_l1": float(np.mean([h[3] for h in ae_state["history"][-100:]])) if ae_state["history"] else None}

        def save(done: bool):
            nonlocal last_ckpt
            minutes = (elapsed0 + time.monotonic() - t_start) / 60
            _atomic_torch_save({"unet": model.unet.state_dict(), "conditioner": model.conditioner.state_dict(),
                                "ema_unet": ema_modules["unet"].state_dict(),
                                "ema_conditioner": ema_modules["conditioner"].state_dict(),
                                "optimizer": opt.state_dict(), "step": step, "elapsed": minutes * 60,
                                "history": history, "done": done, "ae_step": int(ae_state["step"])}, state_path)
            _write_curve(history, ["step", "time_s", "loss"], self.out / "loss_diffusion", "latent diffusion (MSE)")
            if step > 0:
                self.export(ema_modules, cache, ae_info, {
                    "steps": step, "minutes": round(minutes, 2), "batch_size": dcfg.batch_size,
                    "final_loss": float(np.mean([h[2] for h in history[-200:]])) if history else None,
                    "done": done})
            last_ckpt = time.monotonic()

        model.unet.train()
        model.conditioner.train()
        bar = self._progress(dcfg.steps, step, "diffusion")
        try:
            while step < dcfg.steps and time.monotonic() < deadline:
                rng, g = _step_rng(cfg.seed, 2, step)
                idx = torch.from_numpy(rng.choice(n, size=min(dcfg.batch_size, n), replace=n < dcfg.batch_size))
                b = len(idx)
                z = (mu[idx] + sigma[idx] * torch.randn(mu[idx].shape, generator=g)) * scale
                z = model.pad(z)
                noise = torch.randn(z.shape, generator=g)
                t = torch.randint(0, T, (b,), generator=g)
                drop = torch.rand(b, generator=g) < p_drop
                x_t = self.scheduler.add_noise(z, noise, t)
                ctx = model.conditioner(tokens[idx].float(), mask[idx], attrs[idx], drop)
                pred = model.eps(x_t, t, ctx)
                loss = F.mse_loss(pred, noise)
                for group in opt.param_groups:
                    group["lr"] = dcfg.lr * min(1.0, (step + 1) / max(1, dcfg.warmup_steps))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                opt.step()
                step += 1
                decay = min(dcfg.ema_decay, (1 + step) / (10 + step))
                with torch.no_grad():
                    for name, live in (("unet", model.unet), ("conditioner", model.conditioner)):
                        for pe, pl in zip(ema_modules[name].parameters(), live.parameters()):
                            pe.mul_(decay).add_(pl.detach(), alpha=1 - decay)
                history.append([step, round(elapsed0 + time.monotonic() - t_start, 2), float(loss.detach())])
                bar.update(1)
                if step % 10 == 0:
                    bar.set_postfix(loss=f"{np.mean([h[2] for h in history[-100:]]):.4f}")
                if step % 100 == 0:
                    logger.info("diffusion step %d loss(avg100) %.4f", step, np.mean([h[2] for h in history[-100:]]))
                if time.monotonic() - last_ckpt > cfg.checkpoint_minutes * 60:
                    save(False)
        finally:
            bar.close()
            save(step >= dcfg.steps)
        return {"steps": step, "minutes": round((elapsed0 + time.monotonic() - t_start) / 60, 2),
                "final_loss": float(np.mean([h[2] for h in history[-200:]])) if history else None}

    # -------------------------------------------------------------- export
    def export(self, ema_modules: dict, cache: dict, ae_info: dict, diff_info: dict) -> Path:
        """EMA weights + autoencoder -> ``OUT/ldm3d_last.safetensors`` (and the ``--ship`` copy)."""
        export = build_model(self.config, self.cohort.grid.shape, int(cache.get("text_dim", 384)))
        export.autoencoder.load_state_dict(self.model.autoencoder.state_dict())
        export.unet.load_state_dict(ema_modules["unet"].state_dict())
        export.conditioner.load_state_dict(ema_modules["conditioner"].state_dict())
        export.latent_scale.fill_(float(cache["scale"]))
        meta = {
            "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "cohort": {"name": self.cohort.name, "content_hash": self.cohort.content_hash,
                       "synthetic": self.cohort.synthetic, "n_train": len(self.train_subjects),
                       "grid": self.cohort.grid.to_dict()},
            "training": {"seed": self.config.training.seed, "autoencoder": ae_info, "diffusion": diff_info,
                         "weights": "ema", "torch": torch.__version__, "monai": _monai_version()},
            "text_encoder": {"model": cache.get("text_model"), "fingerprint": cache.get("text_fingerprint"),
                             "max_tokens": cache.get("max_tokens"), "dim": cache.get("text_dim", 384)},
            "text_dim": int(cache.get("text_dim", 384)),
            "caption_parser": cache.get("parser"),
        }
        last = self.out / "ldm3d_last.safetensors"
        sha = save_checkpoint(export, last, meta)
        logger.info("exported %s (sha256 %s…)", last, sha[:12])
        if self.ship is not None:
            sha16 = save_checkpoint(export, self.ship, meta, half=True)
            logger.info("shipped %s (float16, %.1f MB, sha256 %s)", self.ship, self.ship.stat().st_size / 1e6, sha16)
        return last


def _monai_version() -> str:
    try:
        import monai

        return monai.__version__
    except Exception:  # pragma: no cover
        return "?"


def _yaml_dump(d: dict) -> str:
    import yaml

    return yaml.safe_dump(d, sort_keys=False)


def train(cohort: Cohort, config: Ldm3dConfig, out: str | Path, *, stage: str = "all", resume: bool = False,
          max_minutes: float | None = None, ship: str | Path | None = None, quiet: bool = False) -> dict:
    """Run one or both training stages (see module docstring); returns a summary dict.

    Args:
        cohort: training cohort (train split used).
        config: model/training config.
        out: output folder.
        stage: "autoencoder", "diffusion" or "all".
        resume: continue from ``OUT/state_<stage>.pt`` when present.
        max_minutes: wall-time limit of this invocation per stage (a checkpoint is written on stop).
        ship: optional path for a float16 copy of every exported checkpoint.
        quiet: no progress bars.
    """
    if stage not in (*STAGES, "all"):
        raise ValueError(f"unknown stage {stage!r}; choose autoencoder, diffusion or all")
    torch.set_num_threads(config.training.num_threads)
    trainer = Trainer(cohort, config, out, ship=ship, quiet=quiet)
    summary: dict = {}
    if stage in ("autoencoder", "all"):
        summary["autoencoder"] = trainer.train_autoencoder(resume=resume, max_minutes=max_minutes)
    if stage in ("diffusion", "all"):
        summary["diffusion"] = trainer.train_diffusion(resume=resume, max_minutes=max_minutes)
    summary["checkpoint"] = str(Path(out) / "ldm3d_last.safetensors")
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m generators.ldm3d.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cohort", required=True, help="cohort name (phantom) or a prepared cohort folder")
    ap.add_argument("--grid", default="3mm", help="grid name (default 3mm)")
    ap.add_argument("--config", default="phantom_3mm", help="YAML config file or bundled config name")
    ap.add_argument("--out", required=True, help="output folder (states, caches, curves, checkpoints)")
    ap.add_argument("--stage", default="all", choices=[*STAGES, "all"])
    ap.add_argument("--resume", action="store_true", help="continue from OUT/state_<stage>.pt")
    ap.add_argument("--max-minutes", type=float, default=None, help="wall-time limit per stage for this invocation")
    ap.add_argument("--ship", default=None, help="also write a float16 copy of each exported checkpoint here")
    ap.add_argument("--n-subjects", type=int, default=400, help="phantom cohort size (default 400)")
    ap.add_argument("--cohort-seed", type=int, default=0, help="phantom cohort seed (default 0)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    import signal

    def _on_term(signum, frame):  # `kill PID`: stop like Ctrl-C, writing a final checkpoint
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _on_term)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = load_config(args.config)
    if config.grid != args.grid:
        logger.warning("--grid %s overrides the config's grid %s", args.grid, config.grid)
        config.grid = args.grid
    cohort = resolve_cohort(args.cohort, args.grid, args.n_subjects, args.cohort_seed, args.quiet)
    summary = train(cohort, config, args.out, stage=args.stage, resume=args.resume, max_minutes=args.max_minutes,
                    ship=args.ship, quiet=args.quiet)
    logger.info("done: %s", summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
