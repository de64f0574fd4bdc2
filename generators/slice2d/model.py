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

import dataclasses
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from generators.ldm3d.conditioning import Conditioner
from generators.ldm3d.config import (AutoencoderConfig, ConditioningConfig, SchedulerConfig, TrainingConfig,
                                     UNetConfig)

FORMAT = "braingenbench-slice2d/1"
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
SHIPPED = Path(__file__).resolve().parent / "checkpoints" / "phantom_3mm.safetensors"


class Slice2dError(ValueError):
    """A config or checkpoint that cannot be used; the message names the key/file and the fix."""


@dataclass
class Slice2dConfig:
    """The whole slice2d configuration (sections reuse ldm3d's config dataclasses).

    Attributes:
        name: label for the checkpoint.
        grid: grid name the model is trained on.
        slice_axis: array axis the volume is sliced along (2 = axial; arrays are x, y, z).
        autoencoder, unet, conditioning, scheduler, training: as in :mod:`generators.ldm3d.config`
            (``unet.use_flash_attention`` and ``training.checkpoint_minutes`` apply likewise).
    """

    name: str = "slice2d"
    grid: str = "3mm"
    slice_axis: int = 2
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    conditioning: ConditioningConfig = field(default_factory=ConditioningConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, *, source: str = "<dict>") -> "Slice2dConfig":
        cfg = _build(cls, data, "", source)
        if cfg.slice_axis not in (0, 1, 2):
            raise Slice2dError(f"{source}: slice_axis={cfg.slice_axis}; use 0, 1 or 2")
        for name, chans, groups in (("autoencoder", cfg.autoencoder.channels, cfg.autoencoder.norm_num_groups),
                                    ("unet", cfg.unet.channels, cfg.unet.norm_num_groups)):
            if any(c % groups for c in chans):
                raise Slice2dError(f"{source}: {name}.norm_num_groups={groups} does not divide {name}.channels "
                                   f"{chans}; choose a common divisor")
        if len(cfg.unet.attention_levels) != len(cfg.unet.channels):
            raise Slice2dError(f"{source}: unet.attention_levels needs one flag per entry of unet.channels")
        return cfg

    @property
    def latent_downsampling(self) -> int:
        return 2 ** (len(self.autoencoder.channels) - 1)

    @property
    def unet_multiple(self) -> int:
        return 2 ** (len(self.unet.channels) - 1)


def _build(cls, data: Any, prefix: str, source: str):
    if not isinstance(data, dict):
        raise Slice2dError(f"{source}: {prefix.rstrip('.') or 'top level'} must be a mapping")
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in known:
            raise Slice2dError(f"{source}: unknown key {prefix + key!r}; known keys here: {', '.join(sorted(known))}")
        f = known[key]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]
        if dataclasses.is_dataclass(default):
            kwargs[key] = _build(type(default), value, prefix + key + ".", source)
        elif isinstance(default, bool) and not isinstance(value, bool):
            raise Slice2dError(f"{source}: {prefix + key} must be true/false, got {value!r}")
        elif isinstance(default, (int, float)) and not isinstance(default, bool):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise Slice2dError(f"{source}: {prefix + key} must be a number, got {value!r}")
            kwargs[key] = type(default)(value)
        else:
            kwargs[key] = value
    return cls(**kwargs)


def load_config(path: str | Path) -> Slice2dConfig:
    """A YAML file, or the name of a bundled config (``phantom_3mm``); ``yaml.safe_load`` only."""
    import yaml

    p = Path(path)
    if not p.exists() and (CONFIG_DIR / f"{path}.yaml").exists():
        p = CONFIG_DIR / f"{path}.yaml"
    if not p.exists():
        raise Slice2dError(f"{p}: config not found; bundled: {', '.join(sorted(x.stem for x in CONFIG_DIR.glob('*.yaml')))}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise Slice2dError(f"{p}: not valid YAML ({e}); fix the syntax") from e
    return Slice2dConfig.from_dict(data, source=str(p))


class Slice2d(nn.Module):
    """2D autoencoder + slice-index-conditioned 2D cross-attention UNet + caption conditioner.

    Args:
        config: :class:`Slice2dConfig`.
        grid_shape: (D, H, W) of the volume grid; slices are taken along ``config.slice_axis``.
        text_dim: width of the text encoder's token embeddings.
    """

    def __init__(self, config: Slice2dConfig, grid_shape: Sequence[int], text_dim: int = 384):
        super().__init__()
        try:
            import einops  # noqa: F401  (MONAI's DiffusionModelUNet needs it)
            from monai.networks.nets import AutoencoderKL, DiffusionModelUNet
        except ImportError as e:  # pragma: no cover
            raise RuntimeError(f"slice2d needs monai>=1.4 and einops ({e}); run `make install`") from e
        self.config = config
        self.grid_shape = tuple(int(s) for s in grid_shape)
        ax = config.slice_axis
        self.n_slices = self.grid_shape[ax]
        self.slice_shape = tuple(s for i, s in enumerate(self.grid_shape) if i != ax)
        ds = config.latent_downsampling
        if any(s % ds for s in self.slice_shape):
            raise Slice2dError(f"slice shape {self.slice_shape} is not divisible by the autoencoder's downsampling "
                               f"{ds}; use fewer autoencoder levels")
        ae, un, cond = config.autoencoder, config.unet, config.conditioning
        n = len(ae.channels)
        self.autoencoder = AutoencoderKL(
            spatial_dims=2, in_channels=1, out_channels=1, channels=tuple(ae.channels),
            num_res_blocks=(ae.num_res_blocks,) * n, attention_levels=(False,) * n,
            latent_channels=ae.latent_channels, norm_num_groups=ae.norm_num_groups,
            with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False)
        self.unet = DiffusionModelUNet(
            spatial_dims=2, in_channels=ae.latent_channels, out_channels=ae.latent_channels,
            num_res_blocks=un.num_res_blocks, channels=tuple(un.channels),
            attention_levels=tuple(un.attention_levels), norm_num_groups=un.norm_num_groups,
            num_head_channels=un.num_head_channels, with_conditioning=True,
            transformer_num_layers=un.transformer_num_layers, cross_attention_dim=cond.context_dim,
            num_class_embeds=self.n_slices, use_flash_attention=un.use_flash_attention)
        self.conditioner = Conditioner(text_dim, cond.context_dim, cond.max_tokens,
                                       use_text_tokens=cond.use_text_tokens,
                                       use_attribute_tokens=cond.use_attribute_tokens)
        self.register_buffer("latent_scale", torch.ones(()))

    # ------------------------------------------------------------------ shapes
    @property
    def latent_shape(self) -> tuple[int, int, int]:
        ds = self.config.latent_downsampling
        return (self.config.autoencoder.latent_channels, *(s // ds for s in self.slice_shape))

    @property
    def padded_latent_shape(self) -> tuple[int, int, int]:
        m = self.config.unet_multiple
        c, *sp = self.latent_shape
        return (c, *(-(-s // m) * m for s in sp))

    def pad(self, z: torch.Tensor) -> torch.Tensor:
        (h, w), (ph, pw) = self.latent_shape[1:], self.padded_latent_shape[1:]
        return F.pad(z, [0, pw - w, 0, ph - h]) if (ph, pw) != (h, w) else z

    def crop(self, z: torch.Tensor) -> torch.Tensor:
        h, w = self.latent_shape[1:]
        return z[:, :, :h, :w]

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
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        mu, _ = self.autoencoder.encode(x)
        return mu * self.latent_scale

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode(z / self.latent_scale)

    def eps(self, x_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor, slice_index: torch.Tensor) -> torch.Tensor:
        return self.unet(x_t, timesteps=t, context=context, class_labels=slice_index)

    def param_counts(self) -> dict[str, int]:
        return {"autoencoder": sum(p.numel() for p in self.autoencoder.parameters()),
                "unet": sum(p.numel() for p in self.unet.parameters()),
                "conditioner": sum(p.numel() for p in self.conditioner.parameters()),
                "total": sum(p.numel() for p in self.parameters())}


class SliceEps:
    """Adapter for :func:`generators.ldm3d.sampling.sample_latents`: ``eps(x, t, ctx)`` with the slice
    indices bound (tiled when classifier-free guidance doubles the batch)."""

    def __init__(self, model: Slice2d, slice_index: torch.Tensor):
        self.model, self.slice_index, self.conditioner = model, slice_index, model.conditioner

    def eps(self, x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        reps = x.shape[0] // self.slice_index.shape[0]
        return self.model.eps(x, t, ctx, self.slice_index.repeat(reps))


def make_scheduler(config: Slice2dConfig):
    from monai.networks.schedulers import DDPMScheduler

    s = config.scheduler
    return DDPMScheduler(num_train_timesteps=s.num_train_timesteps, schedule=s.schedule,
                         beta_start=s.beta_start, beta_end=s.beta_end, clip_sample=False)


# ---------------------------------------------------------------------------------- checkpoints
def save_checkpoint(model: Slice2d, path: str | Path, meta: dict, *, half: bool = True) -> str:
    """Weights + JSON metadata in one safetensors file (atomic); float16 by default. Returns sha256."""
    from safetensors.torch import save_file

    from bench.data.subject import file_sha256

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu().contiguous()
        if half and v.is_floating_point() and k not in ("latent_scale",) and not k.startswith("conditioner.stat_"):
            v = v.half()
        tensors[k] = v.clone()
    full = dict(meta) | {"format": FORMAT, "config": model.config.to_dict(), "grid_shape": list(model.grid_shape),
                         "latent_scale": float(model.latent_scale), "param_counts": model.param_counts(),
                         "dtype": "float16" if half else "float32"}
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"format": "pt", "slice2d": json.dumps(full, sort_keys=True)})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return file_sha256(path)


def read_metadata(path: str | Path) -> dict:
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise Slice2dError(f"{path}: checkpoint not found; train one with `python -m generators.slice2d.train "
                           "--cohort phantom --grid 3mm --out DIR --ship PATH` or pass checkpoint=PATH")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except Exception as e:  # safetensors raises its own types
        raise Slice2dError(f"{path}: not a readable safetensors file ({e}); re-train or re-download it") from e
    if "slice2d" not in header:
        raise Slice2dError(f"{path}: no 'slice2d' metadata; not a slice2d checkpoint")
    meta = json.loads(header["slice2d"])
    if meta.get("format") != FORMAT:
        raise Slice2dError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}; re-export it")
    return meta


def load_checkpoint(path: str | Path, *, device: str = "cpu") -> tuple[Slice2d, dict]:
    """Rebuild from the stored config, check every tensor's presence and shape, load (float32, eval)."""
    from safetensors.torch import load_file

    meta = read_metadata(path)
    config = Slice2dConfig.from_dict(meta["config"], source=f"{path} (metadata 'config')")
    model = Slice2d(config, meta["grid_shape"], int(meta.get("text_dim", 384)))
    tensors = load_file(str(path))
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    for k in sorted(set(expected) | set(got)):
        if expected.get(k) != got.get(k):
            raise Slice2dError(f"{path}: tensor {k!r} has shape {got.get(k, 'MISSING')} but the stored config "
                               f"expects {expected.get(k, 'NO SUCH KEY')}; re-export the checkpoint from its run")
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in tensors.items()})
    return model.eval().to(device), meta
