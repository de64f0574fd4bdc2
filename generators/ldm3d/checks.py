"""Does a checkpoint follow its prompt? A fixed-seed probe of modality contrast and ventricle size.

The probe captions are phantom-style captions (the grammar of :func:`cohorts.captions.make_caption`)
that differ in a controlled way: for every modality, the same subjects (age, sex, structure volumes)
are asked for once with small (10th percentile) and once with large (90th percentile) lateral
ventricles. Measurements are atlas-guided (:mod:`metrics.functional.tissue`): the tissue contrast
order in conservative GM/WM/ventricle cores, and the ventricular CSF volume.

Used by the shipped-checkpoint tests (``tests/test_ldm3d_shipped.py``) and by
``python -m generators.ldm3d.checks`` for the model card.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

import numpy as np

from cohorts.captions import MODALITY_WORDS, who
from cohorts.subject import MODALITIES

# (age, sex) of the probe subjects; the other volumes are the phantom's median subject.
PROBE_SUBJECTS = ((34, "F"), (71, "M"), (52, "M"), (63, "F"), (45, "F"), (80, "M"))
VENTRICLES = {"small": (20.5, "10th"), "large": (39.5, "90th")}  # phantom train split 10th / 90th percentile


def probe_caption(modality: str, age: int, sex: str, ventricles: str) -> str:
    """One probe caption (phantom grammar) with lateral ventricles ``"small"`` or ``"large"``."""
    ml, pct = VENTRICLES[ventricles]
    return (f"Synthetic phantom. {MODALITY_WORDS[modality]} brain MRI of {who(age, sex)}. "
            f"Lateral ventricles {ml} mL ({pct} percentile), third ventricle 1.5 mL (50th percentile), "
            "fourth ventricle 3.0 mL (50th percentile), left hippocampus 3.6 mL (50th percentile), "
            "right hippocampus 3.8 mL (50th percentile), thalamus 17.5 mL (50th percentile), "
            "caudate 6.6 mL (50th percentile), putamen 10.4 mL (50th percentile); grey matter 780.0 mL, "
            "white matter 560.0 mL, CSF 250.0 mL, intracranial volume 1590.0 mL.")


@dataclass
class Probe:
    texts: list[str]
    modality: list[str]
    ventricles: list[str]


def probe_prompts(n_per_modality: int = 10) -> Probe:
    """``n_per_modality`` captions per modality, half asking for small and half for large ventricles."""
    if n_per_modality < 2 or n_per_modality % 2:
        raise ValueError(f"n_per_modality={n_per_modality}: use an even number >= 2")
    texts, mods, vents = [], [], []
    for mod in MODALITIES:
        for i in range(n_per_modality // 2):
            age, sex = PROBE_SUBJECTS[i % len(PROBE_SUBJECTS)]
            for v in ("small", "large"):
                texts.append(probe_caption(mod, age, sex, v))
                mods.append(mod)
                vents.append(v)
    return Probe(texts, mods, vents)


def measure(volumes: np.ndarray, grid) -> dict[str, np.ndarray]:
    """Atlas-guided tissue medians (csf, gm, wm) and ventricular CSF (mL) of volumes on ``grid``."""
    from cohorts.atlas import atlas_on_grid
    from metrics.functional.tissue import core_masks, tissue_means, ventricular_csf_ml

    atlas = atlas_on_grid(grid)
    masks = core_masks(atlas["gm"], atlas["wm"], atlas["ventricles"])
    out = tissue_means(volumes, masks)
    out["ventricles_ml"] = ventricular_csf_ml(volumes, atlas["ventricles"], masks, atlas["voxel_volume_ml"])
    return out


def prompt_following(generator, *, n_per_modality: int = 10, seed: int = 0) -> dict:
    """Generate the probe set with ``generator`` (any object with ``generate(prompts, seed=)`` and a
    ``context.grid``) and report contrast-order agreement per modality and the ventricle response.

    Returns:
        ``{"contrast_match": {modality: fraction}, "ventricles_ml": {"small": mean, "large": mean},
        "ventricles_paired_larger": fraction of (small, large) pairs where large measured larger, ...}``.
    """
    from generators.base import Prompt
    from metrics.functional.tissue import contrast_matches

    probe = probe_prompts(n_per_modality)
    out = generator.generate([Prompt(text=t) for t in probe.texts], seed=seed)
    m = measure(out.volumes, generator.context.grid)
    match = np.array([contrast_matches({k: m[k][i] for k in ("csf", "gm", "wm")}, mod)
                      for i, mod in enumerate(probe.modality)])
    mods = np.array(probe.modality)
    vents = np.array(probe.ventricles)
    v = m["ventricles_ml"]
    return {
        "n_per_modality": n_per_modality, "seed": seed,
        "contrast_match": {mod: float(match[mods == mod].mean()) for mod in MODALITIES},
        "ventricles_ml": {k: float(v[vents == k].mean()) for k in ("small", "large")},
        "ventricles_paired_larger": float((v[vents == "large"] > v[vents == "small"]).mean()),
        "tissue_medians": {mod: {t: float(m[t][mods == mod].mean()) for t in ("csf", "gm", "wm")} for mod in MODALITIES},
    }


def main(argv: list[str] | None = None) -> int:
    from cohorts.grid import get_grid
    from generators.base import GeneratorContext
    from generators.ldm3d.checkpoint import SHIPPED
    from generators.ldm3d.generator import Ldm3dGenerator

    ap = argparse.ArgumentParser(prog="python -m generators.ldm3d.checks", description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default=str(SHIPPED))
    ap.add_argument("--grid", default="3mm")
    ap.add_argument("--n-per-modality", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=None, help="sampling steps (default: the generator's)")
    ap.add_argument("--scheduler", default=None, help="sampler (default: the generator's)")
    ap.add_argument("--guidance", type=float, default=3.0)
    a = ap.parse_args(argv)
    sampler = {k: v for k, v in (("steps", a.steps), ("scheduler", a.scheduler)) if v is not None}
    gen = Ldm3dGenerator(GeneratorContext(cohort=None, grid=get_grid(a.grid), quiet=True), checkpoint=a.checkpoint,
                         guidance=a.guidance, **sampler)
    print(json.dumps(prompt_following(gen, n_per_modality=a.n_per_modality, seed=a.seed), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
