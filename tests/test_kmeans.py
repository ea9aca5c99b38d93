import numpy as np
import pytest

from prismatic.kmeans import Clustering, assign, num_clusters, spherical_kmeans


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
