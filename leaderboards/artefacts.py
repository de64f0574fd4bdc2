"""Run-page artefacts read from a run folder and its reference cohort folder.

Everything here is optional: a run folder without samples, a cohort folder that has moved, a
metric without the expected details — each is skipped with a logged reason, and the run page says
what is not shown. Inputs are plain files only (``samples/shard_*.npz``, the cohort's
``manifest.csv`` / NIfTI images / ``brain_mask.nii.gz``, ``explain/index.json``, read through
:mod:`core.runfiles`); this module imports neither ``bench`` nor ``metrics``.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.runfiles import CohortFiles, load_generated, mid_slices

from . import charts
from .reports import ReportCard, collect_reports
from .table import REPORT_TASK

logger = logging.getLogger(__name__)

#: Prompts shown as generated-vs-real montages.
N_MONTAGES = 4
#: At most this many volumes per set go into the intensity histograms.
MAX_HIST_VOLUMES = 64
HIST_BINS = 64
#: At most this many cross-attention images are copied per run.
MAX_EXPLAIN_IMAGES = 48
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass
class RunArtefacts:
    """What a run page shows beyond the record.

    Attributes:
        montages: ``[{"png": relative path, "subject_id", "text"}]``.
        figures: ``[{"id", "title", "fig" (plotly dict), "caption"}]``.
        effects: Radiomics top effects ``[{"name", "d"}]``, largest ``|d|`` first.
        explain: Cross-attention maps ``[{"token", "images": [relative paths]}]``.
        counterfactuals: Counterfactual prompt edits (``explain/**/index.json`` of kind
            ``counterfactual``): ``[{"edit", "subject_id", "base", "edited", "n", "png",
            "change": {requested, measured, ci, unit, ...}, "calibrated"}]``.
        reports: Report runs (task ``report``): the first described volumes
            (:class:`leaderboards.reports.ReportCard`).
        missing: Human reasons for what is not shown.
    """

    montages: list[dict] = field(default_factory=list)
    figures: list[dict] = field(default_factory=list)
    effects: list[dict] = field(default_factory=list)
    effects_key: str = ""
    explain: list[dict] = field(default_factory=list)
    counterfactuals: list[dict] = field(default_factory=list)
    reports: list[ReportCard] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------- montages
def _vmax(vol: np.ndarray) -> float:
    """1 for volumes in [0, 1] (the suite convention), else a robust maximum."""
    finite = vol[np.isfinite(vol)]
    if finite.size == 0 or float(finite.max()) <= 1.0 + 1e-3:
        return 1.0
    return float(np.percentile(finite, 99.5)) or 1.0


def write_montage(path: Path, generated: np.ndarray, real: np.ndarray | None, title: str = "",
                  labels: tuple[str, str] = ("generated", "real")) -> None:
    """A 2×3 PNG: generated (top) and real (bottom) mid slices, axial / coronal / sagittal (one row
    when ``real`` is None); ``labels`` name the rows."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rows = [(labels[0], generated)] + ([(labels[1], real)] if real is not None else [])
    fig, axes = plt.subplots(len(rows), 3, figsize=(6.0, 2.05 * len(rows) + 0.1), dpi=80,
                             squeeze=False, gridspec_kw={"wspace": 0.02, "hspace": 0.06})
    for r, (name, vol) in enumerate(rows):
        for c, (plane, sl) in enumerate(zip(("axial", "coronal", "sagittal"), mid_slices(vol))):
            ax = axes[r][c]
            ax.imshow(sl, cmap="gray", vmin=0.0, vmax=_vmax(vol), interpolation="nearest", aspect="equal")
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            if r == 0:
                ax.set_title(plane, fontsize=9)
            if c == 0 and name:
                ax.set_ylabel(name, fontsize=9)
    fig.subplots_adjust(left=0.05, right=0.99, top=0.92 if len(rows) > 1 else 0.88, bottom=0.01)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", facecolor="white")
    plt.close(fig)


# --------------------------------------------------------------------------------- histograms
def masked_histogram(vols: np.ndarray, mask: np.ndarray | None, edges: np.ndarray) -> np.ndarray:
    """Density histogram of all voxels of ``vols`` (N, D, H, W) inside ``mask``."""
    vals = vols[:, mask] if mask is not None and mask.shape == vols.shape[1:] else vols.reshape(len(vols), -1)
    vals = vals[np.isfinite(vals)]
    h, _ = np.histogram(np.clip(vals, edges[0], edges[-1]), bins=edges)
    total = h.sum() * (edges[1] - edges[0])
    return h / total if total > 0 else h.astype(np.float64)


# ------------------------------------------------------------------------------ metric details
def _num_list(v: Any) -> list[float] | None:
    if not isinstance(v, list) or not v:
        return None
    out = []
    for x in v:
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(float(x)):
            return None
        out.append(float(x))
    return out


def _points(v: Any) -> list[list[float]] | None:
    if not isinstance(v, list) or not v:
        return None
    pts = []
    for p in v:
        if not isinstance(p, list) or len(p) < 2:
            return None
        xy = _num_list(list(p[:2]))
        if xy is None:
            return None
        pts.append(xy)
    return pts


def top_effects(details: dict) -> list[dict]:
    """Normalise ``details.top_effects`` (``[{feature|name, d}]``) to ``[{name, d}]``."""
    out = []
    for e in details.get("top_effects") or []:
        if not isinstance(e, dict):
            continue
        name = e.get("feature", e.get("name"))
        d = e.get("d")
        if isinstance(name, str) and isinstance(d, (int, float)) and not isinstance(d, bool) \
                and math.isfinite(float(d)):
            out.append({"name": name, "d": float(d)})
    return sorted(out, key=lambda e: -abs(e["d"]))


def conformance_series(details: dict) -> list[tuple[str, list[float], list[float]]]:
    """``(attribute, requested, measured)`` series from details with ``requested``/``measured``.

    Accepts equal-length number lists, or dicts of such lists keyed by attribute.
    """
    req, mea = details.get("requested"), details.get("measured")
    series = []
    if isinstance(req, dict) and isinstance(mea, dict):
        for k in sorted(set(req) & set(mea)):
            r, m = _num_list(req[k]), _num_list(mea[k])
            if r is not None and m is not None and len(r) == len(m):
                series.append((str(k), r, m))
    else:
        r, m = _num_list(req), _num_list(mea)
        if r is not None and m is not None and len(r) == len(m):
            series.append(("", r, m))
    return series


# ------------------------------------------------------------------------------ explain maps
def _explain_entries(index: Any) -> list[tuple[str, list[str]]]:
    """Parse ``explain/index.json``: ``{token: file | [files]}``, ``{"tokens": {...}}`` or
    ``[{token, file | files | png | pngs}]``."""
    if isinstance(index, dict) and isinstance(index.get("tokens"), (dict, list)):
        index = index["tokens"]
    out: list[tuple[str, list[str]]] = []
    if isinstance(index, dict):
        items = list(index.items())
    elif isinstance(index, list):
        items = []
        for e in index:
            if isinstance(e, dict) and "token" in e:
                files = next((e[k] for k in ("files", "pngs", "images", "file", "png", "image") if k in e), [])
                items.append((e["token"], files))
    else:
        return out
    for token, files in items:
        if isinstance(files, dict):
            files = list(files.values())
        if isinstance(files, str):
            files = [files]
        if isinstance(files, list):
            out.append((str(token), [f for f in files if isinstance(f, str)]))
    return out


def _png_inside(folder: Path, name: Any) -> Path | None:
    """``folder/name`` when it is a real PNG inside ``folder`` (no traversal, no fakes), else None."""
    if not isinstance(name, str):
        return None
    src = (folder / name).resolve()
    try:
        src.relative_to(folder.resolve())
    except ValueError:
        logger.warning("%s: %r points outside its folder; ignored", folder, name)
        return None
    if src.suffix.lower() != ".png" or not src.is_file():
        return None
    with src.open("rb") as fh:
        if fh.read(8) != _PNG_MAGIC:
            logger.warning("%s is not a PNG; ignored", src)
            return None
    return src


def _change(c: Any) -> dict | None:
    """A measured change of a counterfactual index, numbers only (None when unusable)."""
    if not isinstance(c, dict):
        return None
    ci = c.get("ci") if isinstance(c.get("ci"), list) and len(c.get("ci")) == 2 else [None, None]
    out = {"measured": _num(c.get("measured")), "low": _num(ci[0]), "high": _num(ci[1]),
           "requested": _num(c.get("requested")), "unit": str(c.get("unit", "")),
           "measurement": str(c.get("measurement", "")), "level": _num(c.get("level")),
           "n_pairs": c.get("n_pairs") if isinstance(c.get("n_pairs"), int) else None}
    return out if out["measured"] is not None else None


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def copy_counterfactuals(run_dir: Path, dest: Path, rel_prefix: str) -> list[dict]:
    """Counterfactual edits written by ``bench explain --edit ... --run RUN`` (``explain/*/index.json``
    or ``explain/index.json`` of kind ``counterfactual``): the difference PNG copied into ``dest``, the
    prompt pair and the measured change (requested, mean paired difference, CI) for the run page."""
    folder = run_dir / "explain"
    out: list[dict] = []
    n_png = 0
    for index_path in [folder / "index.json", *sorted(folder.glob("*/index.json"))]:
        if not index_path.is_file():
            continue
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            logger.warning("unreadable %s: %s", index_path, e)
            continue
        if not isinstance(index, dict) or index.get("kind") != "counterfactual":
            continue
        files = index.get("files") if isinstance(index.get("files"), dict) else {}
        src = _png_inside(index_path.parent, files.get("difference_png"))
        png = None
        if src is not None:
            name = f"counterfactual_{n_png:02d}.png"
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest / name)
            png = f"{rel_prefix}/{name}"
            n_png += 1
        edit = index.get("edit") if isinstance(index.get("edit"), dict) else {}
        prompts = index.get("prompts") if isinstance(index.get("prompts"), dict) else {}
        change = index.get("measured_change")
        out.append({"edit": str(edit.get("text", "")), "description": str(edit.get("description", "")),
                    "subject_id": str(index.get("subject_id", "")), "base": str(prompts.get("base", "")),
                    "edited": str(prompts.get("edited", "")), "n": index.get("n"), "seed": index.get("seed"),
                    "png": png, "change": _change(change),
                    "calibrated": _change(change.get("calibrated")) if isinstance(change, dict) else None})
    return out


def copy_explain(run_dir: Path, dest: Path, rel_prefix: str) -> tuple[list[dict], str]:
    """Copy cross-attention PNGs listed in ``run_dir/explain/index.json`` into ``dest``.

    Only ``.png`` files that really are PNGs and lie inside ``explain/`` are copied.

    Returns:
        ``([{"token", "images": [relative paths]}], reason when nothing is shown)``.
    """
    folder = run_dir / "explain"
    index_path = folder / "index.json"
    if not index_path.is_file():
        return [], "no explain/index.json in the run folder"
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        logger.warning("unreadable %s: %s", index_path, e)
        return [], f"explain/index.json is unreadable ({e})"
    root = folder.resolve()
    shown, n = [], 0
    if isinstance(index, dict) and index.get("kind") == "counterfactual":
        return [], "explain/index.json is a counterfactual edit (shown above), not attention maps"
    sheet = _png_inside(folder, index.get("contact_sheet")) if isinstance(index, dict) else None
    if sheet is not None:  # one labelled, ranked image on a shared scale instead of a PNG per token
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sheet, dest / "explain_sheet.png")
        return [{"token": "all tokens, ranked by departure from uniform (one colour scale)",
                 "images": [f"{rel_prefix}/explain_sheet.png"], "sheet": True}], ""
    for token, files in _explain_entries(index):
        images = []
        for f in files:
            src = (folder / f).resolve()
            try:
                src.relative_to(root)
            except ValueError:
                logger.warning("%s: %r points outside explain/; ignored", index_path, f)
                continue
            if src.suffix.lower() != ".png" or not src.is_file() or n >= MAX_EXPLAIN_IMAGES:
                continue
            with src.open("rb") as fh:
                if fh.read(8) != _PNG_MAGIC:
                    logger.warning("%s is not a PNG; ignored", src)
                    continue
            name = f"explain_{n:03d}.png"
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest / name)
            images.append(f"{rel_prefix}/{name}")
            n += 1
        if images:
            shown.append({"token": token, "images": images})
    return shown, ("" if shown else "explain/index.json lists no readable PNG")


# ---------------------------------------------------------------------------------- assemble
def _safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


def collect(record: dict, run_dir: Path | None, asset_dir: Path, rel_prefix: str) -> RunArtefacts:
    """Build everything a run page shows from the run folder, the cohort and the metric details
    (for a report run: its first reports beside the described volumes, :mod:`leaderboards.reports`).

    Args:
        record: The run record.
        run_dir: The run folder (``record.json``'s parent), or None when unknown.
        asset_dir: Where PNGs for this page go (``SITE_DIR/runs/<page>/``).
        rel_prefix: ``asset_dir`` relative to the page (``"<page>"``).

    Returns:
        The :class:`RunArtefacts`.
    """
    art = RunArtefacts()
    if record.get("task") == REPORT_TASK:  # real volumes described in words: no samples, no image metrics
        cohort, why = CohortFiles.open(record)  # the described volumes are the cohort's own
        art.reports, art.missing = collect_reports(
            record, asset_dir, rel_prefix, cohort, why,
            lambda path, vol, real: write_montage(path, vol, real, labels=("", "")))
        return art
    metrics = record.get("metrics") if isinstance(record.get("metrics"), dict) else {}

    # ---- metric details: radiomics effects, embeddings, conformance
    for key in sorted(metrics):
        entry = metrics[key]
        details = entry.get("details") if isinstance(entry, dict) and isinstance(entry.get("details"), dict) else {}
        fam = entry.get("family") if isinstance(entry, dict) else None
        if (key == "radiomics" or fam == "radiomics") and not art.effects:
            eff = top_effects(details)
            if eff:
                art.effects, art.effects_key = eff, key
                art.figures.append({"id": f"fig-effects-{_safe_id(key)}", "section": "radiomics",
                                    "title": f"Radiomics features that differ most ({key})",
                                    "fig": charts.effects_figure(eff, "Cohen's d, generated vs reference"),
                                    "caption": "Largest |Cohen's d| between generated and reference radiomics "
                                               "features: positive means larger in generated volumes."})
        emb = details.get("embedding")
        if isinstance(emb, dict):
            g, r = _points(emb.get("generated")), _points(emb.get("reference"))
            if g and r:
                var = emb.get("explained_variance")
                axes = ("PC 1", "PC 2")
                if isinstance(var, list) and len(var) >= 2 and all(isinstance(v, (int, float)) for v in var[:2]):
                    axes = (f"PC 1 ({100 * var[0]:.0f}% var.)", f"PC 2 ({100 * var[1]:.0f}% var.)")
                art.figures.append({"id": f"fig-embed-{_safe_id(key)}", "section": "latent",
                                    "title": f"Latent space ({key})",
                                    "fig": charts.scatter_figure(g, r, f"{charts.plot_text(key)}: "
                                                                 f"{charts.plot_text(emb.get('method') or 'embedding')}",
                                                                 axes),
                                    "caption": "2-D projection of generated and reference latents; "
                                               "overlapping clouds mean similar distributions."})
        for attr, req, mea in conformance_series(details):
            label = f"{key}" + (f" · {attr}" if attr else "")
            art.figures.append({"id": f"fig-conf-{_safe_id(label)}", "section": "conformance",
                                "title": f"Conformance: {label}",
                                "fig": charts.conformance_figure(req, mea, charts.plot_text(label)),
                                "caption": "Requested (prompt) vs measured (generated volume) values; "
                                           "points on the dashed line conform exactly."})
    if not any(f["section"] == "conformance" for f in art.figures):
        art.missing.append("conformance plots: no metric recorded requested/measured values")
    if not any(f["section"] == "latent" for f in art.figures):
        art.missing.append("latent-space scatter: no metric recorded an embedding")
    if not art.effects:
        art.missing.append("radiomics effects: no radiomics metric with top_effects")

    # ---- samples and cohort: montages, histograms
    if run_dir is None:
        art.missing.append("montages and histograms: the run folder is unknown")
        return art
    prompts = record.get("prompts") if isinstance(record.get("prompts"), list) else []
    texts = {p.get("subject_id"): p.get("text", "") for p in prompts if isinstance(p, dict)}
    gen, gen_ids = load_generated(run_dir, MAX_HIST_VOLUMES)
    cohort, why = CohortFiles.open(record)
    if gen is None:
        art.missing.append("montages and histograms: no readable samples/shard_*.npz in the run folder")
    else:
        if cohort is None:
            art.missing.append(f"real images: {why}")
        for i in range(min(N_MONTAGES, len(gen))):
            sid = gen_ids[i] if i < len(gen_ids) else ""
            if not sid and i < len(prompts) and isinstance(prompts[i], dict):  # the generator's own prompts:
                sid = str(prompts[i].get("reference_subject_id") or "")       # show the matched real volume
                texts.setdefault(sid, str(prompts[i].get("text", "")))
            real = cohort.volume(sid) if (cohort is not None and sid) else None
            if real is not None and real.shape != gen[i].shape:
                logger.warning("cohort image of %s has shape %s, samples %s; not shown", sid, real.shape,
                               gen[i].shape)
                real = None
            name = f"montage_{i}.png"
            try:
                write_montage(asset_dir / name, gen[i], real)
            except (ValueError, OSError) as e:
                logger.warning("montage %d of %s failed: %s", i, run_dir, e)
                continue
            art.montages.append({"png": f"{rel_prefix}/{name}", "subject_id": sid, "text": texts.get(sid, ""),
                                 "has_real": real is not None})
        if cohort is not None:
            refs = [v for v in (cohort.volume(s) for s in gen_ids[:MAX_HIST_VOLUMES] if s) if v is not None]
            refs = [v for v in refs if v.shape == gen.shape[1:]]
            if refs:
                mask = cohort.brain_mask()
                hi = max(1.0, float(np.percentile(np.stack(refs), 99.9)))
                edges = np.linspace(0.0, hi, HIST_BINS + 1)
                hg = masked_histogram(gen, mask, edges)
                hr = masked_histogram(np.stack(refs), mask, edges)
                title = "Intensity inside the brain mask" if mask is not None else "Intensity (whole volume)"
                art.figures.append({"id": "fig-hist", "section": "histogram", "title": title,
                                    "fig": charts.histogram_figure(edges.tolist(), hg.tolist(), hr.tolist(),
                                                                   title),
                                    "caption": f"Pooled voxel intensities of {len(gen)} generated volumes and "
                                               f"the {len(refs)} caption-matched real volumes"
                                               + (" inside the cohort brain mask." if mask is not None
                                                  else " (no brain mask found: whole volume).")})
            else:
                art.missing.append("intensity histograms: no reference image of these prompts could be read")
        else:
            art.missing.append(f"intensity histograms: {why}")

    # ---- explanations: counterfactual edits, cross-attention maps
    art.counterfactuals = copy_counterfactuals(run_dir, asset_dir, rel_prefix)
    art.explain, why = copy_explain(run_dir, asset_dir, rel_prefix)
    if not art.explain:
        art.missing.append(f"cross-attention maps: {why}")
    return art
