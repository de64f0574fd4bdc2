"""Train ldm3d on a cohort's train split: autoencoder first, then latent diffusion.

Usage::

    python -m generators.ldm3d.train --cohort phantom --grid 3mm \\
        --config generators/ldm3d/configs/phantom_3mm.yaml --out runs/ldm3d-train \\
        [--stage autoencoder|decoder|diffusion|all] [--resume] [--max-minutes M] [--ship PATH]
        [--init-from CHECKPOINT]

Stage 1 fits the KL autoencoder (L1 + KL + L1 on finite differences) and exports
``OUT/autoencoder_only.safetensors`` (the autoencoder in a checkpoint with an untrained UNet), which
``python -m generators.ldm3d.autoencoder_report`` and the ``ldm3d-recon`` generator judge before any
diffusion training. Its posteriors (mean, std) for
the train volumes, the caption token embeddings and the attribute features are then computed ONCE and
cached in ``OUT/``. The optional stage 1b (``decoder``, when ``training.decoder.steps > 0``) fine-tunes
the decoder alone with perceptual and patch-adversarial losses
(:mod:`generators.common.decoder_training`): the latents do not change. Stage 2 trains the
cross-attention UNet on latents from the cached posteriors (Rombach et al. 2022; Pinaya et al. 2022)
with caption dropout for classifier-free guidance (Ho & Salimans 2022). ``--init-from CHECKPOINT``
starts from a trained checkpoint, e.g. to sharpen the decoder of a shipped model without retraining
its UNet.

Everything is resumable: ``OUT/state_<stage>.pt`` (weights, optimiser, step, elapsed time, loss
history; read back with ``torch.load(weights_only=True)``) is rewritten atomically every
``training.checkpoint_minutes``. The batch order and noise of step ``s`` derive from
``(seed, stage, s)``, so a resumed run draws what the uninterrupted run would have. During stage 2
every checkpoint also exports ``OUT/ldm3d_last.safetensors`` (float32, EMA weights) and, with
``--ship``, a float16 copy for the package.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cohorts.subject import Cohort
from generators.common.decoder_training import decoder_summary, train_decoder_stage
from generators.common.training import (atomic_torch_save, checkpoint_meta, diffusion_state, diffusion_update,
                                        ema_copies, export_model, live_modules, load_state, progress_bar,
                                        recent_mean, record_step, resolve_cohort, restore_diffusion_state,
                                        stage_deadline, step_rng, train_autoencoder_stage, write_curve)
from generators.ldm3d.checkpoint import load_checkpoint, save_checkpoint
from generators.ldm3d.conditioning import drop_attributes, encode_captions, n_features
from generators.ldm3d.config import Ldm3dConfig, load_config
from generators.ldm3d.model import Ldm3d, build_model, make_scheduler

__all__ = ["STAGES", "Trainer", "main", "resolve_cohort", "train"]

logger = logging.getLogger("generators.ldm3d.train")

STAGES = ("autoencoder", "decoder", "diffusion")


# ----------------------------------------------------------------------------- trainer
class Trainer:
    """Two-stage ldm3d training on ``cohort``'s train split, checkpointing into ``out``.

    Args:
        cohort: the reference cohort (only its ``train`` split is used).
        config: the model/training config.
        out: output folder (states, caches, curves, exported checkpoints).
        ship: optional path that receives a float16 copy of every exported checkpoint.
        quiet: no progress bars.
        init_from: start from this checkpoint (same architecture); its autoencoder counts as stage 1.
        init_diffusion_from: start the diffusion stage from this checkpoint's UNet and conditioner (same UNet
            and conditioning config; any autoencoder): a warm start on a new autoencoder's latents.
    """

    def __init__(self, cohort: Cohort, config: Ldm3dConfig, out: str | Path, *, ship: str | Path | None = None,
                 quiet: bool = False, init_from: str | Path | None = None,
                 init_diffusion_from: str | Path | None = None):
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
        self.init_meta: dict | None = None
        if init_from is not None:
            self._init_from(Path(init_from))
        self.diffusion_init: dict | None = None
        if init_diffusion_from is not None:
            self._init_diffusion_from(Path(init_diffusion_from))

    def _init_from(self, path: Path) -> None:
        """Start from a trained checkpoint: all its weights, and its autoencoder as a finished stage 1."""
        loaded = load_checkpoint(path)
        if loaded.model.config.to_dict()["autoencoder"] != self.config.to_dict()["autoencoder"] or \
                tuple(loaded.model.grid_shape) != tuple(self.model.grid_shape):
            raise RuntimeError(f"{path}: its autoencoder or grid differs from the config's; --init-from needs the "
                               "same architecture (use the checkpoint's own config)")
        self.model.load_state_dict(loaded.model.state_dict())
        self.init_meta = dict(loaded.meta, sha256=loaded.sha256, path=str(path))
        state = self.out / "state_autoencoder.pt"
        if not state.exists():
            ae = loaded.meta.get("training", {}).get("autoencoder", {})
            atomic_torch_save({"autoencoder": loaded.model.autoencoder.state_dict(), "optimizer": None,
                               "step": int(ae.get("steps", 0)), "elapsed": 60.0 * float(ae.get("minutes", 0.0)),
                               "history": [], "done": True, "init_from": str(path)}, state)

    def _init_diffusion_from(self, path: Path) -> None:
        """Copy a trained checkpoint's UNet and conditioner (not its autoencoder) into the model."""
        loaded = load_checkpoint(path)
        theirs, ours = loaded.model.config.to_dict(), self.config.to_dict()
        differ = [k for k in ("unet", "conditioning") if theirs[k] != ours[k]]
        if theirs["autoencoder"]["latent_channels"] != ours["autoencoder"]["latent_channels"]:
            differ.append("autoencoder.latent_channels")
        if differ:
            raise RuntimeError(f"{path}: its {', '.join(differ)} differ from the config's; --init-diffusion-from "
                               "needs the same UNet, conditioning and number of latent channels")
        self.model.unet.load_state_dict(loaded.model.unet.state_dict())
        self.model.conditioner.load_state_dict(loaded.model.conditioner.state_dict())
        self.diffusion_init = {"file": path.name, "sha256": loaded.sha256}
        logger.info("diffusion stage warm-started from %s (UNet and conditioner; sha256 %s…)", path,
                    loaded.sha256[:12])

    # -------------------------------------------------------------- utilities
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
        """Stage 1 (see :func:`generators.common.training.train_autoencoder_stage`), then
        :meth:`export_autoencoder` so the autoencoder can be judged before any diffusion training."""
        info = train_autoencoder_stage(self.model.autoencoder, self._volumes(), self.config,
                                       self.out / "state_autoencoder.pt", self.out / "loss_autoencoder",
                                       resume=resume, max_minutes=max_minutes, quiet=self.quiet, desc="autoencoder",
                                       curve_title="autoencoder", logger=logger)
        self.export_autoencoder()
        return info

    def export_autoencoder(self) -> Path:
        """``OUT/autoencoder_only.safetensors``: the trained autoencoder (with stage 1b's decoder when it ran)
        in a full checkpoint whose UNet and conditioner are untrained (seeded initialisation; the metadata
        says ``diffusion.steps: 0``). For ``autoencoder_report`` and ``ldm3d-recon`` only: its samples are noise."""
        ae_state = self._load_autoencoder()
        cache = self.latent_cache(self._latent_key(ae_state))
        torch.manual_seed(self.config.training.seed)
        export = build_model(self.config, self.cohort.grid.shape, int(cache.get("text_dim", 384)))
        export.autoencoder.load_state_dict(self.model.autoencoder.state_dict())
        export.conditioner.set_stats({k: (m, sd) for k, m, sd in cache["stats"]})
        mean = self.config.training.diffusion.latents == "mean"
        export.latent_scale.fill_(1.0 / float(cache["mu"].std()) if mean else float(cache["scale"]))
        text = {"model": cache.get("text_model"), "fingerprint": cache.get("text_fingerprint"),
                "max_tokens": cache.get("max_tokens"), "dim": cache.get("text_dim", 384)}
        ae_info = {"steps": int(ae_state["step"]), "minutes": round(float(ae_state["elapsed"]) / 60, 2),
                   "final_l1": recent_mean(ae_state["history"], 3, 100), "done": bool(ae_state.get("done"))}
        meta = checkpoint_meta(self.cohort, len(self.train_subjects), self.config.training.seed, ae_info,
                               {"steps": 0, "untrained": True}, text, cache.get("parser"), monai=_monai_version())
        decoder = self.out / "state_decoder.pt"
        if decoder.exists():
            meta["training"]["decoder"] = decoder_summary(load_state(decoder), self.config.training.decoder)
        path = self.out / "autoencoder_only.safetensors"
        sha = save_checkpoint(export, path, meta)
        logger.info("exported %s (autoencoder only, untrained UNet; sha256 %s…)", path, sha[:12])
        return path

    # -------------------------------------------------------------- stage 1b
    def train_decoder(self, *, resume: bool = False, max_minutes: float | None = None) -> dict:
        """Fine-tune the decoder, encoder frozen (:func:`generators.common.decoder_training.train_decoder_stage`).

        With ``--init-from`` the exported checkpoint is the initial one with the new decoder: its latent
        space, UNet and conditioner are unchanged.
        """
        ae_state = self._load_autoencoder(with_decoder=False)
        # the whole autoencoder trains from images (its latents move); the decoder alone from cached latents
        latents = None if self.config.training.decoder.train_encoder else \
            self.latent_cache(int(ae_state["step"]))["mu"]
        state = self.out / "state_decoder.pt"
        try:
            return train_decoder_stage(self.model.autoencoder, latents, self._volumes(), self.config, state,
                                       self.out / "loss_decoder", voxel_size=self.cohort.grid.voxel_size,
                                       resume=resume, max_minutes=max_minutes, quiet=self.quiet, logger=logger)
        finally:  # also when stopped (Ctrl-C, `kill`): the saved state is exported, as stage 2 does
            if self.init_meta is not None and state.exists():
                self.export_reused(decoder_summary(load_state(state), self.config.training.decoder))
            elif state.exists():  # judged (autoencoder_report, ldm3d-recon) before any diffusion
                self.export_autoencoder()

    def export_reused(self, decoder_info: dict) -> Path:
        """The ``--init-from`` checkpoint with this run's decoder (its UNet, conditioner and scale kept)."""
        meta = {k: v for k, v in self.init_meta.items() if k not in ("sha256", "path", "format", "grid_shape",
                                                                      "latent_scale", "param_counts")}
        meta["config"] = self.config.to_dict()
        meta["training"] = dict(meta.get("training", {}), decoder=dict(decoder_info, init_from={
            "file": Path(self.init_meta["path"]).name, "sha256": self.init_meta["sha256"]}))
        last = self.out / "ldm3d_last.safetensors"
        sha = save_checkpoint(self.model, last, meta)
        logger.info("exported %s (sha256 %s…)", last, sha[:12])
        if self.ship is not None:
            sha16 = save_checkpoint(self.model, self.ship, meta, half=True)
            logger.info("shipped %s (float16, sha256 %s)", self.ship, sha16)
        return last

    # -------------------------------------------------------------- caches
    def _load_autoencoder(self, *, with_decoder: bool = True) -> dict:
        """Stage 1's autoencoder (and, when ``with_decoder``, stage 1b's fine-tuned decoder if any)."""
        path = self.out / "state_autoencoder.pt"
        if not path.exists():
            raise RuntimeError(f"{path}: no trained autoencoder; run --stage autoencoder first (same --out)")
        st = load_state(path)
        self.model.autoencoder.load_state_dict(st["autoencoder"])
        decoder = self.out / "state_decoder.pt"
        if with_decoder and decoder.exists():  # the encoder is unchanged by stage 1b: same latents
            self.model.autoencoder.load_state_dict(load_state(decoder)["autoencoder"])
        self.model.autoencoder.eval()
        return st

    def _latent_key(self, ae_state: dict) -> int | str:
        """What the latent space depends on: stage 1's step, and stage 1b's when it trained the encoder too."""
        key = int(ae_state["step"])
        decoder = self.out / "state_decoder.pt"
        if self.config.training.decoder.train_encoder and decoder.exists():
            return f"{key}+{int(load_state(decoder)['step'])}"
        return key

    @torch.no_grad()
    def latent_cache(self, ae_step: int | str) -> dict:
        """Posterior mean/std of every train volume + text tokens + attribute features (computed once)."""
        path = self.out / "latents.pt"
        ids = [s.subject_id for s in self.train_subjects]
        if path.exists():
            c = load_state(path)
            if c.get("ae_step") == ae_step and c.get("ids") == ids and \
                    c.get("max_tokens") == self.config.conditioning.max_tokens and \
                    c["attrs"].shape[-1] == n_features(self.config.conditioning.fourier_features):
                return c
        vols = self._volumes()
        logger.info("encoding %d train volumes once (autoencoder step %s)", len(ids), ae_step)
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
        captions = [s.caption for s in self.train_subjects]
        enc = encode_captions(captions, cond)
        te, stats = enc["encoder"], enc["stats"]
        n_trunc = sum(len(te.tokenizer(c)["input_ids"]) > cond.max_tokens for c in captions)
        if n_trunc:
            logger.warning("%d train caption(s) exceed conditioning.max_tokens=%d and are truncated", n_trunc,
                           cond.max_tokens)
        c = {"ae_step": ae_step, "ids": ids, "mu": mu, "sigma": sigma, "scale": scale, "tokens": enc["tokens"],
             "mask": enc["mask"], "attrs": enc["attrs"], "stats": [[k, *v] for k, v in stats.items()],
             "parser": enc["parser"], "max_tokens": cond.max_tokens, "text_fingerprint": te.fingerprint,
             "text_model": te.model_dir.name, "text_dim": te.dim, "n_truncated": n_trunc}
        atomic_torch_save(c, path)
        logger.info("latent cache: %s, latent scale %.4f", tuple(mu.shape), scale)
        return c

    # -------------------------------------------------------------- stage 2
    def train_diffusion(self, *, resume: bool = False, max_minutes: float | None = None) -> dict:
        cfg = self.config.training
        dcfg = cfg.diffusion
        ae_state = self._load_autoencoder()
        latent_key = self._latent_key(ae_state)
        cache = self.latent_cache(latent_key)
        model = self.model
        use_mean = dcfg.latents == "mean"
        scale = 1.0 / float(cache["mu"].std()) if use_mean else float(cache["scale"])
        model.latent_scale.fill_(scale)
        model.conditioner.set_stats({k: (m, s) for k, m, s in cache["stats"]})
        params = list(model.unet.parameters()) + list(model.conditioner.parameters())
        opt = torch.optim.AdamW(params, lr=dcfg.lr, weight_decay=0.0)
        live = live_modules(model)
        ema_modules = ema_copies(live)
        state_path = self.out / "state_diffusion.pt"
        step, elapsed, history = 0, 0.0, []
        saved = load_state(state_path) if resume and state_path.exists() else None
        if saved is not None and saved.get("ae_step") != latent_key:
            logger.warning("%s was trained on latents of another autoencoder state (step %s, now %s); "
                           "starting the diffusion stage from scratch", state_path, saved.get("ae_step"), latent_key)
            saved = None
        warm_start = self.diffusion_init  # where this stage's UNet started (None: from scratch)
        if saved is not None:
            step, elapsed, history = restore_diffusion_state(saved, model, ema_modules, opt)
            warm_start = saved.get("init_from")
            logger.info("resumed diffusion at step %d (%.1f min)", step, elapsed / 60)
        del saved
        mu, sigma = cache["mu"], cache["sigma"]
        tokens, mask, attrs = cache["tokens"], cache["mask"], cache["attrs"]
        n = mu.shape[0]
        T = self.config.scheduler.num_train_timesteps
        p_drop = self.config.conditioning.caption_dropout
        deadline = stage_deadline(dcfg.max_minutes, elapsed, max_minutes)
        t_start, last_ckpt = time.monotonic(), time.monotonic()
        elapsed0 = elapsed
        ae_info = {"steps": int(ae_state["step"]), "minutes": round(float(ae_state["elapsed"]) / 60, 2),
                   "final_l1": recent_mean(ae_state["history"], 3, 100)}

        def save(done: bool):
            nonlocal last_ckpt
            minutes = (elapsed0 + time.monotonic() - t_start) / 60
            atomic_torch_save(diffusion_state(model, ema_modules, opt, step, minutes * 60, history, done=done,
                                              ae_step=latent_key, init_from=warm_start), state_path)
            write_curve(history, ["step", "time_s", "loss"], self.out / "loss_diffusion", "latent diffusion (MSE)")
            if step > 0:
                self.export(ema_modules, cache, ae_info, scale, {
                    "steps": step, "minutes": round(minutes, 2), "batch_size": dcfg.batch_size,
                    "final_loss": recent_mean(history, 2, 200), "prediction": self.config.prediction,
                    "latents": dcfg.latents, "snr_gamma": dcfg.snr_gamma, "done": done,
                    **({"init_from": warm_start} if warm_start else {})})
            last_ckpt = time.monotonic()

        model.unet.train()
        model.conditioner.train()
        bar = progress_bar(dcfg.steps, step, "diffusion", self.quiet)
        try:
            while step < dcfg.steps and time.monotonic() < deadline:
                rng, g = step_rng(cfg.seed, 2, step)
                idx = torch.from_numpy(rng.choice(n, size=min(dcfg.batch_size, n), replace=n < dcfg.batch_size))
                b = len(idx)
                e = torch.randn(mu[idx].shape, generator=g)  # drawn in both modes: same RNG stream
                z = (mu[idx] if use_mean else mu[idx] + sigma[idx] * e) * scale
                z = model.pad(z)
                noise = torch.randn(z.shape, generator=g)
                t = torch.randint(0, T, (b,), generator=g)
                drop = torch.rand(b, generator=g) < p_drop
                a = drop_attributes(attrs[idx], self.config.conditioning.attribute_dropout, g)  # no draw at 0
                x_t = self.scheduler.add_noise(z, noise, t)
                ctx = model.conditioner(tokens[idx].float(), mask[idx], a, drop)
                pred = model.net(x_t, t, ctx)
                v_target = self.config.prediction == "v"
                target = self.scheduler.get_velocity(z, noise, t) if v_target else noise
                if dcfg.snr_gamma > 0:  # Min-SNR-gamma weighting (Hang et al. 2023)
                    ac = self.scheduler.alphas_cumprod[t]
                    snr = ac / (1 - ac)
                    w = torch.clamp(snr, max=dcfg.snr_gamma) / (snr + 1 if v_target else snr)
                    loss = (w * (pred - target).pow(2).mean(dim=(1, 2, 3, 4))).mean()
                else:
                    loss = F.mse_loss(pred, target)
                step = diffusion_update(opt, loss, params, step, dcfg, cfg.grad_clip, ema_modules, live)
                record_step(history, [step, round(elapsed0 + time.monotonic() - t_start, 2), float(loss.detach())],
                            bar, logger, every=100, message="diffusion step %d loss(avg100) %.4f", columns=(2,),
                            postfix={"loss": 2})
                if time.monotonic() - last_ckpt > cfg.checkpoint_minutes * 60:
                    save(False)
        finally:
            bar.close()
            save(step >= dcfg.steps)
        return {"steps": step, "minutes": round((elapsed0 + time.monotonic() - t_start) / 60, 2),
                "final_loss": recent_mean(history, 2, 200)}

    # -------------------------------------------------------------- export
    def export(self, ema_modules: dict, cache: dict, ae_info: dict, scale: float, diff_info: dict) -> Path:
        """EMA weights + autoencoder -> ``OUT/ldm3d_last.safetensors`` (and the ``--ship`` copy)."""
        export = export_model(build_model(self.config, self.cohort.grid.shape, int(cache.get("text_dim", 384))),
                              self.model, ema_modules, scale)
        text = {"model": cache.get("text_model"), "fingerprint": cache.get("text_fingerprint"),
                "max_tokens": cache.get("max_tokens"), "dim": cache.get("text_dim", 384)}
        meta = checkpoint_meta(self.cohort, len(self.train_subjects), self.config.training.seed, ae_info, diff_info,
                               text, cache.get("parser"), monai=_monai_version())
        decoder = self.out / "state_decoder.pt"
        if decoder.exists():  # stage 1b ran: its decoder is in the exported autoencoder
            meta["training"]["decoder"] = decoder_summary(load_state(decoder), self.config.training.decoder)
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
          max_minutes: float | None = None, ship: str | Path | None = None, quiet: bool = False,
          init_from: str | Path | None = None, init_diffusion_from: str | Path | None = None) -> dict:
    """Run one or both training stages (see module docstring); returns a summary dict.

    Args:
        cohort: training cohort (train split used).
        config: model/training config.
        out: output folder.
        stage: "autoencoder", "decoder", "diffusion" or "all" (the decoder stage runs when
            ``training.decoder.steps > 0``).
        resume: continue from ``OUT/state_<stage>.pt`` when present.
        max_minutes: wall-time limit of this invocation per stage (a checkpoint is written on stop).
        ship: optional path for a float16 copy of every exported checkpoint.
        quiet: no progress bars.
        init_from: start from this checkpoint (same architecture): its autoencoder counts as stage 1.
        init_diffusion_from: warm-start the diffusion stage from this checkpoint's UNet and conditioner.
    """
    if stage not in (*STAGES, "all"):
        raise ValueError(f"unknown stage {stage!r}; choose autoencoder, decoder, diffusion or all")
    torch.set_num_threads(config.training.num_threads)
    trainer = Trainer(cohort, config, out, ship=ship, quiet=quiet, init_from=init_from,
                      init_diffusion_from=init_diffusion_from)
    summary: dict = {}
    if stage in ("autoencoder", "all") and init_from is None:
        summary["autoencoder"] = trainer.train_autoencoder(resume=resume, max_minutes=max_minutes)
    if stage == "decoder" or (stage == "all" and config.training.decoder.steps > 0):
        summary["decoder"] = trainer.train_decoder(resume=resume, max_minutes=max_minutes)
    if stage in ("diffusion", "all"):
        summary["diffusion"] = trainer.train_diffusion(resume=resume, max_minutes=max_minutes)
    full = Path(out) / "ldm3d_last.safetensors"  # absent when only the autoencoder has been trained
    summary["checkpoint"] = str(full if full.exists() else Path(out) / "autoencoder_only.safetensors")
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
    ap.add_argument("--init-from", default=None, help="start from this checkpoint (same architecture); its "
                    "autoencoder counts as stage 1 (e.g. --stage decoder to sharpen a shipped model's decoder)")
    ap.add_argument("--init-diffusion-from", default=None, help="start the diffusion stage from this checkpoint's "
                    "UNet and conditioner (same UNet config, any autoencoder): a warm start on new latents")
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
                    ship=args.ship, quiet=args.quiet, init_from=args.init_from,
                    init_diffusion_from=args.init_diffusion_from)
    logger.info("done: %s", summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
