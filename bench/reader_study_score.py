"""Scoring a reader study (:mod:`bench.reader_study`): the readers' exported answers against the key.

Per source (``real`` and each generator), over the source's cases:

* **accuracy** — the share of judgements that are right (a real case judged real, a generated case
  judged synthetic); each case counts once (its readers' share of right judgements), so a case read by
  three readers does not outweigh one read by two. For a generator 50 % means readers could not tell its
  volumes from real ones (in a study that is half real); below 50 % they took them for real more often
  than the real volumes themselves.
* **plausibility** — the mean anatomical plausibility (1-5), per case averaged over its readers.
* **contrast conformity** — the share of "the contrast matches the stated modality" answers.

Each comes with a seeded bias-corrected bootstrap interval over cases
(:func:`metrics.functional.bootstrap.bootstrap_ci`). Unanswered questions are left out (``n`` says how
many judgements there were). Inter-reader agreement on the real / synthetic labels, over the cases every
reader labelled: Cohen's kappa (exactly two readers) and Fleiss' kappa (two or more), overall and per
source (undefined, ``None``, when every label is the same: chance agreement is then 1).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from core.errors import InputError
from core.io import atomic_write_json, to_jsonable

__all__ = ["Reader", "cohen_kappa", "fleiss_kappa", "format_scores", "label_counts", "load_key", "load_responses",
           "score_study"]

logger = logging.getLogger(__name__)

REAL = "real"
ATTACH_NAME = "reader_study.json"


# ----------------------------------------------------------------------------------- agreement
def cohen_kappa(a: Sequence[Any], b: Sequence[Any]) -> float:
    """Cohen's kappa of two readers' labels of the same items: ``(p_o - p_e) / (1 - p_e)``.

    ``p_o`` is the observed agreement, ``p_e`` the agreement expected from each reader's own label
    frequencies (Cohen 1960). NaN when ``p_e == 1`` (both readers gave one and the same label throughout)
    or there are no items.
    """
    if len(a) != len(b):
        raise ValueError(f"cohen_kappa needs paired labels, got {len(a)} and {len(b)}")
    if not len(a):
        return float("nan")
    cats = sorted(set(a) | set(b), key=repr)
    pa = np.array([sum(x == c for x in a) for c in cats], float) / len(a)
    pb = np.array([sum(x == c for x in b) for c in cats], float) / len(b)
    p_o = float(np.mean([x == y for x, y in zip(a, b)]))
    p_e = float(pa @ pb)
    return float("nan") if p_e >= 1.0 else (p_o - p_e) / (1.0 - p_e)


def fleiss_kappa(counts: Any) -> float:
    """Fleiss' kappa from an items x categories table of how many readers gave each label (Fleiss 1971).

    Every item must be rated by the same number ``m >= 2`` of readers. ``P_i = (sum_j n_ij^2 - m) /
    (m (m - 1))``, ``p_j = sum_i n_ij / (N m)``, ``kappa = (mean P_i - sum p_j^2) / (1 - sum p_j^2)``;
    NaN when chance agreement is 1 (one label throughout) or there are no items.
    """
    n = np.asarray(counts, dtype=np.float64)
    if n.ndim != 2 or n.shape[0] == 0:
        return float("nan")
    m = n.sum(axis=1)
    if not np.all(m == m[0]) or m[0] < 2:
        raise ValueError("fleiss_kappa needs the same number (>= 2) of ratings for every item")
    m0 = m[0]
    p_i = ((n ** 2).sum(axis=1) - m0) / (m0 * (m0 - 1))
    p_j = n.sum(axis=0) / (n.shape[0] * m0)
    p_e = float((p_j ** 2).sum())
    return float("nan") if p_e >= 1.0 else (float(p_i.mean()) - p_e) / (1.0 - p_e)


def label_counts(labels: Sequence[Sequence[Any]], categories: Sequence[Any] = (True, False)) -> np.ndarray:
    """Items x categories counts for :func:`fleiss_kappa` from each item's labels (one per reader)."""
    return np.array([[sum(x == c for x in row) for c in categories] for row in labels], dtype=np.int64)


# ----------------------------------------------------------------------------------- inputs
@dataclass
class Reader:
    """One reader's answers: ``name`` (the export's reader, else the file's name), the file, and per case
    ``{"real": bool|None, "plausibility": int|None, "contrast_match": bool|None, "comment": str}``."""

    name: str
    file: Path
    answers: dict[str, dict]


def load_key(path: Path) -> dict:
    """A study key written by ``reader-study build``."""
    path = Path(path)
    try:
        key = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no such key file; pass the key `reader-study build` wrote (default "
                         "STUDY_DIR.key.json next to the study folder)") from None
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable JSON key ({e}); pass the key `reader-study build` wrote") from e
    if not isinstance(key, dict) or not isinstance(key.get("cases"), dict) or "study_id" not in key:
        raise InputError(f"{path}: not a reader-study key (no study_id / cases); pass the key `reader-study build` "
                         "wrote, not a response file")
    return key


def _check_answer(path: Path, i: int, r: Any) -> dict:
    def bad(what: str) -> InputError:
        return InputError(f"{path}: responses[{i}] {what}; re-export the answers from the study page "
                          "(Export responses) instead of editing the file")

    if not isinstance(r, dict) or not isinstance(r.get("case"), str):
        raise bad("has no case id")
    real, plaus, match = r.get("real"), r.get("plausibility"), r.get("contrast_match")
    if real is not None and not isinstance(real, bool):
        raise bad(f"real must be true, false or null, got {real!r}")
    if match is not None and not isinstance(match, bool):
        raise bad(f"contrast_match must be true, false or null, got {match!r}")
    if plaus is not None and (isinstance(plaus, bool) or not isinstance(plaus, int) or not 1 <= plaus <= 5):
        raise bad(f"plausibility must be 1-5 or null, got {plaus!r}")
    comment = r.get("comment") or ""
    return {"real": real, "plausibility": plaus, "contrast_match": match, "comment": str(comment)}


def load_responses(path: Path, key: dict, key_path: Path | str = "the key") -> Reader:
    """One reader's exported answers, checked against the key's study id and case ids."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no such response file; pass the JSON a reader exported from the study page") \
            from None
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not valid JSON ({e}); pass the file the study page's Export responses "
                         "button saved") from e
    if not isinstance(data, dict) or not isinstance(data.get("responses"), list):
        raise InputError(f"{path}: not a reader-study response file (no responses list); pass the file the study "
                         "page's Export responses button saved")
    if data.get("study_id") != key["study_id"]:
        raise InputError(f"{path}: answers to study {data.get('study_id')!r}, but {key_path} is the key of study "
                         f"{key['study_id']!r}; score it with its own study's key (STUDY_DIR.key.json next to the "
                         "study folder it was built into)")
    answers: dict[str, dict] = {}
    for i, r in enumerate(data["responses"]):
        a = _check_answer(path, i, r)
        if r["case"] in answers:
            raise InputError(f"{path}: case {r['case']!r} answered twice; re-export the answers from the study page")
        answers[r["case"]] = a
    unknown = sorted(set(answers) - set(key["cases"]))
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise InputError(f"{path}: case ids not in study {key['study_id']!r}: {shown}; the file was edited or comes "
                         "from another build of the study: re-export it from the page of this study")
    name = str(data.get("reader") or "").strip() or path.stem
    return Reader(name, path, answers)


# ----------------------------------------------------------------------------------- scores
def _interval(per_case: list[float], n_judgements: int, n_boot: int, seed: int) -> dict:
    """Mean of per-case values with a bias-corrected bootstrap interval over cases."""
    from metrics.functional.bootstrap import bootstrap_ci

    v = np.asarray(per_case, dtype=np.float64)
    if not v.size:
        return {"value": None, "ci_low": None, "ci_high": None, "n_cases": 0, "n_judgements": 0}
    est = float(v.mean())
    ci = bootstrap_ci(lambda idx: float(v[idx].mean()), v.size, n_boot=n_boot, seed=seed, estimate=est)
    return {"value": est, "ci_low": float(ci[0]), "ci_high": float(ci[1]), "n_cases": int(v.size),
            "n_judgements": int(n_judgements)}


def _agreement(cases: list[str], readers: list[Reader]) -> dict:
    """Kappas of the real / synthetic labels over the cases every reader labelled."""
    labels = [[r.answers.get(c, {}).get("real") for r in readers] for c in cases]
    full = [row for row in labels if len(row) >= 2 and all(x is not None for x in row)]
    out: dict[str, Any] = {"n_readers": len(readers), "n_cases": len(full), "percent_agreement": None,
                           "cohen_kappa": None, "fleiss_kappa": None}
    if len(readers) < 2 or not full:
        return out
    out["percent_agreement"] = float(np.mean([len(set(row)) == 1 for row in full]))
    out["fleiss_kappa"] = fleiss_kappa(label_counts(full))
    if len(readers) == 2:
        out["cohen_kappa"] = cohen_kappa([row[0] for row in full], [row[1] for row in full])
    return to_jsonable(out)


def _source_scores(source: str, cases: list[str], readers: list[Reader], n_boot: int, seed: int) -> dict:
    truth = source == REAL
    acc, plaus, match = [], [], []
    n_acc = n_plaus = n_match = 0
    for c in cases:
        ans = [r.answers[c] for r in readers if c in r.answers]
        judged = [a["real"] for a in ans if a["real"] is not None]
        if judged:
            acc.append(float(np.mean([j == truth for j in judged])))
            n_acc += len(judged)
        ps = [a["plausibility"] for a in ans if a["plausibility"] is not None]
        if ps:
            plaus.append(float(np.mean(ps)))
            n_plaus += len(ps)
        ms = [a["contrast_match"] for a in ans if a["contrast_match"] is not None]
        if ms:
            match.append(float(np.mean(ms)))
            n_match += len(ms)
    return {"kind": "real" if truth else "generator", "n_cases": len(cases),
            "accuracy": _interval(acc, n_acc, n_boot, seed),
            "plausibility": _interval(plaus, n_plaus, n_boot, seed),
            "contrast_conformity": _interval(match, n_match, n_boot, seed),
            "agreement": _agreement(cases, readers)}


def score_study(responses: list[Path], *, key: Path, attach: bool = False, out: Path | None = None,
                n_boot: int = 1000, seed: int = 0) -> dict:
    """Score exported responses against the study key.

    Args:
        responses: one exported JSON per reader.
        key: the key file from ``reader-study build``.
        attach: also write ``reader_study.json`` into each run folder the key names (all must exist).
        out: also write the scores as JSON to this file.
        n_boot, seed: bootstrap resamples and seed of the intervals.

    Returns:
        ``{"study_id", "n_cases", "readers", "sources": {source: scores}, "agreement", ...}``.
    """
    key_path = Path(key)
    k = load_key(key_path)
    readers = [load_responses(Path(p), k, key_path) for p in responses]
    if not readers:
        raise InputError("no response files given: pass one exported JSON per reader")
    names = [r.name for r in readers]
    for name in sorted({n for n in names if names.count(n) > 1}):
        files = ", ".join(str(r.file) for r in readers if r.name == name)
        raise InputError(f"{files}: two response files of reader {name!r}; give each reader's latest export once "
                         "(two exports of one reader would count as agreeing readers)")
    runs = k.get("runs") or []
    if attach:
        missing = [r["path"] for r in runs if not (Path(r["path"]) / "record.json").is_file()]
        if missing:
            raise InputError(f"{key_path}: run folder(s) {', '.join(missing)} not on this machine; score without "
                             "--attach, or run it where the run folders are")
    order = list(k.get("order") or k["cases"])
    by_source: dict[str, list[str]] = {}
    for c in order:
        by_source.setdefault(k["cases"][c]["source"], []).append(c)
    answered = {c for r in readers for c, a in r.answers.items() if a["real"] is not None}
    if not answered:
        logger.warning("no case has a real / synthetic answer: accuracy and agreement are empty")
    sources = {s: _source_scores(s, by_source[s], readers, n_boot, seed)
               for s in sorted(by_source, key=lambda s: (s != REAL, s))}
    for s, v in sources.items():
        v["run_ids"] = sorted({k["cases"][c]["run_id"] for c in by_source[s]}) if s != REAL else []
    scores = to_jsonable({
        "study_id": k["study_id"], "n_cases": len(order), "created": datetime.now(timezone.utc).isoformat(
            timespec="seconds"), "readers": names, "files": [str(r.file) for r in readers],
        "n_boot": n_boot, "seed": seed, "sources": sources, "agreement": _agreement(order, readers)})
    if out is not None:
        atomic_write_json(out, scores)
    if attach:
        for run in runs:
            atomic_write_json(Path(run["path"]) / ATTACH_NAME, {
                "study_id": scores["study_id"], "created": scores["created"], "readers": len(names),
                "n_cases": scores["n_cases"], "source": run["source"], "run_id": run["run_id"],
                "scores": sources.get(run["source"]), "real": sources.get(REAL), "agreement": scores["agreement"],
                "n_boot": n_boot, "seed": seed})
    return scores


def format_scores(scores: dict) -> str:
    """A plain-text table of :func:`score_study`'s result, then the agreement."""
    def pct(m: dict) -> str:
        if m.get("value") is None:
            return "—"
        return f"{100 * m['value']:.0f}% [{100 * m['ci_low']:.0f}, {100 * m['ci_high']:.0f}]"

    def mean(m: dict) -> str:
        if m.get("value") is None:
            return "—"
        return f"{m['value']:.2f} [{m['ci_low']:.2f}, {m['ci_high']:.2f}]"

    def kappa(x: Any) -> str:
        return "—" if x is None else f"{x:.3f}"

    rows = [("source", "cases", "judged", "accuracy", "plausibility 1-5", "contrast matches", "Fleiss kappa")]
    for s, v in scores["sources"].items():
        rows.append((s, str(v["n_cases"]), str(v["accuracy"]["n_judgements"]), pct(v["accuracy"]),
                     mean(v["plausibility"]), pct(v["contrast_conformity"]), kappa(v["agreement"]["fleiss_kappa"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"reader study {scores['study_id']}: {scores['n_cases']} cases, {len(scores['readers'])} reader(s) "
             f"({', '.join(scores['readers'])})", ""]
    for j, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    a = scores["agreement"]
    raw = "—" if a["percent_agreement"] is None else f"{100 * a['percent_agreement']:.0f}%"
    lines += ["", f"agreement on real / synthetic over {a['n_cases']} case(s) labelled by every reader: "
              f"Cohen's kappa {kappa(a['cohen_kappa'])}, Fleiss' kappa {kappa(a['fleiss_kappa'])}, "
              f"raw agreement {raw}",
              "accuracy: share of judgements that are right (real judged real, generated judged synthetic); "
              f"for a generator 50% = indistinguishable from real; 95% bootstrap CIs over cases "
              f"({scores['n_boot']} resamples)"]
    return "\n".join(lines)
