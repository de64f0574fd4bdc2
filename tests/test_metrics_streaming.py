"""Streaming metrics: results do not depend on the shard partition, and no metric holds a whole set.

Every volume metric reads its sets through ``EvalSets.map`` (per-shard functions) or
``EvalSets.take`` (a few volumes). These tests check that

* the result is the same (exactly) for plain arrays, one shard, shards of 3, and per-shard tasks
  that go through ``pickle`` (as on a remote executor);
* a metric never touches a set as a whole (``materialize``, ``np.asarray(set)``, ``set[...]``), and
  the number of volumes it holds at once is bounded by two shards, whatever N;
* the streaming consensus of tissue label maps equals the stacked majority it replaced.
"""

from __future__ import annotations

import math
import pickle
import weakref

import numpy as np
import pytest
from scipy import ndimage

from metrics.base import EvalSets
from metrics.conformance import Conformance
from metrics.consistency import ThroughPlaneConsistency
from metrics.diversity import MSSSIMDiversity
from metrics.functional.histogram import consensus_labels
from metrics.histogram import HistogramDistance
from metrics.ssim import PairedSSIM
from metrics.volumes import ArrayVolumes, VolumeSet, apply_to_shard, check_aligned, map_in_process

SHAPE = (16, 20, 18)
N, M = 7, 12  # prompts, training volumes
MODALITIES = ("T1", "T2", "PD", "FLAIR")


# ------------------------------------------------------------------------------------- data
def _smooth(rng: np.random.Generator, n: int) -> np.ndarray:
    """``(n, 1, *SHAPE)`` float32 smooth random volumes in [0, 1]."""
    v = ndimage.gaussian_filter(rng.standard_normal((n, *SHAPE)), (0, 1.5, 1.5, 1.5))
    lo = v.min(axis=(1, 2, 3), keepdims=True)
    hi = v.max(axis=(1, 2, 3), keepdims=True)
    return ((v - lo) / (hi - lo)).astype(np.float32)[:, None]


def _radius() -> np.ndarray:
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in SHAPE], indexing="ij")
    return np.sqrt(sum(g ** 2 for g in grids))


def _atlas() -> dict:
    """Concentric toy priors with non-empty CSF/GM/WM cores and two 'hippocampi' (47/48)."""
    r = _radius()
    x = np.linspace(-1, 1, SHAPE[0])[:, None, None] * np.ones(SHAPE)
    vent = r < 0.22
    labels = np.zeros(SHAPE, np.int32)
    ring = (r > 0.5) & (r < 0.7)
    labels[ring & (x > 0.2)] = 47
    labels[ring & (x < -0.2)] = 48
    return {"gm": np.clip(1.0 - np.abs(r - 0.75) / 0.15, 0, 1).astype(np.float32),
            "wm": np.clip(1.3 - np.abs(r - 0.45) / 0.2, 0, 1).astype(np.float32),
            "csf": np.where(vent, 1.0, np.clip(1 - np.abs(r - 0.92) / 0.08, 0, 1)).astype(np.float32),
            "ventricles": vent, "labels": labels, "voxel_volume_ml": 0.216}


def _attributes(rng: np.random.Generator, n: int) -> list[dict]:
    vol = {"lateral_ventricles": (5, 40), "hippocampus_left": (2, 5), "hippocampus_right": (2, 5),
           "gm": (500, 800), "wm": (400, 600), "csf": (100, 300), "icv": (1200, 1700)}
    return [{"modality": MODALITIES[i % 4], "sex": "FM"[(i // 2) % 2], "age": float(rng.uniform(20, 80)),
             "volumes": {k: float(rng.uniform(*b)) for k, b in vol.items()}} for i in range(n)]


def _data(n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    ref = _smooth(rng, n)
    gen = np.clip(ref + 0.08 * rng.standard_normal(ref.shape), 0, 1).astype(np.float32)
    labels = rng.integers(0, 4, size=(n, *SHAPE)).astype(np.uint8)
    return {"generated": gen, "reference": ref, "floor": _smooth(rng, n), "train": _smooth(rng, M),
            "mask": _radius() < 0.85, "labels": labels, "attributes": _attributes(rng, n),
            "train_attributes": _attributes(rng, M), "atlas": _atlas()}


@pytest.fixture(scope="module")
def data() -> dict:
    return _data(N)


def make_sets(d: dict, wrap=None, *, shard_mapper=map_in_process, tissue: str = "consensus") -> EvalSets:
    """EvalSets of ``d``; ``wrap(array, name)`` turns each volume array into a set (default: the array)."""
    vols = {k: (d[k] if wrap is None else wrap(d[k], k)) for k in ("generated", "reference", "floor", "train")}
    extra = {"atlas": d["atlas"], "train_attributes": d["train_attributes"], "cohort_hash": "streaming-test"}
    if tissue == "consensus":
        extra["tissue_consensus"] = consensus_labels(iter(d["labels"]))
    elif tissue == "stacked":
        extra["reference_labels"] = d["labels"]
    return EvalSets(generated=vols["generated"], reference=vols["reference"], floor=vols["floor"],
                    brain_mask=d["mask"], features=lambda e, s: None, train=vols["train"],
                    attributes=d["attributes"], voxel_size=6.0, shard_mapper=shard_mapper, **extra)


METRICS = {
    "ssim": lambda: PairedSSIM(),
    "ms_ssim_diversity": lambda: MSSSIMDiversity(max_pairs=12, same_modality=False),
    "ms_ssim_diversity_by_modality": lambda: MSSSIMDiversity(max_pairs=12),
    "histogram": lambda: HistogramDistance(n_boot=20),
    "through_plane": lambda: ThroughPlaneConsistency(n_boot=20),
    "conformance": lambda: Conformance(cache=False, n_boot=20),
}


def _result(metric_key: str, sets: EvalSets) -> dict:
    """The metric's results as plain dicts, NaN replaced by a marker so that ``==`` compares them."""
    out = METRICS[metric_key]().compute(sets, seed=0)
    out = {k: v.to_dict() for k, v in out.items()} if isinstance(out, dict) else out.to_dict()

    def clean(x):
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return "NaN" if isinstance(x, float) and math.isnan(x) else x

    return clean(out)


def pickling_mapper(fn, sets: list) -> list:
    """A shard mapper that sends every task through stdlib ``pickle`` (stricter than Ray's cloudpickle)."""
    return [apply_to_shard(*pickle.loads(pickle.dumps((fn, sets, k)))) for k in range(check_aligned(sets))]


# ------------------------------------------------------------------------------------- partition
@pytest.mark.parametrize("key", list(METRICS))
def test_result_does_not_depend_on_the_shard_partition(data, key):
    plain = _result(key, make_sets(data))
    one_shard = _result(key, make_sets(data, lambda a, _: ArrayVolumes(a, shard_size=max(N, M))))
    shards_of_3 = _result(key, make_sets(data, lambda a, _: ArrayVolumes(a, shard_size=3)))
    pickled = _result(key, make_sets(data, lambda a, _: ArrayVolumes(a, shard_size=3), shard_mapper=pickling_mapper))
    assert one_shard == plain
    assert shards_of_3 == plain
    assert pickled == plain


def test_histogram_prefers_the_consensus_and_accepts_stacked_labels(data):
    consensus = _result("histogram", make_sets(data, tissue="consensus"))
    assert _result("histogram", make_sets(data, tissue="stacked")) == consensus
    assert set(consensus["w1"]["details"]["per_tissue"]) == {"csf", "gm", "wm"}
    both = make_sets(data, tissue="consensus")
    both.reference_labels = np.zeros_like(data["labels"])  # ignored: the consensus wins
    assert _result("histogram", both) == consensus
    none = _result("histogram", make_sets(data, tissue="none"))
    assert "tissue_masks" not in none["w1"]["details"] and "tissue_consensus" in none["w1"]["details"]["per_tissue_note"]
    bad = make_sets(data, tissue="none")
    bad.tissue_consensus = data["labels"]  # stacked maps where one map belongs
    with pytest.raises(ValueError, match="consensus_labels"):
        HistogramDistance(n_boot=2).compute(bad, seed=0)


# ------------------------------------------------------------------------------------- bounded memory
class StreamOnlyVolumes(VolumeSet):
    """A volume set that refuses whole-set access and counts the volumes loaded and alive at once.

    Every shard is a fresh copy; loaded shards and ``take`` results are tracked with weak references,
    so ``max_alive`` is the largest number of this set's volumes a metric held at one time.
    """

    def __init__(self, array: np.ndarray, shard_size: int):
        self._array, self.n, self.spatial = array, int(array.shape[0]), tuple(array.shape[2:])
        self.shard_size = int(shard_size)
        self.alive = self.max_alive = 0

    def _track(self, block: np.ndarray) -> np.ndarray:
        self.alive += len(block)
        self.max_alive = max(self.max_alive, self.alive)
        weakref.finalize(block, self._release, len(block))
        return block

    def _release(self, count: int) -> None:
        self.alive -= count

    def _load(self, start: int, stop: int) -> np.ndarray:
        return self._track(self._array[start:stop].copy())

    def take(self, indices) -> np.ndarray:
        return self._track(super().take(indices))

    def materialize(self) -> np.ndarray:
        raise AssertionError("a metric called materialize(): the whole set in memory")

    def __array__(self, dtype=None, copy=None):
        raise AssertionError("a metric converted a volume set to an array (the whole set in memory)")

    def __getitem__(self, item):
        raise AssertionError("a metric indexed a volume set like an array; use sets.take or sets.map")


@pytest.mark.parametrize("key", list(METRICS))
def test_metrics_hold_at_most_two_shards(key):
    n, shard = 13, 3  # five shards per set: a whole-set access would hold 13 volumes
    d = _data(n, seed=1)
    made: dict[str, StreamOnlyVolumes] = {}

    def wrap(a, name):
        made[name] = StreamOnlyVolumes(a, shard)
        return made[name]

    reference = _result(key, make_sets(d))
    assert _result(key, make_sets(d, wrap)) == reference
    used = {name: s.max_alive for name, s in made.items() if s.max_alive}
    assert used, "the metric read no volume"
    assert all(v <= 2 * shard for v in used.values()), used
    assert all(s.alive == 0 for s in made.values()), "volumes still referenced after compute"


# ------------------------------------------------------------------------------------- consensus
def _stacked_majority(labels: np.ndarray) -> np.ndarray:
    """The majority the histogram metric computed before streaming (stacked maps), kept as the oracle."""
    lab = np.asarray(labels)
    if lab.ndim == 5:
        lab = lab[:, 0]
    lab = lab.astype(np.int64)
    values = np.unique(lab)
    counts = np.stack([(lab == v).sum(0) for v in values])
    return values[np.argmax(counts, axis=0)]


@pytest.mark.parametrize("n", [1, 2, 4, 5])
def test_consensus_labels_streams_the_stacked_majority(n):
    rng = np.random.default_rng(n)
    labs = rng.integers(0, 4, size=(n, 6, 7, 5)).astype(np.uint8)  # 4 labels, few subjects: many ties
    labs[-1, 0, 0, :] = 9  # a label only the last subject has
    expect = _stacked_majority(labs)
    got = consensus_labels(x for x in labs)  # one map at a time
    assert got.dtype == np.int64 and got.shape == labs.shape[1:]
    np.testing.assert_array_equal(got, expect)
    np.testing.assert_array_equal(consensus_labels(labs), expect)
    np.testing.assert_array_equal(consensus_labels(labs[:, None]), expect)  # (N, 1, D, H, W)
    np.testing.assert_array_equal(consensus_labels(iter(labs[:, None])), expect)  # (1, D, H, W) maps
    np.testing.assert_array_equal(consensus_labels(list(labs.astype(np.float32))), expect)  # NIfTI floats


def test_consensus_labels_ties_inputs_and_errors():
    ones, threes = np.ones((2, 3, 4), np.uint8), np.full((2, 3, 4), 3, np.uint8)
    assert (consensus_labels(iter([threes, ones])) == 1).all()  # a tie goes to the smallest label
    assert (consensus_labels(iter([threes, ones, threes])) == 3).all()
    single = np.arange(24).reshape(2, 3, 4)
    np.testing.assert_array_equal(consensus_labels(single), single)  # a (D, H, W) map is the consensus
    with pytest.raises(ValueError, match="no label map"):
        consensus_labels(iter([]))
    with pytest.raises(ValueError, match="the first had"):
        consensus_labels(iter([ones, np.ones((2, 3, 5))]))
    with pytest.raises(ValueError, match="expected"):
        consensus_labels(iter([np.ones((2, 3))]))
