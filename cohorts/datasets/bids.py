"""Any BIDS dataset (e.g. from OpenNeuro): ``participants.tsv`` + ``sub-*/[ses-*/]anat/*_T1w.nii.gz``,
cross-sectional or longitudinal, with optional white-matter lesion masks under ``derivatives/``.

Suffixes: ``T1w`` → T1, ``T2w`` → T2, ``FLAIR`` → FLAIR, ``PDw``/``PD`` → PD. ``participants.tsv``
columns ``participant_id``, ``age``, ``sex`` (``M``/``F``/``male``/``female``; ``n/a`` for unknown),
optional ``site``. The licence is the dataset's own (``dataset_description.json`` ``License``),
recorded in cohort.json.

**Cross-sectional** (no participant has two sessions): one cohort subject per participant
(``sub-01``); per modality the first session, then the first run (sorted names) is used, other
runs are fallbacks listed in the notes.

**Longitudinal** (some participant has images in two or more ``ses-*`` folders): one cohort subject
per participant and session (``sub-01_ses-02``, so image ids are ``sub-01_ses-02-FLAIR``), with
``sequence`` = the participant, ``session`` = ``ses-00`` for the earliest session, ``ses-01``, ...
and ``months`` since the earliest (from ``sessions.tsv``; see :mod:`cohorts.datasets.bids_long`).
Splits stay by participant, so no person's sessions straddle splits. Runs within a session are
fallbacks.

**Lesion masks**: ``derivatives/<pipeline>/sub-XX/[ses-YY/]anat/*_label-lesion_mask.nii.gz`` (and the
variants in :mod:`cohorts.datasets.bids_long`), in the voxel space of the session's raw image. They are
checked here, before any image is processed; a mask in another space stops preparation with an error
naming the file and the fix.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from cohorts.datasets import (DatasetError, DatasetInfo, Discovery, RawScan, RawSubject, column, find_files,
                                 parse_age, parse_sex, read_table)
from cohorts.datasets.bids_long import check_mask, find_lesion_masks, natural_key, session_times

INFO = DatasetInfo(
    name="bids", title="BIDS dataset", url="https://bids.neuroimaging.io/",
    licence="the dataset's own (dataset_description.json License)", citation="see dataset_description.json",
    modalities=("T1",), layout="participants.tsv and sub-01/[ses-01/]anat/sub-01[_ses-01]_T1w.nii.gz",
)
SUFFIX = {"t1w": "T1", "t2w": "T2", "flair": "FLAIR", "pdw": "PD", "pd": "PD"}
FILE_RE = re.compile(r"^(sub-[A-Za-z0-9]+)(?:_ses-([A-Za-z0-9]+))?(?:_[a-z]+-[A-Za-z0-9]+)*_(T1w|T2w|FLAIR|PDw|PD)"
                     r"\.nii(?:\.gz)?$")


def _meta(raw: Path) -> dict:
    desc = raw / "dataset_description.json"
    if not desc.exists():
        return {}
    try:
        d = json.loads(desc.read_text())
    except ValueError as e:
        raise DatasetError(f"{desc}: not valid JSON ({e}); fix or remove it") from e
    return {"bids_name": d.get("Name"), "licence": d.get("License"), "doi": d.get("DatasetDOI")}


def _demographics(part: Path) -> dict[str, dict]:
    if not part.exists():
        return {}
    df = read_table(part)
    idc = column(df, "participant_id", path=part)
    agec = column(df, "age", path=part, required=False)
    sexc = column(df, "sex", "gender", path=part, required=False)
    sitec = column(df, "site", "scanner", "centre", "center", path=part, required=False)
    demo = {}
    for r in df.to_dict("records"):
        pid = str(r[idc]).strip()
        pid = pid if pid.startswith("sub-") else f"sub-{pid}"
        site = str(r[sitec]).strip() if sitec and str(r.get(sitec)) not in ("", "nan", "n/a") else None
        demo[pid] = {"age": parse_age(r.get(agec)) if agec else None,
                     "sex": parse_sex(r.get(sexc)) if sexc else None, "site": site}
    return demo


def _images(raw: Path) -> list[tuple[str, str | None, str, Path]]:
    """``(sub-XX, session label or None, modality, path)`` of every raw anatomical image, sorted."""
    out = []
    for f in find_files(raw, r"^sub-.*\.nii(\.gz)?$"):
        if f.parent.name != "anat" or "derivatives" in f.relative_to(raw).parts:
            continue
        m = FILE_RE.match(f.name)
        if m:
            sub, ses, suf = m.groups()
            out.append((sub, ses, SUFFIX[suf.lower()], f))
    return out


def _add(s: RawSubject, mod: str, f: Path, extra: list[str]) -> None:
    if mod in s.scans:
        s.scans[mod].alternatives.append(f)
        extra.append(f.name)
    else:
        s.scans[mod] = RawScan(mod, f)


def discover(raw: Path, scratch: Path) -> Discovery:
    meta = _meta(raw)
    part = raw / "participants.tsv"
    demo = _demographics(part)
    images = _images(raw)
    sessions_of: dict[str, set] = {}
    for sub, ses, _, _ in images:
        if ses is not None:
            sessions_of.setdefault(sub, set()).add(ses)
    longitudinal = any(len(v) > 1 for v in sessions_of.values())

    subjects: dict[str, RawSubject] = {}
    extra: dict[str, list[str]] = {}
    where: dict[str, tuple[str, str | None]] = {}  # session id -> (sub, ses) its lesion mask is keyed by
    for sub, ses, mod, f in images:
        sid = f"{sub}_ses-{ses}" if longitudinal and ses is not None else sub
        if sid not in subjects:
            subjects[sid] = RawSubject(person_id=sub, session_id=sid, scans={})
            where[sid] = (sub, ses)
        _add(subjects[sid], mod, f, extra.setdefault(sid, []))
    if longitudinal:
        _order_sessions(raw, subjects, where)
    for sid, s in subjects.items():
        d = demo.get(s.person_id)
        if not part.exists():
            s.notes.append("no participants.tsv: age and sex not mentioned")
        elif d is None:
            s.notes.append(f"{s.person_id} is not in participants.tsv: age and sex not mentioned")
        else:
            s.age, s.sex, s.site = (s.age if s.age is not None else d["age"]), d["sex"], d["site"]
        if extra.get(sid):
            what = "runs" if longitudinal else "sessions/runs"
            s.notes.append(f"further {what} kept as fallbacks only: {', '.join(extra[sid])}")
    problems = _attach_masks(raw, subjects, where, longitudinal)
    meta["longitudinal"] = longitudinal
    meta["lesion_masks"] = sum(1 for s in subjects.values() if s.lesion_mask is not None)
    return Discovery(sorted(subjects.values(), key=lambda s: s.session_id), problems, meta)


def _order_sessions(raw: Path, subjects: dict[str, RawSubject], where: dict) -> None:
    """Session index, months since the earliest session and per-session age of every participant."""
    by_person: dict[str, list[RawSubject]] = {}
    for s in subjects.values():
        by_person.setdefault(s.person_id, []).append(s)
    for sub, rows in by_person.items():
        label = {s.session_id: where[s.session_id][1] or "" for s in rows}
        order, months, ages, notes = session_times(raw, sub, sorted(set(label.values()), key=natural_key))
        for s in rows:
            ses = label[s.session_id]
            s.sequence, s.session, s.months = sub, f"ses-{order.index(ses):02d}", months[ses]
            s.age = ages.get(ses)
            s.notes.extend(notes)


def _attach_masks(raw: Path, subjects: dict[str, RawSubject], where: dict, longitudinal: bool) -> list[dict]:
    """Give each session its lesion mask (a longitudinal session only one named with its ``ses``); a mask
    in no raw image's space raises, listing every such mask; a mask without an image is a problem."""
    masks = find_lesion_masks(raw)
    if not masks:
        return []
    errors, problems, used = [], [], set()
    for sid, s in subjects.items():
        sub, ses = where[sid]
        key = (sub, ses) if (sub, ses) in masks or longitudinal else (sub, None)
        cands = masks.get(key)
        if not cands:
            continue
        used.add(key)
        scans = {m: sc.path for m, sc in s.scans.items()}
        _, err = check_mask(cands[0], scans)
        if err:
            errors.append(err)
            continue
        s.lesion_mask = cands[0]
        if len(cands) > 1:
            s.notes.append(f"lesion mask {cands[0].name} used; not used: {', '.join(c.name for c in cands[1:])}")
    for key, cands in sorted(masks.items(), key=lambda kv: str(kv[0])):
        if key not in used:
            problems.append({"file": str(cands[0]), "error": f"{cands[0]}: lesion mask of {key[0]}"
                             f"{' ses-' + key[1] if key[1] else ''}, which has no raw anatomical image; "
                             "check the sub-/ses- labels of the mask or add the image"})
    if errors:
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        raise DatasetError("; ".join(errors[:5]) + more)
    return problems
