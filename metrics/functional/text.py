"""Text similarity of reports to reference texts, from maintained libraries (not re-implemented).

- BLEU-n (Papineni et al. 2002) and chrF (Popović 2015): ``sacrebleu`` (Post 2018), corpus-level, its
  default ``13a`` tokeniser, case-sensitive, no smoothing for corpus BLEU. The per-report sufficient
  statistics are extracted once, so a bootstrap resample of reports is a sum of rows (the same
  numbers ``sacrebleu``'s ``corpus_score`` gives for the resampled lists; a test checks it).
- ROUGE-L (Lin 2004): ``rouge-score`` (Google's reference implementation), F-measure per report, no
  stemming, averaged.
- Embedding cosine: the cosine of sentence embeddings (the caller gives the embeddings, e.g. MiniLM).

Each function takes ``hyps`` (reports) and ``refs`` (one reference text per report).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np

__all__ = ["bleu", "bleu_stats", "chrf", "chrf_stats", "corpus_from_stats", "cosine", "rouge_l"]


@lru_cache(maxsize=8)
def _bleu(order: int):
    from sacrebleu.metrics import BLEU

    return BLEU(max_ngram_order=order)


@lru_cache(maxsize=1)
def _chrf():
    from sacrebleu.metrics import CHRF

    return CHRF()


def _check(hyps: Sequence[str], refs: Sequence[str]) -> None:
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} reports but {len(refs)} reference texts; they must be paired")


def bleu_stats(hyps: Sequence[str], refs: Sequence[str], order: int = 4) -> np.ndarray:
    """Per-report BLEU sufficient statistics ``(N, 2 + 2 * order)`` (lengths, n-gram matches and totals)."""
    _check(hyps, refs)
    return np.asarray(_bleu(order)._extract_corpus_statistics(list(hyps), [list(refs)]), dtype=np.int64)


def chrf_stats(hyps: Sequence[str], refs: Sequence[str]) -> np.ndarray:
    """Per-report chrF sufficient statistics (character and word n-gram counts)."""
    _check(hyps, refs)
    return np.asarray(_chrf()._extract_corpus_statistics(list(hyps), [list(refs)]), dtype=np.int64)


def corpus_from_stats(stats: np.ndarray, metric: str, order: int = 4) -> float:
    """The corpus score (0-100) of summed per-report statistics; ``metric`` is ``bleu`` or ``chrf``."""
    scorer = _bleu(order) if metric == "bleu" else _chrf()
    return float(scorer._compute_score_from_stats([int(x) for x in np.asarray(stats).sum(axis=0)]).score)


def bleu(hyps: Sequence[str], refs: Sequence[str], order: int = 4) -> float:
    """Corpus BLEU-``order`` (0-100).

    >>> round(bleu(["the cat sat on the mat"], ["the cat is on the mat"], order=1), 2)
    83.33
    """
    return corpus_from_stats(bleu_stats(hyps, refs, order), "bleu", order)


def chrf(hyps: Sequence[str], refs: Sequence[str]) -> float:
    """Corpus chrF (0-100, character 6-grams, beta 2)."""
    return corpus_from_stats(chrf_stats(hyps, refs), "chrf")


@lru_cache(maxsize=1)
def _rouge():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(hyps: Sequence[str], refs: Sequence[str]) -> np.ndarray:
    """ROUGE-L F-measure of each report against its reference, ``(N,)`` in [0, 1].

    >>> rouge_l(["the cat sat on the mat"], ["the cat is on the mat"]).round(4).tolist()
    [0.8333]
    """
    _check(hyps, refs)
    scorer = _rouge()
    return np.array([scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(hyps, refs)], dtype=float)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two ``(N, d)`` embedding matrices."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape:
        raise ValueError(f"embeddings of different shapes {a.shape} and {b.shape}")
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(na * nb, 1e-12)
