"""The "Reports" section of a report run's page (task ``report``: a captioner describes real volumes).

For the first :data:`N_REPORTS` described volumes: a montage of the volume's mid slices, the
captioner's report with every *wrong* statement marked, the volume's true caption (the true value of
a wrong or missing statement marked too) and a per-statement table (statement, true, stated,
outcome). Statements come from ``metrics["report_clinical/accuracy"]["details"]["statements"]`` (one
dict per entry of ``record["reports"]``, same order).

Finding a statement in free text is best effort: the stated value is formatted as a caption writes it
(``"25.1 mL"`` after the structure's name, ``"38-year-old"``, ``"woman"``, ``"FLAIR"``, ...); a value
that cannot be found is simply not marked (the table still lists it). Every string is HTML-escaped
here before the ``<mark>`` tags are added, so the returned :class:`markupsafe.Markup` is safe.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from markupsafe import Markup, escape

logger = logging.getLogger(__name__)

#: Described volumes shown on a report run's page.
N_REPORTS = 12
#: The metric whose details hold the per-report statement outcomes.
STATEMENTS_METRIC = "report_clinical/accuracy"
OUTCOMES = ("correct", "wrong", "missing")

#: Human names of the statement keys, in caption order.
STATEMENT_LABELS = {
    "modality": "modality", "sex": "sex", "age": "age",
    "lateral_ventricles": "lateral ventricles", "third_ventricle": "third ventricle",
    "fourth_ventricle": "fourth ventricle", "hippocampus_left": "left hippocampus",
    "hippocampus_right": "right hippocampus", "thalamus": "thalamus", "caudate": "caudate",
    "putamen": "putamen", "gm": "grey matter", "wm": "white matter", "csf": "CSF",
    "icv": "intracranial volume", "lesion_count": "lesion count", "lesion_volume": "lesion volume",
}
_NAME_PATTERNS = {
    "lateral_ventricles": r"\blateral\s+ventricles?\b",
    "third_ventricle": r"\b(?:third|3rd)\s+ventricle\b",
    "fourth_ventricle": r"\b(?:fourth|4th)\s+ventricle\b",
    "hippocampus_left": r"\bleft\s+hippocamp\w*|\bhippocampus\s*,?\s*left\b",
    "hippocampus_right": r"\bright\s+hippocamp\w*|\bhippocampus\s*,?\s*right\b",
    "thalamus": r"\bthalam\w*", "caudate": r"\bcaudate\b", "putamen": r"\bputam\w*",
    "gm": r"\b(?:grey|gray)\s+matter\b|\bGM\b", "wm": r"\bwhite\s+matter\b|\bWM\b",
    "csf": r"\bCSF\b|\bcerebrospinal\s+fluid\b", "icv": r"\bintracranial\s+volume\b|\bT?ICV\b",
    "lesion_volume": r"\blesion\s+(?:volume|load)\b",
}
_MODALITY_PATTERNS = {
    "FLAIR": r"\bFLAIR\b", "T1": r"\bT1(?:[\s-]*weighted|w)?\b", "T2": r"\bT2(?:[\s-]*weighted|w)?\b",
    "PD": r"\bproton[\s-]*density(?:[\s-]*weighted)?\b|\bPD(?:[\s-]*weighted|w)?\b",
}
_SEX_PATTERNS = {"F": r"\b(?:woman|female|girl|lady)\b", "M": r"\b(?:man|male|boy|gentleman)\b"}
_UNIT = r"(?:\s*(?:mL|millilit(?:er|re)s?|cc|cm3|cm³)\b)?"
#: How far after a structure's name its value may be (the same clause of a caption).
_NEAR = 48


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    v = float(value)
    return v if math.isfinite(v) else None


def _number_pattern(v: float) -> str:
    """The ways a caption may write ``v`` ("25.1", "25.10"; "25" too for 25.0), not part of a longer number."""
    forms = dict.fromkeys([f"{v:.1f}", f"{v:g}", f"{v:.2f}"] + ([f"{int(v)}"] if v == int(v) else []))
    return r"(?<![\d.])(?:" + "|".join(re.escape(f) for f in forms) + r")(?!\.?\d)"


def locate(key: str, value: Any, text: str) -> tuple[int, int] | None:
    """Where ``text`` states ``value`` for statement ``key``, or None when it cannot be found.

    >>> t = "FLAIR brain MRI of a 38-year-old man. Lateral ventricles 25.1 mL, third ventricle 1.2 mL."
    >>> [t[slice(*locate(k, v, t))] for k, v in (("age", 38.0), ("sex", "M"), ("third_ventricle", 1.2))]
    ['38-year-old', 'man', '1.2 mL']
    >>> locate("thalamus", 22.4, t) is None
    True
    """
    if value is None or not isinstance(text, str):
        return None
    pats: list[str] = []
    v = _number(value)
    if key == "modality":
        pats = [_MODALITY_PATTERNS.get(str(value).upper(), re.escape(str(value)) + r"\b")]
    elif key == "sex":
        pats = [_SEX_PATTERNS[str(value).upper()]] if str(value).upper() in _SEX_PATTERNS else []
    elif v is None:
        pats = [r"\b" + re.escape(str(value)) + r"\b"]
    elif key == "age":
        n = _number_pattern(v)
        pats = [n + r"[\s-]*(?:years?|yrs?|y)[\s-]*old\b", r"\baged?\s*(?:of\s*)?[:=]?\s*" + n,
                n + r"\s*(?:years?|yrs?|y/o|yo)\b"]
    elif key == "lesion_count" or (key == "lesion_volume" and v == 0):  # "no white-matter lesions"
        pats = [(r"\bno\b" if v == 0 else _number_pattern(v)) + r"\s+(?:(?:T2|FLAIR|hyperintense|MS)\s+)*"
                r"(?:white[\s-]*matter\s+|WM\s+)?(?:lesions?|plaques?)\b"]
    else:  # a volume: the number after the structure's name (same clause), else a unique occurrence
        num = _number_pattern(v) + _UNIT
        name = _NAME_PATTERNS.get(key, r"\b" + re.escape(key.replace("_", " ")) + r"\b")
        for hit in re.finditer(name, text, re.I):
            window = re.split(r"[;,]|\.(?!\d)", text[hit.end(): hit.end() + _NEAR], maxsplit=1)[0]
            m = re.search(num, window, re.I)
            if m:
                return hit.end() + m.start(), hit.end() + m.end()
        found = list(re.finditer(num, text, re.I))
        return (found[0].start(), found[0].end()) if len(found) == 1 else None
    for p in pats:
        m = re.search(p, text, re.I)
        if m:
            return m.start(), m.end()
    return None


def mark(text: str, spans: list[tuple[int, int, str, str]]) -> Markup:
    """``text`` escaped, with ``<mark class=CLS title=TITLE>`` around each ``(start, end, cls, title)``
    span (spans overlapping an earlier one are dropped; the titles of equal spans are joined)."""
    merged: list[tuple[int, int, str, str]] = []
    for span in sorted(spans):
        if merged and merged[-1][:2] == span[:2]:
            merged[-1] = (*merged[-1][:3], f"{merged[-1][3]}; {span[3]}")
        else:
            merged.append(span)
    out, pos = [], 0
    for start, end, cls, title in merged:
        if start < pos or end <= start:
            continue
        out += [escape(text[pos:start]),
                Markup('<mark class="{}" title="{}">{}</mark>').format(cls, title, text[start:end])]
        pos = end
    out.append(escape(text[pos:]))
    return Markup("").join(out)


def fmt_value(key: str, value: Any) -> str:
    """A statement value for the table: ``"25.1 mL"``, ``"38 y"``, ``"F"``, ``"3"``; ``""`` for None."""
    if value is None:
        return ""
    v = _number(value)
    if v is None:
        return str(value)
    if key == "age":
        return f"{v:g} y"
    if key == "lesion_count":
        return f"{v:g}"
    return f"{v:.1f} mL"


def _details(record: dict) -> dict:
    metrics = record.get("metrics") if isinstance(record.get("metrics"), dict) else {}
    entry = metrics.get(STATEMENTS_METRIC)
    details = entry.get("details") if isinstance(entry, dict) else None
    return details if isinstance(details, dict) else {}


def tolerances_of(record: dict) -> dict[str, float]:
    """``{statement key: tolerance}`` under which a stated number counts as correct (may be empty)."""
    tol = _details(record).get("tolerances")
    if not isinstance(tol, dict):
        return {}
    return {str(k): v for k, v in ((k, _number(v)) for k, v in tol.items()) if v is not None}


def statements_of(record: dict) -> tuple[list[dict] | None, str]:
    """The per-report statement outcomes (one dict per entry of ``record["reports"]``), or None with
    the reason they cannot be used."""
    st = _details(record).get("statements")
    reports = record.get("reports") if isinstance(record.get("reports"), list) else []
    if not isinstance(st, list):
        return None, f"statement check: {STATEMENTS_METRIC} recorded no statements"
    if len(st) != len(reports):
        return None, (f"statement check: {len(st)} statement sets for {len(reports)} reports "
                      f"({STATEMENTS_METRIC}); not matched to the reports")
    return st, ""


def _rows(statements: Any, tolerances: dict[str, float]) -> list[dict]:
    """Table rows of one report's statements, in caption order (unknown keys after, sorted)."""
    if not isinstance(statements, dict):
        return []
    order = list(STATEMENT_LABELS)
    keys = sorted(statements, key=lambda k: (order.index(k) if k in order else len(order), k))
    rows = []
    for key in keys:
        s = statements[key]
        if not isinstance(s, dict):
            continue
        outcome = s.get("outcome") if s.get("outcome") in OUTCOMES else "unknown"
        rows.append({"key": key, "label": STATEMENT_LABELS.get(key, key.replace("_", " ")),
                     "true": fmt_value(key, s.get("true")), "stated": fmt_value(key, s.get("stated")),
                     "tolerance": ("± " + fmt_value(key, tolerances[key])) if key in tolerances else "",
                     "outcome": outcome, "true_value": s.get("true"), "stated_value": s.get("stated")})
    return rows


@dataclass
class ReportCard:
    """One described volume of a report run page."""

    subject_id: str
    report: Markup
    caption: Markup
    rows: list[dict]
    counts: dict[str, int]
    png: str | None = None
    unmarked: int = 0


def card(entry: dict, statements: Any, tolerances: dict[str, float] | None = None) -> ReportCard:
    """The report (wrong statements marked) and true caption (their true values marked) of one entry."""
    report, caption = str(entry.get("report", "")), str(entry.get("caption", ""))
    rows = _rows(statements, tolerances or {})
    in_report, in_caption, unmarked = [], [], 0
    for r in rows:
        if r["outcome"] not in ("wrong", "missing"):
            continue
        where = (f"stated {r['stated']}, true {r['true']}" if r["outcome"] == "wrong"
                 else f"not stated; true {r['true']}")
        title = f"{r['label']}: {where}"
        if r["outcome"] == "wrong":
            span = locate(r["key"], r["stated_value"], report)
            if span is None:
                unmarked += 1
            else:
                in_report.append((*span, "wrong", title))
        span = locate(r["key"], r["true_value"], caption)
        if span is not None:
            in_caption.append((*span, "truth" if r["outcome"] == "wrong" else "unstated", title))
    counts = {o: sum(r["outcome"] == o for r in rows) for o in OUTCOMES}
    return ReportCard(subject_id=str(entry.get("subject_id", "")), report=mark(report, in_report),
                      caption=mark(caption, in_caption), rows=rows, counts=counts, unmarked=unmarked)


def collect_reports(record: dict, asset_dir: Path, rel_prefix: str, cohort: Any, why: str,
                    write_montage: Callable[..., None]) -> tuple[list[ReportCard], list[str]]:
    """The cards of the first :data:`N_REPORTS` reports, with their montages when the cohort is here.

    Args:
        record: A report run's record.
        asset_dir: Where this page's PNGs go.
        rel_prefix: ``asset_dir`` relative to the page.
        cohort: The reference cohort (:class:`core.runfiles.CohortFiles`) or None.
        why: Why ``cohort`` is None.
        write_montage: ``(path, volume, None) -> None``, writes a PNG of the volume's mid slices.

    Returns:
        ``(cards, human reasons for what is not shown)``.
    """
    reports = [e for e in (record.get("reports") or []) if isinstance(e, dict)]
    if not reports:
        return [], ["reports: the record lists no reports"]
    statements, problem = statements_of(record)
    missing = [problem] if problem else []
    if cohort is None:
        missing.append(f"volumes of the reports: {why}")
    cards, unread = [], []
    tolerances = tolerances_of(record)
    for i, entry in enumerate(reports[:N_REPORTS]):
        c = card(entry, statements[i] if statements is not None else None, tolerances)
        vol = cohort.volume(c.subject_id) if cohort is not None and c.subject_id else None
        if vol is None and cohort is not None:
            unread.append(c.subject_id)
        elif vol is not None:
            name = f"report_{i}.png"
            try:
                write_montage(asset_dir / name, vol, None)
                c.png = f"{rel_prefix}/{name}"
            except (ValueError, OSError) as e:
                logger.warning("montage of %s failed: %s", c.subject_id, e)
                unread.append(c.subject_id)
        cards.append(c)
    if unread:
        missing.append(f"volumes of {len(unread)} report(s) ({', '.join(unread[:4])}"
                       f"{', …' if len(unread) > 4 else ''}): not readable in the reference cohort")
    n_unmarked = sum(c.unmarked for c in cards)
    if n_unmarked:
        missing.append(f"{n_unmarked} wrong statement(s) not found in the report text (not marked; "
                       "listed in the statement tables)")
    return cards, missing
