"""Any BIDS dataset (e.g. from OpenNeuro): ``participants.tsv`` + ``sub-*/[ses-*/]anat/*_T1w.nii.gz``.

Suffixes: ``T1w`` → T1, ``T2w`` → T2, ``FLAIR`` → FLAIR, ``PDw``/``PD`` → PD. ``participants.tsv``
columns ``participant_id``, ``age``, ``sex`` (``M``/``F``/``male``/``female``; ``n/a`` for unknown),
optional ``site``. Per participant and modality the first session, then the first run (sorted
names) is used; other sessions/runs are listed in the notes. The licence is the dataset's own
(``dataset_description.json`` ``License``), recorded in cohort.json.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from cohorts.datasets import (DatasetError, DatasetInfo, Discovery, RawScan, RawSubject, column, find_files,
                                 parse_age, parse_sex, read_table)

INFO = DatasetInfo(
    name="bids", title="BIDS dataset", url="https://bids.neuroimaging.io/",
    licence="the dataset's own (dataset_description.json License)", citation="see dataset_description.json",
    modalities=("T1",), layout="participants.tsv and sub-01/[ses-01/]anat/sub-01[_ses-01]_T1w.nii.gz",
)
SUFFIX = {"t1w": "T1", "t2w": "T2", "flair": "FLAIR", "pdw": "PD", "pd": "PD"}
FILE_RE = re.compile(r"^(sub-[A-Za-z0-9]+)(?:_ses-([A-Za-z0-9]+))?(?:_[a-z]+-[A-Za-z0-9]+)*_(T1w|T2w|FLAIR|PDw|PD)"
                     r"\.nii(?:\.gz)?$")


def discover(raw: Path, scratch: Path) -> Discovery:
    meta = {}
    desc = raw / "dataset_description.json"
    if desc.exists():
        try:
            d = json.loads(desc.read_text())
            meta = {"bids_name": d.get("Name"), "licence": d.get("License"), "doi": d.get("DatasetDOI")}
        except ValueError as e:
            raise DatasetError(f"{desc}: not valid JSON ({e}); fix or remove it") from e
    demo = {}
    part = raw / "participants.tsv"
    if part.exists():
        df = read_table(part)
        idc = column(df, "participant_id", path=part)
        agec = column(df, "age", path=part, required=False)
        sexc = column(df, "sex", "gender", path=part, required=False)
        sitec = column(df, "site", "scanner", "centre", "center", path=part, required=False)
        for r in df.to_dict("records"):
            pid = str(r[idc]).strip()
            pid = pid if pid.startswith("sub-") else f"sub-{pid}"
            site = str(r[sitec]).strip() if sitec and str(r.get(sitec)) not in ("", "nan", "n/a") else None
            demo[pid] = {"age": parse_age(r.get(agec)) if agec else None,
                         "sex": parse_sex(r.get(sexc)) if sexc else None, "site": site}
    subjects: dict[str, RawSubject] = {}
    extra: dict[str, list[str]] = {}
    for f in find_files(raw, r"^sub-.*\.nii(\.gz)?$"):
        if f.parent.name != "anat" or "derivatives" in f.relative_to(raw).parts:
            continue
        m = FILE_RE.match(f.name)
        if not m:
            continue
        sub, _ses, suf = m.groups()
        mod = SUFFIX[suf.lower()]
        s = subjects.setdefault(sub, RawSubject(person_id=sub, session_id=sub, scans={}))
        if mod in s.scans:
            s.scans[mod].alternatives.append(f)
            extra.setdefault(sub, []).append(f.name)
        else:
            s.scans[mod] = RawScan(mod, f)
    for sub, s in subjects.items():
        d = demo.get(sub)
        if not part.exists():
            s.notes.append("no participants.tsv: age and sex not mentioned")
        elif d is None:
            s.notes.append(f"{sub} is not in participants.tsv: age and sex not mentioned")
        else:
            s.age, s.sex, s.site = d["age"], d["sex"], d["site"]
        if sub in extra:
            s.notes.append(f"further sessions/runs kept as fallbacks only: {', '.join(extra[sub])}")
    return Discovery(sorted(subjects.values(), key=lambda s: s.session_id), [], meta)
