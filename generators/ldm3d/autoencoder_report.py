"""How much anatomy an ldm3d autoencoder keeps: reconstruction of held-out volumes, measured and shown.

No sample of a latent diffusion model can be sharper than its decoder's reconstructions, so every
candidate autoencoder is judged here before any diffusion training. Each held-out (``test`` split)
volume of the training cohort is encoded to its posterior mean and decoded, clipped to [0, 1] and
zeroed outside the atlas brain mask (exactly what the generator does to a sample). Reported, over all
volumes and per modality:

* ``l1_brain``: mean absolute error inside the brain mask;
* ``ssim``: 3D SSIM (:func:`metrics.functional.ssim.ssim3d`, Gaussian window, data range 1);
* ``sharpness_db``: the spectral-sharpness distance (:mod:`metrics.sharpness`): mean |dB| difference over
  the shells at or above half Nyquist between each reconstruction's radial power spectrum and the mean
  spectrum of the originals of its modality; ``sharpness_floor_db`` is the same for the originals
  themselves (their spread around their own mean), and ``hf_excess_db`` is signed (negative = blur);
* ``frd``: the Fréchet Radiomics Distance between the reconstructions' and the originals' pyradiomics
  features (z-scored by the originals), with ``frd_floor`` = FRD(validation split, test split), the
  distance between two real sets of this cohort;
* latent usage (:func:`latent_usage`): per latent channel, the signal-to-noise ratio of the posterior
  (spread of the posterior means over the held-out volumes against the mean posterior variance),
  ``active_channels`` (SNR > 1) and ``latent_bits`` (Gaussian-channel capacity summed over the latent).
  A KL term that is too strong collapses channels onto the prior (SNR near 0): the decoder then gets
  the same latent for every subject in those channels and can only draw the average anatomy.

Usage::

    python -m generators.ldm3d.autoencoder_report --checkpoint generators/ldm3d/checkpoints/phantom_3mm.safetensors \\
        --out docs/ldm3d/autoencoder [--n 100] [--label shipped]

writes ``OUT/<label>.json`` and ``OUT/<label>.png`` (mid-slices, original above reconstruction, one
column per modality).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch

__all__ = ["latent_usage", "report", "write_figure", "main"]

logger = logging.getLogger("generators.ldm3d.autoencoder_report")


def _sharpness(rec: np.ndarray, orig: np.ndarray, mods: list[str], mask: np.ndarray, voxel_size: float) -> dict:
    from metrics.functional.spectrum import radial_power_spectrum, spectral_distance_db

    p_r, centres = radial_power_spectrum(rec, mask, voxel_size=voxel_size)
    p_o, _ = radial_power_spectrum(orig, mask, voxel_size=voxel_size)
    shells = np.isfinite(p_o).all(axis=0)  # tiny grids have shells with no coefficient (as in the metric)
    p_r, p_o, centres = p_r[:, shells], p_o[:, shells], centres[shells]
    targets = {m: np.nanmean(p_o[[i for i, x in enumerate(mods) if x == m]], axis=0) for m in set(mods)}
    t = np.stack([targets[m] for m in mods])
    hf = centres >= 0.5 * (0.5 / voxel_size)
    return {"sharpness_db": spectral_distance_db(p_r[:, hf], t[:, hf]),
            "sharpness_floor_db": spectral_distance_db(p_o[:, hf], t[:, hf]),
            "hf_excess_db": np.nanmean((p_r - t)[:, hf], axis=1)}


def _frd(rec: np.ndarray, orig: np.ndarray, other: np.ndarray, mask: np.ndarray, voxel_size: float) -> dict:
    from metrics.features.radiomics import RadiomicsExtractor
    from metrics.functional.radiomics import Standardiser, frd

    ex = RadiomicsExtractor(brain_mask=mask)
    try:
        f_rec, f_orig, f_other = (ex(v, voxel_size) for v in (rec, orig, other))
    finally:
        ex.close()
    st = Standardiser.fit(f_orig, f_rec, f_other)
    return {"frd": float(frd(f_rec, f_orig, standardiser=st)),
            "frd_floor": float(frd(f_other, f_orig, standardiser=st)),
            "n_floor": int(len(other))}


@torch.no_grad()
def latent_usage(model, volumes: np.ndarray, batch: int = 8) -> dict:
    """How much of its latent an autoencoder uses on ``volumes`` (N >= 2).

    Per channel ``c``: ``snr_c = mean_v Var_n(mu[n, c, v]) / mean_v mean_n sigma[n, c, v]^2`` (posterior
    means over the N volumes against the posterior noise, averaged over latent voxels ``v``); a channel
    is active when ``snr_c > 1``, the scale-free counterpart of the "active units" of Burda et al. 2016
    (ICLR, "Importance Weighted Autoencoders"). ``latent_bits`` is ``sum_{c,v} 0.5 log2(1 + Var_n(mu) /
    mean_n sigma^2)``: what a Gaussian channel with that signal and noise can carry per volume.
    """
    if len(volumes) < 2:
        raise ValueError("latent_usage needs at least 2 volumes (a spread over volumes)")
    mus, sigmas = [], []
    for i in range(0, len(volumes), batch):
        mu, sigma = model.encode_dist(torch.as_tensor(volumes[i:i + batch], dtype=torch.float32))
        mus.append(mu.double())
        sigmas.append(sigma.double())
    mu, sigma = torch.cat(mus), torch.cat(sigmas)
    signal, noise = mu.var(0), sigma.pow(2).mean(0).clamp_min(1e-12)  # (C, *latent)
    spatial = tuple(range(1, signal.ndim))
    snr = (signal.mean(spatial) / noise.mean(spatial)).tolist()
    return {"latent_snr_per_channel": [round(v, 4) for v in snr], "active_channels": int(sum(v > 1 for v in snr)),
            "latent_bits": float(0.5 * torch.log2(1 + signal / noise).sum())}


def report(checkpoint: str | Path, *, n: int = 100, cohort=None, with_frd: bool = True) -> tuple[dict, dict]:
    """Reconstruct ``n`` held-out volumes with ``checkpoint``'s autoencoder and measure them.

    Returns:
        ``(summary, arrays)``: the JSON-ready summary and ``{"original", "reconstruction", "modality"}``
        for the figure.
    """
    from generators.common.training import resolve_cohort
    from generators.ldm3d.checkpoint import load_checkpoint
    from generators.ldm3d_recon import reconstruct
    from metrics.functional.ssim import ssim3d

    loaded = load_checkpoint(checkpoint)
    if cohort is None:
        cohort = resolve_cohort(loaded.meta.get("cohort", {}).get("name", "phantom"), loaded.model.config.grid,
                                quiet=True)
    test = sorted(cohort.split("test"), key=lambda s: s.subject_id)[:n]
    if not test:
        raise RuntimeError(f"cohort {cohort.name!r} has no test split to reconstruct")
    mask = cohort.brain_mask()
    voxel = float(cohort.grid.voxel_size)
    orig = cohort.load_volumes(test) * mask[None, None]
    rec, _ = reconstruct(loaded.model, orig, mask)
    mods = [str(s.attributes().get("modality", "any")).lower() for s in test]
    l1 = np.abs(rec - orig)[:, 0][:, mask].mean(axis=1)
    ssim = np.asarray(ssim3d(rec, orig, data_range=1.0), dtype=np.float64).reshape(-1)
    per = {"l1_brain": l1, "ssim": ssim, **_sharpness(rec, orig, mods, mask, voxel)}
    summary: dict = {"checkpoint": Path(checkpoint).name, "sha256": loaded.sha256, "n": len(test),
                     "cohort": cohort.name, "cohort_hash": cohort.content_hash, "voxel_size_mm": voxel}
    summary.update({k: float(np.mean(v)) for k, v in per.items()})
    if len(test) >= 2:
        summary.update(latent_usage(loaded.model, orig))
    summary["per_modality"] = {m: {k: float(np.mean(v[[i for i, x in enumerate(mods) if x == m]]))
                                   for k, v in per.items()} for m in sorted(set(mods))}
    if with_frd:
        val = sorted(cohort.split("val"), key=lambda s: s.subject_id)
        summary.update(_frd(rec, orig, cohort.load_volumes(val) * mask[None, None], mask, voxel))
    return summary, {"original": orig, "reconstruction": rec, "modality": mods}


def write_figure(path: Path, arrays: dict, title: str) -> None:
    """Per modality, the first held-out original above its reconstruction (axial and coronal mid-slices)."""
    from generators.ldm3d.figures import pairs_figure

    mods = sorted(set(arrays["modality"]))
    first = [arrays["modality"].index(m) for m in mods]
    pairs_figure(path, [(m.upper(), arrays["original"][i, 0], arrays["reconstruction"][i, 0])
                        for m, i in zip(mods, first)], ("original", "reconstruction"), title)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m generators.ldm3d.autoencoder_report",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="an ldm3d .safetensors checkpoint")
    ap.add_argument("--out", required=True, help="folder for <label>.json and <label>.png")
    ap.add_argument("--label", default=None, help="file stem (default: the checkpoint's stem)")
    ap.add_argument("--n", type=int, default=100, help="held-out volumes to reconstruct (default 100)")
    ap.add_argument("--no-frd", action="store_true", help="skip the radiomics FRD (the slow part)")
    args = ap.parse_args(argv)
    if args.n < 1:
        ap.error("--n must be >= 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(2)
    label = args.label or Path(args.checkpoint).stem
    summary, arrays = report(args.checkpoint, n=args.n, with_frd=not args.no_frd)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{label}.json").write_text(json.dumps(summary, indent=1) + "\n")
    write_figure(out / f"{label}.png", arrays, f"{label}: held-out reconstructions (SSIM {summary['ssim']:.3f}, "
                 f"sharpness {summary['sharpness_db']:.2f} dB)")
    print(json.dumps({k: v for k, v in summary.items() if k != "per_modality"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
