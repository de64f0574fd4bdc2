"""safetensors checkpoints with JSON metadata in the header, shared by ldm3d and slice2d.

A checkpoint is one ``.safetensors`` file: the model's state dict (float32, or float16 for the shipped
copy) plus, under one header key (``ldm3d`` / ``slice2d``), a JSON object with the config, the grid, the
latent scale, the parameter counts and the caller's provenance. Files are written atomically (temporary
file + rename; the mode follows the umask, like any file the tool writes). Loading checks every tensor's presence and shape against the architecture
the stored config describes before loading; nothing is unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch

from core.io import atomic_write


def keep_latent_scale(key: str) -> bool:
    """Default ``keep_float32`` of :func:`save_checkpoint_file`: only the latent scale stays float32."""
    return key == "latent_scale"


def save_checkpoint_file(model: torch.nn.Module, path: str | Path, meta: dict, *, header_key: str, fmt: str,
                         half: bool = False, keep_float32: Callable[[str], bool] = keep_latent_scale) -> str:
    """Write ``model``'s weights + ``meta`` atomically; returns the file's sha256.

    Args:
        model: the network; it must have ``config`` (with ``to_dict``), ``grid_shape``, ``latent_scale``
            and ``param_counts()``.
        path: destination ``.safetensors``.
        meta: JSON-serialisable metadata; ``format``, ``config``, ``grid_shape``, ``latent_scale``,
            ``param_counts`` and ``dtype`` are added.
        header_key: the safetensors header entry holding the JSON metadata.
        fmt: the ``format`` string stored (and checked by :func:`read_checkpoint_metadata`).
        half: store floating tensors as float16, except those ``keep_float32`` names.
        keep_float32: which state-dict keys stay float32 when ``half``.

    Returns:
        The sha256 of the written file.
    """
    from safetensors.torch import save_file

    from core.io import sha256_file

    tensors = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu().contiguous()
        if half and v.is_floating_point() and not keep_float32(k):
            v = v.half()
        tensors[k] = v.clone()
    full = dict(meta) | {"format": fmt, "config": model.config.to_dict(), "grid_shape": list(model.grid_shape),
                         "latent_scale": float(model.latent_scale), "param_counts": model.param_counts(),
                         "dtype": "float16" if half else "float32"}
    header = {"format": "pt", header_key: json.dumps(full, sort_keys=True)}
    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=header))
    return sha256_file(path)


def read_checkpoint_metadata(path: str | Path, *, header_key: str, fmt: str, error: type[Exception],
                             train_hint: str) -> dict:
    """The JSON metadata under ``header_key`` of a checkpoint (no tensors are read).

    Args:
        path: the ``.safetensors`` file.
        header_key: the header entry to read.
        fmt: the expected ``format``.
        error: the exception type raised.
        train_hint: how to get a checkpoint, quoted when the file is missing.

    Raises:
        error: missing or unreadable file, no ``header_key`` entry, or another format.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise error(f"{path}: checkpoint not found; train one with {train_hint} or pass checkpoint=PATH")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise error(f"{path}: not a readable safetensors file ({e}); re-download or re-train it") from e
    if header_key not in header:
        raise error(f"{path}: no {header_key!r} metadata in the safetensors header; this is not a "
                    f"{header_key} checkpoint")
    meta = json.loads(header[header_key])
    if meta.get("format") != fmt:
        raise error(f"{path}: format {meta.get('format')!r}, expected {fmt!r}; re-export it")
    return meta


def load_weights(model: torch.nn.Module, path: str | Path, *, error: type[Exception]) -> None:
    """Load a checkpoint's tensors into ``model`` as float32 after :func:`check_state_dict`."""
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    check_state_dict(model, tensors, path, error=error)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in tensors.items()})


def check_state_dict(model: torch.nn.Module, tensors: dict[str, torch.Tensor], path: str | Path, *,
                     error: type[Exception] = ValueError) -> None:
    """Raise ``error`` naming the first key whose presence or shape differs between file and model."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    for k in sorted(set(expected) | set(got)):
        e, g = expected.get(k), got.get(k)
        if e != g:
            raise error(
                f"{path}: tensor {k!r} has shape {g if g is not None else 'MISSING'} in the file but the "
                f"architecture built from its stored config expects {e if e is not None else 'NO SUCH KEY'}; "
                "the weights and the 'config' metadata disagree — re-export the checkpoint from its training run")
