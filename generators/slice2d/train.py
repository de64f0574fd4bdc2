"""Train slice2d on a cohort's train split: 2D autoencoder on slices, then 2D latent diffusion.

Usage::

    python -m generators.slice2d.train --cohort phantom --grid 3mm \\
        --config generators/slice2d/configs/phantom_3mm.yaml --out runs/slice2d-train \\
        [--resume] [--max-minutes M] [--ship generators/slice2d/checkpoints/phantom_3mm.safetensors]

Stage 1 fits the 2D KL autoencoder on random slices (L1 + KL + L1 on finite differences, as ldm3d).
The posterior means of every slice of every training volume, the caption token embeddings and the
attribute features are then computed once; stage 2 trains the UNet (v-prediction, Salimans & Ho 2022,
by default) on (slice latent, slice index, caption) triples with caption dropout for classifier-free guidance (Ho & Salimans 2022). Batch order
and noise of step ``s`` derive from ``(seed, stage, s)``; ``OUT/state_<stage>.pt`` (read back with
``torch.load(weights_only=True)``) is rewritten every ``training.checkpoint_minutes`` and at the end,
so ``--resume`` continues where a run stopped. The EMA weights are exported to
``OUT/slice2d_last.safetensors`` (float32) and, with ``--ship``, as float16.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from cohorts.subject import Cohort
from generators.common.training import (atomic_torch_save, checkpoint_meta, diffusion_state, diffusion_update,
                                        ema_copies, export_model, live_modules, load_state, progress_bar,
                                        recent_mean, resolve_cohort, restore_diffusion_state, stage_deadline,
                                        step_rng, train_autoencoder_stage, write_curve)
from generators.ldm3d.conditioning import drop_attributes, encode_captions
from generators.slice2d.model import Slice2d, Slice2dConfig, load_config, make_scheduler, save_checkpoint

__all__ = ["Trainer", "main", "train"]

logger = logging.getLogger("generators.slice2d.train")


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

    # -------------------------------------------------------------- stage 1
    def train_autoencoder(self, *, resume: bool, max_minutes: float | None) -> dict:
        """Stage 1 on random slices (see :func:`generators.common.training.train_autoencoder_stage`);
        ``max_minutes`` caps the stage's total time including what a resumed run already spent."""
        return train_autoencoder_stage(self.model.autoencoder, self.slices(), self.config,
                                       self.out / "state_autoencoder.pt", self.out / "loss_autoencoder.csv",
                                       resume=resume, max_minutes=max_minutes, quiet=self.quiet,
                                       desc="slice2d autoencoder", cap_includes_elapsed=True, logger=logger)

    # -------------------------------------------------------------- caches
    @torch.no_grad()
    def cache(self) -> dict:
        """Slice latents (posterior means), caption tokens, attribute features, z-scoring stats."""
        x_all = self.slices()
        mus = [self.model.autoencoder.encode(x_all[i:i + 256])[0] for i in range(0, len(x_all), 256)]
        mu = torch.cat(mus)
        scale = 1.0 / float(mu.std())
        enc = encode_captions([s.caption for s in self.train_subjects], self.config.conditioning)
        te = enc.pop("encoder")
        return {"mu": mu, "scale": scale, **enc, "text_fingerprint": te.fingerprint,
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
        live = live_modules(model)
        ema = ema_copies(live)
        path = self.out / "state_diffusion.pt"
        step, elapsed, history = 0, 0.0, []
        if resume and path.exists():
            step, elapsed, history = restore_diffusion_state(load_state(path), model, ema, opt)
        S = model.n_slices
        n = c["mu"].shape[0]
        T = self.config.scheduler.num_train_timesteps
        deadline = stage_deadline(dcfg.max_minutes, elapsed, max_minutes, cap_includes_elapsed=True)
        t0 = last = time.monotonic()

        def save(done: bool):
            minutes = (elapsed + time.monotonic() - t0) / 60
            atomic_torch_save(diffusion_state(model, ema, opt, step, minutes * 60, history), path)
            write_curve(history, ["step", "time_s", "loss"], self.out / "loss_diffusion.csv")
            if step > 0:
                self.export(ema, c, ae_info, {"steps": step, "minutes": round(minutes, 2),
                                              "batch_size": dcfg.batch_size, "done": done,
                                              "final_loss": recent_mean(history, 2, 200)})

        model.unet.train()
        model.conditioner.train()
        bar = progress_bar(dcfg.steps, step, "slice2d diffusion", self.quiet)
        try:
            while step < dcfg.steps and time.monotonic() < deadline:
                rng, g = step_rng(cfg.seed, 2, step)
                idx = torch.from_numpy(rng.choice(n, size=dcfg.batch_size, replace=False))
                subj, sl = idx // S, idx % S
                z = model.pad(c["mu"][idx] * c["scale"])
                noise = torch.randn(z.shape, generator=g)
                t = torch.randint(0, T, (len(idx),), generator=g)
                drop = torch.rand(len(idx), generator=g) < self.config.conditioning.caption_dropout
                attrs = drop_attributes(c["attrs"][subj], self.config.conditioning.attribute_dropout, g)
                ctx = model.conditioner(c["tokens"][subj].float(), c["mask"][subj], attrs, drop)
                target = self.scheduler.get_velocity(z, noise, t) if self.config.prediction == "v" else noise
                loss = F.mse_loss(model.eps(self.scheduler.add_noise(z, noise, t), t, ctx, sl), target)
                step = diffusion_update(opt, loss, params, step, dcfg, cfg.grad_clip, ema, live)
                history.append([step, round(elapsed + time.monotonic() - t0, 2), float(loss.detach())])
                bar.update(1)
                if step % 200 == 0:
                    logger.info("diffusion step %d loss(avg200) %.4f", step, recent_mean(history, 2, 200))
                if time.monotonic() - last > cfg.checkpoint_minutes * 60:
                    save(False)
                    last = time.monotonic()
        finally:
            bar.close()
            save(step >= dcfg.steps)
        return {"steps": step, "minutes": round((elapsed + time.monotonic() - t0) / 60, 2),
                "final_loss": recent_mean(history, 2, 200)}

    def export(self, ema: dict, c: dict, ae_info: dict, diff_info: dict) -> Path:
        export = export_model(Slice2d(self.config, self.cohort.grid.shape, int(c["text_dim"])), self.model, ema,
                              c["scale"])
        text = {"model": c["text_model"], "fingerprint": c["text_fingerprint"],
                "max_tokens": self.config.conditioning.max_tokens, "dim": c["text_dim"]}
        meta = checkpoint_meta(self.cohort, len(self.train_subjects), self.config.training.seed, ae_info, diff_info,
                               text, c["parser"])
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
    config = load_config(args.config)
    config.grid = args.grid
    cohort = resolve_cohort(args.cohort, args.grid, args.n_subjects, args.cohort_seed, args.quiet)
    summary = train(cohort, config, args.out, resume=args.resume, max_minutes=args.max_minutes, ship=args.ship,
                    quiet=args.quiet)
    logger.info("done: %s", summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
