"""ldm3d checkpoints: one safetensors file with all weights and JSON metadata in its header.

The header's ``ldm3d`` entry holds the config, the grid, the training cohort (name + content hash),
training provenance (steps, minutes, final losses), the latent scale and the text-encoder
fingerprint. :func:`load_checkpoint` rebuilds the architecture from the stored config and refuses a
file whose tensors do not match it (naming the first differing key and both shapes). Nothing here
unpickles anything.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from core.io import sha256_file
from generators.common.checkpoint import (check_state_dict as _check_state_dict, load_weights,
                                          read_checkpoint_metadata, save_checkpoint_file)
from generators.ldm3d.config import ConfigError, Ldm3dConfig
from generators.ldm3d.model import Ldm3d, build_model

logger = logging.getLogger(__name__)

FORMAT = "braingenbench-ldm3d/1"
HEADER_KEY = "ldm3d"
SHIPPED = Path(__file__).resolve().parent / "checkpoints" / "phantom_3mm.safetensors"
# The ``ldm3d-latent`` feature space is a fixed yardstick, not the shipped generator: a new ldm3d release
# must not move every generator's latent-similarity numbers. This is the ldm3d checkpoint shipped from
# 2026-12-01 to 2026-12-02 (sha256 61197d7e...); only its autoencoder is used.
LATENT_YARDSTICK = Path(__file__).resolve().parent / "checkpoints" / "latent_yardstick_3mm.safetensors"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file, the key and the fix."""


@dataclass
class LoadedCheckpoint:
    """A loaded checkpoint.

    Attributes:
        model: the network in eval mode (float32).
        meta: the ``ldm3d`` header metadata.
        path: the file.
        sha256: the file's sha256.
    """

    model: Ldm3d
    meta: dict
    path: Path
    sha256: str


def save_checkpoint(model: Ldm3d, path: str | Path, meta: dict, *, half: bool = False) -> str:
    """Write ``model`` + ``meta`` atomically (temp file + rename, mode from the umask); returns the file's sha256.

    Args:
        model: the network (all of autoencoder, UNet, conditioner, latent scale).
        path: destination ``.safetensors``.
        meta: JSON-serialisable metadata (config, cohort, training, ...); ``format``, ``grid_shape``,
            ``latent_scale`` and ``param_counts`` are added.
        half: store floating tensors except the latent scale as float16 (the shipped file).
    """
    return save_checkpoint_file(model, path, meta, header_key=HEADER_KEY, fmt=FORMAT, half=half)


def read_metadata(path: str | Path) -> dict:
    """The ``ldm3d`` JSON metadata of a checkpoint (no tensors are read).

    Raises:
        CheckpointError: missing or unreadable file, no ``ldm3d`` header entry, or another format.
    """
    return read_checkpoint_metadata(path, header_key=HEADER_KEY, fmt=FORMAT, error=CheckpointError,
                                    train_hint="`python -m generators.ldm3d.train ...`")


def load_checkpoint(path: str | Path, *, device: str = "cpu") -> LoadedCheckpoint:
    """Rebuild the model from the stored config and load its weights (float32, eval mode).

    Raises:
        CheckpointError: missing file, foreign file, or tensors that do not match the architecture
            the stored config describes (the first differing key and both shapes are named).
    """
    path = Path(path)
    meta = read_metadata(path)
    try:
        config = Ldm3dConfig.from_dict(meta["config"], source=f"{path} (metadata 'config')")
    except ConfigError as e:
        raise CheckpointError(str(e)) from e
    model = build_model(config, meta["grid_shape"], int(meta.get("text_dim", 384)))
    load_weights(model, path, error=CheckpointError)
    model.eval().to(device)
    return LoadedCheckpoint(model, meta, path, sha256_file(path))


def check_state_dict(model, tensors: dict, path: str | Path) -> None:
    """Raise :class:`CheckpointError` naming the first key whose presence or shape differs."""
    _check_state_dict(model, tensors, path, error=CheckpointError)
