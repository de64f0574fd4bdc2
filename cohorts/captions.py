"""Captions: built from a :class:`~cohorts.subject.Subject`, parsed back into attributes.

One module for the phantom and every real dataset. A caption reads::

    Synthetic phantom. T1-weighted brain MRI of a 63-year-old woman. Lateral ventricles 32.1 mL
    (78th percentile), third ventricle 1.2 mL (55th percentile), ...; grey matter 620.4 mL, white
    matter 480.2 mL, CSF 250.0 mL, intracranial volume 1350.6 mL.

A subject with recorded lesions (``phantom-ms``) says so after its demographics: "... of a 34-year-old
woman with 12 white-matter lesions (7 periventricular, 3 juxtacortical, 2 deep white-matter), total
lesion volume 8.4 mL, and thalamic atrophy." or "... with no white-matter lesions."

:func:`parse_caption` is tolerant to case and wording ("female"/"woman", "T1w", "PD-weighted",
"70 year old", "enlarged lateral ventricles"), so hand-written prompts parse too.
"""

from __future__ import annotations

import math
import re
from typing import Iterable, Sequence

from cohorts.subject import STRUCTURES, Subject

MODALITY_WORDS = {"T1": "T1-weighted", "T2": "T2-weighted", "PD": "proton-density-weighted",
                  "FLAIR": "FLAIR"}
# Structures reported with a percentile (the tissue totals are listed after the semicolon).
REGIONAL = ("lateral_ventricles", "third_ventricle", "fourth_ventricle", "hippocampus_left",
            "hippocampus_right", "thalamus", "caudate", "putamen")
TISSUE = ("gm", "wm", "csf", "icv")
#: lesion location classes as captions name them (keys of ``Subject.lesions``)
LESION_WORDS = {"periventricular": "periventricular", "juxtacortical": "juxtacortical",
                "deep": "deep white-matter", "infratentorial": "infratentorial"}
#: deep grey-matter atrophy (``Subject.atrophy``, % lost) is mentioned from this much on
ATROPHY_MENTION_PCT = 3.0
_ATROPHY_WORDS = {"thalamus": "thalamic atrophy", "caudate": "caudate atrophy"}


# ------------------------------------------------------------------------------------ percentiles
def percentile_rank(value: float, values: Sequence[float]) -> float:
    """Mid-rank percentile of ``value`` among ``values``, rounded to an integer in [1, 99]."""
    n = len(values)
    if n == 0:
        raise ValueError("percentile_rank needs at least one value")
    below = sum(1 for v in values if v < value)
    equal = sum(1 for v in values if v == value)
    pct = 100.0 * (below + 0.5 * equal) / n
    return float(min(99, max(1, int(math.floor(pct + 0.5)))))


def compute_percentiles(subjects: Iterable[Subject]) -> None:
    """Fill ``Subject.percentiles`` (rank within the given subjects, per structure key), in place.

    Only subjects that have a volume for a key take part in (and get) that key's percentile.
    """
    subjects = list(subjects)
    for key in STRUCTURES:
        vals = [s.volumes[key] for s in subjects if key in s.volumes]
        if not vals:
            continue
        for s in subjects:
            if key in s.volumes:
                s.percentiles[key] = percentile_rank(s.volumes[key], vals)


def ordinal(n: int) -> str:
    """1 -> '1st', 2 -> '2nd', 11 -> '11th', 23 -> '23rd'."""
    n = int(n)
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


# ------------------------------------------------------------------------------------ make
def who(age: float | None, sex: str | None) -> str:
    """"an 80-year-old woman", "a 34-year-old man", "a subject" (the subject phrase of captions)."""
    noun = {"F": "woman", "M": "man"}.get((sex or "").upper(), "subject")
    if age is None:
        return f"a {noun}"
    years = int(math.floor(age))
    article = "an" if years in (11, 18) or str(years).startswith("8") else "a"  # "an 80-year-old"
    return f"{article} {years}-year-old {noun}"


def _vol(key: str, subject: Subject, with_percentile: bool) -> str:
    text = f"{STRUCTURES[key]} {subject.volumes[key]:.1f} mL"
    if with_percentile and key in subject.percentiles:
        text += f" ({ordinal(int(round(subject.percentiles[key])))} percentile)"
    return text


def _count(n: float, noun: str) -> str:
    n = int(round(n))
    return f"{n} {noun}" + ("" if n == 1 else "s")


def pathology_phrase(subject: Subject) -> str:
    """"with 3 white-matter lesions (2 periventricular, 1 deep white-matter), total lesion volume
    1.2 mL, and thalamic atrophy" (empty when the subject records no lesions)."""
    if not subject.lesions:
        return ""
    les = subject.lesions
    n = int(round(les.get("count", 0)))
    if n == 0:
        parts = ["no white-matter lesions"]
    else:
        where = [f"{int(round(les[k]))} {w}" for k, w in LESION_WORDS.items() if les.get(k, 0) > 0]
        head = _count(n, "white-matter lesion") + (f" ({', '.join(where)})" if where else "")
        parts = [head, f"total lesion volume {les.get('volume', 0.0):.1f} mL"]
    atrophy = [w for k, w in _ATROPHY_WORDS.items() if subject.atrophy.get(k, 0.0) >= ATROPHY_MENTION_PCT]
    if atrophy:
        parts.append("and " + " and ".join(atrophy))
    return "with " + ", ".join(parts)


def _signed(x: float) -> str:
    return f"{x:+.1f} %".replace("+0.0 %", "0.0 %").replace("-0.0 %", "0.0 %")


def followup_sentence(subject: Subject) -> str:
    """"Follow-up at 12 months; since the previous scan: 2 new lesions, 1 enlarging lesion, lesion volume
    +0.4 mL, thalamus -1.2 %, caudate -0.8 %, brain -0.6 %." (empty for a baseline or a cross-sectional
    subject)."""
    if not subject.session or not subject.months:
        return ""
    c = subject.changes
    events = [_count(c.get("new_lesions", 0), "new lesion"), _count(c.get("enlarging_lesions", 0), "enlarging lesion")]
    if "lesion_volume_ml" in c:
        events.append(f"lesion volume {c['lesion_volume_ml']:+.1f} mL")
    pcts = [f"{w} {_signed(c[k])}" for k, w in (("thalamus_pct", "thalamus"), ("caudate_pct", "caudate"),
                                                  ("brain_pct", "brain")) if k in c]
    return f"Follow-up at {int(round(subject.months))} months; since the previous scan: {', '.join(events + pcts)}."


def make_caption(subject: Subject) -> str:
    """Natural-language caption of a subject (modality, demographics, structure volumes).

    Regional structures carry their cohort percentile; tissue totals (GM, WM, CSF, ICV) are given in
    mL only (their percentiles stay in ``Subject.percentiles``).

    Args:
        subject: any :class:`Subject`; missing age/sex/volumes/percentiles are simply omitted.

    Returns:
        The caption; it starts with "Synthetic phantom." only when ``subject.synthetic``.
    """
    parts = []
    if subject.synthetic:
        parts.append("Synthetic phantom.")
    modality = MODALITY_WORDS.get(subject.modality, subject.modality)
    patho = pathology_phrase(subject)
    parts.append(f"{modality} brain MRI of {who(subject.age, subject.sex)}" + (f" {patho}." if patho else "."))
    follow = followup_sentence(subject)
    if follow:
        parts.append(follow)
    regional = [k for k in REGIONAL if k in subject.volumes]
    tissue = [k for k in TISSUE if k in subject.volumes]
    clauses = []
    if regional:
        clauses.append(", ".join(_vol(k, subject, True) for k in regional))
    if tissue:
        clauses.append(", ".join(_vol(k, subject, False) for k in tissue))
    if clauses:
        text = "; ".join(clauses) + "."
        parts.append(text[0].upper() + text[1:])
    return " ".join(parts)


# ------------------------------------------------------------------------------------ parse
_NUM = r"(\d+(?:\.\d+)?)"
_MODALITY_PATTERNS = [  # order matters: FLAIR before T2 ("T2-FLAIR"), PD before nothing
    ("FLAIR", re.compile(r"\bflair\b", re.I)),
    ("PD", re.compile(r"\b(?:proton[\s-]*density|pd)(?:[\s-]*weighted|w)?\b", re.I)),
    ("T1", re.compile(r"\bt1(?:[\s-]*weighted|w)?\b", re.I)),
    ("T2", re.compile(r"\bt2(?:[\s-]*weighted|w)?\b", re.I)),
]
_AGE_PATTERNS = [
    re.compile(_NUM + r"[\s-]*(?:years?|yrs?|y)[\s-]*old\b", re.I),
    re.compile(r"\baged?\s*(?:of\s*)?[:=]?\s*" + _NUM + r"\b", re.I),
    re.compile(_NUM + r"\s*(?:years?|yrs?|y/o|yo)\b", re.I),
]
_FEMALE = re.compile(r"\b(?:woman|women|female|girl|lady|sex\s*[:=]?\s*f)\b", re.I)
_MALE = re.compile(r"\b(?:man|men|male|boy|gentleman|sex\s*[:=]?\s*m)\b", re.I)

# Structure mentions, most specific first; a tuple of keys for unsided mentions.
_STRUCT_PATTERNS: list[tuple[tuple[str, ...], re.Pattern]] = [
    (("third_ventricle",), re.compile(r"\b(?:third|3rd)\s+ventricle\b", re.I)),
    (("fourth_ventricle",), re.compile(r"\b(?:fourth|4th)\s+ventricle\b", re.I)),
    (("lateral_ventricles",), re.compile(r"\blateral\s+ventricles?\b|\bventricles\b|\bventricular\s+volume\b", re.I)),
    (("hippocampus_left",), re.compile(r"\bleft\s+hippocamp(?:us|al\s+volume)\b|\bhippocampus\s*,?\s*left\b", re.I)),
    (("hippocampus_right",), re.compile(r"\bright\s+hippocamp(?:us|al\s+volume)\b|\bhippocampus\s*,?\s*right\b", re.I)),
    (("hippocampus_left", "hippocampus_right"), re.compile(r"\bhippocamp(?:us|i|al)\b", re.I)),
    (("thalamus",), re.compile(r"\bthalam(?:us|i|ic)\b", re.I)),
    (("caudate",), re.compile(r"\bcaudate(?:\s+nuclei|\s+nucleus)?\b", re.I)),
    (("putamen",), re.compile(r"\bputam(?:en|ina)\b", re.I)),
    (("gm",), re.compile(r"\b(?:grey|gray)\s+matter\b|\bGM\b", re.I)),
    (("wm",), re.compile(r"\bwhite\s+matter\b|\bWM\b", re.I)),
    (("icv",), re.compile(r"\b(?:total\s+)?intracranial\s+volume\b|\bT?ICV\b", re.I)),
    (("csf",), re.compile(r"\bCSF\b|\bcerebrospinal\s+fluid\b", re.I)),
]
_VOLUME = re.compile(_NUM + r"\s*(?:ml|millilit(?:er|re)s?|cc|cm3|cm³)\b", re.I)
_PERCENTILE = re.compile(r"(\d+)\s*(?:st|nd|rd|th)?\s+percentile\b", re.I)
_LARGE = r"large|larger|enlarged|big|bigger|dilated|prominent|expanded|increased"
_SMALL = r"small|smaller|shrunken|atrophic|atrophied|atrophy|reduced|tiny|decreased|shrinking"
_QUAL = re.compile(rf"\b(?:(?:very|markedly|mildly|slightly|somewhat)\s+)?({_LARGE}|{_SMALL})\b", re.I)
_CLAUSE_SPLIT = re.compile(r"[;,]|\.(?!\d)|\bwith\b|\band\b", re.I)
# "Hippocampus, left: 3.9 mL" (report style) is one statement: its comma must not split the clause
_SIDE_AFTER = re.compile(r"\b(hippocamp(?:us|i))\s*,\s*(left|right)\b", re.I)


_WORD_NUMBERS = {"no": 0, "zero": 0, "one": 1, "a": 1, "an": 1, "a single": 1, "two": 2, "three": 3, "four": 4,
                 "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10}
_COUNT = r"(\d+|no|zero|one|a single|an?|two|three|four|five|six|seven|eight|nine|ten)"
_LESIONS_TOTAL = re.compile(_COUNT + r"\s+(?:(?:T2|FLAIR|hyperintense|MS)\s+)*"
                            r"(?:white[\s-]*matter\s+|WM\s+)?(?:lesions?|plaques?)\b", re.I)
_LESION_CLASS = {
    "periventricular": re.compile(_COUNT + r"\s+(?:are\s+|of\s+them\s+)?periventricular\b", re.I),
    "juxtacortical": re.compile(_COUNT + r"\s+(?:are\s+|of\s+them\s+)?juxta[\s-]?cortical\b", re.I),
    "deep": re.compile(_COUNT + r"\s+(?:are\s+|of\s+them\s+)?deep(?:\s+white[\s-]*matter)?\b", re.I),
    "infratentorial": re.compile(_COUNT + r"\s+(?:are\s+|of\s+them\s+)?infra[\s-]?tentorial\b", re.I),
}
_LESION_VOLUME = re.compile(r"(?:total\s+)?lesion\s+(?:volume|load)\s*(?:of|=|:)?\s*" + _NUM
                            + r"\s*(?:ml|cc|cm3|cm³)\b|(?:lesions?|plaques?)\b[^.;]*?\btotal(?:ling)?\s+(?:of\s+)?"
                            + _NUM + r"\s*(?:ml|cc|cm3|cm³)\b", re.I)
_LESION_CLAUSE = re.compile(r"lesion|plaque|periventricular|juxta[\s-]?cortical|infra[\s-]?tentorial|"
                            r"\bdeep\s+white|%|follow[\s-]*up", re.I)


_MONTHS = re.compile(r"follow[\s-]*up\s+(?:at|after|of)\s+" + _NUM + r"\s*months?\b", re.I)
_NEW = re.compile(_COUNT + r"\s+new\s+(?:white[\s-]*matter\s+|T2\s+|FLAIR\s+)?(?:lesions?|plaques?)\b", re.I)
_ENLARGING = re.compile(_COUNT + r"\s+enlarging\s+(?:white[\s-]*matter\s+|T2\s+)?(?:lesions?|plaques?)\b", re.I)
# a lesion-volume *change* carries a sign or the word "change" ("total lesion volume 8.4 mL" is not one)
_LESION_VOLUME_CHANGE = re.compile(r"lesion[\s-]*(?:volume|load)\s*(?:change\s*(?:of\s*)?([+\-−–]?\s*\d+(?:\.\d+)?)|"
                                   r"([+\-−–]\s*\d+(?:\.\d+)?))\s*(?:ml|cc|cm3|cm³)\b", re.I)
_PCT_CHANGE = {key: re.compile(rf"\b{word}\s*(?:volume\s*)?(?:change\s*)?(?:of\s*)?([+\-−–]?\s*\d+(?:\.\d+)?)\s*%", re.I)
               for key, word in (("thalamus_pct", r"thalam(?:us|ic)"), ("caudate_pct", "caudate"),
                                 ("brain_pct", r"(?:whole[\s-]*)?brain"))}


def parse_changes(text: str) -> dict:
    """What a follow-up caption or prompt asks to change: ``months`` since baseline, ``new_lesions``,
    ``enlarging_lesions``, ``lesion_volume_ml`` and ``thalamus_pct`` / ``caudate_pct`` / ``brain_pct``
    (only the keys it states).

    >>> parse_changes("follow-up at 12 months: 2 new lesions, thalamus −1.2 %")
    {'months': 12.0, 'new_lesions': 2, 'thalamus_pct': -1.2}
    >>> parse_changes("Follow-up at 9 months; since the previous scan: 1 new lesion, lesion volume +0.4 mL")
    {'months': 9.0, 'new_lesions': 1, 'lesion_volume_ml': 0.4}
    """
    out: dict = {}
    m = _MONTHS.search(text)
    if m:
        out["months"] = float(m.group(1))
    for key, pat in (("new_lesions", _NEW), ("enlarging_lesions", _ENLARGING)):
        m = pat.search(text)
        if m:
            out[key] = _number(m.group(1))
    m = _LESION_VOLUME_CHANGE.search(text)
    if m:
        out["lesion_volume_ml"] = _signed_number(m.group(1) or m.group(2))
    for key, pat in _PCT_CHANGE.items():
        m = pat.search(text)
        if m:
            out[key] = _signed_number(m.group(1))
    return out


def _signed_number(text: str) -> float:
    return float(re.sub(r"\s", "", text).replace("−", "-").replace("–", "-"))


def _number(word: str) -> int:
    w = word.lower()
    return int(w) if w.isdigit() else _WORD_NUMBERS[w]


def parse_lesions(text: str) -> dict:
    """Lesion counts and volume a caption or prompt states: ``{"count": n, "volume": mL, "<class>": n}``
    with only the keys it mentions (empty when it says nothing about lesions).

    >>> parse_lesions("FLAIR MRI with 12 periventricular and 3 juxtacortical white-matter lesions (total 8.4 mL)")
    {'periventricular': 12, 'juxtacortical': 3, 'volume': 8.4, 'count': 15}
    >>> parse_lesions("T2 brain MRI of a 40-year-old man with no white-matter lesions.")
    {'count': 0}
    """
    out: dict = {}
    for key, pat in _LESION_CLASS.items():
        m = pat.search(text)
        if m:
            out[key] = _number(m.group(1))
    m = _LESION_VOLUME.search(text)
    if m:
        out["volume"] = float(m.group(1) or m.group(2))
    total = _LESIONS_TOTAL.search(text)
    if total:  # "12 white-matter lesions" (a class word before "lesions" is not part of this match)
        out["count"] = _number(total.group(1))
    elif any(k in out for k in _LESION_CLASS):
        out["count"] = sum(out.get(k, 0) for k in _LESION_CLASS)
    if total and out.get("count") == 0:
        return {"count": 0}
    return out



def _qual_word(word: str) -> str:
    return "large" if re.fullmatch(_LARGE, word, re.I) else "small"


def parse_caption(text: str) -> dict:
    """Attributes of a caption or hand-written prompt.

    Args:
        text: a caption from :func:`make_caption` or free text such as
            "FLAIR MRI of a 70 year old man with large lateral ventricles".

    Returns:
        ``{"modality": "T1"|"T2"|"PD"|"FLAIR"|None, "age": float|None, "sex": "F"|"M"|None,
        "volumes": {key: mL}, "percentiles": {key: pct}, "qualitative": {key: "large"|"small"},
        "synthetic": bool}`` with keys from :data:`~cohorts.subject.STRUCTURES`, plus ``"lesions"``
        (:func:`parse_lesions`) when the text speaks of lesions and ``"changes"`` (:func:`parse_changes`)
        when it states a follow-up's changes.
    """
    out: dict = {"modality": None, "age": None, "sex": None, "volumes": {}, "percentiles": {},
                 "qualitative": {}, "synthetic": bool(re.search(r"\bsynthetic\b", text, re.I))}
    for mod, pat in _MODALITY_PATTERNS:
        if pat.search(text):
            out["modality"] = mod
            break
    for pat in _AGE_PATTERNS:
        m = pat.search(text)
        if m:
            out["age"] = float(m.group(1))
            break
    f, m_ = _FEMALE.search(text), _MALE.search(text)
    if f and (not m_ or f.start() <= m_.start()):
        out["sex"] = "F"
    elif m_:
        out["sex"] = "M"

    lesions = parse_lesions(text)
    if lesions:
        out["lesions"] = lesions
    changes = parse_changes(text)
    if changes:
        out["changes"] = changes
    for clause in _CLAUSE_SPLIT.split(_SIDE_AFTER.sub(r"\2 \1", text)):
        if _LESION_CLAUSE.search(clause):  # "2 deep white-matter", "total lesion volume 8.4 mL"
            continue
        keys, span = None, None
        for ks, pat in _STRUCT_PATTERNS:
            hit = pat.search(clause)
            if hit:
                keys, span = ks, hit.span()
                break
        if keys is None:
            continue
        vol = _VOLUME.search(clause)
        pct = _PERCENTILE.search(clause)
        if len(keys) == 1:  # unsided mentions carry no volume/percentile
            if vol:
                out["volumes"][keys[0]] = float(vol.group(1))
            if pct:
                out["percentiles"][keys[0]] = float(pct.group(1))
        q = _QUAL.search(clause)
        if q:
            for k in keys:
                out["qualitative"][k] = _qual_word(q.group(1))
    return out
