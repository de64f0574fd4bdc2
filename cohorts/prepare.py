"""``python -m bench cohort prepare DATASET RAW_DIR --out DIR``: a real dataset → a prepared cohort.

The output folder has the phantom's format (:class:`~cohorts.subject.Cohort`: ``cohort.json``,
``manifest.csv``, ``images/``, ``labels/``, ``brain_mask.nii.gz``) plus:

- ``prepare_log.jsonl`` — one JSON line per step per scan (name, status, seconds, details);
- ``failed.csv`` — every scan or file that could not be prepared (``subject_id``, ``file``, ``step``,
  ``error``), never silently dropped; subjects with no usable scan are listed there too;
- ``work/<session>.json`` — what a finished session produced (resumability: a session whose record
  matches the current options is not redone; delete its file to redo it).

Manifest columns beyond the cohort format: ``person_id``, ``session_id``, ``source_file``,
``skull_strip``, ``qc_ncc``, ``qc_dice``, ``qc_pass``, ``notes`` and, for IBSR, ``manual_vol_*``.

Longitudinal datasets (a loader that sets ``RawSubject.session``, e.g. BIDS with sessions) add the
cohort format's ``sequence``, ``session`` (``ses-00`` = the earliest) and ``months``. A session with a
lesion mask (``RawSubject.lesion_mask``, in the voxel space of one of its raw images) gets, for each of
its images, ``lesions/<id>.nii.gz``: the mask carried through that image's own registration as a lesion
fraction (float32, ``> 0.5`` is the mask; :func:`cohorts.datasets.bids_long.lesion_fraction_on_grid`),
and ``les_count`` / ``les_volume`` (26-connected components, mL) measured on the native mask.
Scans that fail QC stay in the manifest with ``split = "excluded"`` (so that neither the runner nor
the ldm3d trainer uses them) unless ``keep_qc_failures``. Splits are by person: sha256 of
``"<dataset>:<person_id>"`` → train 70 % / val 10 % / test 20 %. Captions come from
:mod:`cohorts.captions` with percentiles against the prepared (non-excluded) cohort;
demographics a dataset lacks are not mentioned.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import sys
import time
import traceback
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from cohorts import atlas
from cohorts.datasets import DatasetError, RawSubject, get_loader
from cohorts.grid import Grid, get_grid
from cohorts.subject import Cohort, CohortError, Subject, save_nifti
from core.io import atomic_write
from core.progress import Progress

logger = logging.getLogger(__name__)

PREPARE_VERSION = "1.0"
SPLIT_FRACTIONS = (("train", 70), ("val", 80), ("test", 100))  # cumulative percent
EXCLUDED_SPLIT = "excluded"


def split_for(dataset: str, person_id: str) -> str:
    """Deterministic split of a person: sha256("<dataset>:<person_id>") mod 100 → 70/10/20."""
    h = int(hashlib.sha256(f"{dataset}:{person_id}".encode()).hexdigest()[:8], 16) % 100
    for name, upper in SPLIT_FRACTIONS:
        if h < upper:
            return name
    return "test"


def default_out(dataset: str, grid: str | Grid, home: str | Path | None = None) -> Path:
    """Where a prepared cohort goes without ``--out`` (and where ``--reference <dataset>`` looks)."""
    return atlas.braingenbench_home(home) / "cohorts" / f"{dataset}-{get_grid(grid).name}"


def _options_spec(dataset: str, grid: Grid, options: dict) -> str:
    from cohorts.preprocess import PREPROCESS_VERSION

    blob = json.dumps([PREPARE_VERSION, PREPROCESS_VERSION, dataset, grid.to_dict(), atlas.source_hash(),
                       sorted(options.items())], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------ worker
def _order(mods) -> list[str]:
    return sorted(mods, key=lambda m: (m != "T1", m))


def _step_log(sink):
    """A :class:`~cohorts.preprocess.StepLog` that also keeps the result of the ``registration`` step (the
    image's atlas → native transform), so that the session's lesion mask goes through that very transform."""
    from cohorts.preprocess import StepLog

    class _KeepRegistration(StepLog):
        registration = None

        def run(self, step, fn, *args, **kwargs):
            out = super().run(step, fn, *args, **kwargs)
            if step == "registration":
                self.registration = out
            return out

    return _KeepRegistration(sink)


def _read_lesions(s: RawSubject, failures: list) -> tuple | None:
    """``(mask, affine, stats)`` of the session's lesion mask, or ``None`` (a failure is recorded)."""
    if s.lesion_mask is None:
        return None
    from cohorts.datasets.bids_long import lesion_stats, read_lesion_mask

    try:
        mask, aff = read_lesion_mask(s.lesion_mask)
        return mask, aff, lesion_stats(mask, aff)
    except Exception as e:  # noqa: BLE001 - nibabel raises many types for broken files
        failures.append({"subject_id": s.session_id, "file": str(s.lesion_mask), "step": "lesion_mask",
                         "error": f"{s.lesion_mask}: cannot read the lesion mask ({type(e).__name__}: {e}); "
                                  "download it again or remove it"})
        return None


def _carry_lesions(lesions: tuple, log, grid: Grid, out: Path, sid: str, failures: list) -> dict:
    """Write ``lesions/<sid>.nii.gz`` through the image's registration; the manifest fields, or ``{}``."""
    from cohorts.datasets.bids_long import lesion_fraction_on_grid

    mask, aff, stats = lesions
    why = None
    if log.registration is None:
        why = "the image's registration was not recorded (preprocess step names changed?)"
    elif any(r["step"] == "orientation_search" for r in log.records):
        why = "the image's header orientation was replaced by the orientation search, so its mask's is unusable"
    if why:
        failures.append({"subject_id": sid, "file": "", "step": "lesion_mask",
                         "error": f"{sid}: lesion mask not carried: {why}; give the image a valid NIfTI orientation"})
        return {}
    rel = f"lesions/{sid}.nii.gz"
    save_nifti(out / rel, lesion_fraction_on_grid(mask, aff, log.registration, grid), grid, np.float32)
    return {"lesion_mask": rel, "lesions": dict(stats)}


def _prepare_session(task: tuple) -> dict:
    """Worker: every scan of one session; writes images/labels(/lesions) and ``work/<session>.json``."""
    raw_subject, out_s, grid_name, options, spec, dataset, threads = task
    _limit_threads(threads)
    from cohorts.preprocess import PreprocessError, preprocess_image

    s: RawSubject = raw_subject
    out, grid = Path(out_s), get_grid(grid_name)
    entries, failures, log_lines = [], [], []
    t1_mask = None
    manual = {}
    if s.manual_labels is not None:
        try:
            from cohorts.datasets.ibsr import manual_volumes

            manual = manual_volumes(s.manual_labels)
        except Exception as e:  # noqa: BLE001
            failures.append({"subject_id": s.session_id, "file": str(s.manual_labels), "step": "manual_labels",
                             "error": f"cannot read the manual segmentation ({e}); manual volumes omitted"})
    lesions = _read_lesions(s, failures)
    for mod in _order(s.scans):
        if options["modalities"] and mod not in options["modalities"]:
            continue
        scan = s.scans[mod]
        sid = f"{s.session_id}-{mod}"
        result, used, errors = None, None, []
        for path in [scan.path, *scan.alternatives]:
            t0 = time.perf_counter()
            records: list[dict] = []
            log = _step_log(records.append)
            try:
                result = preprocess_image(path, mod, grid, skull_strip_method=options["skull_strip"],
                                          fallback_mask=t1_mask, deformable=options["deformable"], log=log)
                used = path
            except PreprocessError as e:
                msg = str(e) if str(path) in str(e) else f"{path}: {e}"
                errors.append({"subject_id": sid, "file": str(path), "step": e.step or "?", "error": msg})
            except Exception as e:  # noqa: BLE001 - one bad scan never stops the cohort
                errors.append({"subject_id": sid, "file": str(path), "step": "?",
                               "error": f"{path}: {type(e).__name__}: {e}",
                               "traceback": traceback.format_exc(limit=5)})
            for r in records:
                log_lines.append({"subject_id": sid, "file": str(path), **r})
            log_lines.append({"subject_id": sid, "file": str(path), "step": "total",
                              "status": "ok" if result is not None else "error",
                              "seconds": round(time.perf_counter() - t0, 3)})
            if result is not None:
                break
        if result is None:
            failures.extend(errors)
            continue
        for e in errors:  # an earlier candidate failed but a fallback worked
            log_lines.append({**e, "status": "warning", "step": f"fallback after {e['step']}"})
        img_rel, lab_rel = f"images/{sid}.nii.gz", f"labels/{sid}.nii.gz"
        save_nifti(out / img_rel, result.image, grid, np.float32)
        save_nifti(out / lab_rel, result.labels, grid, np.uint8)
        if mod == "T1":
            t1_mask = (result.native_mask, result.native_affine)
        les = _carry_lesions(lesions, log, grid, out, sid, failures) if lesions is not None else {}
        skull = next((r.get("method") for r in result.steps if r["step"] == "skull_strip"), "")
        entries.append({"subject_id": sid, "modality": mod, "image": img_rel, "labels": lab_rel,
                        "source_file": str(used), "volumes": result.volumes, "skull_strip": skull,
                        **result.qc, "manual": manual if mod == "T1" else {}, **les})
    rec = {"spec": spec, "person_id": s.person_id, "session_id": s.session_id, "age": s.age, "sex": s.sex,
           "site": s.site, "notes": list(s.notes), "entries": entries, "failures": failures,
           "lesion_source": str(s.lesion_mask) if s.lesion_mask else None}
    wp = out / "work" / f"{s.session_id}.json"
    wp.parent.mkdir(parents=True, exist_ok=True)
    tmp = wp.with_name(wp.name + ".tmp")
    tmp.write_text(json.dumps(rec, indent=1, default=str))
    tmp.replace(wp)
    rec["log"] = log_lines
    return rec


def _limit_threads(n: int) -> None:
    if n <= 0:
        return
    try:
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(n)
    except ImportError:
        pass
    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(n)


def _load_done(out: Path, s: RawSubject, spec: str) -> dict | None:
    wp = out / "work" / f"{s.session_id}.json"
    if not wp.exists():
        return None
    try:
        rec = json.loads(wp.read_text())
    except (OSError, ValueError):
        return None
    if rec.get("spec") != spec or rec.get("lesion_source") != (str(s.lesion_mask) if s.lesion_mask else None):
        return None
    if any(not (out / e[k]).exists() for e in rec.get("entries", []) for k in ("image", "labels", "lesion_mask")
           if k in e):
        return None
    return rec


# ------------------------------------------------------------------------------------ main entry
def prepare_cohort(dataset: str, raw_dir: str | Path, out: str | Path | None = None, *, grid: str | Grid = "3mm",
                   workers: int = 1, skull_strip: str = "deepbet", deformable: str = "demons",
                   modalities: list[str] | None = None, limit: int | None = None,
                   keep_qc_failures: bool = False, quiet: bool = False) -> Cohort:
    """Prepare a public dataset into a cohort folder (resumable, parallel over sessions).

    Args:
        dataset: ``ixi``, ``oasis1``, ``ibsr``, ``kirby21`` or ``bids``.
        raw_dir: the folder the download unpacks to.
        out: output cohort folder (default :func:`default_out`).
        grid: ``3mm``, ``2mm`` or ``1mm``.
        workers: processes (1 = inline).
        skull_strip: ``deepbet`` | ``threshold`` | ``none``.
        deformable: ``demons`` | ``bspline`` | ``none``.
        modalities: only these modalities (default: all the dataset has).
        limit: only the first N sessions (sorted ids), for a quick look.
        keep_qc_failures: keep QC-flagged scans in their split instead of ``excluded``.
        quiet: no progress bar.

    Returns:
        The saved :class:`Cohort`.

    Raises:
        DatasetError: the raw folder is missing, empty or not this dataset.
    """
    from cohorts.captions import compute_percentiles, make_caption
    from cohorts.preprocess import QC_DICE_MIN, QC_NCC_MIN, SKULL_STRIP_METHODS

    loader = get_loader(dataset)
    info = loader.INFO
    g = get_grid(grid)
    raw = Path(raw_dir)
    if not raw.is_dir():
        raise DatasetError(f"{raw}: not a folder; pass the folder the {info.title} download unpacks to "
                           f"(expected layout: {info.layout})")
    if skull_strip not in SKULL_STRIP_METHODS:
        raise ValueError(f"unknown --skull-strip {skull_strip!r}; choose one of {', '.join(SKULL_STRIP_METHODS)}")
    out = Path(out) if out is not None else default_out(info.name, g)
    for d in ("images", "labels", "work"):
        (out / d).mkdir(parents=True, exist_ok=True)
    disc = loader.discover(raw, out / "work" / "raw")
    sessions = disc.subjects
    if not sessions:
        raise DatasetError(f"{raw}: no {info.title} images found; expected {info.layout}. Check RAW_DIR "
                           "points at the unpacked download")
    if limit is not None:
        sessions = sessions[:limit]
    mods = [m.upper() for m in modalities] if modalities else None
    options = {"skull_strip": skull_strip, "deformable": deformable, "modalities": mods}
    spec = _options_spec(info.name, g, options)
    atlas.load_priors(g.voxel_size, g.shape, g.affine)  # fill the priors caches before any worker
    from cohorts import preprocess

    preprocess.label_priors(g)
    preprocess.grid_priors(preprocess.registration_grid(g))

    log_path = out / "prepare_log.jsonl"
    done: dict[str, dict] = {}
    todo: list[RawSubject] = []
    for s in sessions:
        rec = _load_done(out, s, spec)
        if rec is None:
            todo.append(s)
        else:
            done[s.session_id] = rec
    logger.info("%s: %d session(s) found, %d already prepared, %d to do", info.name, len(sessions), len(done),
                len(todo))
    with open(log_path, "a") as logf:
        def emit(line: dict) -> None:
            logf.write(json.dumps({"time": round(time.time(), 3), "dataset": info.name, **line}, default=str) + "\n")
            logf.flush()

        for p in disc.problems:
            emit({"subject_id": "", "step": "discover", "status": "error", **p})
        for sid in done:
            emit({"subject_id": sid, "step": "resume", "status": "skipped", "detail": "finished earlier, reused"})
        for s in sessions:
            for n in s.notes:
                emit({"subject_id": s.session_id, "step": "discover", "status": "warning", "detail": n})
                logger.warning("%s: %s", s.session_id, n)
        threads = 1 if workers > 1 else 0
        tasks = [(s, str(out), g.name, options, spec, info.name, threads) for s in todo]
        bar = Progress(f"prepare {info.name} {g.name}", len(tasks), unit="session", quiet=quiet) if tasks else None

        def collect(rec: dict) -> None:
            for line in rec.pop("log", []):
                emit(line)
            for f in rec["failures"]:
                logger.error("%s: %s", f["subject_id"], f["error"])
            done[rec["session_id"]] = rec
            if bar:
                bar.update()

        try:
            if workers <= 1 or len(tasks) <= 1:
                for t in tasks:
                    collect(_prepare_session(t))
            else:
                from concurrent.futures import ProcessPoolExecutor, as_completed

                from cohorts.phantom import _pool_context

                with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=_pool_context()) as ex:
                    futs = {ex.submit(_prepare_session, t): t[0] for t in tasks}
                    for fut in as_completed(futs):
                        try:
                            collect(fut.result())
                        except Exception as e:  # noqa: BLE001 - a crashed worker fails its session only
                            s = futs[fut]
                            rec = {"person_id": s.person_id, "session_id": s.session_id, "entries": [],
                                   "failures": [{"subject_id": s.session_id, "file": "", "step": "worker",
                                                 "error": f"worker crashed: {type(e).__name__}: {e}"}]}
                            collect(rec)
        finally:
            if bar:
                bar.close()

    # ---------------------------------------------------------------- failures
    failures = [{"subject_id": "", "file": p["file"], "step": "discover", "error": p["error"]} for p in disc.problems]
    for s in sessions:
        rec = done.get(s.session_id)
        if rec is None:
            continue
        failures.extend({k: f.get(k, "") for k in ("subject_id", "file", "step", "error")} for f in rec["failures"])
        if not rec["entries"] and not rec["failures"]:
            failures.append({"subject_id": s.session_id, "file": "", "step": "select",
                             "error": f"no scan of the requested modalities {mods}"})
    with open(out / "failed.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["subject_id", "file", "step", "error"])
        w.writeheader()
        w.writerows(failures)
    if failures:
        logger.warning("%d scan(s)/file(s) could not be prepared; see %s", len(failures), out / "failed.csv")

    # ---------------------------------------------------------------- cohort
    subjects: list[Subject] = []
    extra: dict[str, dict] = {}
    for s in sessions:
        rec = done.get(s.session_id)
        if rec is None:
            continue
        split = split_for(info.name, rec["person_id"])
        for e in rec["entries"]:
            sp = split if (e["qc_pass"] or keep_qc_failures) else EXCLUDED_SPLIT
            subjects.append(Subject(
                subject_id=e["subject_id"], split=sp, modality=e["modality"], image=out / e["image"],
                labels=out / e["labels"], age=rec.get("age"), sex=rec.get("sex"), site=rec.get("site"),
                volumes=dict(e["volumes"]), dataset=info.name, synthetic=False, lesions=dict(e.get("lesions", {})),
                lesion_mask=out / e["lesion_mask"] if e.get("lesion_mask") else None,
                sequence=s.sequence, session=s.session, months=s.months))
            ex = {"person_id": rec["person_id"], "session_id": rec["session_id"], "source_file": e["source_file"],
                  "skull_strip": e["skull_strip"], "qc_ncc": e["qc_ncc"], "qc_dice": e["qc_dice"],
                  "qc_pass": e["qc_pass"], "notes": " | ".join(rec.get("notes", []))}
            for k, v in (e.get("manual") or {}).items():
                ex[f"manual_vol_{k}"] = v
            extra[e["subject_id"]] = ex
    if not subjects:
        raise DatasetError(f"{raw}: no scan could be prepared ({len(failures)} failure(s)); see "
                           f"{out / 'failed.csv'} and {log_path}")
    flagged = [s.subject_id for s in subjects if not extra[s.subject_id]["qc_pass"]]
    if flagged:
        logger.warning("%d scan(s) failed registration QC (NCC < %.2f or Dice < %.2f)%s: %s", len(flagged),
                       QC_NCC_MIN, QC_DICE_MIN, "" if keep_qc_failures else " and are excluded",
                       ", ".join(flagged[:10]) + (" ..." if len(flagged) > 10 else ""))
    used = [s for s in subjects if s.split != EXCLUDED_SPLIT]
    compute_percentiles(used)
    for s in subjects:
        # real follow-ups record no lesion events between sessions (``changes``): captions.followup_sentence
        # would state "0 new lesions", so they are captioned without it (months stay in the manifest)
        s.caption = make_caption(replace(s, months=None) if s.months and not s.changes else s)
    for name in ("train", "val", "test"):
        if not any(s.split == name for s in used):
            logger.warning("the %s split of %s is empty (%d usable scans)", name, info.name, len(used))
    mask = np.asarray(atlas.load_priors(g.voxel_size, g.shape, g.affine).brain) > 0.5
    save_nifti(out / "brain_mask.nii.gz", mask, g, np.uint8)
    meta = {
        "synthetic": False, "dataset": info.name, "label": f"real MRI: {info.title}",
        "source": {"title": info.title, "url": info.url, "licence": info.licence, "citation": info.citation,
                   "raw_dir": str(raw.resolve()), **{k: v for k, v in disc.meta.items() if v}},
        "prepare_version": PREPARE_VERSION, "options": options, "spec": spec,
        "qc": {"ncc_min": QC_NCC_MIN, "dice_min": QC_DICE_MIN, "n_flagged": len(flagged),
               "flagged_split": "kept" if keep_qc_failures else EXCLUDED_SPLIT},
        "n_failed": len(failures), "volume_units": "mL in native (subject) space",
        "attribution": dict(atlas.ATTRIBUTION), "split_rule": "sha256('<dataset>:<person_id>') % 100: 70/10/20",
    }
    if any(s.lesion_mask is not None for s in subjects):
        meta["lesion_maps"] = ("lesions/<id>.nii.gz: the dataset's lesion mask carried through the image's "
                               "registration, lesion fraction (float32); > 0.5 is the mask; les_volume in native mL")
    cohort = Cohort(info.name, out, g, subjects, meta)
    _save_with_extra(cohort, extra)
    return cohort


def _save_with_extra(cohort: Cohort, extra: dict[str, dict]) -> None:
    """Cohort.save(), then the extra manifest columns, then the content hash again."""
    import pandas as pd

    cohort.save()
    path = cohort.root / "manifest.csv"
    df = pd.read_csv(path, keep_default_na=False)
    ex = pd.DataFrame([{"subject_id": k, **v} for k, v in extra.items()])
    df = df.merge(ex, on="subject_id", how="left")
    atomic_write(path, lambda tmp: df.to_csv(tmp, index=False))
    cohort.meta["content_hash"] = cohort.compute_content_hash()
    (cohort.root / "cohort.json").write_text(json.dumps(cohort.meta, indent=2, sort_keys=True, default=str))


# ------------------------------------------------------------------------------------ registry
class RealCohort:
    """A registered real dataset: prepared from its download, then found by name (``--reference ixi``)."""

    name = ""

    @classmethod
    def prepare(cls, raw_dir, out=None, grid="3mm", **kwargs) -> Cohort:
        return prepare_cohort(cls.name, raw_dir, out, grid=grid, **kwargs)

    @classmethod
    def cohort_dir(cls, grid="3mm", *, home=None, **_) -> Path:
        return default_out(cls.name, grid, home)

    @classmethod
    def get(cls, grid="3mm", *, home=None, quiet=False, **_) -> Cohort:
        d = cls.cohort_dir(grid, home=home)
        if (d / "cohort.json").exists():
            return Cohort.load(d)
        info = get_loader(cls.name).INFO
        raise CohortError(f"cohort {cls.name!r} on grid {get_grid(grid).name} is not prepared ({d} has no "
                          f"cohort.json); download it from {info.url}, then run `python -m bench cohort prepare "
                          f"{cls.name} RAW_DIR --grid {get_grid(grid).name}` (or pass a prepared folder as "
                          "--reference DIR)")

    @classmethod
    def build(cls, out=None, grid="3mm", **_) -> Cohort:
        raise CohortError(f"{cls.name!r} is a real dataset and cannot be synthesised; use `python -m bench "
                          f"cohort prepare {cls.name} RAW_DIR --out DIR`")


def cohort_class(dataset: str) -> type:
    return type(f"{dataset.upper()}Cohort", (RealCohort,), {"name": dataset, "__doc__": f"Real cohort {dataset}."})


def info_dict(dataset: str) -> dict:
    return asdict(get_loader(dataset).INFO)


IXICohort = cohort_class("ixi")
OASIS1Cohort = cohort_class("oasis1")
IBSRCohort = cohort_class("ibsr")
KIRBY21Cohort = cohort_class("kirby21")
BIDSCohort = cohort_class("bids")
