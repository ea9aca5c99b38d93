
import numpy as np
import polars as pl
import pytest

from prismatic.metrics.vendi import gvendi
from prismatic.storage.schema import schema
from prismatic.synthesis.control import random_control, selection_outcome
from prismatic.synthesis.kmeans import Clustering, assign, spherical_kmeans
from prismatic.synthesis.selection import (
    GreedyLogDet,
    novelty_threshold,
    paper_count,
    select,
    select_balanced,
    select_logdet,
    select_novelty,
    select_paper,
    sparse_threshold,
)

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
    assert df.schema == schema("selection")
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
        assert empty.height == 0 and empty.schema == schema("selection")
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


# ------------------------------------------------------------------------------------------ logdet


def _unit(a):
    a = np.asarray(a, dtype=np.float64)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def _brute_force_greedy(pool, cands, count, eps):
    """Exact greedy: each step recomputes log det(εI + XᵀX + x xᵀ) for every open candidate with slogdet."""
    base = eps * np.eye(pool.shape[1]) + pool.T @ pool
    kept = []
    for _ in range(count):
        scores = [np.linalg.slogdet(base + np.outer(x, x))[1] if i not in kept else -np.inf
                  for i, x in enumerate(cands)]
        best = int(np.argmax(scores))
        kept.append(best)
        base = base + np.outer(cands[best], cands[best])
    return kept


def test_logdet_incremental_inverse_equals_a_direct_recomputation_after_each_step():
    rng = np.random.default_rng(3)
    pool, cands = _unit(rng.normal(size=(7, 12))), _unit(rng.normal(size=(30, 12)))
    eps = 0.05
    greedy = GreedyLogDet(pool, cands, eps)
    gram = eps * np.eye(12) + pool.T @ pool
    for _ in range(20):  # past d = 12: the kept rows then span the space
        greedy.keep(greedy.best())
        gram = gram + np.outer(cands[greedy.kept[-1]], cands[greedy.kept[-1]])
        direct = np.linalg.inv(gram)
        assert np.abs(greedy.inverse - direct).max() <= 1e-6 * np.abs(direct).max()
        leverage = np.einsum("ij,jk,ik->i", cands, direct, cands)
        assert np.allclose(greedy.leverage, leverage, rtol=1e-6, atol=1e-9)


def test_logdet_matches_the_brute_force_greedy_and_the_determinant_lemma():
    rng = np.random.default_rng(4)
    for trial in range(3):
        pool, cands = _unit(rng.normal(size=(5, 6))), _unit(rng.normal(size=(14, 6)))
        for eps in (0.1, 1.0):
            greedy = GreedyLogDet(pool, cands, eps)
            assert greedy.run(8) == _brute_force_greedy(pool, cands, 8, eps), (trial, eps)
    # log det(A + x xᵀ) − log det A = log(1 + ℓ(x)): the leverage is the log-det gain.
    gram = 0.3 * np.eye(6) + pool.T @ pool
    greedy = GreedyLogDet(pool, cands, 0.3)
    gains = [np.linalg.slogdet(gram + np.outer(x, x))[1] - np.linalg.slogdet(gram)[1] for x in cands]
    assert np.allclose(np.log1p(greedy.leverage), gains, atol=1e-10)


def test_logdet_hand_computed_leverages():
    # Pool {e0}, ε = 1: A = I + e0 e0ᵀ, A⁻¹ = I − e0 e0ᵀ / 2.
    pool = np.eye(4)[:1]
    cands = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0]], dtype=np.float64)
    greedy = GreedyLogDet(pool, cands, 1.0)
    # e0: 1 − 1/2 = 1/2; (e0 + e1)/√2: (1/2)(1/2 + 1) = 3/4; e2: 1.
    assert np.allclose(greedy.leverage, [0.5, 0.75, 1.0])
    greedy.keep(2)  # e2 is orthogonal to the others: their leverages do not move, e2's becomes 1/2
    assert np.allclose(greedy.leverage, [0.5, 0.75, 0.5])


def test_logdet_never_keeps_copies_of_pool_rows_while_new_directions_remain():
    pool_rows = np.eye(D)[:4]  # e0 … e3
    ids = ["dup0", "dup1", "dup3", "new4", "new5", "mix", "new6"]
    features = np.stack([np.eye(D)[0], np.eye(D)[1] * 3, np.eye(D)[3], np.eye(D)[4], np.eye(D)[5],
                         np.eye(D)[7] + np.eye(D)[0], np.eye(D)[6]])
    clustering = _pool([1, 1, 1, 1])
    df = select_logdet(ids, features, pool_rows, 3, clustering=clustering, epsilon=1.0)
    # Leverages (ε = 1, A⁻¹ = I − Σ_pool e eᵀ / 2): copies of pool rows 1/2; e4, e5, e6 1;
    # mix = (e0 + e7)/√2: (1/2)(1/2 + 1) = 3/4. Keeping e4, e5, e6 (orthogonal to the rest) moves no
    # other leverage, and the tie at 1 goes to the lowest id.
    assert df.filter(pl.col("kept"))["id"].to_list() == ["new4", "new5", "new6"]
    assert df["id"].to_list() == ids and df.schema == schema("selection") and set(df["rule"]) == {"logdet"}
    # A budget of 4 takes `mix` (3/4) next; the copies (1/2) are never kept.
    four = select_logdet(ids, features, pool_rows, 4, epsilon=1.0)
    assert four.filter(pl.col("kept"))["id"].to_list() == ["new4", "new5", "mix", "new6"]
    assert set(four["cluster"]) == {-1} and set(four["cluster_size_at_decision"]) == {0}


def test_logdet_records_clusters_and_counts_and_ignores_input_order():
    rng = np.random.default_rng(5)
    pool_rows = _unit(rng.normal(size=(20, D)))
    clustering = spherical_kmeans(pool_rows, 4, seed=0)
    ids = [f"c{i:02d}" for i in range(15)]
    features = rng.normal(size=(15, D))
    df = select_logdet(ids, features, pool_rows, 6, clustering=clustering, epsilon=0.5)
    assert df["kept"].sum() == 6
    labels, _ = assign(features, clustering.centroids)
    assert df["cluster"].to_list() == labels.tolist()
    # Kept candidates: their cluster's count just before they were kept (in the order greedy kept
    # them); rejected ones: the count after the last step.
    greedy = GreedyLogDet(pool_rows, features, 0.5)
    counts = clustering.sizes.copy()
    expected = {}
    for i in greedy.run(6):
        expected[ids[i]] = counts[labels[i]]
        counts[labels[i]] += 1
    for row in df.iter_rows(named=True):
        want = expected.get(row["id"], counts[labels[int(row["id"][1:])]])
        assert row["cluster_size_at_decision"] == want and row["kept"] == (row["id"] in expected)
    perm = rng.permutation(15)
    shuffled = select_logdet([ids[i] for i in perm], features[perm], pool_rows, 6, clustering=clustering,
                             epsilon=0.5)
    assert shuffled.sort("id").equals(df.sort("id"))
    # Exact ties (identical candidates) go to the lowest id.
    twins = select_logdet(["b", "a", "c"], np.stack([np.eye(D)[5]] * 3), pool_rows, 1)
    assert twins.filter(pl.col("kept"))["id"].to_list() == ["a"]
    assert select_logdet(ids, features, pool_rows, 0)["kept"].sum() == 0
    assert select_logdet(ids, features, pool_rows, 99)["kept"].all()


def test_logdet_raises_the_pool_gvendi_more_than_random_on_a_clear_case():
    # Pool: 30 rows around 3 directions; candidates: 20 more near those and 5 along new directions.
    rng = np.random.default_rng(6)
    d = 16
    centers = np.eye(d)[:3]
    pool_rows = _unit(centers[rng.integers(0, 3, 30)] + 0.05 * rng.normal(size=(30, d)))
    old = _unit(centers[rng.integers(0, 3, 20)] + 0.05 * rng.normal(size=(20, d)))
    new = _unit(np.eye(d)[3:8] + 0.05 * rng.normal(size=(5, d)))
    cands = np.concatenate([old, new])
    df = select_logdet([f"c{i:02d}" for i in range(25)], cands, pool_rows, 5)
    assert df["kept"].to_list() == [False] * 20 + [True] * 5
    # Noise-free, with 10 rows per old direction: adding 5 old rows leaves G-Vendi at 3; adding the 5 new
    # directions gives eigenvalues 10/35 (×3) and 1/35 (×5): exp(3·(10/35)·ln 3.5 + 5·(1/35)·ln 35) = 4.86.
    assert gvendi(np.concatenate([pool_rows, new])) > 4.5
    assert gvendi(np.concatenate([pool_rows, old[:5]])) < 3.6


# ---------------------------------------------------------------------------- budgets and dispatch


def test_balanced_with_a_count_fills_the_smallest_clusters_past_the_median():
    pool = _pool(SIZES)  # sizes 1, 2, 5, 8; median 3.5
    ids = ["p0", "p1", "p2", "p3", "q0", "q1", "q2", "r0", "r1", "s0"]
    features = np.stack([_near(0, 0.1), _near(0, 0.2), _near(0, 0.3), _near(0, 0.4),
                         _near(1, 0.1), _near(1, 0.2), _near(1, 0.3), _near(2, 0.1), _near(2, 0.2), _near(3)])
    threshold = select_balanced(ids, features, pool)
    assert threshold["kept"].sum() == 5  # p0 p1 p2 (counts 1, 2, 3) and q0 q1 (2, 3)
    # A count up to 5 is the threshold rule capped; the order is by current count, then fit.
    for count in range(6):
        assert select_balanced(ids, features, pool, count=count).equals(
            select_balanced(ids, features, pool, max_kept=count))
    # Beyond 5 every open cluster is at count 4 (clusters 0, 1) or 5, 8: 0 and 1 go next, then 2.
    got = _rows(select_balanced(ids, features, pool, count=8))
    assert {i for i, (_, _, k) in got.items() if k} == {"p0", "p1", "p2", "p3", "q0", "q1", "q2", "r0"}
    assert got["p3"] == (0, 4, True) and got["q2"] == (1, 4, True) and got["r0"] == (2, 5, True)
    assert got["r1"] == (2, 6, False) and got["s0"] == (3, 8, False)
    assert select_balanced(ids, features, pool, count=50)["kept"].all()


def test_select_dispatch_budgets_default_to_what_paper_keeps():
    pool = _pool(SIZES)
    ids = ["p0", "p1", "q0", "r0", "s0"]
    features = np.stack([_near(0, 0.1), _near(0, 0.2), _near(1), _near(2), _near(3)])
    assert paper_count(ids, features, pool) == 3
    pool_rows = np.eye(D)[:4]
    for rule, extra in (("balanced", {}), ("logdet", {"pool_features": pool_rows})):
        assert select(rule, ids, features, pool, **extra)["kept"].sum() == 3
        assert select(rule, ids, features, pool, count=1, **extra)["kept"].sum() == 1
    with pytest.raises(ValueError, match="count applies"):
        select("paper", ids, features, pool, count=2)
    with pytest.raises(ValueError, match="needs the pool's features"):
        select("logdet", ids, features, pool)
    with pytest.raises(ValueError, match="not both"):
        select("balanced", ids, features, pool, max_kept=1, count=1)
    with pytest.raises(ValueError, match="epsilon must be > 0"):
        select("logdet", ids, features, pool, pool_features=pool_rows, epsilon=0.0)
    with pytest.raises(ValueError, match="duplicate candidate id"):
        select_logdet(["a", "a"], np.stack([_near(0)] * 2), pool_rows, 1)
    with pytest.raises(ValueError, match="pool features must be an n × 8"):
        select_logdet(["a"], _near(0)[None], np.ones((2, 3)), 1)


# ------------------------------------------------------------------------------------ novelty rule


def _logdet(rows: np.ndarray, epsilon: float) -> float:
    """log det(εI + Σ r rᵀ), computed directly (no leverages, no Sherman–Morrison)."""
    return float(np.linalg.slogdet(np.eye(rows.shape[1]) * epsilon + rows.T @ rows)[1])


def test_novelty_threshold_is_the_median_leave_one_out_logdet_gain():
    rng = np.random.default_rng(3)
    pool = _unit(rng.normal(size=(30, 12)))
    greedy = GreedyLogDet(pool, _unit(rng.normal(size=(2, 12))), 0.7)
    full = _logdet(pool, 0.7)
    leave_one_out = [full - _logdet(np.delete(pool, i, axis=0), 0.7) for i in range(len(pool))]
    assert novelty_threshold(greedy.pool_leverages()) == pytest.approx(float(np.median(leave_one_out)), rel=1e-9)


def test_novelty_keeps_novel_candidates_and_drops_copies_of_pool_rows():
    rng = np.random.default_rng(5)
    dim = 48
    # The pool lives in the first 23 coordinates, with one isolated row along the 24th; novel
    # candidates point into the other 24.
    base = rng.normal(size=(6, 23))
    pool = np.concatenate([base[rng.integers(0, 6, 40)] + 0.3 * rng.normal(size=(40, 23)), np.zeros((40, 25))], 1)
    isolated = np.zeros((1, dim))
    isolated[0, 23] = 1.0
    pool = _unit(np.concatenate([pool, isolated]))
    novel = _unit(np.concatenate([0.2 * rng.normal(size=(5, 24)), rng.normal(size=(5, 24))], 1))
    copies = pool[[0, 7, 40]]  # two typical pool rows and the isolated one
    cands = np.concatenate([novel, copies])
    ids = [f"n{i}" for i in range(5)] + ["copy0", "copy7", "copy_isolated"]
    frame = select("novelty", ids, cands, spherical_kmeans(pool, 4, seed=0), pool_features=pool, epsilon=1.0)
    assert frame["id"].to_list() == ids and set(frame["rule"]) == {"novelty"}
    kept = dict(zip(frame["id"], frame["kept"]))
    assert all(kept[f"n{i}"] for i in range(5)), kept
    assert not kept["copy0"] and not kept["copy7"] and not kept["copy_isolated"]
    # The isolated row's copy adds more volume than a typical pool row does: only the copy check stops it.
    against_pool = GreedyLogDet(pool, cands, 1.0)
    threshold = novelty_threshold(against_pool.pool_leverages())
    gain = dict(zip(ids, np.log1p(against_pool.leverage)))
    assert gain["copy_isolated"] > threshold > gain["copy0"]
    # Each kept candidate's gain is the log det it added, in the order kept.
    order = frame.filter("kept").sort("gain", descending=True)
    rows = pool
    for row_id, value in zip(order["id"], order["gain"]):
        x = cands[ids.index(row_id)][None]
        assert value == pytest.approx(_logdet(np.concatenate([rows, x]), 1.0) - _logdet(rows, 1.0), rel=1e-9)
        rows = np.concatenate([rows, x])


def test_novelty_keeps_nothing_when_nothing_new_arrives_and_honours_a_cap():
    rng = np.random.default_rng(6)
    pool = _unit(rng.normal(size=(50, D)))  # n ≫ d: every direction is covered
    near = _unit(pool[:10] + 0.01 * rng.normal(size=(10, D)))
    frame = select("novelty", [f"c{i}" for i in range(10)], near, spherical_kmeans(pool, 5, seed=0),
                   pool_features=pool)
    assert not frame["kept"].any()
    wide = _unit(rng.normal(size=(10, 64)))  # new directions
    few = _unit(np.repeat(rng.normal(size=(5, 64)), 4, axis=0) + 0.1 * rng.normal(size=(20, 64)))
    assert select_novelty([f"c{i}" for i in range(10)], wide, few)["kept"].sum() == 10
    assert select_novelty([f"c{i}" for i in range(10)], wide, few, count=3)["kept"].sum() == 3


def _independent_gvendi(rows: np.ndarray) -> float:
    x = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    eigenvalues = np.clip(np.linalg.eigvalsh(x.T.astype(np.float64) @ x / len(x)), 0, None)
    eigenvalues = eigenvalues[eigenvalues > 1e-12]
    return float(np.exp(-np.sum(eigenvalues * np.log(eigenvalues))))


def test_random_control_equals_an_independent_recomputation():
    rng = np.random.default_rng(9)
    pool = _unit(rng.normal(size=(25, 16))).astype(np.float32)
    cands = _unit(rng.normal(size=(12, 16))).astype(np.float32)
    control = random_control(pool, cands, 4, draws=3, seed=11)
    expected = []
    for s in range(3):
        chosen = np.sort(np.random.default_rng(11 + s).choice(12, size=4, replace=False))
        expected.append(_independent_gvendi(np.concatenate([pool, cands[chosen]])))
    assert control["gvendi_draws"] == pytest.approx(expected, rel=1e-4)
    assert control["gvendi"] == pytest.approx(np.mean(expected), rel=1e-4)
    assert control["gvendi_sd"] == pytest.approx(np.std(expected, ddof=1), rel=1e-3)
    kept = np.zeros(12, dtype=bool)
    kept[[0, 5, 6, 9]] = True
    outcome = selection_outcome(pool, cands, kept, draws=3, seed=11)
    assert outcome["gain"] == pytest.approx(_independent_gvendi(np.concatenate([pool, cands[kept]]))
                                            - _independent_gvendi(pool), rel=1e-4)
    assert outcome["control_gain"] == pytest.approx(np.mean(expected) - _independent_gvendi(pool), rel=1e-4)
