"""OASIS-1 (Open Access Series of Imaging Studies, cross-sectional): 416 adults aged 18-96, T1w.

Download layout (sites.wustl.edu/oasisbrains): ``oasis_cross-sectional_disc1.tar.gz`` ...
``disc12``, each unpacking to ``disc1/OAS1_0001_MR1/`` with ``RAW/OAS1_0001_MR1_mpr-1_anon.hdr/.img``
(3-4 single MP-RAGE runs, Analyze 7.5, sagittal), ``PROCESSED/MPRAGE/SUBJ_111/..._sbj_111.hdr``
(runs averaged, native space) and ``PROCESSED/MPRAGE/T88_111/..._t88_gfc.hdr`` (atlas-registered),
``FSL_SEG/``; plus ``oasis_cross-sectional.csv`` (``ID``, ``M/F``, ``Hand``, ``Age``, ``Educ``, ``SES``,
``MMSE``, ``CDR``, ``eTIV``, ``nWBV``, ``ASF``, ``Delay``).

The scan used is ``RAW/*_mpr-1_anon`` (native, skull on); when it cannot be read the next run,
then ``SUBJ_111``, then ``T88_111`` are tried (logged). Analyze headers carry no orientation, so the
pipeline's orientation search runs on them (left/right follows nibabel's Analyze convention).
Reliability rescans (``*_MR2``) are skipped: they would put the same person in the cohort twice.
"""

from __future__ import annotations

import re
from pathlib import Path

from cohorts.datasets import (DatasetError, DatasetInfo, Discovery, RawScan, RawSubject, column, parse_age,
                                 parse_sex, read_table)

INFO = DatasetInfo(
    name="oasis1", title="OASIS-1 cross-sectional MRI (Marcus et al. 2007)",
    url="https://sites.wustl.edu/oasisbrains/home/oasis-1/",
    licence="OASIS Data Use Agreement (free for research; no redistribution; cite Marcus et al. 2007)",
    citation="Marcus DS et al. (2007) J Cogn Neurosci 19(9):1498-1507",
    modalities=("T1",),
    layout="disc1/OAS1_0001_MR1/RAW/OAS1_0001_MR1_mpr-1_anon.hdr (+ .img) and oasis_cross-sectional.csv",
)
SESSION_RE = re.compile(r"^OAS1_(\d{4})_MR(\d)$")


def _candidates(session_dir: Path) -> list[Path]:
    raw = sorted(session_dir.glob("RAW/*_mpr-*_anon.hdr"), key=lambda p: p.name)
    sbj = sorted(session_dir.glob("PROCESSED/MPRAGE/SUBJ_111/*_sbj_111.hdr"))
    t88 = sorted(session_dir.glob("PROCESSED/MPRAGE/T88_111/*_t88_gfc.hdr"))
    return raw + sbj + t88


def discover(raw: Path, scratch: Path) -> Discovery:
    sessions = sorted(p for p in raw.rglob("OAS1_*_MR*") if p.is_dir() and SESSION_RE.match(p.name))
    if not sessions and list(raw.glob("oasis_cross-sectional_disc*.tar.gz")):
        raise DatasetError(f"{raw}: the OASIS-1 discs are still archives; extract them first "
                           "(for f in oasis_cross-sectional_disc*.tar.gz; do tar xzf $f; done)")
    sheet = next(iter(sorted(raw.rglob("oasis_cross-sectional*.csv"))), None)
    demo = {}
    if sheet is not None:
        df = read_table(sheet)
        id_col = column(df, "ID", path=sheet)
        sex_col = column(df, "M/F", "Sex", "Gender", path=sheet, required=False)
        age_col = column(df, "Age", path=sheet, required=False)
        for r in df.to_dict("records"):
            demo[str(r[id_col]).strip()] = {"age": parse_age(r.get(age_col)) if age_col else None,
                                            "sex": parse_sex(r.get(sex_col)) if sex_col else None}
    subjects, problems = [], []
    for sd in sessions:
        num, visit = SESSION_RE.match(sd.name).groups()
        if visit != "1":
            continue  # reliability rescan of a person already included
        cands = _candidates(sd)
        if not cands:
            problems.append({"file": str(sd), "error": "no RAW/*_mpr-*_anon.hdr (nor PROCESSED/MPRAGE) image; "
                             "re-extract this session from its disc archive"})
            continue
        s = RawSubject(person_id=f"OAS1_{num}", session_id=sd.name, scans={"T1": RawScan("T1", cands[0], cands[1:])},
                       site="WUSTL (Siemens Vision 1.5T)")
        d = demo.get(sd.name)
        if sheet is None:
            s.notes.append("no oasis_cross-sectional.csv in the raw folder: age and sex not mentioned")
        elif d is None:
            s.notes.append(f"{sd.name} is not in {sheet.name}: age and sex not mentioned")
        else:
            s.age, s.sex = d["age"], d["sex"]
        subjects.append(s)
    return Discovery(subjects, problems, {"spreadsheet": str(sheet) if sheet else None})
