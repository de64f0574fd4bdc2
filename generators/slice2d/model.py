"""slice2d networks, config and checkpoint format.

Building blocks are those of ldm3d in 2D: MONAI's ``AutoencoderKL`` and ``DiffusionModelUNet``
(``spatial_dims=2``) and ldm3d's caption :class:`~generators.ldm3d.conditioning.Conditioner`
(MiniLM token embeddings + attribute tokens, learned null context for classifier-free guidance).
The slice index enters the UNet as a class label (``num_class_embeds`` = slices per volume), whose
embedding is added to the timestep embedding.

Checkpoints are one safetensors file with the config, grid, latent scale, training cohort and
provenance as JSON in its header (``slice2d``); loading rebuilds the architecture from that config
and refuses tensors that do not match it. Nothing is unpickled.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from generators.common.checkpoint import load_weights, read_checkpoint_metadata, save_checkpoint_file
from generators.common.config import LatentDiffusionConfig, build, load_yaml
from generators.common.networks import LatentDiffusionModule, build_autoencoder, build_unet, make_scheduler, v_to_eps
from generators.ldm3d.conditioning import Conditioner, n_features
from generators.ldm3d.config import (AutoencoderConfig, ConditioningConfig, SchedulerConfig, TrainingConfig,
                                     UNetConfig)

__all__ = ["CONFIG_DIR", "FORMAT", "SHIPPED", "Slice2d", "Slice2dConfig", "Slice2dError", "SliceEps",
           "load_checkpoint", "load_config", "make_scheduler", "read_metadata", "save_checkpoint", "v_to_eps"]

logger = logging.getLogger(__name__)

FORMAT = "braingenbench-slice2d/1"
HEADER_KEY = "slice2d"
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
SHIPPED = Path(__file__).resolve().parent / "checkpoints" / "phantom_3mm.safetensors"
LEGACY_PREDICTION = "eps"
"""The target of checkpoints whose stored config has no ``prediction`` key: they predate the key and were
trained as eps models (the dataclass default has since become "v")."""


class Slice2dError(ValueError):
    """A config or checkpoint that cannot be used; the message names the key/file and the fix."""


@dataclass
class Slice2dConfig(LatentDiffusionConfig):
    """The whole slice2d configuration (sections reuse ldm3d's config dataclasses).

    Attributes:
        name: label for the checkpoint.
        grid: grid name the model is trained on.
        slice_axis: array axis the volume is sliced along (2 = axial; arrays are x, y, z).
        prediction: the UNet's target, "v" (v = sqrt(a) eps - sqrt(1 - a) x0, Salimans & Ho 2022) or
            "eps". With the scaled-linear schedule the terminal SNR is ~2e-4: an eps-model's x0 estimate
            at high t divides its error by sqrt(a) ~ 0.015, and a briefly trained 2D model diverged
            (sampled latents at 4.5x the data std); v keeps the x0 error at the size of the v error.
        autoencoder, unet, conditioning, scheduler, training: as in :mod:`generators.ldm3d.config`
            (``unet.use_flash_attention`` and ``training.checkpoint_minutes`` apply likewise).
    """

    name: str = "slice2d"
    grid: str = "3mm"
    slice_axis: int = 2
    prediction: str = "v"
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    conditioning: ConditioningConfig = field(default_factory=ConditioningConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    @classmethod
    def from_dict(cls, data: dict, *, source: str = "<dict>") -> "Slice2dConfig":
        """Build a config from a nested dict.

        Raises:
            Slice2dError: an unknown key, a value of the wrong type or an invalid value (named).
        """
        cfg = build(cls, data, "", source, error=Slice2dError)
        if cfg.prediction not in ("v", "eps"):
            raise Slice2dError(f"{source}: prediction={cfg.prediction!r}; use 'v' or 'eps'")
        if cfg.slice_axis not in (0, 1, 2):
            raise Slice2dError(f"{source}: slice_axis={cfg.slice_axis}; use 0, 1 or 2")
        cfg.validate_sections(source, error=Slice2dError)
        return cfg


def load_config(path: str | Path) -> Slice2dConfig:
    """A YAML file, or the name of a bundled config (``phantom_3mm``); ``yaml.safe_load`` only.

    Raises:
        Slice2dError: missing file, bad YAML, unknown key or invalid value (the message names it).
    """
    return load_yaml(path, CONFIG_DIR, Slice2dConfig.from_dict, error=Slice2dError)


class Slice2d(LatentDiffusionModule):
    """2D autoencoder + slice-index-conditioned 2D cross-attention UNet + caption conditioner.

    Args:
        config: :class:`Slice2dConfig`.
        grid_shape: (D, H, W) of the volume grid; slices are taken along ``config.slice_axis``.
        text_dim: width of the text encoder's token embeddings.
    """

    def __init__(self, config: Slice2dConfig, grid_shape: Sequence[int], text_dim: int = 384):
        super().__init__()
        self.config = config
        self.grid_shape = tuple(int(s) for s in grid_shape)
        ax = config.slice_axis
        self.n_slices = self.grid_shape[ax]
        self.slice_shape = tuple(s for i, s in enumerate(self.grid_shape) if i != ax)
        self.spatial_shape = self.slice_shape
        ds = config.latent_downsampling
        if any(s % ds for s in self.slice_shape):
            raise Slice2dError(f"slice shape {self.slice_shape} is not divisible by the autoencoder's downsampling "
                               f"{ds}; use fewer autoencoder levels")
        cond = config.conditioning
        self.autoencoder = build_autoencoder(2, config, "slice2d")
        self.unet = build_unet(2, config, "slice2d", num_class_embeds=self.n_slices)
        self.conditioner = Conditioner(text_dim, cond.context_dim, cond.max_tokens,
                                       use_text_tokens=cond.use_text_tokens,
                                       use_attribute_tokens=cond.use_attribute_tokens,
                                       n_feat=n_features(cond.fourier_features))
        self.register_buffer("latent_scale", torch.ones(()))

    # ------------------------------------------------------------------ slicing
    def to_slices(self, volumes: torch.Tensor) -> torch.Tensor:
        """(B, 1, D, H, W) -> (B * n_slices, 1, *slice_shape), slice-major within each volume."""
        ax = 2 + self.config.slice_axis
        x = volumes.movedim(ax, 1)  # (B, S, 1, a, b)
        return x.reshape(-1, 1, *self.slice_shape)

    def to_volumes(self, slices: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_slices`."""
        x = slices.reshape(-1, self.n_slices, 1, *self.slice_shape)
        return x.movedim(1, 2 + self.config.slice_axis)

    # ------------------------------------------------------------------ nets
    def eps(self, x_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor, slice_index: torch.Tensor) -> torch.Tensor:
        """The UNet's output: eps or v, as ``config.prediction`` says (see :class:`SliceEps`)."""
        return self.unet(x_t, timesteps=t, context=context, class_labels=slice_index)


class SliceEps:
    """Adapter for :func:`generators.ldm3d.sampling.sample_latents`: ``eps(x, t, ctx)`` with the slice
    indices bound (tiled when classifier-free guidance doubles the batch) and v-predictions converted
    to eps."""

    def __init__(self, model: Slice2d, slice_index: torch.Tensor):
        self.model, self.slice_index, self.conditioner = model, slice_index, model.conditioner

    def eps(self, x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        reps = x.shape[0] // self.slice_index.shape[0]
        return self.model.to_eps(self.model.eps(x, t, ctx, self.slice_index.repeat(reps)), x, t)


# ---------------------------------------------------------------------------------- checkpoints
def _keep_float32(key: str) -> bool:
    return key == "latent_scale" or key.startswith("conditioner.stat_")


def save_checkpoint(model: Slice2d, path: str | Path, meta: dict, *, half: bool = True) -> str:
    """Weights + JSON metadata in one safetensors file (atomic, mode from the umask); returns its sha256.

    Args:
        model: the network.
        path: destination ``.safetensors``.
        meta: provenance metadata; ``format``, ``config``, ``grid_shape``, ``latent_scale``, ``param_counts``
            and ``dtype`` are added.
        half: store floating tensors as float16 (the default), except the latent scale and the
            conditioner's z-scoring statistics.
    """
    return save_checkpoint_file(model, path, meta, header_key=HEADER_KEY, fmt=FORMAT, half=half,
                                keep_float32=_keep_float32)


def read_metadata(path: str | Path) -> dict:
    """The ``slice2d`` JSON metadata of a checkpoint (no tensors are read).

    Raises:
        Slice2dError: missing or unreadable file, no ``slice2d`` header entry, or another format.
    """
    return read_checkpoint_metadata(path, header_key=HEADER_KEY, fmt=FORMAT, error=Slice2dError,
                                    train_hint="`python -m generators.slice2d.train --cohort phantom --grid 3mm "
                                               "--out DIR --ship PATH`")


def load_checkpoint(path: str | Path, *, device: str = "cpu") -> tuple[Slice2d, dict]:
    """Rebuild from the stored config, check every tensor's presence and shape, load (float32, eval).

    A stored config without ``prediction`` predates that key; such a model was trained to predict eps
    and is loaded as one (:data:`LEGACY_PREDICTION`).

    Returns:
        The model and the checkpoint's metadata.

    Raises:
        Slice2dError: missing or foreign file, invalid stored config, or tensors that do not match it.
    """
    meta = read_metadata(path)
    stored = meta["config"]
    if isinstance(stored, dict) and "prediction" not in stored:
        logger.info("%s: the stored config has no 'prediction'; loading it as a legacy %r model", path,
                    LEGACY_PREDICTION)
        stored = {**stored, "prediction": LEGACY_PREDICTION}
    config = Slice2dConfig.from_dict(stored, source=f"{path} (metadata 'config')")
    model = Slice2d(config, meta["grid_shape"], int(meta.get("text_dim", 384)))
    load_weights(model, path, error=Slice2dError)
    return model.eval().to(device), meta
