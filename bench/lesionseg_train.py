"""Train and validate the lesion-segmentation network of :mod:`metrics.lesionseg` (here, not in
``metrics``, because it reads cohorts and the atlas).

    python -m bench.lesionseg_train --cohort DIR --out metrics/weights/lesionseg_3mm.safetensors [--steps 1500]
    python -m bench.lesionseg_train --validate DIR [--weights PATH] [--split test]

``--cohort`` is a ``phantom-ms`` cohort folder (``python -m bench cohort build phantom-ms --seed 1 --out
DIR``); every subject of it trains. Training: random 32^3 crops (half of them centred on a lesion voxel),
left-right flips, binary cross-entropy plus soft Dice against the lesion tissue fraction, Adam. The
shipped weights record the command, cohort, steps and time in their header. The learning rate decays
from 3e-3 to 3e-4 (cosine).

Validation (on another cohort: the suites' seed-0 ``phantom-ms``): per modality, the Dice of the
segmentation's mask (``fraction > 0.8``, :data:`metrics.functional.lesions.THRESHOLD`) against the ground
truth's ``fraction > 0.5``, lesion-wise detection F1 (a
ground-truth lesion is found when a predicted voxel touches it; a predicted component is true when it
touches a lesion), and the correlation of predicted and true lesion volumes (sums of fractions).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi

from core.io import atomic_write, sha256_file
from core.progress import Progress
from cohorts.atlas import atlas_on_grid
from cohorts.subject import Cohort
from metrics.functional.lesions import THRESHOLD
from metrics.lesionseg import MODALITIES, LesionNet, load_lesion_net, normalise, segment

__all__ = ["load_cohort", "train", "validate", "lesion_scores"]

log = logging.getLogger("braingenbench.lesionseg")


def load_cohort(root: str | Path, split: str | None = None) -> tuple[np.ndarray, np.ndarray, list[str], dict]:
    """Volumes, lesion fractions, modalities and the atlas priors of a cohort folder with lesion maps."""
    cohort = Cohort.load(root)
    subjects = [s for s in cohort.subjects if s.lesion_mask is not None and (split is None or s.split == split)]
    if not subjects:
        raise ValueError(f"{Path(root) / 'manifest.csv'}: no subjects with a lesion_mask"
                         f"{' in split ' + repr(split) if split else ''}; build a phantom-ms cohort")
    vols = np.stack([cohort.load_volume(s) for s in subjects])
    fracs = np.stack([cohort.load_lesion_mask(s) for s in subjects])
    return vols, fracs, [s.modality for s in subjects], atlas_on_grid(cohort.grid)


def _crops(rng, x: torch.Tensor, y: np.ndarray, n: int, size: int):
    xs, ys = [], []
    shape = np.array(x.shape[2:])
    for _ in range(n):
        i = int(rng.integers(len(x)))
        les = np.argwhere(y[i] > 0.5)
        if len(les) and rng.random() < 0.5:
            c = les[int(rng.integers(len(les)))] + rng.integers(-size // 4, size // 4 + 1, 3)
        else:
            c = rng.integers(size // 2, shape - size // 2 + 1)
        lo = np.clip(c - size // 2, 0, shape - size)
        sl = tuple(slice(int(a), int(a) + size) for a in lo)
        xi, yi = x[i][(slice(None), *sl)], torch.from_numpy(y[i][sl].copy())
        if rng.random() < 0.5:  # left-right flip (RAS: axis 0)
            xi, yi = xi.flip(1), yi.flip(0)
        xs.append(xi)
        ys.append(yi)
    return torch.stack(xs), torch.stack(ys)[:, None]


def train(cohort: str | Path, out: str | Path, *, steps: int = 1500, minutes: float = 15.0, batch: int = 4,
          crop: int = 32, width: int = 8, lr: float = 3e-3, seed: int = 0, quiet: bool = False) -> dict:
    """Train on every subject of ``cohort`` for ``steps`` (stopping early after ``minutes``); write ``out``."""
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    vols, fracs, mods, priors = load_cohort(cohort)
    x = normalise(vols, mods, priors)
    net = LesionNet(width)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=lr / 10)
    t0, step, losses = time.perf_counter(), 0, []
    bar = Progress("lesionseg train", steps, unit="step", quiet=quiet, every=60.0)
    while step < steps and time.perf_counter() - t0 < minutes * 60:
        xb, yb = _crops(rng, x, fracs, batch, crop)
        logit = net(xb)
        p = torch.sigmoid(logit)
        bce = nn_bce(logit, yb)
        dice = 1 - (2 * (p * yb).sum() + 1) / (p.sum() + yb.sum() + 1)
        loss = bce + dice
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        step += 1
        bar.update()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
    bar.close()
    minutes_used = (time.perf_counter() - t0) / 60
    meta = {"format": "lesionseg-1", "width": width, "trained_on": str(Path(cohort).name),
            "cohort_hash": json.loads((Path(cohort) / "cohort.json").read_text()).get("content_hash", ""),
            "n_volumes": int(len(vols)), "steps": step, "minutes": round(minutes_used, 1), "batch": batch,
            "crop": crop, "lr": lr, "seed": seed, "final_loss": round(float(np.mean(losses[-50:])), 4),
            "date": date.today().isoformat(), "command": f"python -m bench.lesionseg_train --cohort DIR --steps {steps} --width {width}"}
    tensors = {k: v.detach().half().contiguous() for k, v in net.state_dict().items()}
    atomic_write(Path(out), lambda tmp: save_file(tensors, tmp, metadata={"format": "pt", "lesionseg": json.dumps(meta)}))
    meta["sha256"] = sha256_file(out)
    return meta


def nn_bce(logit: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.binary_cross_entropy_with_logits(logit, target)


def lesion_scores(pred: np.ndarray, truth: np.ndarray) -> dict:
    """Dice, lesion-wise detection counts and volumes (in voxels) of one predicted vs true fraction map
    (the prediction's mask: ``fraction > THRESHOLD``; the truth's: ``fraction > 0.5``)."""
    p, t = pred > THRESHOLD, truth > 0.5
    tl, nt = ndi.label(truth > 0)
    pl, np_ = ndi.label(p)
    found = len(set(np.unique(tl[p])) - {0})
    true_pred = len(set(np.unique(pl[truth > 0])) - {0})
    return {"dice_num": 2 * int((p & t).sum()), "dice_den": int(p.sum() + t.sum()), "n_true": nt, "found": found,
            "n_pred": np_, "true_pred": true_pred, "vol_pred": float(pred.sum()), "vol_true": float(truth.sum())}


def validate(cohort: str | Path, *, weights: str | Path | None = None, split: str | None = "test") -> dict:
    """Per modality and over the modalities with visible lesions (FLAIR, T2, PD): Dice (pooled over
    voxels), lesion-wise F1, and Pearson r of predicted vs true lesion volume."""
    net, _ = load_lesion_net(weights) if weights else load_lesion_net()
    vols, fracs, mods, priors = load_cohort(cohort, split)
    pred = segment(net, vols, mods, priors)
    scores = [lesion_scores(p, t) for p, t in zip(pred, fracs)]

    def summary(idx):
        s = [scores[i] for i in idx]
        tot = {k: sum(x[k] for x in s) for k in s[0]}
        rec = tot["found"] / max(tot["n_true"], 1)
        prec = tot["true_pred"] / max(tot["n_pred"], 1)
        vp, vt = [x["vol_pred"] for x in s], [x["vol_true"] for x in s]
        return {"n": len(s), "dice": round(tot["dice_num"] / max(tot["dice_den"], 1), 3),
                "lesion_f1": round(2 * prec * rec / max(prec + rec, 1e-9), 3),
                "volume_r": round(float(np.corrcoef(vp, vt)[0, 1]), 3) if np.std(vt) > 0 else None}

    out = {m: summary([i for i, x in enumerate(mods) if x == m]) for m in MODALITIES if m in mods}
    out["FLAIR+T2+PD"] = summary([i for i, x in enumerate(mods) if x != "T1"])
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.lesionseg_train", description=__doc__.split("\n")[0])
    ap.add_argument("--cohort", help="phantom-ms cohort folder to train on")
    ap.add_argument("--out", default="metrics/weights/lesionseg_3mm.safetensors")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--minutes", type=float, default=15.0, help="stop early after this long")
    ap.add_argument("--width", type=int, default=8, help="channels of the first level (then 2x, 4x)")
    ap.add_argument("--validate", metavar="DIR", help="score the weights on this cohort's --split instead")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--split", default="test")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if a.validate:
        print(json.dumps(validate(a.validate, weights=a.weights, split=a.split or None), indent=1))
    elif a.cohort:
        print(json.dumps(train(a.cohort, a.out, steps=a.steps, minutes=a.minutes, width=a.width, quiet=a.quiet), indent=1))
    else:
        ap.error("give --cohort DIR (train) or --validate DIR")


if __name__ == "__main__":
    main()
