import numpy as np
import pytest
import torch

import prismatic.synthesis.kmeans as kmeans
from prismatic.synthesis.kmeans import (
    AUTO_BF16_MIN_WORK,
    Clustering,
    assign,
    num_clusters,
    resolve_backend,
    spherical_kmeans,
)
from prismatic.synthesis.kmeans_bf16 import _assign_all_bf16, _lloyd_bf16, bf16_margin


def _unit(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def _planted(n_per=(30, 20, 25, 15), d=32, noise=0.05, seed=0):
    """Rows scattered around 4 orthogonal directions; returns (features, true labels)."""
    rng = np.random.default_rng(seed)
    directions = np.eye(d)[: len(n_per)]
    truth = np.repeat(np.arange(len(n_per)), n_per)
    x = directions[truth] + noise * rng.normal(size=(truth.size, d))
    perm = rng.permutation(truth.size)
    return _unit(x[perm]).astype(np.float32), truth[perm]


def _same_partition(a, b):
    """Labels agree up to renaming (adjusted Rand index 1): the contingency table is a permutation."""
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


@pytest.mark.parametrize(("pool", "ratio", "k"), [
    (1000, 0.1, 100), (1000, 0.01, 10), (5, 0.01, 1), (7, 2.0, 7), (25, 0.1, 2), (35, 0.1, 4), (1, 0.1, 1),
])
def test_num_clusters(pool, ratio, k):
    assert num_clusters(pool, ratio) == k


def test_num_clusters_rejects_bad_input():
    with pytest.raises(ValueError, match="pool_size"):
        num_clusters(0, 0.1)
    with pytest.raises(ValueError, match="ratio"):
        num_clusters(10, 0.0)


@pytest.mark.parametrize("init", ["random", "kmeans++", "afk-mc2"])
def test_recovers_planted_clusters(init):
    x, truth = _planted()
    # A single random start sometimes merges two blobs and splits a third (seed 3 does, with
    # init="random"); the best of 5 restarts recovers the planted partition for every seed.
    for seed in range(10):
        result = spherical_kmeans(x, 4, seed=seed, init=init, restarts=5)
        assert _same_partition(result.labels, truth), seed
        assert sorted(result.sizes.tolist()) == [15, 20, 25, 30]
        assert result.mean_similarity > 0.9


def test_single_random_start_can_miss_planted_clusters():
    # Documents the paper-default behaviour (faiss random init, one run) that `restarts` fixes.
    x, truth = _planted()
    found = [_same_partition(spherical_kmeans(x, 4, seed=seed).labels, truth) for seed in range(10)]
    assert found[0] and not all(found)


def test_result_invariants():
    x, _ = _planted(seed=1)
    result = spherical_kmeans(x * 7.5, 6, seed=3)  # rows need not be unit: normalized inside
    assert isinstance(result, Clustering)
    assert result.centroids.shape == (6, 32) and result.k == 6 and result.dim == 32
    np.testing.assert_allclose(np.linalg.norm(result.centroids, axis=1), 1.0, atol=1e-5)
    assert result.labels.dtype == np.int64 and result.sizes.dtype == np.int64
    np.testing.assert_array_equal(result.sizes, np.bincount(result.labels, minlength=6))
    assert result.sizes.sum() == x.shape[0]
    expected = np.einsum("ij,ij->i", x, result.centroids[result.labels])
    np.testing.assert_allclose(result.similarity, expected, atol=1e-5)
    assert result.mean_similarity == pytest.approx(float(expected.mean()), abs=1e-6)
    # The labels are the nearest-centroid assignment: assigning the pool again reproduces them.
    labels, cosine = assign(x, result.centroids)
    np.testing.assert_array_equal(labels, result.labels)
    np.testing.assert_allclose(cosine, result.similarity, atol=1e-6)


def test_deterministic_for_a_seed():
    x = _unit(np.random.default_rng(2).normal(size=(300, 16))).astype(np.float32)
    a = spherical_kmeans(x, 12, seed=7)
    b = spherical_kmeans(x, 12, seed=7)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    assert a.mean_similarity == b.mean_similarity
    # and the seed matters (unstructured data: different starts end in different local optima)
    c = spherical_kmeans(x, 12, seed=8)
    assert not np.array_equal(a.labels, c.labels)


@pytest.mark.parametrize("k", [1, 17, 19, 20])
def test_no_empty_clusters_when_k_is_close_to_n(k):
    x = _unit(np.random.default_rng(3).normal(size=(20, 8)))
    result = spherical_kmeans(x, k, seed=0)
    assert result.k == k  # 20 distinct rows: every one of the k clusters can be kept
    assert result.sizes.min() >= 1 and result.sizes.sum() == 20
    if k == 20:
        np.testing.assert_array_equal(np.sort(result.labels), np.arange(20))


def test_fewer_distinct_rows_than_k_drops_clusters():
    base = _unit(np.random.default_rng(4).normal(size=(3, 8)))
    x = np.repeat(base, 4, axis=0)  # 12 rows, 3 directions
    result = spherical_kmeans(x, 8, seed=0)
    assert result.k == 3
    assert sorted(result.sizes.tolist()) == [4, 4, 4]
    assert set(result.labels.tolist()) == {0, 1, 2}
    np.testing.assert_allclose(result.similarity, 1.0, atol=1e-5)


def test_reseeding_keeps_k_with_duplicates():
    # 6 distinct directions, one repeated many times; k = 6 must come out as 6 singletons-or-more.
    rng = np.random.default_rng(5)
    base = _unit(rng.normal(size=(6, 8)))
    x = np.concatenate([np.repeat(base[:1], 30, axis=0), base[1:]])
    for seed in range(5):
        result = spherical_kmeans(x, 6, seed=seed)
        assert result.k == 6
        assert sorted(result.sizes.tolist()) == [1, 1, 1, 1, 1, 30]


def test_single_row():
    result = spherical_kmeans(np.array([[3.0, 4.0]]), 1)
    np.testing.assert_allclose(result.centroids, [[0.6, 0.8]], atol=1e-6)
    assert result.labels.tolist() == [0] and result.sizes.tolist() == [1]


def test_objective_beats_random_centroids():
    x = _unit(np.random.default_rng(6).normal(size=(400, 24))).astype(np.float32)
    result = spherical_kmeans(x, 10, seed=1)
    rng = np.random.default_rng(7)
    for _ in range(20):
        rows = x[rng.choice(400, size=10, replace=False)]  # k-means' own kind of start
        directions = rng.normal(size=(10, 24))
        for centroids in (rows, directions):
            assert result.mean_similarity >= assign(x, centroids)[1].mean()


def test_assign_equals_brute_force_in_odd_chunks():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(1001, 16)) * rng.uniform(0.5, 3, size=(1001, 1))
    c = rng.normal(size=(13, 16))
    scores = _unit(x) @ _unit(c).T
    for chunk in (1, 7, 333, 5000, None):
        labels, cosine = assign(x, c, chunk_rows=chunk)
        np.testing.assert_array_equal(labels, scores.argmax(axis=1))
        np.testing.assert_allclose(cosine, scores.max(axis=1), atol=1e-12)
    labels32, cosine32 = assign(x.astype(np.float32), c.astype(np.float32), chunk_rows=7)
    assert cosine32.dtype == np.float32
    np.testing.assert_array_equal(labels32, scores.argmax(axis=1))
    np.testing.assert_allclose(cosine32, scores.max(axis=1), atol=1e-5)


def test_assign_ties_go_to_the_lowest_centroid():
    c = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    labels, _ = assign(np.array([[1.0, 1.0], [2.0, 0.0]]), c, chunk_rows=1)
    assert labels.tolist() == [0, 0]


def test_bad_input_is_refused():
    x = _unit(np.random.default_rng(9).normal(size=(5, 4)))
    with pytest.raises(ValueError, match="k must be between 1 and the number of rows"):
        spherical_kmeans(x, 6)
    with pytest.raises(ValueError, match="k must be"):
        spherical_kmeans(x, 0)
    with pytest.raises(ValueError, match="all zeros"):
        spherical_kmeans(np.vstack([x, np.zeros(4)]), 2)
    with pytest.raises(ValueError, match="NaN"):
        spherical_kmeans(np.vstack([x, [np.nan, 0, 0, 1]]), 2)
    with pytest.raises(ValueError, match="dimension"):
        assign(x, np.ones((2, 3)))
    with pytest.raises(ValueError, match="init"):
        spherical_kmeans(x, 2, init="k-means||")
    with pytest.raises(ValueError, match="restarts"):
        spherical_kmeans(x, 2, restarts=0)
    with pytest.raises(ValueError, match="2-D"):
        assign(np.ones(4), np.ones((2, 4)))


def test_faiss_prints_nothing(capfd):
    x = _unit(np.random.default_rng(10).normal(size=(50, 8))).astype(np.float32)
    spherical_kmeans(x, 40, seed=0)  # far fewer than faiss's default 39 rows per centroid
    spherical_kmeans(np.repeat(x[:2], 10, axis=0), 5, seed=0)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


# --- backends: "bf16" (torch, exact labels from bf16 blocks + Hamerly bounds), "faiss", "auto" ---

def _clustered(n, d, k, noise=1.0, seed=0):
    """n unit rows around k seeded random unit centres (cosine to their centre ≈ 1/√(1 + noise²))."""
    rng = np.random.default_rng(seed)
    centres = _unit(rng.standard_normal((k, d)))
    x = centres[rng.integers(k, size=n)] + noise * rng.standard_normal((n, d)) / np.sqrt(d)
    return _unit(x).astype(np.float32)


def _reference_lloyd(x, k, iterations, seed):
    """Plain float64 spherical Lloyd from the bf16 backend's documented start (rows drawn by
    default_rng(seed).choice(n, k, replace=False)); an empty cluster keeps its centroid. Returns the
    labels of one more assignment against the final centroids, and those centroids."""
    x = x.astype(np.float64)
    centroids = x[np.random.default_rng(seed).choice(x.shape[0], size=k, replace=False)]
    for _ in range(iterations):
        labels = np.argmax(x @ centroids.T, axis=1)
        sums = np.zeros_like(centroids)
        np.add.at(sums, labels, x)
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        centroids = np.where(norms > 0, sums / np.where(norms > 0, norms, 1), centroids)
    return np.argmax(x @ centroids.T, axis=1), centroids


def _argmax_where_decided(x, centroids):
    """float64 argmax (ties: lowest index), the gap to the runner-up, and a mask of the rows float32
    can decide (gap ≥ 1e-5, or an exact tie of identical centroids)."""
    scores = x.astype(np.float64) @ centroids.astype(np.float64).T
    ordered = np.sort(scores, axis=1)
    gap = ordered[:, -1] - ordered[:, -2]
    return np.argmax(scores, axis=1), gap, (gap >= 1e-5) | (gap == 0)


def test_bf16_entries_are_within_the_margin():
    assert bf16_margin(1024) == bf16_margin(2**14) == 2.0**-6 < bf16_margin(2**15)
    rng = np.random.default_rng(11)
    for d in (16, 1024):
        x = _unit(rng.standard_normal((300, d)) + 3 * rng.standard_normal(d))  # large cosines, too
        c = _unit(rng.standard_normal((200, d)) + 3 * rng.standard_normal(d))
        x32, c32 = x.astype(np.float32), c.astype(np.float32)
        block = (torch.from_numpy(x32).bfloat16() @ torch.from_numpy(c32).bfloat16().T).double().numpy()
        assert np.abs(block - x32.astype(np.float64) @ c32.astype(np.float64).T).max() <= bf16_margin(d)


def test_bf16_assignment_is_the_exact_argmax_with_near_ties():
    rng = np.random.default_rng(12)
    d = 64
    spread = _unit(rng.standard_normal((40, d)))
    crowd = _unit(spread[0] + 1e-3 * rng.standard_normal((40, d)))  # 40 centroids within 2M of each other
    centroids = np.concatenate([spread, crowd, spread[5:6]]).astype(np.float32)  # row 80 duplicates row 5
    pairs = rng.integers(40, size=(300, 2))
    t = rng.choice([1e-2, 3e-3, 1e-3, 3e-4, -1e-3, -1e-2], size=(300, 1))
    between = spread[pairs[:, 0]] * (1 + t) + spread[pairs[:, 1]] * (1 - t)  # near-ties of two centroids
    rows = _unit(np.concatenate([between, crowd + 1e-3 * rng.standard_normal((40, d)), spread,
                                 rng.standard_normal((100, d))])).astype(np.float32)
    truth, gap, decided = _argmax_where_decided(rows, centroids)
    assert (gap < 2 * bf16_margin(d)).sum() > 300  # near-ties: pairs, the crowd (> 32 candidates), duplicates
    labels, cosine = _assign_all_bf16(torch.from_numpy(rows), torch.from_numpy(rows).bfloat16(),
                                      torch.from_numpy(centroids))
    assert decided.sum() > 400
    np.testing.assert_array_equal(labels.numpy()[decided], truth[decided])
    assert 80 not in labels.numpy()  # the duplicate of centroid 5 loses every tie to it
    np.testing.assert_allclose(cosine.numpy(), np.einsum("ij,ij->i", rows, centroids[labels.numpy()]), atol=1e-6)


def test_bf16_backend_labels_are_the_argmax_against_its_centroids():
    d = 32
    x = _clustered(600, d, 12, seed=1)
    centres = [x[np.argmax(x @ x[i])] for i in range(6)]
    midpoints = _unit(np.array([a + b for a in centres for b in centres]) +
                      0.02 * np.random.default_rng(13).standard_normal((36, d)))
    x = np.concatenate([x, midpoints.astype(np.float32)])
    result = spherical_kmeans(x, 12, seed=0, backend="bf16")
    truth, gap, decided = _argmax_where_decided(x, result.centroids)
    assert (gap < 2 * bf16_margin(d)).sum() >= 5 and decided.all()
    np.testing.assert_array_equal(result.labels, truth)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bf16_bounds_skip_only_rows_that_keep_their_label(seed):
    x = _clustered(800, 32, 20, seed=seed)
    rows = torch.from_numpy(x)
    start = torch.from_numpy(np.random.default_rng(seed).choice(800, size=20, replace=False))
    with_bounds = _lloyd_bf16(rows, rows.bfloat16(), rows[start], 20)
    every_row = _lloyd_bf16(rows, rows.bfloat16(), rows[start], 20, bounds=False)
    assert torch.equal(with_bounds.labels, every_row.labels)
    assert torch.equal(with_bounds.centroids, every_row.centroids)
    assert with_bounds.scored[0] == 800 and any(0 < s < 800 for s in with_bounds.scored)  # rows were skipped
    assert len(with_bounds.scored) <= 21  # it stops at a fixed point: a step that changes no label


def test_bf16_backend_runs_the_same_lloyd_steps_as_a_float64_reference():
    x = _clustered(600, 32, 12, seed=3)
    for iterations in range(8):
        result = spherical_kmeans(x, 12, iterations=iterations, seed=5, backend="bf16")
        labels, centroids = _reference_lloyd(x, 12, iterations, seed=5)
        assert result.k == 12, iterations  # no empty cluster: nothing re-seeded or dropped
        np.testing.assert_array_equal(result.labels, labels, err_msg=f"after {iterations} iterations")
        np.testing.assert_allclose(result.centroids, centroids, atol=1e-5)


@pytest.mark.parametrize("seed", range(5))
def test_bf16_backend_recovers_planted_clusters_at_faiss_objective(seed):
    x, truth = _planted()
    bf16 = spherical_kmeans(x, 4, seed=seed, restarts=5, backend="bf16")
    faiss = spherical_kmeans(x, 4, seed=seed, restarts=5, backend="faiss")
    assert _same_partition(bf16.labels, truth)
    assert sorted(bf16.sizes.tolist()) == [15, 20, 25, 30]
    assert bf16.mean_similarity >= faiss.mean_similarity - 1e-6


def test_bf16_restarts_keep_the_best_of_the_seeded_runs():
    x = _unit(np.random.default_rng(14).normal(size=(300, 16))).astype(np.float32)
    rows, rng = torch.from_numpy(x), np.random.default_rng(7)  # one generator, one draw per restart
    runs = [_lloyd_bf16(rows, rows.bfloat16(), rows[torch.from_numpy(rng.choice(300, size=12, replace=False))], 20)
            for _ in range(4)]
    best = max(runs, key=lambda run: run.objective)
    assert len({run.objective for run in runs}) > 1  # the starts differ
    result = spherical_kmeans(x, 12, seed=7, restarts=4, backend="bf16")
    assert result.k == 12
    np.testing.assert_array_equal(result.labels, best.labels.numpy())
    assert result.mean_similarity == pytest.approx(best.objective, abs=1e-7)  # rows re-normalized inside
    assert spherical_kmeans(x, 12, seed=7, backend="bf16").mean_similarity == pytest.approx(runs[0].objective)


@pytest.mark.parametrize("backend", ["faiss", "bf16"])
def test_backends_share_the_result_contract(backend):
    x, _ = _planted(seed=1)
    result = spherical_kmeans(x * 7.5, 6, seed=3, backend=backend)
    assert result.centroids.dtype == np.float32 and result.labels.dtype == np.int64
    np.testing.assert_allclose(np.linalg.norm(result.centroids, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(result.sizes, np.bincount(result.labels, minlength=result.k))
    labels, cosine = assign(x, result.centroids)
    np.testing.assert_array_equal(labels, result.labels)
    np.testing.assert_allclose(cosine, result.similarity, atol=1e-6)
    again = spherical_kmeans(x * 7.5, 6, seed=3, backend=backend)
    np.testing.assert_array_equal(again.centroids, result.centroids)


def test_bf16_backend_reseeds_and_drops_empty_clusters():
    base = _unit(np.random.default_rng(4).normal(size=(3, 8)))
    result = spherical_kmeans(np.repeat(base, 4, axis=0), 8, seed=0, backend="bf16")
    assert result.k == 3 and sorted(result.sizes.tolist()) == [4, 4, 4]
    np.testing.assert_allclose(result.similarity, 1.0, atol=1e-5)
    rng = np.random.default_rng(5)
    base = _unit(rng.normal(size=(6, 8)))
    x = np.concatenate([np.repeat(base[:1], 30, axis=0), base[1:]])
    for seed in range(5):
        result = spherical_kmeans(x, 6, seed=seed, backend="bf16")
        assert result.k == 6 and sorted(result.sizes.tolist()) == [1, 1, 1, 1, 1, 30]
    for k in (1, 19, 20):
        result = spherical_kmeans(_unit(np.random.default_rng(3).normal(size=(20, 8))), k, backend="bf16")
        assert result.k == k and result.sizes.min() >= 1
    single = spherical_kmeans(np.array([[3.0, 4.0]]), 1, backend="bf16")
    np.testing.assert_allclose(single.centroids, [[0.6, 0.8]], atol=1e-6)


def test_auto_takes_bf16_only_for_large_random_init_problems(monkeypatch):
    monkeypatch.setattr(kmeans, "fast_bf16_matmul", lambda: True)
    assert resolve_backend("auto", 100_000, 10_000, 1024) == "bf16"
    assert resolve_backend("auto", AUTO_BF16_MIN_WORK // 1024, 1, 1024) == "bf16"
    assert resolve_backend("auto", AUTO_BF16_MIN_WORK // 1024 - 1, 1, 1024) == "faiss"
    assert resolve_backend("auto", 100_000, 10_000, 1024, init="kmeans++") == "faiss"
    assert resolve_backend("faiss", 100_000, 10_000, 1024) == "faiss"
    assert resolve_backend("bf16", 10, 2, 4) == "bf16"
    monkeypatch.setattr(kmeans, "fast_bf16_matmul", lambda: False)
    assert resolve_backend("auto", 100_000, 10_000, 1024) == "faiss"
    # at d = 1024 and k = n/10 (the paper code's ratio), auto stays on faiss below ~9,900 rows
    assert 9_800 * 980 * 1024 < AUTO_BF16_MIN_WORK <= 9_900 * 990 * 1024


def test_auto_is_faiss_for_small_pools():
    x = _unit(np.random.default_rng(2).normal(size=(300, 16))).astype(np.float32)
    auto, faiss = spherical_kmeans(x, 12, seed=7), spherical_kmeans(x, 12, seed=7, backend="faiss")
    np.testing.assert_array_equal(auto.centroids, faiss.centroids)


def test_bad_backend_is_refused():
    x = _unit(np.random.default_rng(9).normal(size=(5, 4)))
    with pytest.raises(ValueError, match="expected one of auto, faiss, bf16"):
        spherical_kmeans(x, 2, backend="gpu")
    for init in ("kmeans++", "afk-mc2"):
        with pytest.raises(ValueError, match="backend='faiss'"):
            spherical_kmeans(x, 2, init=init, backend="bf16")
