"""Config helpers shared by ldm3d and slice2d.

A config is a tree of dataclasses read from YAML with ``yaml.safe_load``. :func:`build` refuses unknown
keys (naming the key and the file), so a typo never silently falls back to a default, and :func:`coerce`
checks each value against the type of its default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Callable, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or dict that cannot be used; the message names the key and the fix."""


def build(cls: type[T], data: Any, prefix: str = "", source: str = "<dict>", *,
          error: type[Exception] = ConfigError) -> T:
    """Build the dataclass ``cls`` from a nested dict, recursing into dataclass-valued fields.

    Args:
        cls: the dataclass to build; fields absent from ``data`` keep their defaults.
        data: the mapping read from YAML or a checkpoint's metadata.
        prefix: dotted path of ``data`` inside the whole config (for messages), e.g. ``"unet."``.
        source: where ``data`` comes from (a file name), named in every message.
        error: the exception type raised.

    Returns:
        The dataclass instance.

    Raises:
        error: ``data`` is not a mapping, has a key ``cls`` does not know, or a value of the wrong type.
    """
    if not isinstance(data, dict):
        raise error(f"{source}: {prefix.rstrip('.') or 'top level'} must be a mapping, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    for key in data:
        if key not in known:
            raise error(f"{source}: unknown key {prefix + str(key)!r}; known keys here: "
                        f"{', '.join(sorted(known))}")
    kwargs = {}
    for key, value in data.items():
        f = known[key]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]
        if dataclasses.is_dataclass(default):
            kwargs[key] = build(type(default), value, prefix + key + ".", source, error=error)
        else:
            kwargs[key] = coerce(value, default, prefix + key, source, error=error)
    return cls(**kwargs)


def coerce(value: Any, default: Any, key: str, source: str, *, error: type[Exception] = ConfigError) -> Any:
    """Check ``value`` against the type of ``default`` (bool, number, list, string); ``None`` passes.

    Args:
        value: the value read.
        default: the field's default, whose type ``value`` must have (ints and floats convert).
        key: dotted key (for messages).
        source: where the value comes from (for messages).
        error: the exception type raised.

    Returns:
        The value, converted to the default's numeric type where it is a number.
    """
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise error(f"{source}: {key} must be true/false, got {value!r}")
        return value
    if isinstance(default, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise error(f"{source}: {key} must be a number, got {value!r}")
        return type(default)(value)
    if isinstance(default, list):
        if not isinstance(value, list):
            raise error(f"{source}: {key} must be a list, got {value!r}")
        return list(value)
    if isinstance(default, str) and not isinstance(value, str):
        raise error(f"{source}: {key} must be a string, got {value!r}")
    return value


def load_yaml(path: str | Path, config_dir: Path, from_dict: Callable[..., T], *,
              error: type[Exception] = ConfigError) -> T:
    """Read a YAML config with ``yaml.safe_load`` and build it with ``from_dict(data, source=file)``.

    Args:
        path: a YAML file, or the name of a bundled config in ``config_dir`` (e.g. ``"phantom_3mm"``).
        config_dir: folder of the bundled configs.
        from_dict: the config class's ``from_dict``.
        error: the exception type raised for a missing file or bad YAML.

    Returns:
        What ``from_dict`` returns.
    """
    import yaml

    p = Path(path)
    if not p.exists() and (config_dir / f"{path}.yaml").exists():
        p = config_dir / f"{path}.yaml"
    if not p.exists():
        raise error(f"{p}: config file not found; bundled configs: "
                    f"{', '.join(sorted(x.stem for x in config_dir.glob('*.yaml')))}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise error(f"{p}: not valid YAML ({e}); fix the syntax") from e
    return from_dict(data, source=str(p))


class LatentDiffusionConfig:
    """Mixin of the top-level config dataclasses with ``autoencoder``, ``unet``, ``conditioning`` and
    ``scheduler`` sections (:class:`generators.ldm3d.config.Ldm3dConfig`,
    :class:`generators.slice2d.model.Slice2dConfig`)."""

    autoencoder: Any
    unet: Any
    conditioning: Any
    scheduler: Any

    def to_dict(self) -> dict:
        """The config as a nested dict (what checkpoints store)."""
        return asdict(self)  # type: ignore[call-overload]

    @property
    def latent_downsampling(self) -> int:
        """Downsampling factor of the autoencoder per spatial axis (its patch times its 2x levels)."""
        return self.autoencoder.patch * 2 ** (len(self.autoencoder.channels) - 1)

    @property
    def unet_multiple(self) -> int:
        """The UNet's total downsampling: latents are padded to a multiple of it."""
        return 2 ** (len(self.unet.channels) - 1)

    def validate_sections(self, source: str = "<config>", *, error: type[Exception] = ConfigError) -> None:
        """Check the shared sections (GroupNorm divisors, attention flags, conditioning, schedule).

        Raises:
            error: the first invalid value, named with its key and the fix.
        """
        ae, un, cond = self.autoencoder, self.unet, self.conditioning
        for c in ae.channels:
            if c % ae.norm_num_groups:
                raise error(f"{source}: autoencoder.norm_num_groups={ae.norm_num_groups} does not divide "
                            f"autoencoder.channels {ae.channels}; choose a common divisor")
        if ae.patch < 1:
            raise error(f"{source}: autoencoder.patch={ae.patch} must be >= 1 (1: no space-to-depth stem)")
        for c in un.channels:
            if c % un.norm_num_groups:
                raise error(f"{source}: unet.norm_num_groups={un.norm_num_groups} does not divide "
                            f"unet.channels {un.channels}; choose a common divisor")
        if len(un.attention_levels) != len(un.channels):
            raise error(f"{source}: unet.attention_levels has {len(un.attention_levels)} entries but "
                        f"unet.channels has {len(un.channels)}; give one flag per level")
        if not (cond.use_text_tokens or cond.use_attribute_tokens):
            raise error(f"{source}: conditioning.use_text_tokens and conditioning.use_attribute_tokens "
                        "are both false; enable at least one")
        if not 0.0 <= cond.caption_dropout < 1.0:
            raise error(f"{source}: conditioning.caption_dropout={cond.caption_dropout} must be in [0, 1)")
        if not 0.0 <= cond.attribute_dropout < 1.0:
            raise error(f"{source}: conditioning.attribute_dropout={cond.attribute_dropout} must be in [0, 1)")
        if not 0 <= cond.fourier_features <= 8:
            raise error(f"{source}: conditioning.fourier_features={cond.fourier_features} must be in 0..8")
        if self.scheduler.schedule not in ("scaled_linear_beta", "linear_beta"):
            raise error(f"{source}: scheduler.schedule={self.scheduler.schedule!r}; "
                        "use 'scaled_linear_beta' or 'linear_beta'")
