"""The DuckDB catalog: views over the store, hive `round` column, read-only queries, lock waits."""

from __future__ import annotations

import subprocess
import sys

import polars as pl
import pytest
from table_samples import sample_frame

from prismatic.errors import PrismError
from prismatic.storage import catalog as catalog_module
from prismatic.storage.catalog import Catalog
from prismatic.storage.factory import open_store
from prismatic.storage.schema import TABLES

ROUND_SIZES = {"r000": 4, "r001": 7, "r002": 2}


@pytest.fixture
def filled(tmp_path) -> Catalog:
    """A store with verified_samples, clusters and gradient_features over three rounds, and its catalog."""
    store = open_store(tmp_path / "store")
    for i, (key, n) in enumerate(ROUND_SIZES.items()):
        for table in ("verified_samples", "clusters", "gradient_features"):
            store.write(table, key, sample_frame(table, n=n, seed=i, dim=16))
    catalog = Catalog(tmp_path / "catalog.duckdb", store.root)
    catalog.refresh()
    return catalog


def polars_counts(catalog: Catalog, table: str) -> dict[str, int]:
    """Rows per round straight from the Parquet files, without DuckDB."""
    store = catalog.store
    return {key: pl.scan_parquet(store.path(table, key)).select(pl.len()).collect().item()
            for key in store.rounds(table)}


def test_round_column_comes_from_the_directories(filled):
    columns, rows = filled.query("select round, count(*) as n from verified_samples group by 1 order by 1")
    assert columns == ["round", "n"]
    assert rows == list(ROUND_SIZES.items())
    dirs = sorted(p.name for p in (filled.store.root / "verified_samples").iterdir())
    assert dirs == [f"round={key}" for key in ROUND_SIZES]
    _, described = filled.query("describe verified_samples")
    types = {row[0]: row[1] for row in described}
    assert types["round"] == "VARCHAR"
    assert [name for name in types if name != "round"] == list(TABLES["verified_samples"])


@pytest.mark.parametrize("table", ["verified_samples", "clusters", "gradient_features"])
def test_duckdb_counts_equal_polars_counts(filled, table):
    _, rows = filled.query(f"select round, count(*) from {table} group by 1")
    assert dict(rows) == polars_counts(filled, table) == ROUND_SIZES


def test_values_survive_the_view(filled):
    frame = filled.store.read("gradient_features", "r001")
    _, rows = filled.query("select id, feature, dim, len(feature) from gradient_features "
                           "where round = 'r001' order by id")
    assert [row[0] for row in rows] == sorted(frame["id"].to_list())
    by_id = dict(zip(frame["id"].to_list(), frame["feature"].to_list(), strict=True))
    for ident, feature, dim, width in rows:
        assert dim == width == 16
        assert feature == pytest.approx(by_id[ident])


def test_views_only_for_tables_with_data(filled):
    assert filled.views() == sorted(["verified_samples", "clusters", "gradient_features"])
    with pytest.raises(PrismError, match="pool"):
        filled.query("select * from pool")
    filled.store.write("pool", "r000", sample_frame("pool"))
    assert "pool" in filled.refresh()
    assert filled.query("select count(*) from pool")[1] == [(3,)]
    # A table that loses its last file loses its view.
    filled.store.path("clusters", "r000").unlink()
    filled.store.path("clusters", "r001").unlink()
    filled.store.path("clusters", "r002").unlink()
    assert "clusters" not in filled.refresh()
    assert "clusters" not in filled.views()


def test_a_new_round_shows_without_refresh(filled):
    filled.store.write("verified_samples", "r003", sample_frame("verified_samples", n=5, seed=7))
    _, rows = filled.query("select count(*) from verified_samples where round = 'r003'")
    assert rows == [(5,)]


@pytest.mark.parametrize("sql", [
    "insert into verified_samples select * from verified_samples",
    "create table stolen as select * from verified_samples",
    "drop view verified_samples",
    "copy verified_samples to '{out}' (format parquet)",
    "attach '{db}' as other",
    "select 1; delete from clusters",
])
def test_queries_cannot_write(filled, tmp_path, sql):
    out = tmp_path / "exported.parquet"
    sql = sql.format(out=out, db=tmp_path / "other.duckdb")
    before = {table: polars_counts(filled, table) for table in filled.views()}
    views = filled.views()
    mtime = filled.db_path.stat().st_mtime_ns
    with pytest.raises(PrismError, match="read-only"):
        filled.query(sql)
    assert not out.exists() and not (tmp_path / "other.duckdb").exists()
    assert filled.views() == views
    assert filled.db_path.stat().st_mtime_ns == mtime
    for table, counts in before.items():
        assert dict(filled.query(f"select round, count(*) from {table} group by 1")[1]) == counts


def test_the_connection_itself_is_read_only(filled, monkeypatch):
    """Even past the statement filter, DuckDB refuses to write through `query`."""
    monkeypatch.setattr(catalog_module, "READ_STATEMENTS", frozenset(catalog_module.duckdb.StatementType))
    with pytest.raises(PrismError, match="read-only"):
        filled.query("create table stolen (a int)")
    assert "stolen" not in [row[0] for row in filled.query("show tables")[1]]


def test_duckdb_errors_are_one_line_prism_errors(filled):
    for sql in ("selct 1", "select * from nowhere", "select nope from clusters"):
        with pytest.raises(PrismError) as info:
            filled.query(sql)
        assert "\n" not in str(info.value)
        assert "Error" in str(info.value)
    with pytest.raises(PrismError, match="empty"):
        filled.query("  ")


def test_query_before_any_round(tmp_path):
    catalog = Catalog(tmp_path / "catalog.duckdb", tmp_path / "store")
    with pytest.raises(PrismError, match="run a round first"):
        catalog.query("select 1")
    assert not (tmp_path / "catalog.duckdb").exists()
    assert catalog.views() == []
    assert catalog.refresh() == []
    assert catalog.query("select 42 as answer") == (["answer"], [(42,)])


def test_store_path_with_a_quote(tmp_path):
    store = open_store(tmp_path / "it's a store")
    store.write("diversity_scores", "r000", sample_frame("diversity_scores"))
    catalog = Catalog(tmp_path / "catalog.duckdb", store.root)
    assert catalog.refresh() == ["diversity_scores"]
    assert catalog.query("select round, count(*) from diversity_scores group by 1")[1] == [("r000", 3)]


HOLD_LOCK = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
con.close()
"""


def test_reader_waits_for_a_writer_holding_the_lock(filled):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(filled.db_path), "1.5"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        impatient = Catalog(filled.db_path, filled.store.root, lock_timeout=0.1)
        with pytest.raises(PrismError, match="locked by another process"):
            impatient.query("select 1")
        patient = Catalog(filled.db_path, filled.store.root, lock_timeout=60)
        _, rows = patient.query("select count(*) from clusters")
        assert rows == [(sum(ROUND_SIZES.values()),)]
    finally:
        holder.wait(timeout=60)


def test_feature_width_may_differ_between_rounds(filled):
    filled.store.write("gradient_features", "r003", sample_frame("gradient_features", n=2, seed=5, dim=8))
    _, rows = filled.query("select round, min(len(feature)), max(dim) from gradient_features group by 1 order by 1")
    assert rows == [("r000", 16, 16), ("r001", 16, 16), ("r002", 16, 16), ("r003", 8, 8)]


def test_refresh_failure_is_a_prism_error_and_keeps_the_old_views(filled):
    filled.store.write("pool", "r000", sample_frame("pool"))
    bad = filled.store.path("pool", "r000")
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(PrismError, match="'pool'") as info:
        filled.refresh()
    assert "\n" not in str(info.value)
    assert filled.views() == sorted(["verified_samples", "clusters", "gradient_features"])


def test_write_partition_creates_a_view_only_where_the_store_has_none(tmp_path, monkeypatch):
    catalog = Catalog(tmp_path / "catalog.duckdb", open_store(tmp_path / "a"))
    rebuilt = []
    real_refresh = Catalog.refresh
    monkeypatch.setattr(Catalog, "refresh", lambda self, tables=None: rebuilt.append(tables) or real_refresh(
        self, tables))
    catalog.write_partition("verified_samples", "r000", sample_frame("verified_samples", n=3), {})
    catalog.write_partition("clusters", "r000", sample_frame("clusters", n=3), {})
    # verified_samples has its view: nothing to do
    catalog.write_partition("verified_samples", "r001", sample_frame("verified_samples", n=4), {})
    assert rebuilt == [None, ["clusters"]] and catalog.views() == ["clusters", "verified_samples"]
    counts = catalog.query("select round, count(*) from verified_samples group by 1 order by 1")[1]
    assert counts == [("r000", 3), ("r001", 4)]
    # A run killed between a table's first write and its view: the rerun's write creates it.
    with catalog._connect(read_only=False) as con:
        con.execute('DROP VIEW "clusters"')
    catalog.write_partition("clusters", "r000", sample_frame("clusters", n=3), {})
    assert rebuilt[-1] == ["clusters"] and catalog.views() == ["clusters", "verified_samples"]
    # The same catalog file over another store: each table's view moves to it on the table's first write there.
    other = Catalog(tmp_path / "catalog.duckdb", open_store(tmp_path / "b"))
    other.write_partition("verified_samples", "r000", sample_frame("verified_samples", n=5), {})
    assert rebuilt[-1] == ["verified_samples"] and other.query("select count(*) from verified_samples")[1] == [(5,)]
