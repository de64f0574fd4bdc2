"""What a record's numbers mean: direction, distance from the real-vs-real floor, headline metrics,
the memorisation gate, generator roles and which runs may be ranked together.

One owner for these decisions, read by the leaderboard (HTML, markdown, CSV), the ``bench run``
results table and ``bench compare``. It reads plain record dicts only (no ``bench``, ``generators``
or ``metrics`` import), and older records without the newer fields get the documented defaults.

Conventions (stated in the README, section "Reading the numbers"):

* **direction** — ``higher`` / ``lower`` is better, or ``target``: the real value (the floor) is the
  target and the distance to it ranks (diversity: both collapsed and noisy sets are wrong).
* **× floor** — every value is also shown as ``value / floor`` (1.0 = what real data scores).
  For a ``lower`` metric ×300 means 300 times the real-vs-real distance; for a ``higher`` metric
  ×0.16 means 16 % of what real data reaches; for a ``target`` metric ×1.1 means 10 % above the real
  value. The ratio is undefined (shown as ``—``) when the floor is 0 or missing.
* **outside the floor** — the run's interval and the floor's interval do not overlap, on the worse
  side (a metric that is *better* than real data is flagged separately, except on the privacy axis:
  copying less than held-out real data does is no warning sign).
* **memorisation gate** — a run passes when its memorisation interval reaches down to the real-data
  rate (its ``ci_low`` is at most ``max(floor, nominal rate)``) and it produced no near-exact copies;
  runs that fail, and generators whose role is ``memorising baseline``, never get a star.
* **oracle** — a generator that reads the held-out reference volumes of the prompts (an autoencoder's
  round trip, corrupted real volumes): a bound or a probe of the metrics, shown but never starred.
"""

from __future__ import annotations

import json
import math
from typing import Any

from core.axes import AXES

#: Roles a generator declares in ``info()["role"]``.
ROLES = ("reference-model", "baseline", "memorising baseline", "oracle", "external")
#: Roles that never get a best marker, whatever their numbers.
UNRANKED_ROLES = ("memorising baseline", "oracle")
#: Default headline metrics for records written before suites declared ``headline:`` (first existing wins).
_DEFAULT_HEADLINE = {
    "realism": ("radiomics", "sharpness", "fid-deepbet"),
    "diversity": ("prdc-deepbet/recall", "ms_ssim_diversity"),
    "conformance": ("conformance/modality_accuracy",),
    "privacy": ("memorization-deepbet",),
    "clinical": ("report_clinical/accuracy",),
    "text": ("report_text/bleu1",),
}


def to_float(value: Any) -> float | None:
    """A JSON value as a finite float, or None (null, NaN, inf, bool, non-numeric)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


_f = to_float


def _against_floor(entry: dict) -> tuple[str, float, float, float] | None:
    """``(direction, floor, low, high)`` with the value's interval widened to the value, or None
    when the value, floor or direction is unknown."""
    v, fl = _f(entry.get("value")), _f(entry.get("floor"))
    d = direction(entry)
    if v is None or fl is None or d is None:
        return None
    lo, hi = _f(entry.get("ci_low")), _f(entry.get("ci_high"))
    return d, fl, (v if lo is None else min(lo, v)), (v if hi is None else max(hi, v))


def direction(entry: dict) -> str | None:
    """``"higher"``, ``"lower"``, ``"target"`` or None (unknown) for one metric entry."""
    d = entry.get("direction") if isinstance(entry, dict) else None
    if d in ("higher", "lower", "target"):
        return d
    hib = entry.get("higher_is_better") if isinstance(entry, dict) else None
    if isinstance(hib, bool):
        return "higher" if hib else "lower"
    return None


def floor_ci(entry: dict) -> tuple[float, float] | None:
    """The floor's bootstrap interval (top-level ``floor_ci``, or ``details.floor_ci`` of older records)."""
    ci = entry.get("floor_ci")
    if not isinstance(ci, (list, tuple)):
        details = entry.get("details") if isinstance(entry.get("details"), dict) else {}
        ci = details.get("floor_ci")
    if isinstance(ci, (list, tuple)) and len(ci) == 2:
        lo, hi = _f(ci[0]), _f(ci[1])
        if lo is not None and hi is not None:
            return (min(lo, hi), max(lo, hi))
    return None


def badness(entry: dict, value: float | None = None) -> float | None:
    """A number where smaller is better, for ranking: the value (``lower``), minus the value
    (``higher``) or the distance to the floor (``target``)."""
    v = _f(entry.get("value")) if value is None else value
    d = direction(entry)
    if v is None or d is None:
        return None
    if d == "lower":
        return v
    if d == "higher":
        return -v
    fl = _f(entry.get("floor"))
    return None if fl is None else abs(v - fl)


def ratio_to_floor(entry: dict) -> float | None:
    """``value / floor`` (1.0 = real data), or None when either is missing or the floor is 0."""
    v, fl = _f(entry.get("value")), _f(entry.get("floor"))
    if v is None or fl is None or fl == 0:
        return None
    return v / fl


def versus_floor(entry: dict) -> str | None:
    """Where the value sits against the real-vs-real floor: ``"at floor"`` (intervals overlap, or the
    value is inside the floor's interval), ``"worse"``, ``"better"`` (better than real data: for a
    lower/higher metric, usually a sign that the metric is blind to something) or None (unknown)."""
    got = _against_floor(entry)
    if got is None:
        return None
    d, fl, lo, hi = got
    flo, fhi = floor_ci(entry) or (fl, fl)
    if hi >= flo and lo <= fhi:
        return "at floor"
    above = lo > fhi
    if d == "target":
        return "worse"
    side = ("worse" if above else "better") if d == "lower" else ("better" if above else "worse")
    if side == "better" and entry.get("axis") == "privacy":
        return "at floor"  # copying less than held-out real data does is no warning sign
    return side


def excludes_floor(entry: dict) -> bool:
    """The report card's detection rule: the value's interval excludes the floor *value* on the worse
    side (``lower``: ``ci_low > floor``; ``higher``: ``ci_high < floor``; ``target``: the floor lies
    outside the interval). Without an interval the value itself is used."""
    got = _against_floor(entry)
    if got is None:
        return False
    d, fl, lo, hi = got
    if d == "lower":
        return lo > fl
    if d == "higher":
        return hi < fl
    return not lo <= fl <= hi


def headline(record: dict) -> dict[str, list[str]]:
    """``{axis: [metric keys]}`` the record leads with: the suite's ``headline:`` or, for records
    without one, the first existing key of each axis's default list. Keys absent from the record
    are dropped."""
    metrics = record.get("metrics") if isinstance(record.get("metrics"), dict) else {}
    declared = (record.get("suite") or {}).get("headline") if isinstance(record.get("suite"), dict) else None
    out: dict[str, list[str]] = {}
    for axis in AXES:
        if isinstance(declared, dict) and declared:
            keys = [k for k in (declared.get(axis) or []) if k in metrics]
        else:
            keys = next(([k] for k in _DEFAULT_HEADLINE[axis] if k in metrics), [])
        if keys:
            out[axis] = keys
    return out


def role(record: dict) -> str:
    """The generator's declared role (``info.role``); ``external`` for the folder adapter and
    unknown generators."""
    gen = record.get("generator") if isinstance(record.get("generator"), dict) else {}
    info = gen.get("info") if isinstance(gen.get("info"), dict) else {}
    r = info.get("role")
    return r if r in ROLES else "external"


def may_star(record_role: str) -> bool:
    """Whether a generator of this role may get a best marker (not a memorising baseline, not an oracle)."""
    return record_role not in UNRANKED_ROLES


def memorisation_gate(record: dict) -> tuple[bool | None, str]:
    """``(passed, reason)``; ``passed`` is None when the record has no memorisation metric."""
    metrics = record.get("metrics") if isinstance(record.get("metrics"), dict) else {}
    keys = headline(record).get("privacy") or [k for k in metrics if str(metrics[k].get("family", "")) == "memorization"
                                               or k.startswith("memorization")]
    if role(record) == "memorising baseline":
        return False, "memorising baseline (copies training data by design)"
    for key in keys:
        e = metrics.get(key)
        if not isinstance(e, dict):
            continue
        v = _f(e.get("value"))
        if v is None:
            return None, f"{key} failed"
        details = e.get("details") if isinstance(e.get("details"), dict) else {}
        copies = _f(details.get("copy_fraction")) or 0.0
        nominal = _f(details.get("nominal_rate")) or 0.0
        allowed = max(_f(e.get("floor")) or 0.0, nominal)
        lo = _f(e.get("ci_low"))
        lo = v if lo is None else lo
        if copies > 0:
            return False, f"{key}: {copies:.0%} near-exact copies of training volumes"
        if lo > allowed:
            return False, f"{key} = {v:.3g}, interval above the real-data rate {allowed:.3g}"
        return True, f"{key} = {v:.3g} (real-data rate {allowed:.3g})"
    return None, "no memorisation metric"


def n_of(record: dict) -> int | None:
    """The number of prompts the run was scored on."""
    suite = record.get("suite") if isinstance(record.get("suite"), dict) else {}
    n = suite.get("n_prompts")
    return n if isinstance(n, int) and not isinstance(n, bool) else None


def comparability(record: dict) -> dict[str, str]:
    """What must be equal for two runs to be ranked or compared: suite (name and version), number of
    prompts, reference cohort (name and content hash) and grid."""
    suite = record.get("suite") if isinstance(record.get("suite"), dict) else {}
    ref = record.get("reference") if isinstance(record.get("reference"), dict) else {}
    return {
        "suite": f"{suite.get('name')} v{suite.get('version')}",
        "N": str(n_of(record)),
        "reference": f"{ref.get('name')} ({str(ref.get('content_hash') or '')[:12]})",
        "grid": json.dumps(suite.get("grid"), sort_keys=True),
    }


def comparability_differences(a: dict, b: dict) -> list[str]:
    """Human lines naming every difference that makes two runs incomparable (empty: comparable)."""
    ca, cb = comparability(a), comparability(b)
    return [f"{k} differs: {ca[k]} vs {cb[k]}" for k in ca if ca[k] != cb[k]]
