"""The phantom's scanner physics and per-subject random draws (part of :mod:`cohorts.phantom`): tissue
parameters at 3 T, nominal sequences, synthetic sites, the spin-echo / inversion-recovery signal
equation, and :func:`sample_params` (every random choice of a subject from ``default_rng([seed, i])``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cohorts.subject import MODALITIES

# Tissue parameters at 3 T: (T1 ms, T2 ms, proton density).
TISSUE_3T: dict[str, tuple[float, float, float]] = {
    "wm": (830.0, 80.0, 0.69),
    "gm": (1330.0, 110.0, 0.80),
    "csf": (4000.0, 2000.0, 1.00),
}
# Nominal sequences; sites scale them.  kind "se" = spin echo, "ir" = inversion recovery.
SEQUENCES: dict[str, dict] = {
    "T1": {"kind": "se", "TR": 500.0, "TE": 10.0},
    "T2": {"kind": "se", "TR": 5000.0, "TE": 100.0},
    "PD": {"kind": "se", "TR": 6000.0, "TE": 15.0},
    "FLAIR": {"kind": "ir", "TR": 9000.0, "TE": 120.0, "TI": 2500.0},
}


@dataclass(frozen=True)
class Site:
    """A synthetic scanner: multiplicative jitters of sequence and tissue parameters, noise, bias."""

    name: str
    t1_scale: float  # GM/WM T1 (shorter at lower field)
    t2_scale: float
    tr_scale: float
    te_scale: float
    ti_offset: float  # ms added to FLAIR TI
    noise: tuple[float, float]  # Rician sigma as a fraction of the mean GM/WM signal
    bias: tuple[float, float]  # peak bias-field amplitude range


SITES: tuple[Site, ...] = (
    Site("synth-3T-A", 1.00, 1.00, 1.00, 1.00, 0.0, (0.010, 0.020), (0.10, 0.15)),
    Site("synth-3T-B", 1.04, 0.97, 1.10, 0.95, 100.0, (0.015, 0.025), (0.12, 0.20)),
    Site("synth-1.5T-C", 0.85, 1.05, 0.95, 1.05, -100.0, (0.020, 0.030), (0.10, 0.18)),
    Site("synth-3T-D", 0.97, 1.02, 1.05, 1.00, 200.0, (0.010, 0.020), (0.15, 0.20)),
)

# Atrophy calibration (see tests): peak boundary displacement in mm at age 85 for the average subject.
_VENT_MM_AT_85 = 3.5
_HIPPO_MM_AT_85 = 0.8
_GM_LOSS_AT_85 = 0.14  # fraction of GM turned into CSF at age 85


def signal(modality: str, t1, t2, pd, tr: float, te: float, ti: float | None = None):
    """MR signal for tissue parameters (ms) under a sequence.

    Spin echo: ``PD (1 - exp(-TR/T1)) exp(-TE/T2)``.  Inversion recovery (FLAIR):
    ``PD |1 - 2 exp(-TI/T1) + exp(-TR/T1)| exp(-TE/T2)``.
    """
    t1, t2, pd = np.asarray(t1, float), np.asarray(t2, float), np.asarray(pd, float)
    if SEQUENCES[modality]["kind"] == "ir":
        return pd * np.abs(1 - 2 * np.exp(-ti / t1) + np.exp(-tr / t1)) * np.exp(-te / t2)
    return pd * (1 - np.exp(-tr / t1)) * np.exp(-te / t2)


# ------------------------------------------------------------------------------------ parameters
@dataclass
class SubjectParams:
    """Every random choice made for one subject (stored in its metadata JSON)."""

    index: int
    subject_id: str
    age: float
    sex: str
    modality: str
    site: str
    scale: float
    rotation_deg: list[float]
    translation_mm: list[float]
    svf_amplitude_mm: float
    vent_mm: float
    hippo_mm: float
    gm_loss: float
    tissue: dict[str, list[float]]  # name -> [T1, T2, PD]
    sequence: dict[str, float]  # TR, TE (, TI)
    noise_frac: float
    bias_amplitude: float
    bias_coeffs: list[float]
    svf_seed: int
    noise_seed: int


def subject_id(index: int) -> str:
    return f"phantom-{index:04d}"


def modality_for(seed: int, index: int) -> str:
    """Balanced modalities: each block of 4 consecutive indices holds each modality once, shuffled."""
    perm = np.random.default_rng([seed, index // len(MODALITIES), 0x6D6F64]).permutation(len(MODALITIES))
    return MODALITIES[int(perm[index % len(MODALITIES)])]


def sample_params(seed: int, index: int, *, stream: tuple[int, ...] = (), ages: tuple[int, int] = (20, 90),
                  sid: str | None = None) -> SubjectParams:
    """Draw all random choices for subject ``index`` from ``default_rng([seed, index, *stream])``.

    Args:
        stream: extra seed words, so that another cohort (``phantom-ms``) draws its own subjects.
        ages: inclusive range of the (integer) age.
        sid: subject id (default :func:`subject_id`).
    """
    rng = np.random.default_rng([seed, index, *stream])
    age = float(rng.integers(ages[0], ages[1] + 1))
    sex = "F" if rng.random() < 0.5 else "M"
    site = SITES[int(rng.integers(len(SITES)))]
    scale = float(rng.uniform(0.94, 0.98) if sex == "F" else rng.uniform(0.985, 1.035))
    rotation = np.clip(rng.normal(0.0, 2.0, 3), -5, 5)
    translation = np.clip(rng.normal(0.0, 1.5, 3), -4, 4)
    svf_amp = float(rng.uniform(2.0, 4.5))
    t = max(age - 20.0, 0.0) / 65.0
    vent_mm = float(_VENT_MM_AT_85 * t**1.5 * rng.lognormal(0.0, 0.25))
    hippo_mm = float(_HIPPO_MM_AT_85 * t**1.5 * rng.lognormal(0.0, 0.25))
    gm_loss = float(np.clip(_GM_LOSS_AT_85 * t * rng.lognormal(0.0, 0.2) + rng.normal(0, 0.01), 0, 0.4))
    tissue = {}
    for name, (t1, t2, pd) in TISSUE_3T.items():
        s1 = site.t1_scale if name != "csf" else 1.0
        j = rng.normal(0.0, 0.02, 3)
        tissue[name] = [t1 * s1 * (1 + j[0]), t2 * site.t2_scale * (1 + j[1]), pd * (1 + 0.5 * j[2])]
    modality = modality_for(seed, index)
    seq = dict(SEQUENCES[modality])
    seq.pop("kind")
    jt = rng.normal(0.0, 0.03, 3)
    if modality == "T2":
        seq["TR"] = float(rng.uniform(4000.0, 6000.0))
    seq["TR"] = float(seq["TR"] * site.tr_scale * (1 + jt[0]))
    seq["TE"] = float(seq["TE"] * site.te_scale * (1 + jt[1]))
    if "TI" in seq:
        seq["TI"] = float(seq["TI"] + site.ti_offset + 100.0 * jt[2])
    noise_frac = float(rng.uniform(*site.noise))
    bias_amp = float(rng.uniform(*site.bias))
    bias_coeffs = rng.normal(0.0, 1.0, 9).tolist()
    svf_seed, noise_seed = (int(x) for x in rng.integers(0, 2**31 - 1, 2))
    return SubjectParams(index, sid or subject_id(index), age, sex, modality, site.name, scale,
                         rotation.tolist(), translation.tolist(), svf_amp, vent_mm, hippo_mm, gm_loss,
                         tissue, seq, noise_frac, bias_amp, bias_coeffs, svf_seed, noise_seed)
