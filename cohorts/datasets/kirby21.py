"""Kirby21 (Multi-Modal MRI Reproducibility Resource, F.M. Kirby Center / KKI): 21 healthy adults
scanned twice (42 sessions, ``KKI2009-01`` ... ``KKI2009-42``) at 3 T.

Download layout (NITRC / the KKI site): one archive per session, ``KKI2009-01.tar.bz2``, unpacking
to ``KKI2009-01-MPRAGE.nii``, ``KKI2009-01-FLAIR.nii``, ``KKI2009-01-T2w.nii`` (and DTI, fMRI, MT,
VASO, ASL, ... which are ignored) in a folder or flat; ``.nii.gz`` works too. MPRAGE → T1, T2w →
T2, FLAIR → FLAIR. Demographics (age, sex, and which two sessions are the same person) are
published as a table, not with the images: put it in the raw folder as any ``*.csv``/``*.tsv`` whose
columns include the session id (``ID``/``Session``/``Scan``), ``Age``, ``Sex``/``Gender`` and
optionally ``Subject`` (the person, so that a scan-rescan pair never straddles splits). Without it,
captions carry no age/sex and each session counts as its own person.
"""

from __future__ import annotations

import re
from pathlib import Path

from cohorts.datasets import (DatasetInfo, Discovery, RawScan, RawSubject, column, find_files, parse_age,
                                 parse_sex, read_table)

INFO = DatasetInfo(
    name="kirby21", title="Kirby21 multi-modal reproducibility resource (Landman et al. 2011)",
    url="https://www.nitrc.org/projects/multimodal/",
    licence="free for research use (see the NITRC project page); cite Landman et al. 2011",
    citation="Landman BA et al. (2011) NeuroImage 54(4):2854-2866",
    modalities=("T1", "T2", "FLAIR"),
    layout="KKI2009-01/KKI2009-01-MPRAGE.nii (+ -FLAIR.nii, -T2w.nii)",
)
FILE_RE = re.compile(r"^(KKI2009-(\d{2}))-(MPRAGE|FLAIR|T2w)\.nii(?:\.gz)?$", re.I)
MODALITY = {"mprage": "T1", "flair": "FLAIR", "t2w": "T2"}


def _demographics(raw: Path) -> tuple[dict, Path | None]:
    for path in sorted(raw.glob("*.csv")) + sorted(raw.glob("*.tsv")):
        df = read_table(path)
        idc = column(df, "ID", "Session", "Scan", "MRI", path=path, required=False)
        if idc is None or not df[idc].astype(str).str.contains("KKI2009", case=False).any():
            continue
        agec = column(df, "Age", path=path, required=False)
        sexc = column(df, "Sex", "Gender", path=path, required=False)
        subc = column(df, "Subject", "Person", "Participant", path=path, required=False)
        out = {}
        for r in df.to_dict("records"):
            m = re.search(r"KKI2009-(\d{2})", str(r[idc]), re.I)
            if m:
                out[f"KKI2009-{m.group(1)}"] = {"age": parse_age(r.get(agec)) if agec else None,
                                                "sex": parse_sex(r.get(sexc)) if sexc else None,
                                                "person": str(r[subc]) if subc and str(r[subc]) not in ("", "nan") else None}
        return out, path
    return {}, None


def discover(raw: Path, scratch: Path) -> Discovery:
    by_session: dict[str, RawSubject] = {}
    for f in find_files(raw, r"^KKI2009-\d{2}-.*\.nii(\.gz)?$"):
        m = FILE_RE.match(f.name)
        if not m:
            continue  # DTI, fMRI, MT, ... are not structural scans we use
        session, _, kind = m.groups()
        mod = MODALITY[kind.lower()]
        s = by_session.setdefault(session, RawSubject(person_id=session, session_id=session, scans={},
                                                      site="KKI (Philips Achieva 3T)"))
        if mod in s.scans:
            s.scans[mod].alternatives.append(f)
        else:
            s.scans[mod] = RawScan(mod, f)
    demo, sheet = _demographics(raw)
    for s in by_session.values():
        d = demo.get(s.session_id)
        if sheet is None:
            s.notes.append("no Kirby21 demographics table in the raw folder: age and sex not mentioned")
        elif d is None:
            s.notes.append(f"{s.session_id} is not in {sheet.name}: age and sex not mentioned")
        else:
            s.age, s.sex = d["age"], d["sex"]
            if d["person"]:
                s.person_id = f"KKI-{d['person']}"
        missing = [m for m in INFO.modalities if m not in s.scans]
        if missing:
            names = {"T1": "MPRAGE", "T2": "T2w", "FLAIR": "FLAIR"}
            s.notes.append(f"no {', '.join(names[m] for m in missing)} image (expected {s.session_id}-"
                           f"{names[missing[0]]}.nii); only {', '.join(sorted(s.scans))} prepared")
    return Discovery(sorted(by_session.values(), key=lambda s: s.session_id), [],
                     {"demographics": str(sheet) if sheet else None})
