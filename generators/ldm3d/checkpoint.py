"""ldm3d checkpoints: one safetensors file with all weights and JSON metadata in its header.

The header's ``ldm3d`` entry holds the config, the grid, the training cohort (name + content hash),
training provenance (steps, minutes, final losses), the latent scale and the text-encoder
fingerprint. :func:`load_checkpoint` rebuilds the architecture from the stored config and refuses a
file whose tensors do not match it (naming the first differing key and both shapes). Nothing here
unpickles anything.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.data.subject import file_sha256
from generators.ldm3d.config import ConfigError, Ldm3dConfig
from generators.ldm3d.model import Ldm3d, build_model

logger = logging.getLogger(__name__)

FORMAT = "braingenbench-ldm3d/1"
SHIPPED = Path(__file__).resolve().parent / "checkpoints" / "phantom_3mm.safetensors"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file, the key and the fix."""


@dataclass
class LoadedCheckpoint:
    model: Ldm3d
    meta: dict
    path: Path
    sha256: str


def save_checkpoint(model: Ldm3d, path: str | Path, meta: dict, *, half: bool = False) -> str:
    """Write ``model`` + ``meta`` atomically (temp file + rename); returns the file's sha256.

    Args:
        model: the network (all of autoencoder, UNet, conditioner, latent scale).
        path: destination ``.safetensors``.
        meta: JSON-serialisable metadata (config, cohort, training, ...); ``format``, ``grid_shape``,
            ``latent_scale`` and ``param_counts`` are added.
        half: store floating tensors as float16 (the shipped file).
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu().contiguous()
        if half and v.is_floating_point() and k != "latent_scale":
            v = v.half()
        tensors[k] = v.clone()
    full = dict(meta)
    full.update({"format": FORMAT, "config": model.config.to_dict(), "grid_shape": list(model.grid_shape),
                 "latent_scale": float(model.latent_scale), "param_counts": model.param_counts(),
                 "dtype": "float16" if half else "float32"})
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"format": "pt", "ldm3d": json.dumps(full, sort_keys=True)})
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return file_sha256(path)


def read_metadata(path: str | Path) -> dict:
    """The ``ldm3d`` JSON metadata of a checkpoint (no tensors are read)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found; train one with "
                              "`python -m generators.ldm3d.train ...` or pass checkpoint=PATH")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{path}: not a readable safetensors file ({e}); re-download or re-train it") from e
    if "ldm3d" not in header:
        raise CheckpointError(f"{path}: no 'ldm3d' metadata in the safetensors header; this is not an "
                              "ldm3d checkpoint (write one with generators.ldm3d.checkpoint.save_checkpoint)")
    meta = json.loads(header["ldm3d"])
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}; re-export it")
    return meta


def load_checkpoint(path: str | Path, *, device: str = "cpu") -> LoadedCheckpoint:
    """Rebuild the model from the stored config and load its weights (float32, eval mode).

    Raises:
        CheckpointError: missing file, foreign file, or tensors that do not match the architecture
            the stored config describes (the first differing key and both shapes are named).
    """
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_metadata(path)
    try:
        config = Ldm3dConfig.from_dict(meta["config"], source=f"{path} (metadata 'config')")
    except ConfigError as e:
        raise CheckpointError(str(e)) from e
    model = build_model(config, meta["grid_shape"], int(meta.get("text_dim", 384)))
    tensors = load_file(str(path))
    check_state_dict(model, tensors, path)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in tensors.items()})
    model.eval().to(device)
    return LoadedCheckpoint(model, meta, path, file_sha256(path))


def check_state_dict(model: torch.nn.Module, tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    """Raise :class:`CheckpointError` naming the first key whose presence or shape differs."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    for k in sorted(set(expected) | set(got)):
        e, g = expected.get(k), got.get(k)
        if e != g:
            raise CheckpointError(
                f"{path}: tensor {k!r} has shape {g if g is not None else 'MISSING'} in the file but the "
                f"architecture built from its stored config expects {e if e is not None else 'NO SUCH KEY'}; "
                "the weights and the 'config' metadata disagree — re-export the checkpoint from its training run")
