"""Train slice2d on a cohort's train split: 2D autoencoder on slices, then 2D latent diffusion.

Usage::

    python -m generators.slice2d.train --cohort phantom --grid 3mm \\
        --config generators/slice2d/configs/phantom_3mm.yaml --out runs/slice2d-train \\
        [--resume] [--max-minutes M] [--ship generators/slice2d/checkpoints/phantom_3mm.safetensors]

Stage 1 fits the 2D KL autoencoder on random slices (L1 + KL + L1 on finite differences, as ldm3d).
The posterior means of every slice of every training volume, the caption token embeddings and the
attribute features are then computed once; stage 2 trains the UNet on (slice latent, slice index,
caption) triples with caption dropout for classifier-free guidance (Ho & Salimans 2022). Batch order
and noise of step ``s`` derive from ``(seed, stage, s)``; ``OUT/state_<stage>.pt`` (read back with
``torch.load(weights_only=True)``) is rewritten every ``training.checkpoint_minutes`` and at the end,
so ``--resume`` continues where a run stopped. The EMA weights are exported to
``OUT/slice2d_last.safetensors`` (float32) and, with ``--ship``, as float16.
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
from generators.ldm3d.conditioning import attribute_features, compute_stats, get_caption_parser
from generators.slice2d.model import Slice2d, Slice2dConfig, load_config, make_scheduler, save_checkpoint

logger = logging.getLogger("generators.slice2d.train")


def _save_state(obj, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load_state(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise RuntimeError(f"{path}: cannot read training state ({e}); delete it and train without --resume") from e


def _rng(seed: int, stage: int, step: int) -> tuple[np.random.Generator, torch.Generator]:
    return (np.random.default_rng([seed, stage, step]),
            torch.Generator().manual_seed((seed * 1_000_003 + stage * 7_919_111 + step) % (2**62)))


def _write_curve(history: list, columns: list[str], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        w.writerows(history)


class Trainer:
    """Two-stage training into ``out`` (see the module docstring)."""

    def __init__(self, cohort: Cohort, config: Slice2dConfig, out: str | Path, *, ship: str | Path | None = None,
                 quiet: bool = False):
        self.cohort, self.config, self.out, self.quiet = cohort, config, Path(out), quiet
        self.ship = Path(ship) if ship else None
        self.out.mkdir(parents=True, exist_ok=True)
        self.train_subjects = sorted(cohort.split("train"), key=lambda s: s.subject_id)
        if not self.train_subjects:
            raise RuntimeError(f"cohort {cohort.name!r} ({cohort.root}) has no 'train' subjects; slice2d trains "
                               "on the train split only")
        torch.manual_seed(config.training.seed)
        self.model = Slice2d(config, cohort.grid.shape)
        self.scheduler = make_scheduler(config)
        logger.info("slice2d: %s parameters, slices %s x %d, latent %s", self.model.param_counts(),
                    self.model.slice_shape, self.model.n_slices, self.model.latent_shape)
        self._slices: torch.Tensor | None = None

    def slices(self) -> torch.Tensor:
        """All training slices (n_subjects * n_slices, 1, a, b), subject-major."""
        if self._slices is None:
            vols = torch.from_numpy(self.cohort.load_volumes(self.train_subjects))
            self._slices = self.model.to_slices(vols).contiguous()
        return self._slices

    def _bar(self, total: int, initial: int, desc: str):
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, disable=self.quiet, mininterval=5.0, file=sys.stderr)

    # -------------------------------------------------------------- stage 1
    def train_autoencoder(self, *, resume: bool, max_minutes: float | None) -> dict:
        cfg, acfg = self.config.training, self.config.training.autoencoder
        ae = self.model.autoencoder
        opt = torch.optim.AdamW(ae.parameters(), lr=acfg.lr, weight_decay=0.0)
        path = self.out / "state_autoencoder.pt"
        step, elapsed, history = 0, 0.0, []
        if resume and path.exists():
            st = _load_state(path)
            ae.load_state_dict(st["autoencoder"])
            opt.load_state_dict(st["optimizer"])
            step, elapsed, history = int(st["step"]), float(st["elapsed"]), list(st["history"])
        x_all = self.slices()
        budget = min(m for m in (acfg.max_minutes or float("inf"), max_minutes or float("inf"))) * 60
        t0, last = time.monotonic(), time.monotonic()

        def save():
            _save_state({"autoencoder": ae.state_dict(), "optimizer": opt.state_dict(), "step": step,
                         "elapsed": elapsed + time.monotonic() - t0, "history": history}, path)
            _write_curve(history, ["step", "time_s", "loss", "l1", "kl", "grad"], self.out / "loss_autoencoder.csv")

        ae.train()
        bar = self._bar(acfg.steps, step, "slice2d autoencoder")
        try:
            while step < acfg.steps and elapsed + time.monotonic() - t0 < budget:
                rng, _ = _rng(cfg.seed, 1, step)
                x = x_all[torch.from_numpy(rng.choice(len(x_all), size=acfg.batch_size, replace=False))]
                rec, mu, sigma = ae(x)
                l1 = (rec - x).abs().mean()
                kl = 0.5 * (mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2) + 1e-12) - 1).sum(dim=(1, 2, 3)).mean()
                gl = sum(((rec.diff(dim=d) - x.diff(dim=d)).abs().mean() for d in (2, 3)), torch.zeros(())) / 2
                loss = l1 + acfg.kl_weight * kl + acfg.grad_weight * gl
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(ae.parameters(), cfg.grad_clip)
                opt.step()
                step += 1
                history.append([step, round(elapsed + time.monotonic() - t0, 2), float(loss.detach()), float(l1.detach()), float(kl.detach()),
                                float(gl.detach())])
                bar.update(1)
                if step % 100 == 0:
                    logger.info("autoencoder step %d l1 %.4f", step, np.mean([h[3] for h in history[-100:]]))
                if time.monotonic() - last > cfg.checkpoint_minutes * 60:
                    save()
                    last = time.monotonic()
        finally:
            bar.close()
            save()
        ae.eval()
        return {"steps": step, "minutes": round((elapsed + time.monotonic() - t0) / 60, 2),
                "batch_size": acfg.batch_size,
                "final_l1": float(np.mean([h[3] for h in history[-100:]])) if history else None}

    # -------------------------------------------------------------- caches
    @torch.no_grad()
    def cache(self) -> dict:
        """Slice latents (posterior means), caption tokens, attribute features, z-scoring stats."""
        from generators.text import get_text_encoder

        x_all = self.slices()
        mus = [self.model.autoencoder.encode(x_all[i:i + 256])[0] for i in range(0, len(x_all), 256)]
        mu = torch.cat(mus)
        scale = 1.0 / float(mu.std())
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
        return {"mu": mu, "scale": scale, "tokens": torch.cat(toks), "mask": torch.cat(masks), "attrs": attrs,
                "stats": stats, "parser": parser_name, "text_fingerprint": te.fingerprint,
                "text_model": te.model_dir.name, "text_dim": te.dim}

    # -------------------------------------------------------------- stage 2
    def train_diffusion(self, *, resume: bool, max_minutes: float | None, ae_info: dict) -> dict:
        cfg, dcfg = self.config.training, self.config.training.diffusion
        model = self.model
        c = self.cache()
        model.latent_scale.fill_(c["scale"])
        model.conditioner.set_stats(c["stats"])
        params = list(model.unet.parameters()) + list(model.conditioner.parameters())
        opt = torch.optim.AdamW(params, lr=dcfg.lr, weight_decay=0.0)
        ema = {"unet": copy.deepcopy(model.unet).eval(), "conditioner": copy.deepcopy(model.conditioner).eval()}
        for m in ema.values():
            m.requires_grad_(False)
        path = self.out / "state_diffusion.pt"
        step, elapsed, history = 0, 0.0, []
        if resume and path.exists():
            st = _load_state(path)
            model.unet.load_state_dict(st["unet"])
            model.conditioner.load_state_dict(st["conditioner"])
            ema["unet"].load_state_dict(st["ema_unet"])
            ema["conditioner"].load_state_dict(st["ema_conditioner"])
            opt.load_state_dict(st["optimizer"])
            step, elapsed, history = int(st["step"]), float(st["elapsed"]), list(st["history"])
        S = model.n_slices
        n = c["mu"].shape[0]
        T = self.config.scheduler.num_train_timesteps
        budget = min(m for m in (dcfg.max_minutes or float("inf"), max_minutes or float("inf"))) * 60
        t0, last = time.monotonic(), time.monotonic()

        def save(done: bool):
            minutes = (elapsed + time.monotonic() - t0) / 60
            _save_state({"unet": model.unet.state_dict(), "conditioner": model.conditioner.state_dict(),
                         "ema_unet": ema["unet"].state_dict(), "ema_conditioner": ema["conditioner"].state_dict(),
                         "optimizer": opt.state_dict(), "step": step, "elapsed": minutes * 60,
                         "history": history}, path)
            _write_curve(history, ["step", "time_s", "loss"], self.out / "loss_diffusion.csv")
            if step > 0:
                self.export(ema, c, ae_info, {"steps": step, "minutes": round(minutes, 2),
                                              "batch_size": dcfg.batch_size, "done": done,
                                              "final_loss": float(np.mean([h[2] for h in history[-200:]]))})

        model.unet.train()
        model.conditioner.train()
        bar = self._bar(dcfg.steps, step, "slice2d diffusion")
        try:
            while step < dcfg.steps and elapsed + time.monotonic() - t0 < budget:
                rng, g = _rng(cfg.seed, 2, step)
                idx = torch.from_numpy(rng.choice(n, size=dcfg.batch_size, replace=False))
                subj, sl = idx // S, idx % S
                z = model.pad(c["mu"][idx] * c["scale"])
                noise = torch.randn(z.shape, generator=g)
                t = torch.randint(0, T, (len(idx),), generator=g)
                drop = torch.rand(len(idx), generator=g) < self.config.conditioning.caption_dropout
                ctx = model.conditioner(c["tokens"][subj].float(), c["mask"][subj], c["attrs"][subj], drop)
                loss = F.mse_loss(model.eps(self.scheduler.add_noise(z, noise, t), t, ctx, sl), noise)
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
                        for pe, pl in zip(ema[name].parameters(), live.parameters()):
                            pe.mul_(decay).add_(pl.detach(), alpha=1 - decay)
                history.append([step, round(elapsed + time.monotonic() - t0, 2), float(loss.detach())])
                bar.update(1)
                if step % 200 == 0:
                    logger.info("diffusion step %d loss(avg200) %.4f", step, np.mean([h[2] for h in history[-200:]]))
                if time.monotonic() - last > cfg.checkpoint_minutes * 60:
                    save(False)
                    last = time.monotonic()
        finally:
            bar.close()
            save(step >= dcfg.steps)
        return {"steps": step, "minutes": round((elapsed + time.monotonic() - t0) / 60, 2),
                "final_loss": float(np.mean([h[2] for h in history[-200:]])) if history else None}

    def export(self, ema: dict, c: dict, ae_info: dict, diff_info: dict) -> Path:
        export = Slice2d(self.config, self.cohort.grid.shape, int(c["text_dim"]))
        export.autoencoder.load_state_dict(self.model.autoencoder.state_dict())
        export.unet.load_state_dict(ema["unet"].state_dict())
        export.conditioner.load_state_dict(ema["conditioner"].state_dict())
        export.latent_scale.fill_(float(c["scale"]))
        meta = {"created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "cohort": {"name": self.cohort.name, "content_hash": self.cohort.content_hash,
                           "synthetic": self.cohort.synthetic, "n_train": len(self.train_subjects),
                           "grid": self.cohort.grid.to_dict()},
                "training": {"seed": self.config.training.seed, "autoencoder": ae_info, "diffusion": diff_info,
                             "weights": "ema", "torch": torch.__version__},
                "text_encoder": {"model": c["text_model"], "fingerprint": c["text_fingerprint"],
                                 "max_tokens": self.config.conditioning.max_tokens, "dim": c["text_dim"]},
                "text_dim": int(c["text_dim"]), "caption_parser": c["parser"]}
        last = self.out / "slice2d_last.safetensors"
        save_checkpoint(export, last, meta, half=False)
        if self.ship is not None:
            sha = save_checkpoint(export, self.ship, meta, half=True)
            logger.info("shipped %s (float16, %.2f MB, sha256 %s)", self.ship, self.ship.stat().st_size / 1e6, sha)
        return last


def train(cohort: Cohort, config: Slice2dConfig, out: str | Path, *, resume: bool = False,
          max_minutes: float | None = None, ship: str | Path | None = None, quiet: bool = False) -> dict:
    """Both stages (autoencoder, diffusion); returns a summary. ``max_minutes`` caps each stage."""
    torch.set_num_threads(config.training.num_threads)
    tr = Trainer(cohort, config, out, ship=ship, quiet=quiet)
    ae = tr.train_autoencoder(resume=resume, max_minutes=max_minutes)
    diff = tr.train_diffusion(resume=resume, max_minutes=max_minutes, ae_info=ae)
    return {"autoencoder": ae, "diffusion": diff, "checkpoint": str(Path(out) / "slice2d_last.safetensors")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m generators.slice2d.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cohort", required=True, help="cohort name (phantom) or a prepared cohort folder")
    ap.add_argument("--grid", default="3mm")
    ap.add_argument("--config", default="phantom_3mm", help="YAML file or bundled config name")
    ap.add_argument("--out", required=True, help="output folder (states, loss curves, exported checkpoint)")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--max-minutes", type=float, default=None, help="wall-time cap per stage")
    ap.add_argument("--ship", default=None, help="also write a float16 copy of the exported checkpoint here")
    ap.add_argument("--n-subjects", type=int, default=400)
    ap.add_argument("--cohort-seed", type=int, default=0)
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from generators.ldm3d.train import resolve_cohort

    config = load_config(args.config)
    config.grid = args.grid
    cohort = resolve_cohort(args.cohort, args.grid, args.n_subjects, args.cohort_seed, args.quiet)
    summary = train(cohort, config, args.out, resume=args.resume, max_minutes=args.max_minutes, ship=args.ship,
                    quiet=args.quiet)
    logger.info("done: %s", summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
