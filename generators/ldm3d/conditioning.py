"""Caption -> cross-attention context.

The context of one caption is the concatenation of

1. the per-token MiniLM embeddings of the caption, linearly projected to ``context_dim`` (padding
   tokens are zero, so their keys/values are zero), and
2. a few *attribute tokens* built from :func:`cohorts.captions.parse_caption`: modality (one-hot),
   sex, z-scored age, and per structure its z-scored volume, centred percentile and the
   "large"/"small" qualifier, each with a missing flag, mapped by a small per-attribute linear layer
   whose bias doubles as the attribute's identity embedding.

Pinaya et al. 2022 conditioned their brain LDM on age, sex and ventricular/brain volume through
exactly such scalar inputs; the numbers in our captions are otherwise hard for a sentence encoder to
use. The per-token text path is kept so that per-token cross-attention maps exist (see
:mod:`generators.ldm3d.explain`).

For classifier-free guidance (Ho & Salimans 2022) the whole context is replaced by a learned null
context with probability ``caption_dropout`` in training; with ``attribute_dropout`` each attribute
token is also, independently, replaced by its "not given" features (:func:`drop_attributes`). With
``fourier_features`` > 0 every numeric feature also gets sin/cos Fourier features (Tancik et al.
2020; :func:`attribute_features`).
"""

from __future__ import annotations

import logging
import math
import re
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from cohorts.subject import MODALITIES, STRUCTURES

logger = logging.getLogger(__name__)

STRUCTURE_KEYS: tuple[str, ...] = tuple(STRUCTURES)
ATTRIBUTE_NAMES: tuple[str, ...] = ("modality", "sex", "age", *STRUCTURE_KEYS)
N_ATTR = len(ATTRIBUTE_NAMES)
N_FEAT = 6  # features per attribute token (before Fourier features)
#: (row, column) of the numeric features that get Fourier features: age z, and per structure volume z
#: and centred percentile
_NUMERIC = ((2, 0), *((3 + j, c) for j in range(len(STRUCTURES)) for c in (0, 1)))


def n_features(fourier: int = 0) -> int:
    """Features per attribute token: the :data:`N_FEAT` base features plus two sin/cos pairs (volume,
    percentile) per Fourier frequency."""
    return N_FEAT + 4 * int(fourier)
STAT_KEYS: tuple[str, ...] = ("age", *STRUCTURE_KEYS)  # scalars that are z-scored


# ----------------------------------------------------------------------------- caption parsing
def get_caption_parser() -> tuple[Callable[[str], dict], str]:
    """The caption parser and its name.

    Returns ``cohorts.captions.parse_caption`` when that module exists; otherwise a small
    regex fallback for the phantom caption style (logged as a warning; the name is stored in the
    checkpoint so a mismatch between training and sampling is visible in ``info()``).
    """
    try:
        from cohorts.captions import parse_caption  # type: ignore[import-not-found]

        return parse_caption, "cohorts.captions.parse_caption"
    except ImportError:
        logger.warning("cohorts.captions is not available; using ldm3d's fallback caption parser")
        return fallback_parse_caption, "generators.ldm3d.conditioning.fallback_parse_caption"


#: earlier names of the same caption parser (the module moved; checkpoints store the name they were trained with)
PARSER_ALIASES = {"bench.data.captions.parse_caption": "cohorts.captions.parse_caption"}


def same_parser(stored: str, current: str) -> bool:
    """Whether a checkpoint's stored caption-parser name is the parser in use (moved modules included).

    >>> same_parser("bench.data.captions.parse_caption", "cohorts.captions.parse_caption")
    True
    """
    return PARSER_ALIASES.get(stored, stored) == PARSER_ALIASES.get(current, current)


_NUM = r"(\d+(?:\.\d+)?)"


def fallback_parse_caption(text: str) -> dict:
    """Minimal parser of the phantom caption style (used only when cohorts.captions is absent)."""
    t = text.lower()
    out: dict = {"modality": None, "age": None, "sex": None, "volumes": {}, "percentiles": {}, "qualitative": {}}
    for m in ("flair", "t1", "t2", "pd"):
        if re.search(rf"\b{m}\b|\b{m}-weighted", t):
            out["modality"] = m.upper()
            break
    m = re.search(r"(\d+(?:\.\d+)?)[- ]year[- ]old", t)
    if m:
        out["age"] = float(m.group(1))
    if re.search(r"\b(woman|female|girl)\b", t):
        out["sex"] = "F"
    elif re.search(r"\b(man|male|boy)\b", t):
        out["sex"] = "M"
    for key, name in STRUCTURES.items():
        m = re.search(rf"(?<![a-z]){re.escape(name.lower())}\s+{_NUM}\s*ml(?:\s*\({_NUM}\w*\s+percentile\))?", t)
        if m:
            out["volumes"][key] = float(m.group(1))
            if m.group(2):
                out["percentiles"][key] = float(m.group(2))
        for q in ("large", "small"):
            if re.search(rf"\b{q}\s+{re.escape(name.lower())}", t):
                out["qualitative"][key] = q
    return out


# ----------------------------------------------------------------------------- attribute features
def default_stats() -> dict[str, tuple[float, float]]:
    return {k: (0.0, 1.0) for k in STAT_KEYS}


def compute_stats(parsed: Sequence[dict]) -> dict[str, tuple[float, float]]:
    """Mean and std of age and each structure volume over parsed training captions."""
    stats = default_stats()
    for k in STAT_KEYS:
        vals = [p.get("age") if k == "age" else (p.get("volumes") or {}).get(k) for p in parsed]
        vals = np.array([float(v) for v in vals if v is not None and np.isfinite(float(v))], dtype=np.float64)
        if len(vals) >= 2:
            stats[k] = (float(vals.mean()), float(max(vals.std(), 1e-3)))
        elif len(vals) == 1:
            stats[k] = (float(vals[0]), 1.0)
    return stats


def _z(v, mean_std) -> float:
    mean, std = mean_std
    return float(np.clip((float(v) - mean) / std, -5.0, 5.0))


def attribute_features(parsed: dict, stats: dict[str, tuple[float, float]], fourier: int = 0) -> np.ndarray:
    """(N_ATTR, n_features(fourier)) float32 features of one parsed caption; missing values -> 0 + a flag.

    Layout per token: modality [T1, T2, PD, FLAIR, missing, 0]; sex [F, M, missing, 0, 0, 0];
    age [z, missing, 0, 0, 0, 0]; structure [volume z, (percentile - 50) / 29, volume missing,
    percentile missing, large, small]. With ``fourier`` = F > 0, then for each numeric feature x of the
    row (age: z; structure: volume z, then percentile) the columns ``sin(w_k x), cos(w_k x)`` for
    ``w_k = pi * 2**k / 4``, k < F (zeros where x is missing; rows without numbers are zero there).

    >>> f = attribute_features({"age": 60.0}, {"age": (50.0, 10.0)}, fourier=1)
    >>> f.shape, round(float(f[2, 0]), 3), [round(float(v), 3) for v in f[2, 6:8]]
    ((15, 10), 1.0, [0.707, 0.707])
    """
    f = np.zeros((N_ATTR, n_features(fourier)), dtype=np.float32)
    mod = (parsed.get("modality") or "").upper() or None
    if mod in MODALITIES:
        f[0, MODALITIES.index(mod)] = 1.0
    else:
        f[0, 4] = 1.0
    sex = parsed.get("sex")
    if sex == "F":
        f[1, 0] = 1.0
    elif sex == "M":
        f[1, 1] = 1.0
    else:
        f[1, 2] = 1.0
    age = parsed.get("age")
    if age is not None and math.isfinite(float(age)):
        f[2, 0] = _z(age, stats["age"])
    else:
        f[2, 1] = 1.0
    vols = parsed.get("volumes") or {}
    pcts = parsed.get("percentiles") or {}
    qual = parsed.get("qualitative") or {}
    for j, key in enumerate(STRUCTURE_KEYS):
        row = f[3 + j]
        v = vols.get(key)
        if v is not None and math.isfinite(float(v)):
            row[0] = _z(v, stats[key])
        else:
            row[2] = 1.0
        p = pcts.get(key)
        if p is not None and math.isfinite(float(p)):
            row[1] = (float(p) - 50.0) / 29.0
        else:
            row[3] = 1.0
        q = qual.get(key)
        row[4] = 1.0 if q == "large" else 0.0
        row[5] = 1.0 if q == "small" else 0.0
    if fourier:
        _fourier(f, int(fourier))
    return f


def _fourier(f: np.ndarray, n: int) -> None:
    """Fill the Fourier columns of ``f`` in place from its numeric features (missing ones stay 0)."""
    w = np.pi * 2.0 ** np.arange(n) / 4.0
    for row, col in _NUMERIC:
        if f[row, col + 2] or (row == 2 and f[row, 1]):  # the value's missing flag (age: column 1)
            continue
        x = float(f[row, col])
        start = N_FEAT + 2 * n * (col if row > 2 else 0)
        f[row, start:start + 2 * n] = np.stack([np.sin(w * x), np.cos(w * x)], axis=1).reshape(-1)


def missing_features(fourier: int = 0) -> np.ndarray:
    """(N_ATTR, n_features) features of a caption that gives no attribute at all (each token's
    "not given" encoding): what :func:`drop_attributes` puts in place of a dropped token."""
    return attribute_features({}, default_stats(), fourier)


def drop_attributes(attrs: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Attribute dropout: each (sample, attribute) token of ``attrs`` (B, N_ATTR, F) is replaced by its
    "not given" features with probability ``p`` (a training-time augmentation)."""
    if p <= 0:
        return attrs
    fourier = (attrs.shape[-1] - N_FEAT) // 4
    missing = torch.from_numpy(missing_features(fourier)).to(attrs.dtype)
    drop = torch.rand(attrs.shape[:2], generator=generator) < p
    return torch.where(drop[..., None], missing[None].expand_as(attrs), attrs)


# ----------------------------------------------------------------------------- module
class Conditioner(nn.Module):
    """Text tokens + attribute tokens -> context (B, max_tokens + N_ATTR, context_dim).

    Args:
        text_dim: width of the text encoder's token embeddings (384 for MiniLM).
        context_dim: width of the context (UNet ``cross_attention_dim``).
        max_tokens: fixed number of text tokens (padding included).
        use_text_tokens: include the text path (else its tokens are zero).
        use_attribute_tokens: include the attribute path (else its tokens are zero).
        n_feat: features per attribute token (:func:`n_features`).
    """

    def __init__(self, text_dim: int, context_dim: int, max_tokens: int, *, use_text_tokens: bool = True,
                 use_attribute_tokens: bool = True, n_feat: int = N_FEAT):
        super().__init__()
        self.max_tokens = max_tokens
        self.use_text_tokens = use_text_tokens
        self.use_attribute_tokens = use_attribute_tokens
        self.text_proj = nn.Linear(text_dim, context_dim)
        self.attr_weight = nn.Parameter(torch.randn(N_ATTR, n_feat, context_dim) * (1.0 / math.sqrt(n_feat)))
        self.attr_bias = nn.Parameter(torch.randn(N_ATTR, context_dim) * 0.5)
        self.null_context = nn.Parameter(torch.zeros(max_tokens + N_ATTR, context_dim))
        # z-scoring statistics of the training captions (age, structure volumes), saved with the weights
        self.register_buffer("stat_mean", torch.zeros(len(STAT_KEYS)))
        self.register_buffer("stat_std", torch.ones(len(STAT_KEYS)))

    @property
    def n_tokens(self) -> int:
        return self.max_tokens + N_ATTR

    def set_stats(self, stats: dict[str, tuple[float, float]]) -> None:
        self.stat_mean.copy_(torch.tensor([stats[k][0] for k in STAT_KEYS]))
        self.stat_std.copy_(torch.tensor([stats[k][1] for k in STAT_KEYS]))

    def stats(self) -> dict[str, tuple[float, float]]:
        return {k: (float(m), float(s)) for k, m, s in zip(STAT_KEYS, self.stat_mean.tolist(), self.stat_std.tolist())}

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor, attrs: torch.Tensor,
                drop: torch.Tensor | None = None) -> torch.Tensor:
        """Build contexts.

        Args:
            tokens: (B, max_tokens, text_dim) text-encoder token embeddings.
            mask: (B, max_tokens) bool, True on real tokens.
            attrs: (B, N_ATTR, N_FEAT) from :func:`attribute_features`.
            drop: (B,) bool; True replaces that sample's context by the null context.

        Returns:
            (B, max_tokens + N_ATTR, context_dim).
        """
        t = self.text_proj(tokens) * mask[..., None].to(tokens.dtype)
        if not self.use_text_tokens:
            t = torch.zeros_like(t)
        a = torch.einsum("baf,afd->bad", attrs, self.attr_weight) + self.attr_bias
        if not self.use_attribute_tokens:
            a = torch.zeros_like(a)
        ctx = torch.cat([t, a], dim=1)
        if drop is not None:
            ctx = torch.where(drop[:, None, None], self.null_context[None].expand_as(ctx), ctx)
        return ctx

    def null(self, batch: int) -> torch.Tensor:
        """The unconditional context repeated ``batch`` times."""
        return self.null_context[None].expand(batch, -1, -1)


def encode_captions(captions: Sequence[str], conditioning, device: str = "cpu", batch_size: int = 32) -> dict:
    """Everything the conditioner needs for a training set of captions, computed once.

    Args:
        captions: the training captions.
        conditioning: the ``conditioning`` config section (text encoder, ``max_tokens``).
        device: torch device of the text encoder.
        batch_size: captions per text-encoder call.

    Returns:
        ``tokens`` (float16 per-token embeddings), ``mask``, ``attrs`` (attribute features), ``stats``
        (their z-scoring statistics), ``parser`` (caption parser name) and ``encoder`` (the text encoder).
    """
    from generators.text import get_text_encoder

    te = get_text_encoder(conditioning.text_encoder, device, conditioning.max_tokens)
    captions = list(captions)
    toks, masks = [], []
    for i in range(0, len(captions), batch_size):
        t, m = te.encode_tokens(captions[i:i + batch_size])
        toks.append(t.half())
        masks.append(m)
    parse, parser_name = get_caption_parser()
    parsed = [parse(c) for c in captions]
    stats = compute_stats(parsed)
    fourier = conditioning.fourier_features
    attrs = torch.from_numpy(np.stack([attribute_features(p, stats, fourier) for p in parsed]))
    return {"tokens": torch.cat(toks), "mask": torch.cat(masks), "attrs": attrs, "stats": stats,
            "parser": parser_name, "encoder": te}
