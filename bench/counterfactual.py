"""Counterfactual prompt edits: what one attribute of the prompt does to the generated volume.

An explanation by intervention rather than by attention: take a subject of the suite's reference
cohort (its caption is the base prompt), change one attribute of the subject (``ventricles*1.5``,
``age+30``, ``modality=T2``, ``lesions+5``), rebuild the caption with the caption grammar
(:func:`cohorts.captions.make_caption` on a :func:`dataclasses.replace` d
:class:`~cohorts.subject.Subject`), and generate both prompts with the **same per-sample seeds**
(``seed_for(seed, i)``, what ``generate(prompts, seed=...)`` gives sample ``i``). Each pair then
differs only by the edit, so

* the mean difference volume (edited − base) shows *where* the model put the change, and
* the attribute measured on each pair with the model-independent measurements of the conformance
  metric (atlas-guided partial-volume ventricles; the fitted age / modality predictors of
  :class:`captioners.measure.MeasuredPredictors`; the shipped lesion segmentation) gives *how much*:
  the mean paired difference with a seeded bias-corrected bootstrap interval, next to the change
  the edited caption requested.

Works for any generator with ``generate(prompts, *, seed)``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cohorts.captions import LESION_WORDS, make_caption, parse_caption, percentile_rank
from cohorts.subject import MODALITIES, Cohort, Subject
from core.names import did_you_mean
from generators.base import Prompt, seed_for

__all__ = ["EDITS", "Edit", "apply_edit", "counterfactual", "explain_command", "measure_change", "parse_edit"]

logger = logging.getLogger(__name__)

#: attribute -> (operators it accepts, unit of the requested / measured change, what it measures)
EDITS: dict[str, tuple[str, str, str]] = {
    "ventricles": ("*+-=", "mL", "lateral-ventricle volume: CSF partial volume inside the dilated atlas lateral "
                                 "ventricles (metrics.functional.conformance.measure, column lateral_ventricles)"),
    "age": ("+-=", "years", "age predicted from the atlas-guided measurements by the ridge models fitted on the "
                            "cohort's training split (captioners.measure.MeasuredPredictors)"),
    "modality": ("=", "share", "share of samples whose tissue contrast the fitted modality classifier assigns to "
                               "the requested modality (captioners.measure.MeasuredPredictors)"),
    "lesions": ("+-=", "lesions", "white-matter lesion count of the shipped lesion segmentation "
                                  "(metrics.lesions.LesionMeasurer, connected components)"),
}
_WORDS = {"ventricles": "lateral ventricles", "age": "age", "modality": "modality", "lesions": "white-matter lesions"}
_EDIT = re.compile(r"^\s*([A-Za-z_]+)\s*([*+\-=])\s*(\S+)\s*$")
_NEW_LESION_CLASS = "periventricular"  # where added lesions are placed (the commonest MS location)


@dataclass(frozen=True)
class Edit:
    """One attribute change: ``attribute`` (a key of :data:`EDITS`), ``op`` (``*``, ``+``, ``-``, ``=``)
    and ``value`` (a number, or a modality name for ``modality=``)."""

    attribute: str
    op: str
    value: float | str

    @property
    def text(self) -> str:
        v = self.value if isinstance(self.value, str) else f"{self.value:g}"
        return f"{self.attribute}{self.op}{v}"

    @property
    def slug(self) -> str:
        """File-name form: ``ventricles*1.5`` -> ``ventricles-x1.5``."""
        return re.sub(r"[^A-Za-z0-9.+-]", "", self.text.replace("*", "-x").replace("=", "-"))

    def describe(self) -> str:
        """Human form: "lateral ventricles × 1.5", "age + 30", "modality = T2"."""
        v = self.value if isinstance(self.value, str) else f"{self.value:g}"
        return f"{_WORDS[self.attribute]} {'×' if self.op == '*' else self.op} {v}"

    def to_dict(self) -> dict:
        return {"text": self.text, "attribute": self.attribute, "op": self.op, "value": self.value,
                "description": self.describe(), "unit": EDITS[self.attribute][1],
                "measurement": EDITS[self.attribute][2]}


def parse_edit(text: str) -> Edit:
    """``"ventricles*1.5"`` -> :class:`Edit`; a clear error (with did-you-mean) for anything else.

    >>> parse_edit("age+30")
    Edit(attribute='age', op='+', value=30.0)
    """
    m = _EDIT.match(str(text))
    if not m:
        raise ValueError(f"edit {text!r} is not ATTRIBUTE OP VALUE (e.g. ventricles*1.5, age+30, modality=T2, "
                         f"lesions+5)")
    attr, op, raw = m.group(1).lower(), m.group(2), m.group(3)
    if attr not in EDITS:
        raise ValueError(f"unknown edit attribute {attr!r}"
                         + did_you_mean(attr, EDITS, otherwise=f"; choose from {', '.join(EDITS)}"))
    ops = EDITS[attr][0]
    if op not in ops:
        raise ValueError(f"edit {text!r}: {attr} takes the operator(s) {' '.join(ops)}, not {op!r}")
    if attr == "modality":
        mod = next((x for x in MODALITIES if x.lower() == raw.lower()), None)
        if mod is None:
            raise ValueError(f"edit {text!r}: unknown modality {raw!r}"
                             + did_you_mean(raw.upper(), MODALITIES, otherwise=f"; choose from {', '.join(MODALITIES)}"))
        return Edit(attr, op, mod)
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"edit {text!r}: {raw!r} is not a number") from None
    if op == "*" and value <= 0:
        raise ValueError(f"edit {text!r}: the factor must be positive")
    return Edit(attr, op, value)


def _arith(old: float, op: str, value: float) -> float:
    return {"*": old * value, "+": old + value, "-": old - value, "=": value}[op]


def apply_edit(subject: Subject, edit: Edit, cohort: Cohort | None = None) -> Subject:
    """The subject with ``edit`` applied and its caption rebuilt by the caption grammar.

    Ventricles: the lateral-ventricle volume changes and its percentile is recomputed against the
    cohort's subjects (as the cohort's own percentiles are), or dropped without a cohort. Lesions:
    added lesions are periventricular, the total lesion volume keeps the mean volume per lesion
    (the subject's, else the cohort's); the subject must record lesions (a ``phantom-ms`` cohort).
    """
    a, changes = edit.attribute, {}
    if a == "ventricles":
        if "lateral_ventricles" not in subject.volumes:
            raise ValueError(f"subject {subject.subject_id!r} records no lateral-ventricle volume to edit")
        new = max(_arith(subject.volumes["lateral_ventricles"], edit.op, float(edit.value)), 0.1)
        pct = {k: v for k, v in subject.percentiles.items() if k != "lateral_ventricles"}
        ref = [s.volumes["lateral_ventricles"] for s in (cohort.subjects if cohort else [])
               if "lateral_ventricles" in s.volumes]
        if ref:
            pct["lateral_ventricles"] = percentile_rank(new, ref)
        changes = {"volumes": subject.volumes | {"lateral_ventricles": round(new, 1)}, "percentiles": pct}
    elif a == "age":
        if subject.age is None:
            raise ValueError(f"subject {subject.subject_id!r} records no age to edit")
        changes = {"age": max(float(_arith(subject.age, edit.op, float(edit.value))), 0.0)}
    elif a == "modality":
        changes = {"modality": str(edit.value)}
    elif a == "lesions":
        if not subject.lesions:
            raise ValueError(f"subject {subject.subject_id!r} records no lesions; the lesions edit needs a cohort "
                             "with lesions (e.g. a suite on phantom-ms)")
        les = dict(subject.lesions)
        old = int(round(les.get("count", 0)))
        new = max(int(round(_arith(old, edit.op, float(edit.value)))), 0)
        if new >= old:
            les[_NEW_LESION_CLASS] = les.get(_NEW_LESION_CLASS, 0) + (new - old)
        else:  # remove from the largest classes first
            for _ in range(old - new):
                k = max(LESION_WORDS, key=lambda c: les.get(c, 0))
                les[k] = max(les.get(k, 0) - 1, 0)
        per = les.get("volume", 0.0) / old if old else _mean_lesion_volume(cohort)
        les.update(count=float(new), volume=round(per * new, 2))
        changes = {"lesions": les}
    edited = dataclasses.replace(subject, **changes)
    return dataclasses.replace(edited, caption=make_caption(edited))


def _mean_lesion_volume(cohort: Cohort | None) -> float:
    rows = [s.lesions for s in (cohort.subjects if cohort else []) if s.lesions.get("count", 0) > 0]
    return float(np.mean([r.get("volume", 0.0) / r["count"] for r in rows])) if rows else 0.1


def requested_change(base: Subject, edited: Subject, edit: Edit) -> float:
    """What the edited caption asks for beyond the base caption, in the unit of :data:`EDITS`."""
    a = edit.attribute
    if a == "ventricles":
        return float(edited.volumes["lateral_ventricles"] - base.volumes["lateral_ventricles"])
    if a == "age":
        return float(edited.age - base.age)
    if a == "modality":
        return float((edited.modality == edit.value) - (base.modality == edit.value))
    return float(edited.lesions.get("count", 0) - base.lesions.get("count", 0))


# ------------------------------------------------------------------------------- measuring
def _predictors(cohort: Cohort, grid, cache_dir: Path | None):
    """The conformance predictors fitted on the cohort's training split (cached on disk)."""
    from captioners.base import CaptionerContext
    from captioners.measure import MeasuredPredictors

    return MeasuredPredictors(CaptionerContext(cohort=cohort, grid=grid, cache_dir=cache_dir, quiet=True))


def _measurer(edit: Edit, cohort: Cohort, grid, cache_dir: Path | None):
    """``volumes (N,1,D,H,W) -> per-volume value`` for the edit's attribute (model-independent)."""
    if edit.attribute == "ventricles":
        from cohorts.atlas import atlas_on_grid
        from metrics.functional.conformance import MEASUREMENTS, atlas_regions, measure

        regions = atlas_regions(atlas_on_grid(grid))
        col = MEASUREMENTS.index("lateral_ventricles")
        return lambda v: measure(v, regions)[:, col]
    models = _predictors(cohort, grid, cache_dir)
    if edit.attribute == "age":
        return lambda v: models.predict(v)["age"]
    if edit.attribute == "modality":
        return lambda v: (models.predict(v)["modality"] == edit.value).astype(np.float64)
    from metrics.functional.lesions import lesion_summary
    from metrics.lesions import LesionMeasurer

    seg = LesionMeasurer()

    def lesions(v):
        mods = [str(m) for m in models.predict(v)["modality"]]
        frac = seg.fractions(v, mods, models.atlas)
        return np.array([lesion_summary(f, models.atlas["lesion_zones"], models.atlas["voxel_volume_ml"])["count"]
                         for f in frac], np.float64)
    return lesions


def measure_change(base_values: np.ndarray, edited_values: np.ndarray, *, n_boot: int = 2000,
                   seed: int = 0, level: float = 0.95) -> dict:
    """Mean paired difference (edited − base) with its seeded BC bootstrap interval (pairs resampled)."""
    from metrics.functional.bootstrap import bootstrap_ci

    d = np.asarray(edited_values, np.float64) - np.asarray(base_values, np.float64)
    est = float(d.mean())
    ci = bootstrap_ci(lambda idx: float(d[idx].mean()), len(d), n_boot=n_boot, seed=seed, level=level, estimate=est)
    return {"measured": est, "ci": [float(ci.low), float(ci.high)], "level": level, "n_boot": n_boot,
            "ci_method": ci.method, "excludes_zero": bool(ci.low > 0 or ci.high < 0), "n_pairs": int(len(d)),
            "base_mean": float(np.mean(base_values)), "edited_mean": float(np.mean(edited_values)),
            "per_pair": [round(float(x), 4) for x in d]}


# ------------------------------------------------------------------------------- figure
def write_difference_png(path: Path, diff: np.ndarray, base_mean: np.ndarray, title: str, label: str) -> float:
    """Sagittal / coronal / axial mid-planes of ``diff`` on a diverging map (symmetric scale, colour bar;
    red = brighter in the edited samples), the outline of the mean base volume drawn over it for
    orientation. Returns the scale's half-range."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    d, h, w = diff.shape
    # 99.5th percentile of |diff|: a rim of large changes at the head's edge must not wash out the inside
    vmax = float(np.percentile(np.abs(diff), 99.5)) or float(np.abs(diff).max()) or 1e-6
    planes = [("sagittal", diff[d // 2], base_mean[d // 2]), ("coronal", diff[:, h // 2], base_mean[:, h // 2]),
              ("axial", diff[:, :, w // 2], base_mean[:, :, w // 2])]
    fig, axes = plt.subplots(1, 3, figsize=(11, 4.2), constrained_layout=True)
    im = None
    for ax, (name, sl, under) in zip(axes, planes):
        im = ax.imshow(sl.T, cmap="RdBu_r", vmin=-vmax, vmax=vmax, origin="lower", interpolation="nearest")
        if under.max() > 0:
            ax.contour(under.T, levels=[0.15 * float(under.max())], colors="0.35", linewidths=0.6, origin="lower")
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    cb = fig.colorbar(im, ax=axes, shrink=0.85, pad=0.02, extend="both")
    cb.set_label(label)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return vmax


# ------------------------------------------------------------------------------- driver
def counterfactual(generator, cohort: Cohort, subject: Subject, edit: Edit | str, out_dir: str | Path, *,
                   n: int = 16, seed: int = 0, cache_dir: Path | None = None,
                   n_boot: int = 2000, calibrated: bool = True) -> Path:
    """Generate ``subject``'s caption and its edited caption with the same seeds, write the mean
    difference volume (NIfTI + PNG) and the measured change, and return ``index.json``'s path.

    Args:
        generator: anything with ``generate(prompts, *, seed)`` returning volumes (N, 1, D, H, W).
        cohort: the reference cohort (percentiles of the edited caption; training split for the
            age / modality / lesion predictors).
        subject: whose caption is the base prompt.
        edit: an :class:`Edit` or its text (``ventricles*1.5``).
        out_dir: output folder (created).
        n: samples per prompt (pairs).
        seed: sample ``i`` of both prompts uses ``seed_for(seed, i)``.
        cache_dir: where the fitted predictors are cached (default: the home cache).
        n_boot: bootstrap resamples of the interval.
        calibrated: for ventricles, also the change of the calibrated volume (``calibrated`` in the
            measured change; fits the predictors on the training split, cached).
    """
    from cohorts.subject import save_nifti

    edit = parse_edit(edit) if isinstance(edit, str) else edit
    if n < 2:
        raise ValueError(f"counterfactual needs n >= 2 pairs for an interval, got {n}")
    edited = apply_edit(subject, edit, cohort)
    base_text, edit_text = make_caption(subject), edited.caption
    if subject.caption and subject.caption != base_text:  # a prepared cohort's own wording: pair like with like
        logger.warning("%s: stored caption differs from the caption grammar's; the base prompt is the grammar's",
                       subject.subject_id)
    if base_text == edit_text:
        raise ValueError(f"edit {edit.text!r} leaves the caption of {subject.subject_id} unchanged")
    measure = _measurer(edit, cohort, cohort.grid, cache_dir)  # fit predictors before the generation
    calibrate = _predictors(cohort, cohort.grid, cache_dir) if (calibrated and edit.attribute == "ventricles") else None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vols = {}
    for key, text in (("base", base_text), ("edited", edit_text)):
        # one call of n identical prompts: sample i gets seed_for(seed, i) for both prompts
        prompts = [Prompt(text=text, attributes=parse_caption(text), subject_id=subject.subject_id)] * n
        vols[key] = np.asarray(generator.generate(prompts, seed=seed).volumes, np.float32)
        logger.info("counterfactual %s: %d %s samples", edit.text, n, key)
    values = {k: np.asarray(measure(v), np.float64) for k, v in vols.items()}
    diff = (vols["edited"] - vols["base"])[:, 0].mean(0, dtype=np.float64).astype(np.float32)
    base_mean = vols["base"][:, 0].mean(0, dtype=np.float64).astype(np.float32)
    change = measure_change(values["base"], values["edited"], n_boot=n_boot, seed=seed)
    change.update(requested=requested_change(subject, edited, edit), unit=EDITS[edit.attribute][1],
                  measurement=EDITS[edit.attribute][2])
    if calibrate is not None:  # what the conformance metric reports: the per-modality calibrated volume
        cal = {k: calibrate.predict(v)["lateral_ventricles"] for k, v in vols.items()}
        change["calibrated"] = measure_change(cal["base"], cal["edited"], n_boot=n_boot, seed=seed) | {
            "measurement": "lateral-ventricle volume of the per-modality ridge calibration fitted on the cohort's "
                           "training split (captioners.measure.MeasuredPredictors; what conformance scores)"}
    unit = change["unit"]
    title = (f"{subject.subject_id}: {edit.describe()} — mean of {n} same-seed pairs (edited − base)\n"
             f"requested {change['requested']:+.3g} {unit}; measured {change['measured']:+.3g} {unit} "
             f"[{change['ci'][0]:+.3g}, {change['ci'][1]:+.3g}] ({int(change['level'] * 100)} % CI)")
    save_nifti(out / "difference.nii.gz", diff, cohort.grid)
    vmax = write_difference_png(out / "difference.png", diff, base_mean, title,
                                "mean intensity difference (edited − base)")
    info = generator.info() if hasattr(generator, "info") else {}
    index = {
        "kind": "counterfactual", "edit": edit.to_dict(), "subject_id": subject.subject_id,
        "prompts": {"base": base_text, "edited": edit_text}, "n": n, "seed": seed,
        "sample_seeds": [seed_for(seed, i) for i in range(n)],
        "generator": {"name": getattr(generator, "name", type(generator).__name__), "info": info},
        "cohort": {"name": cohort.name, "content_hash": getattr(cohort, "content_hash", None)},
        "grid": cohort.grid.to_dict(), "measured_change": change,
        "measured_values": {k: [round(float(x), 4) for x in v] for k, v in values.items()},
        "difference_scale": {"vmin": -vmax, "vmax": vmax, "cmap": "RdBu_r"},
        "files": {"difference_png": "difference.png", "difference_nifti": "difference.nii.gz"},
    }
    path = out / "index.json"
    path.write_text(json.dumps(index, indent=2, default=str))
    return path


# ------------------------------------------------------------------------------- command
def explain_command(*, generator: str = "ldm3d", suite: str = "quick", prompt: str | None = None,
                    subject: str | None = None, index: int | None = None, edit: str | None = None, n: int = 16,
                    run: Path | None = None, out: Path | None = None, generator_args: str = "", seed: int = 0,
                    device: str = "auto", quiet: bool = False) -> tuple[str, Path]:
    """``python -m bench explain`` (the keyword arguments are its flags): attention maps (no ``edit``)
    or a counterfactual edit. Every argument (edit, subject, output) is checked before the generator
    is built or anything is generated.

    Returns:
        ``("attention maps" | "counterfactual", path of index.json)``.
    """
    from bench import registry
    from bench.args import parse_kv
    from bench.runner import build_generator, resolve_cohort, resolve_device
    from bench.suite import load_suite
    from generators.base import GeneratorContext

    registry.generators.canonical(generator)
    parsed = parse_edit(edit) if edit is not None else None
    if run is None and out is None:
        raise ValueError("give --out DIR, or --run RUN_DIR to write into RUN_DIR/explain/")
    if run is not None and not Path(run).is_dir():
        raise ValueError(f"--run {run}: no such run folder")
    if subject is not None and index is not None:
        raise ValueError("give --subject or --index, not both")
    if parsed is not None and n < 2:
        raise ValueError(f"--n must be >= 2 (pairs for the interval), got {n}")
    st = load_suite(suite)
    cohort = resolve_cohort(st.reference, st.grid, st.reference_args, quiet)
    chosen = None
    if subject is not None:
        try:
            chosen = cohort.by_id(subject)
        except KeyError as e:
            raise ValueError(str(e).strip("'\"")) from None
    elif index is not None or prompt is None or parsed is not None:
        from bench.prompts import select_prompts

        selected = select_prompts(cohort, st.n_prompts, st.seed)
        k = index or 0
        if not 0 <= k < len(selected):
            raise ValueError(f"--index {k}: suite {st.name!r} has {len(selected)} prompts (0..{len(selected) - 1})")
        chosen = selected[k]
    folder = Path(out) if run is None else Path(run) / "explain"
    if parsed is not None and run is not None:
        folder = folder / f"counterfactual-{parsed.slug}"
    ctx = GeneratorContext(cohort=cohort, grid=st.grid, device=resolve_device(device), quiet=quiet)
    gen, _ = build_generator(generator, parse_kv(generator_args), ctx)
    if parsed is not None:
        return "counterfactual", counterfactual(gen, cohort, chosen, parsed, folder, n=n, seed=seed)
    attention = getattr(gen, "explain", None)
    if attention is None:
        raise ValueError(f"generator {generator!r} does not expose attention maps (no explain method); "
                         "--edit works with any generator")
    text = prompt if prompt is not None else make_caption(chosen)
    return "attention maps", attention(text, folder, seed=seed)
