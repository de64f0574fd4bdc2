"""KID / MMD², PRDC and nearest neighbours against independent reference computations."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist, pdist

from metrics.functional.kernel import (gaussian_mmd2, kid, median_heuristic_bandwidth, mmd2_from_kernel_indices,
                                       mmd2_unbiased_from_kernels, polynomial_kernel, polynomial_mmd2)
from metrics.functional.neighbours import kth_nn_distance, nearest_neighbours, pairwise_distances
from metrics.functional.prdc import prdc


def _t(a):
    return torch.from_numpy(np.asarray(a, dtype=np.float64))


# ----------------------------------------------------------------------------------------- KID / MMD


def test_polynomial_mmd_matches_torchmetrics():
    from torchmetrics.image.kid import poly_mmd

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 32))
    y = rng.normal(size=(60, 32)) * 1.1 + 0.2
    ours = polynomial_mmd2(x, y)
    ref = float(poly_mmd(_t(x), _t(y), degree=3, gamma=None, coef=1.0))
    assert ours == pytest.approx(ref, rel=1e-10)
    assert ours > 0


def test_kid_subsets_match_torchmetrics():
    from torchmetrics.image.kid import poly_mmd

    rng = np.random.default_rng(1)
    x = rng.normal(size=(80, 16))
    y = rng.normal(size=(70, 16)) + 0.3
    res = kid(x, y, subset_size=30, n_subsets=12, seed=5)
    # the same subsets (drawn as kid() documents: x then y, without replacement) through torchmetrics
    r = np.random.default_rng(5)
    vals = []
    for _ in range(12):
        ix = r.choice(80, 30, replace=False)
        iy = r.choice(70, 30, replace=False)
        vals.append(float(poly_mmd(_t(x[ix]), _t(y[iy]))))
    np.testing.assert_allclose(res.values, vals, rtol=1e-10)
    assert res.mean == pytest.approx(np.mean(vals), rel=1e-10)
    assert res.std == pytest.approx(np.std(vals), rel=1e-10)
    assert res.subset_size == 30
    # subset larger than the sets: clipped, every subset is a whole set, std 0
    full = kid(x[:40], y[:40], subset_size=1000, n_subsets=3)
    assert full.subset_size == 40 and full.std == pytest.approx(0.0, abs=1e-12)
    assert full.mean == pytest.approx(polynomial_mmd2(x[:40], y[:40]), rel=1e-10)


def test_unbiased_mmd_is_zero_in_expectation():
    rng = np.random.default_rng(2)
    vals, biased = [], []
    for _ in range(40):
        x = rng.normal(size=(40, 8))
        y = rng.normal(size=(40, 8))
        vals.append(polynomial_mmd2(x, y))
        kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
        biased.append(kxx.mean() + kyy.mean() - 2 * kxy.mean())  # V-statistic, for contrast
    vals = np.asarray(vals)
    assert (vals < 0).any()  # single unbiased estimates can be negative
    assert abs(vals.mean()) < 3 * vals.std(ddof=1) / np.sqrt(vals.size)
    assert np.mean(biased) > 5 * vals.std(ddof=1) / np.sqrt(vals.size)  # the biased one is clearly > 0


def test_gaussian_mmd_against_explicit_sums():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(25, 5))
    y = rng.normal(size=(30, 5)) + 0.5
    pooled = np.concatenate([x, y])
    bw = float(np.median(pdist(pooled)))
    assert median_heuristic_bandwidth(x, y) == pytest.approx(bw, rel=1e-12)
    k = lambda a, b: np.exp(-cdist(a, b, "sqeuclidean") / (2 * bw * bw))  # noqa: E731
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    n, m = len(x), len(y)
    ref = (sum(kxx[i, j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
           + sum(kyy[i, j] for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
           - 2 * kxy.sum() / (n * m))
    assert gaussian_mmd2(x, y) == pytest.approx(ref, rel=1e-10)
    assert gaussian_mmd2(x, y, bandwidth=2.0) != pytest.approx(ref, rel=1e-3)
    # same distribution: near zero; shifted: clearly positive
    same = [gaussian_mmd2(rng.normal(size=(40, 5)), rng.normal(size=(40, 5))) for _ in range(10)]
    assert abs(np.mean(same)) < 0.01 and ref > 0.05


def test_kernel_indices_deduplicates_bootstrap_copies():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(10, 3))
    y = rng.normal(size=(12, 3))
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    full = mmd2_unbiased_from_kernels(kxx, kyy, kxy)
    assert mmd2_from_kernel_indices(kxx, kyy, kxy, np.arange(10), np.arange(12)) == pytest.approx(full, rel=1e-12)
    a = np.array([0, 0, 1, 2, 2, 2, 5, 7, 9, 9])
    b = rng.integers(0, 12, 12)

    def within(k, idx):
        pairs = [(p, q) for p in range(len(idx)) for q in range(len(idx)) if idx[p] != idx[q]]
        return np.mean([k[idx[p], idx[q]] for p, q in pairs])

    ref = within(kxx, a) + within(kyy, b) - 2 * np.mean([kxy[i, j] for i in a for j in b])
    assert mmd2_from_kernel_indices(kxx, kyy, kxy, a, b) == pytest.approx(ref, rel=1e-12)


# ------------------------------------------------------------------------------------------------ PRDC


def prdc_reference(real, fake, k):
    """Naeem et al.'s reference algorithm (clovaai/generative-evaluation-prdc), re-implemented with
    scipy: radius = (k+1)-th smallest distance including the self-distance 0."""
    def kth_incl_self(x):
        d = cdist(x, x)
        return np.partition(d, k, axis=-1)[:, : k + 1].max(-1)

    rr, rf = kth_incl_self(real), kth_incl_self(fake)
    d = cdist(real, fake)
    return {
        "precision": (d < rr[:, None]).any(axis=0).mean(),
        "recall": (d < rf[None, :]).any(axis=1).mean(),
        "density": (1.0 / k) * (d < rr[:, None]).sum(axis=0).mean(),
        "coverage": (d.min(axis=1) < rr).mean(),
    }


@pytest.mark.parametrize("k", [3, 5])
def test_prdc_matches_reference_algorithm(k):
    rng = np.random.default_rng(10)
    real = rng.normal(size=(90, 12))
    fake = rng.normal(size=(70, 12)) * 1.2 + 0.3
    ours = prdc(real, fake, k=k)
    ref = prdc_reference(real, fake, k)
    for key in ref:
        assert ours[key] == pytest.approx(ref[key], abs=1e-12), key
    assert 0 < ours["precision"] < 1 and 0 < ours["coverage"] < 1


def test_prdc_identical_sets():
    x = np.random.default_rng(11).normal(size=(60, 10))
    res = prdc(x, x.copy(), k=5)
    # each real ball holds its own copy plus k-1 strictly nearer neighbours: density = 1 exactly, on
    # every processor (a real and a fake copy of a point have bit-identical distances)
    assert res == {"precision": 1.0, "recall": 1.0, "density": 1.0, "coverage": 1.0}
    perm = np.random.default_rng(0).permutation(60)
    assert prdc(x, x[perm], k=5) == res and prdc(x[perm], x, k=5) == res


def prdc_exact_integer(real: np.ndarray, fake: np.ndarray, k: int) -> dict[str, float]:
    """PRDC of integer-valued features in exact integer arithmetic (squared distances, no rounding)."""
    real, fake = real.astype(np.int64), fake.astype(np.int64)

    def sq(a, b):
        return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)

    def radii(a):
        d = sq(a, a)
        np.fill_diagonal(d, np.iinfo(np.int64).max)
        return np.sort(d, axis=1)[:, k - 1]

    rr, rf, d = radii(real), radii(fake), sq(real, fake)
    inside = d < rr[:, None]
    return {"precision": float(inside.any(axis=0).mean()), "recall": float((d < rf[None, :]).any(axis=1).mean()),
            "density": float(inside.sum(axis=0).mean() / k), "coverage": float((d.min(axis=1) < rr).mean())}


def test_prdc_identical_sets_with_exact_ties():
    """Integer features and duplicated rows: many distances tie exactly, also at the ball radii."""
    rng = np.random.default_rng(14)
    # every point twice (k a multiple of the multiplicity): the k-th neighbour's copy ties with it, and
    # density is still exactly 1 — distinct points far apart enough that no other distances tie
    base = rng.integers(0, 200, size=(30, 3)).astype(np.float64)
    x = np.repeat(base, 2, axis=0)
    for k in (2, 4):
        assert prdc_exact_integer(x, x, k)["density"] == 1.0
        assert prdc(x, x.copy(), k=k) == {"precision": 1.0, "recall": 1.0, "density": 1.0, "coverage": 1.0}
    # the same with continuous features far from 0 (where the Gram expansion cancels and rounds)
    x = np.repeat(rng.normal(size=(30, 32)) + 100.0, 2, axis=0)
    for k in (2, 4):
        assert prdc(x, x.copy(), k=k) == {"precision": 1.0, "recall": 1.0, "density": 1.0, "coverage": 1.0}
    # small integer range: ties everywhere; the result is the exact-arithmetic one, ties decided alike
    x = np.concatenate([rng.integers(0, 4, size=(50, 4)), rng.integers(0, 4, size=(10, 4))[[0, 0, 1, 2, 3]]])
    x = x.astype(np.float64)
    for k in (3, 5):
        res = prdc(x, x.copy(), k=k)
        assert res == prdc_exact_integer(x, x, k), k
        assert res["precision"] == res["recall"] == res["coverage"] == 1.0
        assert res["density"] < 1.0  # ties at the radius: the strict ball holds fewer than k points
    y = rng.integers(0, 4, size=(40, 4)).astype(np.float64)
    assert prdc(x, y, k=5) == prdc_exact_integer(x, y, 5)


def test_prdc_disjoint_clusters():
    rng = np.random.default_rng(12)
    real = rng.normal(size=(50, 6))
    fake = rng.normal(size=(50, 6)) + 100.0
    assert prdc(real, fake, k=5) == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_prdc_half_the_modes():
    rng = np.random.default_rng(13)
    centres = np.eye(8)[:4] * 50.0  # four far-apart modes
    real = np.concatenate([c + rng.normal(size=(50, 8)) for c in centres])
    fake = np.concatenate([c + rng.normal(size=(100, 8)) for c in centres[:2]])  # covers modes 0, 1 only
    res = prdc(real, fake, k=5)
    assert res["coverage"] == pytest.approx(0.5, abs=0.05)
    assert res["recall"] == pytest.approx(0.5, abs=0.05)
    assert res["precision"] > 0.9
    assert res["coverage"] <= 0.5  # no real item of modes 2, 3 can be covered


# ------------------------------------------------------------------------------------ nearest neighbours


def test_nearest_neighbours_brute_force():
    rng = np.random.default_rng(20)
    q = rng.normal(size=(30, 7))
    r = rng.normal(size=(50, 7))
    d, i = nearest_neighbours(q, r)
    full = cdist(q, r)
    np.testing.assert_array_equal(i, full.argmin(1))
    np.testing.assert_allclose(d, full.min(1), rtol=1e-12)
    dk, ik = nearest_neighbours(q, r, k=4)
    np.testing.assert_array_equal(ik, np.argsort(full, axis=1)[:, :4])
    np.testing.assert_allclose(dk, np.sort(full, axis=1)[:, :4], rtol=1e-12)
    np.testing.assert_allclose(pairwise_distances(q, r), full, rtol=1e-9, atol=1e-12)


def test_nearest_neighbours_exclude_self_and_exact_copies():
    rng = np.random.default_rng(21)
    x = rng.normal(size=(40, 64)) * 100.0
    d, i = nearest_neighbours(x, x, exclude_self=True)
    full = cdist(x, x)
    np.fill_diagonal(full, np.inf)
    np.testing.assert_array_equal(i, full.argmin(1))
    assert (i != np.arange(40)).all()
    # near-copies: distances far below sqrt(eps)*|x| are still resolved exactly
    near = x + rng.normal(size=x.shape) * 1e-9
    d, i = nearest_neighbours(near, x)
    np.testing.assert_array_equal(i, np.arange(40))
    np.testing.assert_allclose(d, np.linalg.norm(near - x, axis=1), rtol=1e-12)
    np.testing.assert_array_equal(pairwise_distances(near, x).diagonal(), d)  # no Gram-expansion cancellation
    np.testing.assert_allclose(kth_nn_distance(x, 3), np.sort(full, axis=1)[:, 2], rtol=1e-9)
    with pytest.raises(ValueError, match="same set"):
        nearest_neighbours(x, x[:10], exclude_self=True)
    with pytest.raises(ValueError, match="k="):
        nearest_neighbours(x[:3], x[:3], k=3, exclude_self=True)


def test_nearest_neighbours_ties_go_to_the_lowest_index():
    rng = np.random.default_rng(22)
    ref = rng.normal(size=(10, 5))
    ref[7] = ref[3]  # an exact duplicate
    d, i = nearest_neighbours(ref[[3, 7]], ref)
    np.testing.assert_array_equal(i, [3, 3])
    assert (d == 0).all()
    d, i = nearest_neighbours(ref, ref, k=2, exclude_self=True)
    assert i[3, 0] == 7 and i[7, 0] == 3 and d[3, 0] == 0 and d[7, 0] == 0


# ------------------------------------------------------------------------- distances: one routine


@pytest.mark.parametrize("f", [1, 3, 64, 2048])
def test_distance_depends_only_on_the_two_rows(f):
    """d(x_i, y_j) is the same float, bit for bit, whatever sets the rows sit in."""
    rng = np.random.default_rng(30 + f)
    x, y = rng.normal(size=(5, f)) * 37.0, rng.normal(size=(7, f)) * 37.0 + 1.0
    d = pairwise_distances(x, y)
    # the same rows at other positions of larger sets
    big_x, big_y = rng.normal(size=(50, f)), rng.normal(size=(61, f))
    px, py = rng.choice(50, 5, replace=False), rng.choice(61, 7, replace=False)
    big_x[px], big_y[py] = x, y
    np.testing.assert_array_equal(pairwise_distances(big_x, big_y)[np.ix_(px, py)], d)
    both = np.concatenate([big_x, big_y])  # within one set (the symmetric, triangle-only path)
    np.testing.assert_array_equal(pairwise_distances(both)[np.ix_(px, 50 + py)], d)
    np.testing.assert_array_equal(pairwise_distances(y, x), d.T)
    # each entry is the plain difference-vector formula of its two rows
    ref = np.array([[np.sqrt(np.sum(np.square(a - b))) for b in y] for a in x])
    np.testing.assert_array_equal(d, ref)
    np.testing.assert_allclose(d, cdist(x, y), rtol=1e-13)
    # a row's distance to itself (or to its copy in another set) is exactly 0
    assert (np.diag(pairwise_distances(big_x)) == 0).all()
    assert (np.diag(pairwise_distances(big_x, big_x.copy())) == 0).all()
    np.testing.assert_array_equal(pairwise_distances(big_x), pairwise_distances(big_x, big_x.copy()))


_DIGEST = """
import hashlib, numpy as np
from metrics.functional.neighbours import pairwise_distances
from metrics.functional.prdc import prdc
rng = np.random.default_rng(0)
x = rng.normal(size=(120, 96)) * 10.0
y = np.concatenate([x[:40], rng.normal(size=(60, 96)) * 10.0])
d = np.concatenate([pairwise_distances(x).ravel(), pairwise_distances(x, y).ravel()])
print(hashlib.sha256(d.tobytes()).hexdigest(), sorted(prdc(x, y, k=5).items()), prdc(x, x.copy(), k=5)["density"])
"""


def test_distances_do_not_depend_on_the_blas_kernel():
    """The same bits under different OpenBLAS kernels (the Gram expansion rounded differently per kernel)."""
    root = Path(__file__).resolve().parents[1]
    out = set()
    for core in (None, "Haswell", "Sandybridge"):
        env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
        if core:
            env["OPENBLAS_CORETYPE"] = core
        res = subprocess.run([sys.executable, "-c", _DIGEST], cwd=root, env=env, capture_output=True, text=True,
                             timeout=120)
        assert res.returncode == 0, res.stderr
        out.add(res.stdout)
    assert len(out) == 1, out
    assert out.pop().strip().endswith(" 1.0")
