"""featureset.py: gradient features in shards (the shards' merged features equal the unsharded ones, bit for
bit), and the `gradient_features` rows of a FeatureSet."""

import numpy as np
import polars as pl
import pytest

from prismatic.config import FeaturesConfig
from prismatic.errors import PrismError
from prismatic.gradients.featureset import FeatureSet, feature_table, merge_feature_sets, shard_units
from prismatic.gradients.proxy import Proxy, compute_features
from prismatic.storage.schema import conform, schema


def samples(n: int = 23) -> pl.DataFrame:
    """Samples of many lengths, in an order unrelated to length (ids say their position)."""
    rng = np.random.default_rng(0)
    words = "the cat sat on a mat while two dogs ran far away across green fields".split()
    rows = []
    for i in range(n):
        length = int(rng.integers(3, 60))
        rows.append({"id": f"s{i:02d}", "prompt": f"Question {i}: " + " ".join(rng.choice(words, length)),
                     "response": " ".join(rng.choice(words, int(rng.integers(2, 30))))})
    return pl.DataFrame(rows)


@pytest.mark.parametrize("weights,count,expected", [
    ([1, 1, 1, 1], 2, [range(0, 2), range(2, 4)]),
    ([4, 1, 1, 1, 1], 2, [range(0, 1), range(1, 5)]),  # cut where half the weight is reached
    ([1, 1], 4, [range(0, 1), range(1, 1), range(1, 2), range(2, 2)]),  # more shards than batches: some empty
    ([], 3, [range(0, 0)] * 3),
    ([5, 3, 2], 1, [range(0, 3)]),
])
def test_shards_are_contiguous_runs_that_cover_every_batch_once(weights, count, expected):
    assert [shard_units(weights, (k, count)) for k in range(count)] == expected
    assert shard_units(weights, None) == range(len(weights))


def test_a_shard_index_outside_its_count_is_refused():
    with pytest.raises(PrismError, match="shard 3 of 3"):
        shard_units([1, 2], (3, 3))


@pytest.mark.parametrize("mode", ["fast", "faithful"])
def test_merged_shards_equal_the_unsharded_features(tiny_lm, tiny_model_dir, mode):
    data = samples()
    # Small batches (fast) and buffers (faithful) so that the data set spans several of them.
    config = FeaturesConfig(proxy=str(tiny_model_dir), mode=mode, dim=32, batch_tokens=300, model_dtype="float32",
                            gradient_buffer_gb=4 * sum(p.numel() for p in tiny_lm[0].parameters()) * 2 / 1e9)
    proxy = Proxy(*tiny_lm, "tiny")
    whole, _ = compute_features(data, config, tiny_model_dir, proxy=proxy, progress=False)
    parts = [compute_features(data, config, tiny_model_dir, proxy=proxy, progress=False, shard=(k, 3))[0]
             for k in range(3)]
    assert all(part.ids for part in parts) and sum(len(part.ids) for part in parts) == len(data)
    assert all(part.ids == sorted(part.ids) for part in parts)  # each shard keeps the data set's order
    merged = merge_feature_sets(parts, data["id"].to_list())
    assert merged.ids == whole.ids == data["id"].to_list()
    assert np.array_equal(merged.features, whole.features)  # bit for bit
    assert merged.n_tokens == whole.n_tokens and merged.truncated == whole.truncated
    assert merged.meta == whole.meta


def test_merging_refuses_missing_and_overlapping_shards():
    one = FeatureSet(ids=["a", "b"], features=np.eye(2, dtype=np.float32), n_tokens=[1, 2], truncated=[False, False])
    two = FeatureSet(ids=["c"], features=np.ones((1, 2), dtype=np.float32), n_tokens=[3], truncated=[True])
    merged = merge_feature_sets([two, one], ["c", "a", "b"])
    assert merged.ids == ["c", "a", "b"] and merged.n_tokens == [3, 1, 2]
    assert np.array_equal(merged.features, np.array([[1, 1], [1, 0], [0, 1]], dtype=np.float32))
    with pytest.raises(PrismError, match="a shard is missing or overlaps"):
        merge_feature_sets([one], ["a", "b", "c"])
    with pytest.raises(PrismError, match="a shard is missing or overlaps"):
        merge_feature_sets([one, one], ["a", "b"])
    other = FeatureSet(ids=["c"], features=np.ones((1, 2), dtype=np.float32), n_tokens=[3], truncated=[True],
                       meta={"dim": 2, "seed": 1})
    with pytest.raises(PrismError, match="different settings"):
        merge_feature_sets([one, other], ["a", "b", "c"])


def test_feature_table_has_the_store_schema_and_drops_the_layer_segments():
    features = np.array([[0.6, 0.8], [1.0, 0.0]])  # float64 in: stored as float32
    meta = {"proxy": "tiny", "mode": "fast", "projection": {"kind": "k", "seed": 0, "segments": [["w", [2, 2]]]}}
    frame, projection = feature_table(FeatureSet(["a", "b"], features, [7, 9], [False, True], meta))
    assert frame.schema == schema("gradient_features", dim=2)
    assert conform("gradient_features", frame).equals(frame)
    assert frame["proxy"].to_list() == ["tiny", "tiny"] and frame["mode"].to_list() == ["fast", "fast"]
    assert frame["dim"].to_list() == [2, 2] and frame["n_tokens"].to_list() == [7, 9]
    assert frame["truncated"].to_list() == [False, True]
    assert np.array_equal(frame["feature"].to_numpy(), features.astype(np.float32))
    assert projection == {"kind": "k", "seed": 0}
