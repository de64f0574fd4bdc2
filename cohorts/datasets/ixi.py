"""IXI (Information eXtraction from Images): ~600 healthy adults, T1/T2/PD at three London sites.

Download layout (brain-development.org/ixi-dataset): one tar per modality, ``IXI-T1.tar``,
``IXI-T2.tar``, ``IXI-PD.tar`` (also MRA, DTI), each holding ``IXI002-Guys-0828-T1.nii.gz``-style
files (``IXI<id>-<site>-<scan>-<modality>.nii.gz``; sites Guys, HH, IOP), and the demographics
spreadsheet ``IXI.xls`` (sheet "Table": ``IXI_ID``, ``SEX_ID (1=m, 2=f)``, ``HEIGHT``, ``WEIGHT``,
``ETHNIC_ID``, ``MARITAL_ID``, ``OCCUPATION_ID``, ``QUALIFICATION_ID``, ``DOB``, ``DATE_AVAILABLE``,
``STUDY_DATE``, ``AGE``). Tars are read in place (extracted to the scratch folder); folders of
extracted files work too; ``IXI.csv`` (the same sheet exported) is accepted when xlrd is missing.
Some ids appear twice in the sheet or have no AGE: the first row with an age wins.
"""

from __future__ import annotations

import re
import tarfile
from pathlib import Path

from cohorts.datasets import (DatasetError, DatasetInfo, Discovery, RawScan, RawSubject, column, find_files,
                                 parse_age, parse_sex, read_table)

INFO = DatasetInfo(
    name="ixi", title="IXI dataset (Imperial College London)",
    url="https://brain-development.org/ixi-dataset/",
    licence="CC BY-SA 3.0", citation="IXI dataset, brain-development.org/ixi-dataset (EPSRC GR/S21533/02)",
    modalities=("T1", "T2", "PD"),
    layout="IXI-T1/IXI002-Guys-0828-T1.nii.gz (or IXI-T1.tar), IXI-T2/..., IXI-PD/..., and IXI.xls",
)
SITES = {"guys": "Guys (Philips 1.5T)", "hh": "HH (Philips 3T)", "iop": "IOP (GE 1.5T)"}
FILE_RE = re.compile(r"^(IXI(\d{3})-([A-Za-z]+)-(\d{4}))-(T1|T2|PD)\.nii(?:\.gz)?$", re.I)


def _extract_tars(raw: Path, scratch: Path) -> list[Path]:
    out = []
    for tar in sorted(raw.rglob("IXI-*.tar")) + sorted(raw.rglob("IXI-*.tar.gz")):
        dest = scratch / tar.name.split(".")[0]
        done = dest / ".complete"
        if not done.exists():
            dest.mkdir(parents=True, exist_ok=True)
            try:
                with tarfile.open(tar) as tf:
                    members = [m for m in tf.getmembers() if m.isfile() and FILE_RE.match(Path(m.name).name)]
                    for m in members:
                        m.name = Path(m.name).name  # flatten, no path traversal
                        tf.extract(m, dest)
            except (tarfile.TarError, OSError, EOFError) as e:
                raise DatasetError(f"{tar}: cannot read the archive ({e}); download it again or extract it "
                                   f"by hand into {raw / tar.name.split('.')[0]}/") from e
            done.write_text("ok")
        out.append(dest)
    return out


def read_demographics(raw: Path) -> tuple[dict[int, dict], Path | None]:
    sheets = [p for p in sorted(raw.glob("IXI*.xls")) + sorted(raw.glob("IXI*.xlsx")) + sorted(raw.glob("IXI*.csv"))]
    if not sheets:
        return {}, None
    # prefer the CSV export when xlrd is missing
    path = sheets[0]
    try:
        df = read_table(path)
    except DatasetError:
        csvs = [p for p in sheets if p.suffix.lower() == ".csv"]
        if not csvs:
            raise
        path, df = csvs[0], read_table(csvs[0])
    id_col = column(df, "IXI_ID", path=path)
    sex_col = column(df, "SEX_ID", "SEX", path=path, required=False)
    age_col = column(df, "AGE", path=path, required=False)
    demo: dict[int, dict] = {}
    for r in df.to_dict("records"):
        try:
            i = int(float(r[id_col]))
        except (TypeError, ValueError):
            continue
        age = parse_age(r.get(age_col)) if age_col else None
        sex = parse_sex(r.get(sex_col)) if sex_col else None
        if i not in demo or (demo[i]["age"] is None and age is not None):
            demo[i] = {"age": age, "sex": sex}
    return demo, path


def discover(raw: Path, scratch: Path) -> Discovery:
    roots = [raw] + _extract_tars(raw, scratch)
    files = [f for r in roots for f in find_files(r, r"^IXI\d{3}-.*\.nii(\.gz)?$")]
    demo, sheet = read_demographics(raw)
    by_session: dict[str, RawSubject] = {}
    problems = []
    for f in files:
        m = FILE_RE.match(f.name)
        if not m:
            if not re.search(r"-(MRA|DTI-\d+)\.nii", f.name, re.I):
                problems.append({"file": str(f), "error": "file name not in the IXI pattern "
                                 "IXI<id>-<site>-<scan>-<T1|T2|PD>.nii.gz; rename it or remove it"})
            continue
        session, num, site, _, mod = m.groups()
        mod = mod.upper()
        subj = by_session.setdefault(session, RawSubject(person_id=f"IXI{num}", session_id=session, scans={},
                                                          site=SITES.get(site.lower(), site)))
        if mod in subj.scans:
            subj.scans[mod].alternatives.append(f)
        else:
            subj.scans[mod] = RawScan(mod, f)
    for subj in by_session.values():
        num = int(subj.person_id[3:])
        if sheet is None:
            subj.notes.append("no IXI.xls/IXI.csv in the raw folder: age and sex are not mentioned")
        elif num in demo:
            subj.age, subj.sex = demo[num]["age"], demo[num]["sex"]
            if subj.age is None:
                subj.notes.append(f"{sheet.name} has no AGE for IXI_ID {num}: age not mentioned")
        else:
            subj.notes.append(f"IXI_ID {num} is not in {sheet.name}: age and sex not mentioned")
        missing = [m for m in INFO.modalities if m not in subj.scans]
        if missing:
            subj.notes.append(f"no {', '.join(missing)} image (expected IXI-{missing[0]}/{subj.session_id}-"
                              f"{missing[0]}.nii.gz); only {', '.join(sorted(subj.scans))} prepared")
    return Discovery(sorted(by_session.values(), key=lambda s: s.session_id), problems,
                     {"spreadsheet": str(sheet) if sheet else None})
