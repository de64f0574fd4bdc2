"""`retrieval`: the training volume whose caption is nearest to the prompt — the memorisation ceiling.

It cannot be more realistic than real data, and it copies training subjects verbatim: a real model
that scores like it on realism *and* on memorisation is copying.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from generators.base import GenerationOutput, GeneratorContext, Prompt


class RetrievalGenerator:
    """Nearest training caption by cosine similarity of sentence embeddings (MiniLM by default).

    Args:
        context: runner context (the cohort's train split is the retrieval pool).
        k: pick uniformly (seeded) among the k nearest captions; 1 = always the nearest.
        text_encoder: local Hugging Face model folder; empty for the bundled MiniLM.
    """

    name = "retrieval"

    def __init__(self, context: GeneratorContext, *, k: int = 1, text_encoder: str = ""):
        from generators.text import get_text_encoder

        if k < 1:
            raise ValueError(f"retrieval: k must be >= 1, got {k}")
        self.ctx, self.k = context, k
        self.pool = sorted(context.cohort.split("train"), key=lambda s: s.subject_id)
        if not self.pool:
            raise ValueError(f"retrieval: cohort {context.cohort.name!r} has an empty train split")
        self.encoder = get_text_encoder(text_encoder or None, context.device)
        self.pool_emb = self.encoder.encode_sentences([s.caption for s in self.pool])

    def generate(self, prompts: Sequence[Prompt], *, seed: int) -> GenerationOutput:
        from generators.base import seed_for

        q = self.encoder.encode_sentences([p.text for p in prompts])
        sims = q @ self.pool_emb.T
        vols = np.empty((len(prompts), 1, *self.ctx.grid.shape), dtype=np.float32)
        picked = []
        for i in range(len(prompts)):
            order = np.argsort(-sims[i], kind="stable")[: self.k]
            j = order[np.random.default_rng(seed_for(seed, i)).integers(len(order))] if self.k > 1 else order[0]
            vols[i, 0] = self.ctx.cohort.load_volume(self.pool[j])
            picked.append(self.pool[j].subject_id)
        return GenerationOutput(np.clip(vols, 0, 1), extras={"retrieved": picked})

    def info(self) -> dict:
        return {"role": "memorising baseline", "description": "nearest training caption (sentence-embedding cosine) -> its volume",
                "k": self.k, "text_encoder": str(self.encoder.model_dir),
                "text_encoder_sha256": self.encoder.fingerprint, "pool_size": len(self.pool)}
