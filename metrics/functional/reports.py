"""Clinical accuracy of a report: its statements checked one by one against the truth.

A report (or a prompt, or a true caption) is compared through its parsed attributes (the caption
parser's output: ``modality``, ``sex``, ``age``, ``volumes`` {structure: mL}, ``lesions``
{``count``, ``volume``}). Every attribute the **truth** states is one statement:

- ``correct``: the report states it and agrees — the same modality or sex; an age, a structure volume,
  a lesion count or a lesion volume within the tolerance;
- ``wrong``: the report states it and disagrees (a hallucination in the sense of Jeong et al. 2024,
  "Multimodal image-text matching improves retrieval-based chest X-ray report generation": a
  statement contradicted by the image's ground truth);
- ``missing``: the report does not state it.

Tolerances are relative to the cohort, so that they mean the same for every structure: a continuous
statement is correct within **a quarter of the interquartile range** of that attribute over the
reference cohort's training subjects (:func:`tolerances`; for ages spread over 20-90 years that is
about ±9 years, the precision radiologists give an age estimate). Two independent draws from a normal
distribution lie that close with probability 0.19, so a report that states another subject's values
is right about a fifth of the time (the floor), and one that states the subject's own values always is.

The per-report scores are ``accuracy`` = correct / truth statements, ``hallucination`` = wrong /
stated statements and ``missing`` = missing / truth statements. Text metrics (BLEU and friends) do
not see any of this: a report that copies another subject's caption shares nearly all its words.

>>> truth = {"modality": "T1", "sex": "F", "age": 60.0, "volumes": {"lateral_ventricles": 30.0}}
>>> stated = {"modality": "T1", "sex": "M", "age": None, "volumes": {"lateral_ventricles": 31.0}}
>>> tol = {"age": 10.0, "lateral_ventricles": 4.0}
>>> s = statements(stated, truth, tol)
>>> s == {"modality": "correct", "sex": "wrong", "age": "missing", "lateral_ventricles": "correct"}
True
>>> report_scores(s)
{'accuracy': 0.5, 'hallucination': 0.3333333333333333, 'missing': 0.25}
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import numpy as np

__all__ = ["BANDS", "IQR_FRACTION", "OUTCOMES", "band", "band_agreement", "band_limits", "errors", "flat_values", "report_scores",
           "statement_table", "statements", "tolerances"]

OUTCOMES = ("correct", "wrong", "missing")
#: percentile bands of a structure volume: below the 25th, 25th-75th, above the 75th percentile
BANDS = ("low", "normal", "high")
_CATEGORICAL = ("modality", "sex")
_LESION_KEYS = {"lesion_count": "count", "lesion_volume": "volume"}


def _num(x) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def flat_values(attrs: Mapping) -> dict[str, object]:
    """The statements an attribute record makes, flat: ``modality``, ``sex``, ``age``, each structure
    key of ``volumes``, ``lesion_count`` and ``lesion_volume`` (only those it states)."""
    out: dict[str, object] = {}
    for k in _CATEGORICAL:
        if attrs.get(k) not in (None, ""):
            out[k] = attrs[k]
    if _num(attrs.get("age")) is not None:
        out["age"] = float(attrs["age"])
    for k, v in (attrs.get("volumes") or {}).items():
        if _num(v) is not None:
            out[k] = float(v)
    lesions = attrs.get("lesions") or {}
    for k, src in _LESION_KEYS.items():
        if _num(lesions.get(src)) is not None:
            out[k] = float(lesions[src])
    if lesions.get("count") == 0 and "lesion_volume" not in out:  # "no lesions" states a volume of 0 too
        out["lesion_volume"] = 0.0
    return out


#: the default tolerance of a continuous statement, as a fraction of the attribute's interquartile range
IQR_FRACTION = 0.25


def tolerances(train_attributes: Iterable[Mapping], *, fraction: float = IQR_FRACTION,
               min_tolerance: Mapping[str, float] | None = None) -> dict[str, float]:
    """``fraction`` of the interquartile range of every continuous attribute over ``train_attributes``
    (the reference cohort's training subjects), at least ``min_tolerance[key]`` (default: 1 lesion for
    ``lesion_count``, 0.5 mL for ``lesion_volume``)."""
    floors = {"lesion_count": 1.0, "lesion_volume": 0.5, **(min_tolerance or {})}
    values: dict[str, list[float]] = {}
    for a in train_attributes:
        for k, v in flat_values(a).items():
            if k not in _CATEGORICAL:
                values.setdefault(k, []).append(float(v))
    out = {}
    for k, vs in values.items():
        q25, q75 = np.percentile(vs, [25, 75])
        out[k] = max(fraction * float(q75 - q25), floors.get(k, 0.0))
    return out


def band_limits(train_attributes: Iterable[Mapping]) -> dict[str, tuple[float, float]]:
    """The 25th and 75th percentiles of every structure volume over ``train_attributes``."""
    values: dict[str, list[float]] = {}
    for a in train_attributes:
        for k, v in (a.get("volumes") or {}).items():
            if _num(v) is not None:
                values.setdefault(k, []).append(float(v))
    return {k: tuple(float(q) for q in np.percentile(vs, [25, 75])) for k, vs in values.items()}


def band(value: float, limits: tuple[float, float]) -> str:
    """``"low"`` below the 25th percentile, ``"high"`` above the 75th, else ``"normal"``."""
    return "low" if value < limits[0] else ("high" if value > limits[1] else "normal")


def statements(stated: Mapping, truth: Mapping, tol: Mapping[str, float]) -> dict[str, str]:
    """Each statement of ``truth`` (see :func:`flat_values`) as ``correct``, ``wrong`` or ``missing`` in
    ``stated``; a continuous attribute without a tolerance in ``tol`` is compared exactly."""
    s, t = flat_values(stated), flat_values(truth)
    out = {}
    for k, tv in t.items():
        if k not in s:
            out[k] = "missing"
        elif k in _CATEGORICAL:
            out[k] = "correct" if str(s[k]).upper() == str(tv).upper() else "wrong"
        else:
            out[k] = "correct" if abs(float(s[k]) - float(tv)) <= tol.get(k, 0.0) + 1e-9 else "wrong"
    return out


def statement_table(stated: Mapping, truth: Mapping, tol: Mapping[str, float]) -> dict[str, dict]:
    """:func:`statements` with the values: ``{key: {"outcome", "stated", "true"}}`` (``stated`` is None
    when missing) — what a run page shows beside the report."""
    s, t = flat_values(stated), flat_values(truth)
    return {k: {"outcome": o, "stated": s.get(k), "true": t[k]} for k, o in statements(stated, truth, tol).items()}


def report_scores(outcomes: Mapping[str, str]) -> dict[str, float]:
    """``accuracy`` (correct / truth statements), ``hallucination`` (wrong / stated; 0 when nothing is
    stated) and ``missing`` (missing / truth statements) of one report's :func:`statements`."""
    n = len(outcomes)
    c = sum(v == "correct" for v in outcomes.values())
    w = sum(v == "wrong" for v in outcomes.values())
    if n == 0:
        return {"accuracy": math.nan, "hallucination": math.nan, "missing": math.nan}
    return {"accuracy": c / n, "hallucination": w / (c + w) if c + w else 0.0, "missing": (n - c - w) / n}


def errors(stated: Sequence[Mapping], truth: Sequence[Mapping], key: str) -> np.ndarray:
    """``|stated - true|`` of a continuous attribute per report (NaN where either does not state it)."""
    out = np.full(len(truth), np.nan)
    for i, (s, t) in enumerate(zip(stated, truth)):
        sv, tv = flat_values(s).get(key), flat_values(t).get(key)
        if isinstance(sv, float) and isinstance(tv, float):
            out[i] = abs(sv - tv)
    return out


def _stated_band(attrs: Mapping, key: str, limits: tuple[float, float]) -> str | None:
    v = _num((attrs.get("volumes") or {}).get(key))
    if v is not None:
        return band(v, limits)
    p = _num((attrs.get("percentiles") or {}).get(key))  # a report may give only the percentile
    if p is not None:
        return "low" if p < 25 else ("high" if p > 75 else "normal")
    q = (attrs.get("qualitative") or {}).get(key)  # "enlarged lateral ventricles"
    return {"large": "high", "small": "low"}.get(q) if q else None


def band_agreement(stated: Mapping, truth: Mapping, limits: Mapping[str, tuple[float, float]]) -> float:
    """Share of the structures whose volume ``truth`` states that ``stated`` puts in the same percentile
    band (:data:`BANDS`, from ``limits``; a report may state mL, a percentile or "enlarged"/"small"; an
    unstated structure disagrees). NaN when ``truth`` states no structure volume with known limits."""
    keys = [k for k in (truth.get("volumes") or {}) if k in limits and _num(truth["volumes"][k]) is not None]
    if not keys:
        return math.nan
    return float(np.mean([_stated_band(stated, k, limits[k]) == band(float(truth["volumes"][k]), limits[k])
                          for k in keys]))
