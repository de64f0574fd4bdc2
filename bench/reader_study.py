"""A blinded expert reader study: real and generated volumes shown one at a time in a static web page.

``python -m bench reader-study build RUN... --n 40 --seed S --out DIR`` draws a balanced, seeded mix of
the runs' caption-matched real reference volumes and their generated volumes, each shown with the
modality its caption states, and writes a static site (``DIR/index.html``) that works from ``file://``
and any static host without network access. Readers answer per case: real or synthetic, anatomical
plausibility 1-5, does the contrast match the stated modality, a comment; their answers stay in the
browser's ``localStorage`` and are exported as JSON. ``python -m bench reader-study score`` reads the
exports and the key (:mod:`bench.reader_study_score`).

Blinding: case ids are random tokens from the operating system's entropy, the presentation order is
shuffled the same way, every case file has the same fields and, for the same modality, the same size,
and every volume goes through the same intensity rule (:func:`to_uint8`). What a case is goes only into
the key file, which is written outside the study folder (default ``DIR.key.json``) for the organiser.
Why the selection is seeded but the tokens are not: the same ``--seed`` reproduces which volumes are
shown, while the key cannot be reconstructed from the runs and the seed by a reader.

This module imports only the standard library at import time (``bench.cli`` imports it for its
parser); numpy, the records and the caption parser are imported when a study is built.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import secrets
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

from core.errors import InputError

__all__ = ["Candidate", "MODALITY_NAMES", "PAGE_ASSETS", "add_parser", "build_study", "case_script",
           "collect_candidates", "default_key_path", "draw_cases", "main", "to_uint8"]

logger = logging.getLogger(__name__)

#: How the page states a caption's modality (the parser's names -> what a reader sees).
MODALITY_NAMES = {"T1": "T1-weighted", "T2": "T2-weighted", "PD": "PD-weighted", "FLAIR": "FLAIR"}
#: The page's static files, copied from ``bench/reader_study_page/`` into every study.
PAGE_ASSETS = ("index.html", "reader.js", "reader.css")
#: The intensity rule of every case, real or generated (also written into the key).
INTENSITY_RULE = "uint8 = round(255 * clip(x, 0, 1)) (the cohort and generator contract: float32 in [0, 1])"
REAL = "real"
KEY_VERSION = 1


@dataclass(frozen=True)
class Candidate:
    """A volume that may become a case: where it comes from (for the key) and how to read it.

    Attributes:
        source: ``"real"`` or the generator's display name (unique among the study's runs).
        run_id: the run whose prompt (and, for a generated volume, whose sample) it is.
        subject_id: the reference subject (real) or the prompt's subject id (generated).
        prompt: the caption the volume belongs to.
        modality: the stated modality as shown ("T2-weighted").
        path: the cohort folder (real) or the run folder (generated).
        index: the generated volume's position in the run's samples (-1 for a real volume).
    """

    source: str
    run_id: str
    subject_id: str
    prompt: str
    modality: str
    path: str
    index: int = -1


def to_uint8(volume: Any) -> Any:
    """The one intensity rule of every case: ``round(255 * clip(x, 0, 1))`` as uint8.

    Cohort images and generated volumes are both float32 in [0, 1] by contract, so a fixed rule keeps
    their intensities comparable (no per-volume rescaling that would hide or create differences).
    """
    import numpy as np

    v = np.nan_to_num(np.asarray(volume, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    return np.rint(np.clip(v, 0.0, 1.0) * 255.0).astype(np.uint8)


def default_key_path(out: Path) -> Path:
    """``DIR.key.json`` next to the study folder ``DIR`` (never inside it)."""
    return out.parent / f"{out.name}.key.json"


# ----------------------------------------------------------------------------------- inputs
def _load_run(path: Path) -> tuple[Path, dict]:
    """A run folder (or its record.json) and its validated record; text-to-volume runs with samples only."""
    from bench.records import load_record

    run_dir = path.parent if path.name == "record.json" else path
    record = load_record(run_dir)
    task = record.get("task", "text-to-volume")
    if task != "text-to-volume":
        raise InputError(f"{run_dir}: a {task} run has no generated volumes to show; give text-to-volume run "
                         "folders (python -m bench run --generator NAME --suite SUITE)")
    if not sorted((run_dir / "samples").glob("shard_*.npz")):
        raise InputError(f"{run_dir}: no generated volumes (samples/shard_*.npz); the run did not keep its samples "
                         "or is unfinished: re-run the same `python -m bench run` command to complete it")
    return run_dir, record


def _sample_index(run_dir: Path) -> list[tuple[Path, int]]:
    """(shard file, row) of every generated volume of a run, in prompt order, without reading the volumes."""
    from core.runfiles import read_shard

    out: list[tuple[Path, int]] = []
    for shard in sorted((run_dir / "samples").glob("shard_*.npz")):
        try:
            n = len(read_shard(shard, "subject_ids"))
        except KeyError:
            n = len(read_shard(shard))
        except (OSError, ValueError) as e:
            raise InputError(f"{shard}: unreadable sample shard ({e}); re-run the run's command with --no-resume "
                             "to regenerate its samples") from e
        out += [(shard, row) for row in range(n)]
    return out


def _source_names(records: list[dict]) -> list[str]:
    """Each run's source name: its generator's display name, made unique (run id appended) and never 'real'."""
    names = [str(r["generator"].get("display_name") or r["generator"]["name"]) for r in records]
    out = []
    for name, rec in zip(names, records):
        if names.count(name) > 1 or name.strip().lower() == REAL:
            name = f"{name} ({rec['run_id']})"
        out.append(name)
    return out


def _modality(text: str) -> str | None:
    from cohorts.captions import parse_caption

    mod = parse_caption(text).get("modality")
    return MODALITY_NAMES.get(mod) if mod else None


def collect_candidates(runs: list[Path]) -> tuple[list[dict], list[Candidate], dict[str, list[Candidate]]]:
    """The runs' records (with their folder and source name), the real candidates (the runs'
    caption-matched reference subjects, each once) and the generated candidates per source."""
    from core.runfiles import CohortFiles

    loaded, seen = [], set()
    for path in runs:
        run_dir, rec = _load_run(Path(path))
        if rec["run_id"] in seen:
            logger.warning("run %s given twice; used once", rec["run_id"])
            continue
        seen.add(rec["run_id"])
        loaded.append((run_dir, rec))
    if not loaded:
        raise InputError("no runs given: pass one or more text-to-volume run folders")
    names = _source_names([rec for _, rec in loaded])
    runs_out: list[dict] = []
    real: dict[tuple[str, str], Candidate] = {}
    generated: dict[str, list[Candidate]] = {}
    for (run_dir, rec), name in zip(loaded, names):
        cohort, why = CohortFiles.open(rec)
        if cohort is None:
            raise InputError(f"{run_dir / 'record.json'}: {why}; the real cases are read from the run's reference "
                             "cohort: build or prepare it on this machine (python -m bench cohort ...)")
        samples = _sample_index(run_dir)
        prompts = rec.get("prompts") or []
        if len(samples) != len(prompts):
            logger.warning("%s: %d generated volumes for %d prompts; only the first %d are used",
                           run_dir, len(samples), len(prompts), min(len(samples), len(prompts)))
        gen: list[Candidate] = []
        skipped = 0
        for i, p in enumerate(prompts):
            text = str(p.get("text") or "")
            modality = _modality(text)
            if modality is None:
                skipped += 1
                continue
            ref = p.get("reference_subject_id") or p.get("subject_id")
            if ref and str(ref) in cohort.images:
                k = (str(cohort.root.resolve()), str(ref))
                real.setdefault(k, Candidate(REAL, rec["run_id"], str(ref), text, modality, k[0]))
            if i < len(samples):
                gen.append(Candidate(name, rec["run_id"], str(p.get("subject_id") or ""), text, modality,
                                     str(run_dir.resolve()), i))
        if skipped:
            logger.warning("%s: %d prompt(s) state no modality and are left out", run_dir, skipped)
        generated[name] = gen
        runs_out.append({"run_id": rec["run_id"], "source": name, "generator": rec["generator"]["name"],
                         "suite": rec["suite"]["name"], "path": str(run_dir.resolve())})
    return runs_out, list(real.values()), generated


def draw_cases(real: list[Candidate], generated: dict[str, list[Candidate]], n: int,
               seed: int) -> list[Candidate]:
    """A seeded, balanced draw: half real, half generated (split evenly over the sources, a source
    short of volumes topped up from the others), without repeats.

    When fewer real (or generated) volumes exist than half of ``n``, the other half shrinks to match,
    so a reader's prior stays 50 % real; a warning says so.
    """
    import numpy as np

    if n < 2:
        raise InputError(f"--n must be at least 2 (one real and one generated case), got {n}")
    rng = np.random.default_rng(seed)
    n_gen_avail = sum(len(v) for v in generated.values())
    n_real = min(n // 2, len(real), n_gen_avail)
    n_gen = min(n - n // 2, n_gen_avail) if n_real == n // 2 else n_real
    if n_real + n_gen < n:
        logger.warning("only %d real and %d generated volumes available: the study has %d cases instead of %d "
                       "(give more runs, or runs with more prompts)", len(real), n_gen_avail, n_real + n_gen, n)
    if n_real == 0:
        raise InputError(f"nothing to show: {len(real)} real and {n_gen_avail} generated volumes with a stated modality; "
                         "give runs whose prompts state a modality and whose reference cohort is on this machine")
    picked = [real[i] for i in sorted(rng.choice(len(real), n_real, replace=False))]
    names = sorted(generated)
    quota = {s: n_gen // len(names) for s in names}
    for s in rng.permutation(names)[: n_gen % len(names)]:
        quota[str(s)] += 1
    pools = {s: [generated[s][i] for i in rng.permutation(len(generated[s]))] for s in names}
    taken = {s: min(quota[s], len(pools[s])) for s in names}
    short = n_gen - sum(taken.values())
    while short > 0:  # top up from the sources with volumes left, the emptiest quota first
        spare = [s for s in names if taken[s] < len(pools[s])]
        s = min(spare, key=lambda x: (taken[x], x))
        taken[s] += 1
        short -= 1
    for s in names:
        picked += pools[s][: taken[s]]
    return picked


# ----------------------------------------------------------------------------------- output
class _VolumeReader:
    """Reads the cases' volumes: cohort images by subject id, generated volumes one shard at a time."""

    def __init__(self) -> None:
        self._cohorts: dict[str, Any] = {}
        self._index: dict[str, list[tuple[Path, int]]] = {}
        self._shard: tuple[str, Any] | None = None

    def volume(self, c: Candidate) -> Any:
        """The candidate's volume as float32 (D, H, W)."""
        import numpy as np

        from core.runfiles import CohortFiles, read_shard

        if c.source == REAL:
            cohort = self._cohorts.setdefault(c.path, CohortFiles(Path(c.path)))
            v = cohort.volume(c.subject_id)
            if v is None:
                raise InputError(f"{c.path}: cannot read the image of {c.subject_id}; rebuild or re-prepare the cohort")
            return v
        if c.path not in self._index:
            self._index[c.path] = _sample_index(Path(c.path))
        shard, row = self._index[c.path][c.index]
        if self._shard is None or self._shard[0] != str(shard):
            self._shard = (str(shard), read_shard(shard))
        v = np.asarray(self._shard[1][row], dtype=np.float32)
        return v[0] if v.ndim == 4 else v


def case_script(case_id: str, shape: tuple[int, ...], modality: str, data: bytes) -> str:
    """One case file: sets ``window.BGB_CASES[id]`` (a ``<script>``, since fetch does not work on file://)."""
    payload = json.dumps({"shape": list(shape), "modality": modality,
                          "data": base64.b64encode(data).decode("ascii")}, separators=(",", ":"))
    return f'window.BGB_CASES=window.BGB_CASES||{{}};window.BGB_CASES["{case_id}"]={payload};\n'


def _write_site(folder: Path, study_id: str, ids: list[str], cases: list[Candidate]) -> dict[str, dict]:
    """Write the page, ``study.js`` and one file per case into ``folder``; the key's entry of every case."""
    import numpy as np

    (folder / "cases").mkdir(parents=True)
    page = resources.files("bench") / "reader_study_page"
    for name in PAGE_ASSETS:
        with resources.as_file(page / name) as src:
            shutil.copyfile(src, folder / name)
    shape: tuple[int, ...] | None = None
    key_cases: dict[str, dict] = {}
    reader = _VolumeReader()
    for case_id, c in zip(ids, cases):
        vol = reader.volume(c)
        if shape is None:
            shape = tuple(vol.shape)
        elif tuple(vol.shape) != shape:
            raise InputError(f"{c.path}: volumes of shape {tuple(vol.shape)} beside {shape}: a study shows one grid "
                             "(the shape would tell cases apart); give runs of suites on the same grid")
        (folder / "cases" / f"{case_id}.js").write_text(
            case_script(case_id, shape, c.modality, np.ascontiguousarray(to_uint8(vol)).tobytes()), encoding="ascii")
        key_cases[case_id] = {"source": c.source, "run_id": c.run_id, "subject_id": c.subject_id,
                              "prompt": c.prompt, "modality": c.modality}
    study = {"study_id": study_id, "cases": ids, "version": KEY_VERSION}
    (folder / "study.js").write_text("window.BGB_STUDY=" + json.dumps(study, separators=(",", ":")) + ";\n",
                                     encoding="ascii")
    return key_cases


def build_study(runs: list[Path], *, n: int = 40, seed: int = 0, out: Path, key: Path | None = None) -> dict:
    """Build a blinded reader study from run folders into ``out`` and its key into ``key``.

    Args:
        runs: text-to-volume run folders (or their record.json) with their samples.
        n: number of cases (half real, half generated; fewer when the runs have fewer volumes).
        seed: seeds which volumes are drawn.
        out: the study folder to create (must not exist or be empty).
        key: the key file (default ``DIR.key.json`` next to ``out``); never inside ``out``.

    Returns:
        A summary: ``study_id``, ``index`` (the page), ``key``, ``n_cases``, ``per_source`` counts, ``bytes``.
    """
    out = Path(out)
    key = Path(key) if key is not None else default_key_path(out)
    if key.resolve().is_relative_to(out.resolve()):
        raise InputError(f"--key {key} is inside the study folder {out}: readers would see it; put it elsewhere "
                         f"(default {default_key_path(out)})")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out} exists and is not empty; give a new --out folder (a rebuilt study gets new case "
                         "ids, so answers to an old one would not score against the new key)")
    if key.exists():
        raise InputError(f"{key} exists (the key of another study?); move it away or pass another --key")
    run_info, real, generated = collect_candidates([Path(r) for r in runs])
    cases = draw_cases(real, generated, n, seed)
    secrets.SystemRandom().shuffle(cases)  # presentation order: not reproducible from the seed
    ids: list[str] = []
    while len(ids) < len(cases):
        token = secrets.token_hex(6)
        if token not in ids:
            ids.append(token)
    study_id = "rs-" + secrets.token_hex(8)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.building-{secrets.token_hex(4)}"
    try:  # written next to the destination and renamed at the end: a failed build leaves nothing behind
        key_cases = _write_site(staging, study_id, ids, cases)
        if out.exists():
            out.rmdir()
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    per_source: dict[str, int] = {}
    for c in cases:
        per_source[c.source] = per_source.get(c.source, 0) + 1
    from core.io import atomic_write_json

    atomic_write_json(key, {"study_id": study_id, "version": KEY_VERSION,
                            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                            "seed": seed, "n_requested": n, "n_cases": len(ids), "intensity_rule": INTENSITY_RULE,
                            "study_folder": str(out.resolve()), "runs": run_info, "per_source": per_source,
                            "order": ids, "cases": key_cases})
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {"study_id": study_id, "index": out / "index.html", "key": key, "n_cases": len(ids),
            "per_source": per_source, "bytes": size}


# ----------------------------------------------------------------------------------- CLI
def add_parser(sub: Any) -> None:
    """Register ``reader-study build`` and ``reader-study score`` on the CLI's subparsers."""
    p = sub.add_parser("reader-study", help="a blinded expert reader study of real vs generated volumes",
                       description="Build a static, offline web page that shows readers real and generated "
                                   "volumes one at a time without saying which is which, then score their "
                                   "exported answers (docs/reader-study.md).")
    rs = p.add_subparsers(dest="reader_study_command", required=True)
    b = rs.add_parser("build", help="draw the cases and write the study folder and its key",
                      description="Draw a seeded, balanced mix of the runs' caption-matched real volumes and "
                                  "generated volumes and write a static site to --out (open index.html); the "
                                  "key goes to --key, outside the study folder.")
    b.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="text-to-volume run folders (or record.json)")
    b.add_argument("--n", type=int, default=40, help="number of cases, half real (default 40)")
    b.add_argument("--seed", type=int, default=0, help="seed of the drawing of cases (default 0)")
    b.add_argument("--out", type=Path, required=True, help="the study folder to create")
    b.add_argument("--key", type=Path, default=None,
                   help="the key file the organiser keeps (default: OUT.key.json next to OUT)")
    s = rs.add_parser("score", help="score exported responses against the key",
                      description="Per source (real and each generator): real-vs-synthetic accuracy, mean "
                                  "plausibility and contrast conformity with bootstrap CIs over cases, and "
                                  "inter-reader agreement (Cohen's and Fleiss' kappa).")
    s.add_argument("responses", nargs="+", type=Path, metavar="RESPONSES", help="exported response JSON files")
    s.add_argument("--key", type=Path, required=True, help="the study's key file (from build)")
    s.add_argument("--attach", action="store_true", help="write reader_study.json into each scored run folder")
    s.add_argument("--out", type=Path, default=None, help="write the scores as JSON to FILE")
    s.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    s.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")


def main(args: argparse.Namespace) -> int:
    """Run ``reader-study build`` or ``score``; bad input raises :class:`InputError` (exit 2 in the CLI)."""
    if args.reader_study_command == "build":
        res = build_study(args.runs, n=args.n, seed=args.seed, out=args.out, key=args.key)
        counts = ", ".join(f"{k} {v}" for k, v in sorted(res["per_source"].items()))
        print(f"study {res['study_id']}: {res['n_cases']} cases ({counts}), {res['bytes'] / 1e6:.1f} MB")
        print(f"page: {res['index']}")
        print(f"key (keep it from the readers): {res['key']}")
        return 0
    from bench.reader_study_score import format_scores, score_study

    scores = score_study(args.responses, key=args.key, attach=args.attach, out=args.out, n_boot=args.n_boot,
                         seed=args.seed)
    print(format_scores(scores))
    return 0
