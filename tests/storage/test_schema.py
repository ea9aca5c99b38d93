"""Every table's schema and `conform`, the check every store write passes: exact columns, lossless casts
only, non-null unique keys, no `round` column (it lives in the partition's directory name)."""

from __future__ import annotations

import polars as pl
import pytest
from table_samples import all_files, sample_frame

from prismatic.errors import PrismError
from prismatic.storage.local import LocalStore
from prismatic.storage.schema import KEYS, TABLES, schema


@pytest.fixture
def store(tmp_path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def test_every_table_has_a_sample_and_a_key_entry():
    assert set(KEYS) == set(TABLES)
    for table in TABLES:
        assert set(sample_frame(table).columns) == set(TABLES[table])
        assert "round" not in TABLES[table]


def test_lossless_casts_are_accepted(store):
    frame = sample_frame("clusters").with_columns(
        pl.col("cluster").cast(pl.Int32), pl.col("cluster_size").cast(pl.UInt8),
        pl.col("distance").cast(pl.Float32))
    store.write("clusters", "r001", frame)
    back = store.read("clusters", "r001")
    assert back.schema == schema("clusters")
    assert back["cluster"].to_list() == frame["cluster"].to_list()
    # Float64 features whose values are exact float32 become float32.
    feats = sample_frame("gradient_features")
    feats64 = feats.with_columns(pl.col("feature").cast(pl.Array(pl.Float64, 8)))
    store.write("gradient_features", "r001", feats64)
    assert store.read("gradient_features", "r001").equals(feats)
    # Empty lists (List(Null)) and all-null columns take the schema's dtype.
    gens = sample_frame("generations", n=1).with_columns(
        pl.Series("parent_ids", [[]]), pl.lit(None).alias("sampling"))
    store.write("generations", "r001", gens)
    assert store.read("generations", "r001")["parent_ids"].to_list() == [[]]


@pytest.mark.parametrize("table, change, column", [
    ("clusters", lambda f: f.drop("distance"), "distance"),
    ("pool", lambda f: f.with_columns(pl.lit("x").alias("score")), "score"),
    ("pool", lambda f: f.with_columns(pl.lit("r001").alias("round")), "round"),
    ("verified_samples", lambda f: f.with_columns(pl.col("votes").cast(pl.String)), "votes"),
    ("selection", lambda f: f.with_columns(pl.col("kept").cast(pl.Int64)), "kept"),
    ("clusters", lambda f: f.with_columns(pl.col("cluster").cast(pl.Float64)), "cluster"),
    ("diversity_scores", lambda f: f.with_columns(pl.lit(2**60 + 1).alias("value")), "value"),
    ("generations", lambda f: f.with_columns(pl.col("parent_ids").list.join(",")), "parent_ids"),
    ("gradient_features", lambda f: f.with_columns(pl.col("feature").cast(pl.List(pl.Float32))), "feature"),
    ("gradient_features", lambda f: f.with_columns(pl.col("feature").cast(pl.Array(pl.Float64, 8)) + 0.1),
     "feature"),
    ("gradient_features", lambda f: f.with_columns(pl.col("n_tokens").cast(pl.Float64)), "n_tokens"),
    ("pool", lambda f: f.with_columns(pl.lit(None, dtype=pl.String).alias("id")), "id"),
    ("seeds", lambda f: f.with_columns(pl.lit("same").alias("id")), "id"),
    ("diversity_scores", lambda f: f.with_columns(pl.lit("gvendi").alias("metric")), "metric"),
])
def test_schema_violations_name_table_and_column_and_write_nothing(store, table, change, column):
    store.write(table, "r001", sample_frame(table, seed=1))
    before = store.read(table, "r001")
    files = all_files(store.root)
    with pytest.raises(PrismError) as info:
        store.write(table, "r001", change(sample_frame(table)))
    message = str(info.value)
    assert f"'{table}'" in message and f"'{column}'" in message, message
    with pytest.raises(PrismError):
        store.write(table, "r002", change(sample_frame(table)))
    assert all_files(store.root) == files
    assert store.read(table, "r001").equals(before)
    assert store.rounds(table) == ["r001"]


def test_round_column_error_explains_the_partition(store):
    with pytest.raises(PrismError, match="directory name"):
        store.write("pool", "r001", sample_frame("pool").with_columns(pl.lit("r001").alias("round")))


