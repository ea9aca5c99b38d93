"""What the atlas reads from a store of three real rounds (`atlas_store`), checked against the tables
read independently, and its refusals."""

import json
import shutil

import numpy as np
import polars as pl
import pytest
from atlas_store import build

from prismatic.errors import PrismError
from prismatic.report.gather import STATUSES, gather, latest_round
from prismatic.storage.deltas import read_as_of
from prismatic.storage.factory import open_store


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build(tmp_path_factory.mktemp("atlas"), rounds=2, seeds=60, problems=40)


def test_points_are_the_previous_pool_and_every_candidate_with_their_status(built):
    store = built.store
    atlas = gather(store, "r002")
    previous = read_as_of(store, "pool", "r001")
    selection = store.read("selection", "r002")
    points = atlas.points
    assert len(points) == atlas.total_points == len(previous) + len(selection)
    assert sorted(points["id"]) == sorted(previous["id"].to_list() + selection["id"].to_list())
    status = dict(zip(points["id"], points["status"]))
    assert {status[i] for i in previous.filter(origin="seed")["id"]} == {"seed"}
    assert {status[i] for i in previous.filter(origin="generated")["id"]} == {"kept earlier"}
    assert [status[i] for i in selection.filter("kept")["id"]] == ["kept this round"] * int(selection["kept"].sum())
    assert atlas.status_counts == {"seed": 60, "kept earlier": previous.filter(origin="generated").height,
                                   "kept this round": int(selection["kept"].sum()),
                                   "not kept this round": int((~selection["kept"]).sum())}
    # texts, votes and gains come from the rows' own rounds
    verified = store.read("verified_samples", "r002").join(selection, on="id")
    row = verified.filter(~pl.col("kept")).row(0, named=True)
    point = points.filter(id=row["id"]).row(0, named=True)
    assert (point["prompt"], point["response"], point["answer"], point["votes"], point["majority_size"]) == (
        row["prompt"], row["response"], row["answer"], row["votes"], row["majority_size"])
    assert point["gain"] == pytest.approx(row["gain"]) and point["gain_round"] == "r002"
    earlier = store.read("selection", "r001").filter("kept").row(0, named=True)
    assert points.filter(id=earlier["id"])["gain"][0] == pytest.approx(earlier["gain"])
    assert points.filter(status="seed")["votes"].unique().to_list() == [1]


def test_clusters_are_the_ones_the_round_was_judged_against(built):
    store = built.store
    atlas = gather(store, "r002")
    sizes = dict(store.read("centroids", "r001").select("cluster", "size").iter_rows())
    selection = store.read("selection", "r002")
    assert atlas.threshold == float(np.median(list(sizes.values()))) and atlas.clustering_round == "r001"
    assert atlas.clusters["size"].to_list() == sorted(sizes.values())
    assert int(atlas.clusters["kept"].sum()) == int(selection["kept"].sum())
    assert int(atlas.clusters["not_kept"].sum()) == int((~selection["kept"]).sum())
    for row in selection.head(10).iter_rows(named=True):
        point = atlas.points.filter(id=row["id"]).row(0, named=True)
        assert point["cluster"] == row["cluster"] and point["cluster_size"] == sizes[row["cluster"]]
        assert point["sparse"] == (sizes[row["cluster"]] < atlas.threshold)
    members = store.read("clusters", "r001").head(10)
    for row in members.iter_rows(named=True):
        assert atlas.points.filter(id=row["id"])["cluster"][0] == row["cluster"]


def test_the_map_is_the_pca_of_the_pool_features(built):
    store = built.store
    atlas = gather(store, "r001")
    pool = read_as_of(store, "pool", "r001")
    features = pl.concat([store.read("gradient_features", r, ["id", "feature"]) for r in ("r000", "r001")])
    x = np.asarray(pool.join(features, on="id", how="left", maintain_order="left")["feature"].to_list(), np.float64)
    centred = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    signs = np.sign(vt[:2][np.arange(2), np.abs(vt[:2]).argmax(axis=1)])
    expected = dict(zip(pool["id"], centred @ (vt[:2] * signs[:, None]).T))
    for row in atlas.points.filter(pl.col("status") != "not kept this round").iter_rows(named=True):
        np.testing.assert_allclose([row["x"], row["y"]], expected[row["id"]], atol=1e-3)  # randomized SVD


def test_rounds_rejections_and_tokens_against_the_tables(built):
    store = built.store
    atlas = gather(store, "r002")
    rounds = {row["round"]: row for row in atlas.rounds.iter_rows(named=True)}
    assert list(rounds) == ["r000", "r001", "r002"]
    for key in rounds:
        scores = dict(store.read("diversity_scores", key).select("metric", "value").iter_rows())
        assert rounds[key]["gvendi"] == scores["gvendi"]
        assert rounds[key]["gvendi_control"] == scores.get("gvendi_control")
    outcome = store.read_metadata("selection", "r002")["outcome"]
    assert rounds["r002"]["gain"] == outcome["gain"] and rounds["r002"]["control_gain"] == outcome["control_gain"]
    assert rounds["r002"]["kept"] == outcome["kept"] and rounds["r002"]["candidates"] == outcome["candidates"]
    rejections = store.read("rejections", "r002")
    assert rounds["r002"]["rejected"] == len(rejections) == sum(atlas.rejection_counts.values())
    assert atlas.rejection_counts == dict(rejections.group_by("reason").len().iter_rows())
    generations = store.read("generations", "r002")
    if "completion_tokens" in generations.columns:  # stores whose generations record tokens
        assert rounds["r002"]["tokens_completion_tokens"] == generations["completion_tokens"].sum()
    problem = atlas.rejections.filter(reason="too_few_words").row(0, named=True)
    assert problem["text"] == generations.filter(id=problem["id"])["text"][0]
    request = atlas.rejections.filter(reason="unparseable_problems").row(0, named=True)
    assert request["text"] == request["detail"] == "no problem here"
    assert json.loads(atlas.rejections.filter(reason="no_majority")["detail"][0])["rule"] == "no_majority"


def test_above_the_limit_the_map_samples_candidates_and_pool(built):
    store = built.store
    candidates, previous = len(store.read("selection", "r002")), len(read_as_of(store, "pool", "r001"))
    current = pl.col("status").is_in(list(STATUSES[2:]))
    # the candidates get at most half the places, unless the rest of the pool leaves them more
    for limit, expected in ((120, 60), (10, 5), (previous + 30, min(candidates, max((previous + 30) // 2, 30)))):
        atlas = gather(store, "r002", max_points=limit)
        assert len(atlas.points) == limit and atlas.sampled and atlas.total_points == previous + candidates
        assert atlas.points.filter(current).height == expected
        assert atlas.points["id"].n_unique() == limit
        assert any(f"The map shows {limit:,} of {previous + candidates:,} points" in note for note in atlas.notes)
    assert not gather(store, "r002", max_points=previous + candidates).notes


def test_the_seed_round_and_the_latest_round(built):
    atlas = gather(built.store, "r000")
    assert set(atlas.points["status"]) == {"seed"} and len(atlas.points) == 60 and atlas.clustering_round == "r000"
    assert atlas.rejections.is_empty() and atlas.rounds["round"].to_list() == ["r000"]
    assert latest_round(built.store) == "r002"


def test_a_missing_round_or_missing_features_is_one_line(built, tmp_path):
    with pytest.raises(PrismError, match=r"^round r009 is not in the store at .* \(its rounds: r000, r001, r002\)$"):
        gather(built.store, "r009")
    with pytest.raises(PrismError, match="expected a key like r002, got 'latest'"):
        gather(built.store, "latest")
    copy = tmp_path / "store"
    shutil.copytree(built.store.uri, copy)
    shutil.rmtree(copy / "gradient_features" / "round=r002")
    with pytest.raises(PrismError, match=r"has no gradient_features for round r002"):
        gather(open_store(copy), "r002")
    with pytest.raises(PrismError, match="has no rounds"):
        latest_round(open_store(tmp_path / "empty"))
