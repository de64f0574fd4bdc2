"""Suites: YAML files naming the reference cohort, grid, number of prompts, seed and metrics.

A suite file (``bench/suites/<name>.yaml``, or any path) looks like::

    name: quick
    version: 1
    description: ...
    reference: {name: phantom, args: {n_subjects: 400, seed: 0}}
    grid: 3mm
    n_prompts: 16
    seed: 0
    metrics:
      - {name: fid, args: {extractor: deepbet}}
      - {name: ssim}

Each metric entry may set ``key`` (its name in the record; default: the metric name, plus
``-<extractor>`` when an extractor is given) and ``tolerance`` (for ``compare --fail-on-regression``).
``task`` names the task kind (``text-to-volume``, the default, or ``follow-up``: ``n_prompts`` is then
the number of sequences). ``include: <suite or file.yaml>``
starts from another suite: keys given in the including file replace the included ones whole
(``full.yaml`` is ``quick.yaml`` with 100 prompts). Unknown keys anywhere are errors that name the
file and the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cohorts.grid import Grid, get_grid
from core.axes import AXES
from core.names import did_you_mean

SUITES_DIR = Path(__file__).parent / "suites"


class SuiteError(ValueError):
    pass


@dataclass(frozen=True)
class MetricSpec:
    key: str
    name: str
    args: dict = field(default_factory=dict)
    tolerance: float | None = None


@dataclass(frozen=True)
class Suite:
    name: str
    version: int
    description: str
    reference: str
    reference_args: dict
    grid: Grid
    n_prompts: int
    seed: int
    metrics: tuple[MetricSpec, ...]
    path: Path | None = None
    floor_split: str = "train"
    headline: dict = field(default_factory=dict)  # {axis: [metric keys]}: what the table and compare lead with
    task: str = "text-to-volume"

    def to_dict(self) -> dict:
        return {"name": self.name, "version": self.version, "description": self.description, "task": self.task,
                "grid": self.grid.to_dict(), "n_prompts": self.n_prompts, "seed": self.seed,
                "reference": {"name": self.reference, "args": self.reference_args},
                "floor_split": self.floor_split, "headline": {a: list(k) for a, k in self.headline.items()},
                "metrics": [{"key": m.key, "name": m.name, "args": m.args, "tolerance": m.tolerance}
                            for m in self.metrics]}


_TOP = {"name", "version", "description", "reference", "grid", "n_prompts", "seed", "metrics", "floor_split",
        "headline", "task", "include"}
#: Task kinds a suite may declare (``task:``); the runner's stages for each are in :mod:`bench.tasks`.
TASKS = ("text-to-volume", "follow-up", "report")
_METRIC = {"name", "args", "key", "tolerance"}


def _check_keys(d: dict, allowed: set, where: str, path) -> None:
    for k in d:
        if k not in allowed:
            hint = did_you_mean(k, sorted(allowed), 1, otherwise=f"; allowed: {', '.join(sorted(allowed))}")
            raise SuiteError(f"{path}: unknown key {k!r} in {where}{hint}")


def available_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def suite_path(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not p.exists():
            raise SuiteError(f"{p}: suite file not found")
        return p
    from bench.registry import suites

    return Path(suites.get(str(name_or_path)))


def _read_raw(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    """The suite mapping of ``path`` with its ``include:`` resolved: the included suite's keys, then this
    file's (a key given here replaces the included one whole, ``metrics`` included)."""
    if path.resolve() in chain:
        raise SuiteError(f"{path}: include cycle ({' -> '.join(str(p) for p in (*chain, path.resolve()))})")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SuiteError(f"{path}: invalid YAML ({e})") from e
    if not isinstance(raw, dict):
        raise SuiteError(f"{path}: a suite must be a YAML mapping")
    _check_keys(raw, _TOP, "the suite", path)
    base = raw.pop("include", None)
    if base is None:
        return raw
    base_path = path.parent / str(base) if str(base).endswith((".yaml", ".yml")) else suite_path(str(base))
    if not base_path.exists():
        raise SuiteError(f"{path}: include {base!r}: {base_path} not found; name a suite or a YAML file "
                         "next to this one")
    return {**_read_raw(base_path, (*chain, path.resolve())), **raw}


def load_suite(name_or_path: str | Path) -> Suite:
    """Read and check a suite (a name from ``bench/suites`` or a YAML path), ``include:`` resolved."""
    path = suite_path(name_or_path)
    raw = _read_raw(path)
    task = str(raw.get("task", TASKS[0]))
    if task not in TASKS:
        raise SuiteError(f"{path}: task {task!r} is not one this version runs"
                         f"{did_you_mean(task, TASKS, 1, otherwise='')} (tasks: {', '.join(TASKS)})")
    for req in ("name", "reference", "grid", "n_prompts", "metrics"):
        if req not in raw:
            raise SuiteError(f"{path}: missing required key {req!r}")
    ref = raw["reference"]
    if isinstance(ref, str):
        ref = {"name": ref}
    _check_keys(ref, {"name", "args"}, "reference", path)
    specs = []
    for i, m in enumerate(raw["metrics"]):
        if isinstance(m, str):
            m = {"name": m}
        _check_keys(m, _METRIC, f"metrics[{i}]", path)
        args = dict(m.get("args") or {})
        key = m.get("key") or (m["name"] + (f"-{args['extractor']}" if "extractor" in args else ""))
        specs.append(MetricSpec(key=key, name=m["name"], args=args, tolerance=m.get("tolerance")))
    keys = [s.key for s in specs]
    dup = {k for k in keys if keys.count(k) > 1}
    if dup:
        raise SuiteError(f"{path}: duplicate metric key(s) {sorted(dup)}; give each a distinct `key:`")
    headline = _headline(raw.get("headline") or {}, keys, path)
    try:
        grid = get_grid(raw["grid"])
    except ValueError as e:
        raise SuiteError(f"{path}: {e}") from None
    return Suite(name=str(raw["name"]), version=int(raw.get("version", 1)),
                 description=str(raw.get("description", "")).strip(), reference=str(ref["name"]),
                 reference_args=dict(ref.get("args") or {}), grid=grid, n_prompts=int(raw["n_prompts"]),
                 seed=int(raw.get("seed", 0)), metrics=tuple(specs), path=path,
                 floor_split=str(raw.get("floor_split", "train")), headline=headline, task=task)


def _headline(raw: dict, keys: list[str], path) -> dict[str, tuple[str, ...]]:
    """``headline: {axis: [result keys]}``: axes from :data:`AXES`; a key is a metric key or one of its
    sub-results (``prdc-deepbet/recall``)."""
    if not isinstance(raw, dict):
        raise SuiteError(f"{path}: `headline` must map an axis ({', '.join(AXES)}) to a list of metric keys")
    _check_keys(raw, set(AXES), "headline", path)
    out = {}
    for axis in AXES:
        if axis not in raw:
            continue
        vals = raw[axis] if isinstance(raw[axis], list) else [raw[axis]]
        for v in vals:
            if str(v).split("/", 1)[0] not in keys:
                hint = did_you_mean(str(v).split("/", 1)[0], keys, 1,
                                    otherwise=f"; the suite's metric keys: {', '.join(keys)}")
                raise SuiteError(f"{path}: headline.{axis} names {v!r}, which is not a metric of this suite{hint}")
        out[axis] = tuple(str(v) for v in vals)
    return out


def _register_builtin() -> None:
    from bench.registry import suites

    for p in sorted(SUITES_DIR.glob("*.yaml")):
        if p.stem not in suites:
            suites.register(p.stem, p, description=_first_description(p))


def _first_description(p: Path) -> str:
    try:
        return str((yaml.safe_load(p.read_text()) or {}).get("description", "")).strip().split("\n")[0]
    except yaml.YAMLError:
        return "(invalid YAML)"


_register_builtin()
