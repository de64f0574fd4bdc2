"""Weights pinned by a published evaluation protocol: the exact file, where it comes from, its sha256.

A :class:`PinnedWeights` names the file a protocol's extractor needs. :func:`resolve_pinned` finds it
(``weights=`` or ``$BRAINGENBENCH_WEIGHTS/<file name>``; nothing is downloaded), :func:`check_pinned`
hashes it (through :func:`metrics.features.medicalnet_weights.sha256_matches`, full or
``prefix...suffix`` pins) and :func:`load_exact` loads a state dict strictly, listing every missing,
unexpected or mis-shaped key.

When no sha256 of the published file is known (``sha256=None``) the check refuses to run unless the
user passes the hash they computed (``--extractor-args sha256=<64 hex>``) or turns the check off
(``verify=False``, recorded as ``"unverified"``): a number is never attached to an unidentified file.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from metrics.features.base import sha256_file
from metrics.features.medicalnet_weights import (WEIGHTS_ENV, WeightsMismatchError, _parse_expected, load_exact,
                                                 sha256_matches)

log = logging.getLogger("braingenbench.metrics.features")

__all__ = ["PinnedWeights", "WeightsMismatchError", "resolve_pinned", "check_pinned", "load_exact",
           "missing_message", "WEIGHTS_ENV"]


@dataclass(frozen=True)
class PinnedWeights:
    """The weights file a protocol fixes.

    Attributes:
        filename: the exact published file name (looked for under ``$BRAINGENBENCH_WEIGHTS``).
        source: where to download it (URL or repository + path).
        sha256: full 64-hex digest, ``"prefix...suffix"``, or ``None`` when no published hash is known.
        note: where the hash comes from, or why there is none.
    """

    filename: str
    source: str
    sha256: str | None
    note: str = ""


def missing_message(pin: PinnedWeights, looked: str) -> str:
    return (f"{pin.filename} not found ({looked}). Nothing is downloaded at run time: download {pin.filename} "
            f"from {pin.source}, then set {WEIGHTS_ENV}=DIR (a folder holding {pin.filename}) or pass "
            f"--extractor-args weights=DIR/{pin.filename}")


def resolve_pinned(pin: PinnedWeights, weights: str | os.PathLike | None = None) -> Path | None:
    """The file: ``weights`` (a file, or a folder holding ``pin.filename``), else ``$BRAINGENBENCH_WEIGHTS``;
    ``None`` when it is not there (see :func:`missing_message`)."""
    if weights is not None:
        p = Path(weights).expanduser()
        candidate = p / pin.filename if p.is_dir() else p
    elif os.environ.get(WEIGHTS_ENV):
        candidate = Path(os.environ[WEIGHTS_ENV]).expanduser() / pin.filename
    else:
        return None
    return candidate if candidate.is_file() else None


def where_looked(pin: PinnedWeights, weights: str | os.PathLike | None = None) -> str:
    if weights is not None:
        return f"weights={str(weights)!r}"
    env = os.environ.get(WEIGHTS_ENV)
    return f"looked in ${WEIGHTS_ENV}={env}" if env else f"${WEIGHTS_ENV} is not set and no weights= was given"


def check_pinned(pin: PinnedWeights, path: Path, *, sha256: str | None = None, verify: bool = True) -> tuple[str, str]:
    """Hash ``path`` and compare with ``sha256`` (the user's) or the pin; returns ``(digest, status)``.

    Status: ``"verified"``, ``"verified-prefix-suffix"``, ``"verified-user-sha256"`` or ``"unverified"``
    (``verify=False``).

    Raises:
        WeightsMismatchError: the digest differs from the expected one, or no hash is known and none was
            given (both with ``verify=True``); the message names the file, its source and the hash.
    """
    digest = sha256_file(path)
    expected = sha256 or pin.sha256
    if not verify:
        if expected is None or not sha256_matches(digest, expected):
            log.warning("%s: sha256 %s not checked against a published value (verify=False); recorded as "
                        "'unverified'", path, digest)
            return digest, "unverified"
    elif expected is None:
        raise WeightsMismatchError(
            f"no published sha256 is known for {pin.filename} ({pin.note or 'none found'}); {path} has sha256 "
            f"{digest}. Check that it is the file from {pin.source}, then pass --extractor-args sha256={digest} "
            "(or verify=False to record it as 'unverified')")
    elif not sha256_matches(digest, expected):
        raise WeightsMismatchError(
            f"{path} has sha256 {digest}, but the protocol expects {pin.filename} with sha256 {expected}: the file "
            f"is corrupt, truncated or not the published one. Re-download it from {pin.source}, or pass "
            "verify=False to use it anyway (recorded as 'unverified')")
    if sha256:
        return digest, "verified-user-sha256"
    return digest, "verified" if len(_parse_expected(expected)[0]) == 64 else "verified-prefix-suffix"


def read_state_dict(path: Path, who: str) -> dict[str, torch.Tensor]:
    try:
        payload = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated files
        raise WeightsMismatchError(f"cannot read {path} with torch.load(weights_only=True) for {who}: {exc}") from exc
    if isinstance(payload, dict) and "state_dict" in payload:
        payload = payload["state_dict"]
    if not isinstance(payload, dict) or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise WeightsMismatchError(f"{path} holds no state dict of tensors ({who})")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in payload.items()}


