import numpy as np
import polars as pl
import pytest

from prismatic.kmeans import Clustering, spherical_kmeans
from prismatic.selection import SCHEMA, select, select_balanced, select_paper, sparse_threshold

D = 8


def _pool(sizes):
    """A pool clustering with centroid j = e_j and the given cluster sizes (labels as if sorted)."""
    k = len(sizes)
    centroids = np.eye(D, dtype=np.float32)[:k]
    labels = np.repeat(np.arange(k), sizes).astype(np.int64)
    sim = np.ones(labels.size, dtype=np.float32)
    return Clustering(centroids=centroids, labels=labels, sizes=np.asarray(sizes, dtype=np.int64),
                      similarity=sim, mean_similarity=1.0)


def _near(cluster, off=0.0, axis=7):
    """A feature whose nearest centroid is e_cluster, with cosine 1/√(1+off²) (falls as off grows)."""
    v = np.zeros(D, dtype=np.float32)
    v[cluster] = 1.0
    v[axis] = off
    return v


def _rows(df):
    return {r["id"]: (r["cluster"], r["cluster_size_at_decision"], r["kept"]) for r in df.iter_rows(named=True)}


SIZES = [1, 2, 5, 8]  # median 3.5: clusters 0 and 1 are sparse


def test_threshold_is_the_numpy_median():
    assert sparse_threshold(np.array(SIZES)) == 3.5
    assert sparse_threshold(np.array([4, 1, 9])) == 4.0
    with pytest.raises(ValueError):
        sparse_threshold(np.array([]))


def test_paper_rule_hand_computed():
    pool = _pool(SIZES)
    ids = ["a", "b", "c", "d", "e", "f"]
    features = np.stack([
        _near(0, 0.3),
        _near(1, 0.3),
        _near(2, 0.3),
        _near(3, 0.3),
        np.array([0.6, 0, 0.8, 0, 0, 0, 0, 0], dtype=np.float32),  # between e0 and e2, nearer e2
        np.array([0.8, 0, 0, 0.6, 0, 0, 0, 0], dtype=np.float32) * 5,  # nearer e0; scale ignored
    ])
    df = select_paper(ids, features, pool)
    assert df.schema == pl.Schema(SCHEMA)
    assert df["id"].to_list() == ids  # input order, every candidate
    assert df.filter(pl.col("kept"))["id"].to_list() == ["a", "b", "f"]
    assert _rows(df) == {"a": (0, 1, True), "b": (1, 2, True), "c": (2, 5, False), "d": (3, 8, False),
                         "e": (2, 5, False), "f": (0, 1, True)}
    assert set(df["rule"]) == {"paper"}


def test_paper_rule_is_strict_at_the_median():
    pool = _pool([2, 3, 3, 7])  # median 3: size 3 is not sparse
    df = select_paper(["x", "y"], np.stack([_near(0), _near(1)]), pool)
    assert df["kept"].to_list() == [True, False]
    # all sizes equal: nothing is sparse
    assert not select_paper(["x"], _near(1)[None], _pool([4, 4, 4]))["kept"].any()
    # one cluster: nothing is sparse
    assert not select_paper(["x"], _near(0)[None], _pool([5]))["kept"].any()


def test_balanced_stops_at_the_median_while_paper_keeps_all():
    pool = _pool(SIZES)
    ids = [f"c{i}" for i in range(6)]
    rng = np.random.default_rng(0)
    offsets = rng.permutation([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])  # candidate order ≠ fit order
    features = np.stack([_near(0, off) for off in offsets])
    paper = select_paper(ids, features, pool)
    assert paper["kept"].all() and set(paper["cluster_size_at_decision"]) == {1}
    balanced = select_balanced(ids, features, pool)
    assert balanced["id"].to_list() == ids
    # Counts 1, 2, 3 are below 3.5: the three best-fitting candidates are kept, then count 4 stops it.
    best3 = {ids[i] for i in np.argsort(offsets)[:3]}
    assert set(balanced.filter(pl.col("kept"))["id"]) == best3
    by_fit = balanced.with_columns(off=pl.Series(offsets)).sort("off")
    assert by_fit["cluster_size_at_decision"].to_list() == [1, 2, 3, 4, 4, 4]
    assert by_fit["kept"].to_list() == [True, True, True, False, False, False]
    assert set(balanced["rule"]) == {"balanced"}


def test_balanced_spreads_over_sparse_clusters():
    pool = _pool(SIZES)
    ids = ["p0", "p1", "p2", "p3", "q0", "q1", "q2", "r0", "s0"]
    features = np.stack([_near(0, 0.1), _near(0, 0.2), _near(0, 0.3), _near(0, 0.4),
                         _near(1, 0.1), _near(1, 0.2), _near(1, 0.3), _near(2), _near(3)])
    got = _rows(select_balanced(ids, features, pool))
    assert got == {
        "p0": (0, 1, True), "p1": (0, 2, True), "p2": (0, 3, True), "p3": (0, 4, False),  # 1 + 3 = 4
        "q0": (1, 2, True), "q1": (1, 3, True), "q2": (1, 4, False),  # 2 + 2 = 4
        "r0": (2, 5, False), "s0": (3, 8, False),  # dense clusters never accept
    }
    # the paper rule keeps every candidate of a sparse cluster
    assert select_paper(ids, features, pool)["kept"].to_list() == [True] * 7 + [False, False]


def test_balanced_budget_goes_to_the_smallest_clusters_first():
    pool = _pool(SIZES)
    ids = ["p0", "p1", "p2", "q0", "q1"]
    # q0 fits cluster 1 better than p1 fits cluster 0, so at the tie of counts 2 vs 2 q0 goes first.
    features = np.stack([_near(0, 0.1), _near(0, 0.3), _near(0, 0.4), _near(1, 0.2), _near(1, 0.5)])
    df = select_balanced(ids, features, pool, max_kept=3)
    # Order: p0 (count 1) → q0 (2, cos higher) → p1 (2) → budget spent: q1 (3), p2 (3) rejected.
    assert _rows(df) == {"p0": (0, 1, True), "q0": (1, 2, True), "p1": (0, 2, True),
                         "q1": (1, 3, False), "p2": (0, 3, False)}
    assert not select_balanced(ids, features, pool, max_kept=0)["kept"].any()
    assert select(rule="balanced", candidate_ids=ids, candidate_features=features, clustering=pool,
                  max_kept=3).equals(df)


def test_ties_are_broken_by_id_and_do_not_depend_on_input_order():
    pool = _pool([3, 5, 5, 8])  # median 5: cluster 0 accepts 2 (counts 3, 4)
    ids = ["z", "m", "b", "k"]
    features = np.stack([_near(0, 0.2)] * 3 + [_near(0, 0.5)])  # z, m, b fit equally well
    df = select_balanced(ids, features, pool)
    assert _rows(df) == {"b": (0, 3, True), "m": (0, 4, True), "z": (0, 5, False), "k": (0, 5, False)}
    perm = [3, 1, 0, 2]
    shuffled = select_balanced([ids[i] for i in perm], features[perm], pool)
    assert shuffled["id"].to_list() == [ids[i] for i in perm]
    assert shuffled.sort("id").equals(df.sort("id"))


def test_candidate_equidistant_from_two_centroids_goes_to_the_lower_index():
    pool = _pool(SIZES)
    df = select_paper(["t"], np.array([[0, 0, 1, 1, 0, 0, 0, 0]], dtype=np.float32), pool)
    assert _rows(df) == {"t": (2, 5, False)}


def test_empty_candidates_and_bad_input():
    pool = _pool(SIZES)
    for fn in (select_paper, select_balanced):
        empty = fn([], np.zeros((0, D), dtype=np.float32), pool)
        assert empty.height == 0 and empty.schema == pl.Schema(SCHEMA)
    with pytest.raises(ValueError, match="duplicate candidate id 'a'"):
        select_paper(["a", "b", "a"], np.stack([_near(0)] * 3), pool)
    with pytest.raises(ValueError, match="3 × d"):
        select_balanced(["a", "b", "c"], np.stack([_near(0)] * 2), pool)
    with pytest.raises(ValueError, match="dimension 4"):
        select_paper(["a"], np.ones((1, 4)), pool)
    with pytest.raises(ValueError, match="unknown selection rule"):
        select("greedy", ["a"], _near(0)[None], pool)
    with pytest.raises(ValueError, match="max_kept"):
        select_balanced(["a"], _near(0)[None], pool, max_kept=-1)


def test_end_to_end_with_a_real_clustering():
    # Pool: a big blob and a small blob; candidates near the small blob are kept, near the big one not.
    rng = np.random.default_rng(1)
    d = 16
    big = np.eye(d)[0] + 0.05 * rng.normal(size=(40, d))
    small = np.eye(d)[1] + 0.05 * rng.normal(size=(4, d))
    mid = np.eye(d)[2] + 0.05 * rng.normal(size=(10, d))
    pool = spherical_kmeans(np.concatenate([big, small, mid]), 3, seed=0, init="kmeans++", restarts=3)
    assert sorted(pool.sizes.tolist()) == [4, 10, 40]  # median 10: only the small blob is sparse
    cands = np.concatenate([np.eye(d)[1] + 0.05 * rng.normal(size=(10, d)),
                            np.eye(d)[0] + 0.05 * rng.normal(size=(3, d))])
    ids = [f"s{i}" for i in range(10)] + ["b0", "b1", "b2"]
    paper = select_paper(ids, cands, pool)
    assert paper["kept"].to_list() == [True] * 10 + [False] * 3
    balanced = select_balanced(ids, cands, pool)
    assert balanced["kept"].sum() == 6  # counts 4 … 9 are below 10
    assert sorted(balanced.filter(pl.col("kept"))["cluster_size_at_decision"].to_list()) == list(range(4, 10))
