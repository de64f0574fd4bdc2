"""Seeded bootstrap confidence intervals (Efron & Tibshirani 1993, "An Introduction to the Bootstrap").

Resampling — which items a resample draws:

* :func:`bootstrap_ci`: one sample / paired items: the indices of ``n`` items, with replacement;
* :func:`bootstrap_ci_two_sample`: two sets resampled independently (e.g. generated and reference
  features for FID);
* :func:`mean_ci`: the mean of per-item values (vectorised).

Interval — one routine, :func:`bootstrap_interval`, turns the resampled values into an interval:

* without a point estimate: the **percentile** interval, the ``α/2`` and ``1 - α/2`` quantiles of
  the resamples;
* with the point estimate ``θ̂`` (``estimate=``): the **bias-corrected percentile** interval, BC
  (Efron 1987, "Better Bootstrap Confidence Intervals", JASA 82(397):171-185; Efron & Tibshirani
  1993 ch. 14, the BCa interval with acceleration 0)::

      p  = (#{θ*_b < θ̂} + ½ #{θ*_b = θ̂}) / B        (ties counted half; p kept in [1/2B, 1 - 1/2B])
      z0 = Φ⁻¹(p)
      interval = quantiles Φ(2 z0 + z_{α/2}) and Φ(2 z0 + z_{1-α/2}) of the θ*_b

  For an unbiased, symmetric statistic ``z0 ≈ 0`` and BC is the percentile interval; for a biased
  one (an absolute difference near 0, a Fréchet distance, a share at 0 or 1) the quantiles move
  towards the estimate. As the final guarantee the interval is extended to ``θ̂`` when it still
  lies outside (``extended``), so **every interval contains its estimate**. The bootstrap bias
  ``mean(θ*) - θ̂`` is reported (``bias``) for ``details["bootstrap_bias"]``.
* with ``shift_bias=True`` as well: BC of the resamples shifted by the bootstrap bias,
  ``θ*_b - (mean(θ*) - θ̂)`` (the bias correction of Efron & Tibshirani 1993, ch. 10), for statistics
  whose bootstrap bias exceeds their bootstrap spread: plug-in statistics that resampling with
  duplicated items moves (a smaller effective N) — the Fréchet distance, whose resamples all lie
  above the estimate at N=60, F=24; histogram divergences; PRDC and the memorisation shares, whose
  k-NN geometry changes. There plain BC has ``p ≈ 0`` (or 1) and collapses onto
  ``[θ̂, min θ*]``; after the shift ``z0`` only corrects the skewness.

Every result is an :class:`Interval`: a ``(low, high)`` tuple (``lo, hi = ci`` and ``list(ci)``
work) that also says how it was made.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
from scipy.special import ndtr, ndtri

__all__ = ["Interval", "bootstrap_interval", "bootstrap_ci", "bootstrap_ci_two_sample", "mean_ci",
           "PERCENTILE", "BC", "BC_SHIFTED"]

PERCENTILE = "percentile bootstrap"
BC = "bias-corrected percentile bootstrap (BC, Efron 1987)"
BC_SHIFTED = "bias-corrected percentile bootstrap (BC, Efron 1987) of the resamples shifted by the bootstrap bias"


class Interval(tuple):
    """A bootstrap interval: the tuple ``(low, high)`` plus how it was made.

    Attributes:
        low, high: the bounds (NaN when there were too few items or no finite resample).
        method: :data:`PERCENTILE`, :data:`BC` or :data:`BC_SHIFTED`.
        estimate: the point estimate it was built around (NaN for a percentile interval).
        bias: ``mean(resamples) - estimate``, the bootstrap bias estimate (NaN without an estimate;
            of the unshifted resamples with ``shift_bias``).
        z0: the BC bias-correction constant ``Φ⁻¹(p)`` (0 for a percentile interval).
        extended: the BC interval did not contain the estimate and was extended to it.
        n_resamples: finite resamples the interval was computed from.
    """

    def __new__(cls, low: float = math.nan, high: float = math.nan, *, method: str = PERCENTILE,
                estimate: float = math.nan, bias: float = math.nan, z0: float = 0.0, extended: bool = False,
                n_resamples: int = 0) -> "Interval":
        self = super().__new__(cls, (float(low), float(high)))
        self.method, self.estimate, self.bias = method, float(estimate), float(bias)
        self.z0, self.extended, self.n_resamples = float(z0), bool(extended), int(n_resamples)
        return self

    @property
    def low(self) -> float:
        return self[0]

    @property
    def high(self) -> float:
        return self[1]

    def contains(self, value: float) -> bool:
        """``low <= value <= high`` (False when a bound is NaN)."""
        return bool(self[0] <= value <= self[1])

    def clipped(self, lower: float | None = None, upper: float | None = None) -> "Interval":
        """The interval cut to ``[lower, upper]`` (a statistic's range, e.g. a distance >= 0), never so
        far that it loses the estimate."""
        lo, hi = self[0], self[1]
        if lower is not None:
            lo = max(lo, lower) if not math.isfinite(self.estimate) else min(max(lo, lower), self.estimate)
        if upper is not None:
            hi = min(hi, upper) if not math.isfinite(self.estimate) else max(min(hi, upper), self.estimate)
        return Interval(lo, hi, **self.__dict__)

    def absolute(self) -> "Interval":
        """The interval of ``|θ|`` from this interval of ``θ``: ``[0, max |bound|]`` when it holds 0,
        otherwise ``[min |bound|, max |bound|]``. For an absolute difference this is the right
        construction: ``|θ̂|`` is biased upwards near 0 (resamples of ``|θ|`` are never below 0 and
        rarely at it), while the signed ``θ̂`` is not; it contains ``|estimate|`` whenever this
        interval contains ``estimate``."""
        lo, hi = self[0], self[1]
        if not (math.isfinite(lo) and math.isfinite(hi)):
            return Interval(math.nan, math.nan, **{**self.__dict__, "estimate": abs(self.estimate)})
        alo, ahi = (0.0 if lo <= 0.0 <= hi else min(abs(lo), abs(hi))), max(abs(lo), abs(hi))
        return Interval(alo, ahi, **{**self.__dict__, "estimate": abs(self.estimate),
                                     "method": f"{self.method} of the signed difference, folded to |·|"})

    def details(self, resampling: str = "") -> dict:
        """What goes into ``MetricResult.details``: ``ci_method`` (the interval method, then
        ``resampling``: what was resampled) and, around an estimate, ``bootstrap_bias`` and
        ``ci_extended``."""
        out: dict = {"ci_method": f"{self.method}; {resampling}" if resampling else self.method}
        if math.isfinite(self.estimate):  # built around an estimate (BC)
            out["bootstrap_bias"] = self.bias
            out["ci_extended"] = self.extended
        return out

    def __repr__(self) -> str:
        return f"Interval({self[0]!r}, {self[1]!r}, method={self.method!r}, bias={self.bias!r})"

    def __reduce__(self):
        return (_make_interval, (self[0], self[1], self.__dict__))


def _make_interval(low: float, high: float, meta: dict) -> Interval:
    return Interval(low, high, **meta)


def bootstrap_interval(resamples, estimate: float | None = None, *, level: float = 0.95,
                       shift_bias: bool = False) -> Interval:
    """The interval of bootstrap ``resamples`` of a statistic (the one interval routine).

    Args:
        resamples: the statistic on each resample (non-finite values are dropped).
        estimate: the statistic on the full data. Given (and finite): the bias-corrected percentile
            interval (BC, Efron 1987), extended to contain ``estimate``; None: the percentile interval.
        level: coverage, e.g. 0.95.
        shift_bias: with ``estimate``, shift the resamples by the bootstrap bias before BC (see the
            module docstring; for statistics such as the Fréchet distance).

    Returns:
        An :class:`Interval`; ``(nan, nan)`` when no resample is finite.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    vals = np.asarray(resamples, dtype=np.float64).ravel()
    vals = np.sort(vals[np.isfinite(vals)])
    b = int(vals.size)
    alpha = (1.0 - level) / 2.0
    method = BC_SHIFTED if shift_bias else BC
    if b == 0:
        est = math.nan if estimate is None else float(estimate)
        return Interval(method=PERCENTILE if estimate is None else method, estimate=est)
    if estimate is None or not math.isfinite(float(estimate)):
        lo, hi = np.quantile(vals, [alpha, 1.0 - alpha])
        return Interval(lo, hi, method=PERCENTILE, n_resamples=b)
    est = float(estimate)
    bias = float(vals.mean() - est)
    if shift_bias:
        vals = vals - bias
    below = np.searchsorted(vals, est, side="left")           # #{θ* < θ̂}
    ties = np.searchsorted(vals, est, side="right") - below   # #{θ* = θ̂}
    p = (below + 0.5 * ties) / b
    p = min(max(p, 0.5 / b), 1.0 - 0.5 / b)  # finite z0 even when every resample lies on one side
    z0 = float(ndtri(p))
    q = ndtr(2.0 * z0 + ndtri(np.array([alpha, 1.0 - alpha])))
    lo, hi = (float(v) for v in np.quantile(vals, q))
    extended = not lo <= est <= hi
    lo, hi = min(lo, est), max(hi, est)
    return Interval(lo, hi, method=method, estimate=est, bias=bias, z0=z0, extended=extended, n_resamples=b)


def bootstrap_ci(stat: Callable[[np.ndarray], float], n: int, *, n_boot: int = 200, seed: int = 0,
                 level: float = 0.95, estimate: float | None = None, shift_bias: bool = False) -> Interval:
    """CI of ``stat(idx)`` over ``n_boot`` resamples ``idx`` of ``range(n)``.

    Args:
        stat: statistic of an index array (length ``n``, drawn with replacement).
        n: number of items.
        n_boot: resamples.
        seed: RNG seed; the same seed gives the same interval.
        level: coverage, e.g. 0.95.
        estimate: ``stat`` on the full data: gives the BC interval that contains it (see
            :func:`bootstrap_interval`); None: the percentile interval.
        shift_bias: BC of the bias-shifted resamples (see :func:`bootstrap_interval`).
    """
    if n < 2:
        return bootstrap_interval([], estimate, level=level, shift_bias=shift_bias)
    rng = np.random.default_rng(seed)
    vals = [stat(rng.integers(0, n, n)) for _ in range(n_boot)]
    return bootstrap_interval(vals, estimate, level=level, shift_bias=shift_bias)


def bootstrap_ci_two_sample(stat: Callable[[np.ndarray, np.ndarray], float], n_a: int, n_b: int, *,
                            n_boot: int = 200, seed: int = 0, level: float = 0.95,
                            estimate: float | None = None, shift_bias: bool = False) -> Interval:
    """CI of ``stat(idx_a, idx_b)`` with both sets resampled independently (``estimate`` and
    ``shift_bias`` as in :func:`bootstrap_ci`)."""
    if n_a < 2 or n_b < 2:
        return bootstrap_interval([], estimate, level=level, shift_bias=shift_bias)
    rng = np.random.default_rng(seed)
    vals = [stat(rng.integers(0, n_a, n_a), rng.integers(0, n_b, n_b)) for _ in range(n_boot)]
    return bootstrap_interval(vals, estimate, level=level, shift_bias=shift_bias)


def mean_ci(values: np.ndarray, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95,
            estimate: float | None = None) -> Interval:
    """CI of the mean of per-item values (vectorised); pass ``estimate=values.mean()`` for the BC
    interval that contains it (see :func:`bootstrap_interval`)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2:
        return bootstrap_interval([], estimate, level=level)
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, (n_boot, v.size))].mean(axis=1)
    return bootstrap_interval(means, estimate, level=level)
