"""The metric contract.

A metric family is a class registered in ``bench.registry.metrics``; the runner builds it as
``cls(**args)`` with the suite's arguments (keyword-only, checked; unknown keys are an error) and
calls ``compute(sets, seed=...)``. Everything a metric sees comes in :class:`EvalSets`: arrays, and
callables the runner provides (cached feature extraction, encoders) — a metric never imports the
runner, a generator or a cohort loader.

Every result carries: value, direction, a seeded bootstrap CI, n, the real-vs-real floor and
warnings (e.g. N below the feature dimension).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any, Callable, ClassVar

import numpy as np

from core.axes import AXES
from metrics.volumes import VolumeSet, as_volume_set, check_aligned, concat_results, map_in_process

log = logging.getLogger("braingenbench.metrics")

SET_NAMES = ("generated", "reference", "floor", "train", "previous", "reference_previous")

# features(extractor_name, set_name) -> (N, F) array. Set names: "generated", "reference", "floor", "train".
FeatureFn = Callable[[str, str], np.ndarray]
# shard_mapper(fn, [VolumeSet, ...]) -> [fn(*shard k of each set) for every shard k], in shard order.
ShardMapper = Callable[[Callable, list], list]


@dataclass
class EvalSets:
    """The data of one evaluation.

    The volume sets are :class:`~metrics.volumes.VolumeSet` objects (or plain arrays, which are
    wrapped): the runner never holds N volumes in memory, so a metric reads volumes through
    :meth:`map` (a function of one shard of one or more aligned sets, results concatenated in
    order; the runner may run the shards on other processes or machines) or :meth:`take` (a few
    volumes by index). ``sets.generated[...]``-style whole-array access is not part of the contract.

    Attributes:
        generated: (N, 1, D, H, W) generated volumes, prompt order.
        reference: (N, 1, D, H, W) the real volume whose caption was prompt i (caption-matched).
        floor: (N, 1, D, H, W) an independent real set of the same size, subject i matched to
            reference i on modality (and sex/age where possible): the real-vs-real comparison.
        brain_mask: (D, H, W) bool atlas brain mask on the grid.
        features: cached feature extraction, ``features(extractor, set_name) -> (N, F)``.
        train: optional (M, 1, D, H, W) training volumes (memorisation checks).
        attributes: per-prompt attributes parsed from the captions.
        voxel_size: mm.
        feature_names: ``feature_names(extractor)`` -> names of the feature columns, when the
            extractor has them (e.g. radiomics).
        shard_mapper: runs per-shard functions (default: in this process, in order).
        cohort_hash: content hash of the reference cohort (a cache key for what is fitted on it).
        train_attributes: the training subjects' true attributes (with :attr:`Input.TRAIN`).
        atlas: atlas priors on the grid: ``gm``, ``wm``, ``csf``, ``labels``, ``ventricles``,
            ``voxel_volume_ml`` (with :attr:`Input.ATLAS`).
        tissue_consensus: (D, H, W) voxel-wise majority of the reference subjects' tissue labels, when
            the cohort has labels (with :attr:`Input.TISSUE_LABELS`).
        reference_labels: per-subject tissue label maps, when a caller has them instead of a consensus.
        tissue_names: tissue label -> name, overriding the defaults.
        paired: ``reference[i]`` is the real volume whose caption was prompt ``i``. False when the prompts
            are the user's own (the ``folder`` adapter with its own manifest): metrics that need the
            pairing (:attr:`Input.PAIRED_REFERENCE`) are then skipped with a reason.
        previous: follow-up runs (:attr:`Input.FOLLOW_UP`): the volume that generated volume ``i`` was
            made from (the real baseline for the first follow-up of a sequence, the generator's own previous
            follow-up after that).
        reference_previous: follow-up runs: the real scan before ``reference[i]`` in its sequence.
        items: follow-up runs: per generated volume ``{"sequence": id, "step": k}`` (k = 1 for the first
            follow-up); ``floor[i]`` is then another subject's real scan of the same modality and session.
        reports: report runs (:attr:`Input.REPORTS`): the captioner's report of ``reference[i]``;
            ``report_attributes`` the caption parser's reading of it, ``captions`` the volume's true caption
            (``attributes`` is its parsed form), ``floor_captions`` / ``floor_attributes`` the true caption
            of ``floor[i]``, another subject of the same modality (the floor of every report metric).
        describe: :attr:`Input.DESCRIBE`: ``describe(captioner, set_name) -> (reports, parsed attributes)``,
            a registered captioner's reports of a volume set (computed once per run and set).
        embed_text: :attr:`Input.TEXT_ENCODER`: ``embed_text(texts) -> (N, d)`` sentence embeddings.
    """

    generated: VolumeSet
    reference: VolumeSet
    floor: VolumeSet
    brain_mask: np.ndarray
    features: FeatureFn
    train: VolumeSet | None = None
    attributes: list[dict] = field(default_factory=list)
    voxel_size: float = 3.0
    feature_names: Callable[[str], list[str] | None] | None = None
    shard_mapper: ShardMapper = map_in_process
    cohort_hash: str | None = None
    train_attributes: list[dict] | None = None
    atlas: dict[str, Any] | None = None
    tissue_consensus: np.ndarray | None = None
    reference_labels: np.ndarray | None = None
    tissue_names: dict[int, str] | None = None
    paired: bool = True
    previous: VolumeSet | None = None
    reference_previous: VolumeSet | None = None
    items: list[dict] | None = None
    reports: list[str] | None = None
    report_attributes: list[dict] | None = None
    captions: list[str] | None = None
    floor_captions: list[str] | None = None
    floor_attributes: list[dict] | None = None
    describe: Callable[[str, str], tuple[list[str], list[dict]]] | None = None
    embed_text: Callable[[list[str]], np.ndarray] | None = None

    def __post_init__(self) -> None:
        for name in SET_NAMES:
            v = getattr(self, name)
            if v is not None:
                setattr(self, name, as_volume_set(v))

    @property
    def n(self) -> int:
        return len(self.generated)

    def volume_set(self, name: str) -> VolumeSet:
        """The named set (``generated``, ``reference``, ``floor`` or ``train``)."""
        if name not in SET_NAMES:
            raise KeyError(f"no volume set {name!r}; the sets are {SET_NAMES}")
        v = getattr(self, name)
        if v is None:
            raise KeyError(f"volume set {name!r} was not provided (a metric needing it declares Input.TRAIN)")
        return v

    def map(self, fn: Callable, *names: str):
        """``fn`` applied to aligned shards of the named sets, results concatenated along axis 0.

        ``fn(shard_of_set_1, shard_of_set_2, ...)`` gets float32 ``(n_k, 1, D, H, W)`` arrays and
        returns an array (or a dict / tuple of arrays) with one row per volume. The runner may run
        the shards on other processes, so ``fn`` must be picklable (module-level functions,
        ``functools.partial``; cloudpickle also takes closures) and must not depend on the shard size.
        """
        sets = [self.volume_set(n) for n in names]
        check_aligned(sets)
        return concat_results(self.shard_mapper(fn, sets))

    def take(self, name: str, indices) -> np.ndarray:
        """Volumes ``indices`` of the named set, ``(len(indices), 1, D, H, W)`` float32."""
        return self.volume_set(name).take(indices)


#: How a value ranks: ``higher`` / ``lower`` is better, or ``target``: closest to the real-vs-real value
#: (the floor) is best — e.g. diversity, where both too little and too much are wrong.
DIRECTIONS = ("higher", "lower", "target")


@dataclass
class MetricResult:
    """One number with its evidence.

    ``direction`` (default: from ``higher_is_better``) and ``axis`` (default: the metric family's) say
    how the value ranks and what it measures; ``floor_ci`` is the bootstrap interval of ``floor``.
    """

    value: float
    higher_is_better: bool
    n: int
    ci_low: float | None = None
    ci_high: float | None = None
    floor: float | None = None
    warnings: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)  # config used, per-sample values, ...
    direction: str | None = None
    axis: str | None = None
    floor_ci: list[float] | None = None

    def __post_init__(self) -> None:
        if self.direction is not None and self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {self.direction!r}")
        if self.axis is not None and self.axis not in AXES:
            raise ValueError(f"axis must be one of {AXES}, got {self.axis!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("value", "ci_low", "ci_high", "floor"):
            if d[k] is not None:
                d[k] = float(d[k])
        if d["direction"] is None:
            d["direction"] = "higher" if self.higher_is_better else "lower"
        if d["floor_ci"] is None and isinstance(self.details.get("floor_ci"), (list, tuple)):
            d["floor_ci"] = list(self.details["floor_ci"])
        if d["floor_ci"] is not None:
            d["floor_ci"] = [None if v is None else float(v) for v in d["floor_ci"]]
        return d


class Input(str, Enum):
    """An input a metric declares in :attr:`Metric.inputs`; the runner fills the matching
    :class:`EvalSets` fields only for metrics that ask."""

    #: the training split: ``sets.train`` (volumes) and ``sets.train_attributes``
    TRAIN = "train"
    #: ``sets.atlas``: tissue priors and structure labels on the suite grid
    ATLAS = "atlas"
    #: ``sets.tissue_consensus``: the reference subjects' majority tissue map (when the cohort has labels)
    TISSUE_LABELS = "tissue_labels"
    #: ``reference[i]`` is the real volume of prompt ``i`` (suite prompts, not the user's own)
    PAIRED_REFERENCE = "paired_reference"
    #: a follow-up run: ``sets.previous``, ``sets.reference_previous`` and ``sets.items``
    FOLLOW_UP = "follow_up"
    #: a report run: ``sets.reports``, ``report_attributes``, ``captions``, ``floor_captions``, ``floor_attributes``
    REPORTS = "reports"
    #: ``sets.describe``: a captioner's reports of a volume set (round-trip conformance)
    DESCRIBE = "describe"
    #: ``sets.embed_text``: the sentence encoder (MiniLM by default)
    TEXT_ENCODER = "text_encoder"


class Metric:
    """Base class of metric families. Subclasses set ``name``, ``higher_is_better`` and implement
    :meth:`compute`; ``config()`` returns what goes into the record (every choice that changes the
    number)."""

    name: ClassVar[str] = "metric"
    higher_is_better: ClassVar[bool] = False
    description: ClassVar[str] = ""
    axis: ClassVar[str] = "realism"  # one of AXES; sub-results may differ (see axis_of)
    sub_axes: ClassVar[dict[str, str]] = {}  # sub-result key -> axis, where it differs from ``axis``
    #: What the metric needs beyond the generated, reference and floor sets: the runner provides
    #: exactly these (and skips, with a reason, a metric whose inputs the run cannot provide).
    inputs: ClassVar[frozenset[Input]] = frozenset()

    def compute(self, sets: EvalSets, *, seed: int) -> MetricResult | dict[str, MetricResult]:
        raise NotImplementedError

    def config(self) -> dict:
        return {}

    def axis_of(self, sub: str) -> str:
        """The axis of sub-result ``sub`` (``""`` for a single result)."""
        return self.sub_axes.get(sub, self.axis)

    def extractors(self) -> list[str]:
        """Feature extractors this metric asks the runner for (so it can report their fingerprints)."""
        return []

    def captioners(self) -> list[str]:
        """Captioners this metric asks the runner for through ``sets.describe`` (checked before any work)."""
        return []


def get_features(sets: EvalSets, extractor: str, set_name: str) -> np.ndarray:
    """``sets.features(extractor, set_name)`` as a checked float64 ``(N, F)`` matrix.

    Raises:
        ValueError: the runner could not provide the features, or they are malformed.
    """
    from metrics.functional.neighbours import as_features

    try:
        feats = sets.features(extractor, set_name)
    except Exception as e:  # the runner's error type is not part of the contract
        raise ValueError(f"could not get {extractor!r} features of the {set_name!r} set ({type(e).__name__}: {e}); "
                         f"check that extractor {extractor!r} is registered and the {set_name!r} set exists") from e
    return as_features(feats, f"{extractor} features of {set_name!r}")


def check_dims(extractor: str, **arrays: np.ndarray) -> int:
    """The common feature dimension of several ``(N, F)`` sets (an error when they differ)."""
    dims = {k: v.shape[1] for k, v in arrays.items()}
    if len(set(dims.values())) != 1:
        raise ValueError(f"extractor {extractor!r} returned different feature dimensions per set: {dims}")
    return next(iter(dims.values()))


class FeatureMetric(Metric):
    """A metric over the features of one extractor (``self.extractor``)."""

    extractor: str

    def extractors(self) -> list[str]:
        return [self.extractor]

    def feature_sets(self, sets: EvalSets, *names: str) -> tuple:
        """``(features of each named set ..., common dimension)``."""
        feats = {n: get_features(sets, self.extractor, n) for n in names}
        return (*feats.values(), check_dims(self.extractor, **feats))


def small_n_warning(n: int, dim: int, what: str) -> list[str]:
    if n < dim:
        msg = (f"{what}: N={n} is below the feature dimension {dim}; covariances are rank-deficient "
               "and the value is biased upwards — compare only at equal N, or use the FD-infinity variant")
        log.warning(msg)
        return [msg]
    return []
