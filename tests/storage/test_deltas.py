"""The pool stored as deltas (`prismatic.storage.deltas`, the catalog's `pool` and `pool_added` views).

The fixture `fixtures/pool_full_copies` is a store written by the code before the change (commit
59e6bd7, `pool_step` and `StepOutput.write`; fixtures/README.md): the bundled seeds, and per round
r001, r002 the verified samples and selection, and the pool of r000..r002 as full copies (84, 91, 94
rows, as on the demo). The tests run today's `pool_step` on the same inputs and compare.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest

from prismatic.data.export import export_rows
from prismatic.errors import PrismError
from prismatic.rounds import SEED_ROUND, previous_round
from prismatic.storage.base import Store
from prismatic.storage.catalog import Catalog
from prismatic.storage.deltas import added_rows, read_as_of, rounds_as_of
from prismatic.storage.factory import open_store
from prismatic.storage.schema import TABLES
from prismatic.synthesis.steps import pool_step

FIXTURE = Path(__file__).parent / "fixtures" / "pool_full_copies"
AS_OF = {"r000": 84, "r001": 91, "r002": 94}
ADDED = {"r000": 84, "r001": 7, "r002": 3}


@pytest.fixture
def legacy(tmp_path) -> Store:
    """A writable copy of the store made before the change."""
    shutil.copytree(FIXTURE, tmp_path / "legacy")
    return open_store(tmp_path / "legacy")


def run_pool(store: Store, catalog: Catalog, key: str, inputs: Store | None = None,
             selection: pl.DataFrame | None = None) -> dict:
    """Today's pool asset without Dagster: `pool_step` on the round's inputs (from `inputs`, default
    `store`; `selection` replaces the stored one), the previous pool read as of the round before, the
    output written through the catalog. Returns the step's facts."""
    inputs = inputs or store
    if key == SEED_ROUND:
        output = pool_step(key, seeds=inputs.read("seeds", SEED_ROUND))
    else:
        output = pool_step(key, previous_pool=read_as_of(store, "pool", previous_round(key), columns=["id"]),
                           selection=inputs.read("selection", key) if selection is None else selection,
                           verified=inputs.read("verified_samples", key))
    output.write(catalog, key, run_id=f"run-{key}", asset="pool")
    return output.facts


def counts(catalog: Catalog, view: str) -> dict[str, int]:
    return dict(catalog.query(f"select round, count(*) from {view} group by 1 order by 1")[1])


@pytest.fixture
def deltas(tmp_path, legacy) -> tuple[Store, Catalog]:
    """A store whose pool today's code wrote from the fixture's inputs, and its catalog."""
    store = open_store(tmp_path / "new")
    catalog = Catalog(tmp_path / "new.duckdb", store)
    for key in AS_OF:
        run_pool(store, catalog, key, inputs=legacy)
    return store, catalog


def test_deltas_read_back_as_the_pool_written_as_full_copies(legacy, deltas):
    store, catalog = deltas
    for key in AS_OF:
        stored = store.read("pool", key)  # the partition: only what the round added
        assert stored.height == ADDED[key] and set(stored["round_added"]) == {key}
        assert read_as_of(store, "pool", key).equals(legacy.read("pool", key))  # row for row, in order
    assert counts(catalog, "pool") == AS_OF and counts(catalog, "pool_added") == ADDED
    # The view's rows are the reader's, round by round.
    for key in AS_OF:
        _, rows = catalog.query(f"select id, prompt, response, answer, task, origin, round_added from pool "
                                f"where round = '{key}'")
        assert sorted(rows) == sorted(read_as_of(store, "pool", key).iter_rows())
    _, described = catalog.query("describe pool")
    assert [row[0] for row in described] == [*TABLES["pool"], "round"]
    # Bytes: the deltas hold each row once, the full copies hold r000's rows three times.
    size = {name: sum(f.stat().st_size for f in (root / "pool").rglob("*.parquet"))
            for name, root in (("deltas", store.root), ("copies", legacy.root))}
    assert size["deltas"] < 0.5 * size["copies"]


def test_a_store_of_full_copies_is_read_as_its_deltas(legacy, deltas, tmp_path):
    store, _ = deltas
    for key in AS_OF:
        assert legacy.read("pool", key).height == AS_OF[key]  # each partition a full copy
        assert read_as_of(legacy, "pool", key).equals(legacy.read("pool", key))
        assert added_rows(legacy, "pool", key).equals(store.read("pool", key))
    catalog = Catalog(tmp_path / "legacy.duckdb", legacy)
    catalog.refresh()
    assert counts(catalog, "pool") == AS_OF and counts(catalog, "pool_added") == ADDED
    for span in ((None, None), ("r001", None), ("r001", "r001"), (None, "r001")):
        assert export_rows(legacy, "pool", span)[0].equals(export_rows(store, "pool", span)[0]), span


def test_a_catalog_and_store_from_before_take_new_rounds(legacy, tmp_path):
    catalog = Catalog(tmp_path / "legacy.duckdb", legacy)
    with catalog._connect(read_only=False) as con:  # the view as the catalog held it before the change
        con.execute(f"CREATE VIEW pool AS SELECT * FROM read_parquet('{legacy.glob('pool')}', "
                    "hive_partitioning = true, union_by_name = true, hive_types = {'round': VARCHAR})")
    assert counts(catalog, "pool") == AS_OF
    run_pool(legacy, catalog, "r002")  # r002 rematerialized by today's code: a delta beside full copies
    assert legacy.read("pool", "r002").height == 3 and catalog.views() == ["pool", "pool_added"]
    assert read_as_of(legacy, "pool", "r002").equals(open_store(FIXTURE).read("pool", "r002"))
    verified = legacy.read("verified_samples", "r002").with_columns(id=pl.col("id").str.replace("r002", "r003"))
    legacy.write("verified_samples", "r003", verified)
    legacy.write("selection", "r003", legacy.read("selection", "r002").with_columns(
        id=pl.col("id").str.replace("r002", "r003"), kept=pl.lit(True)))
    facts = run_pool(legacy, catalog, "r003")
    assert facts == {"added": 6, "pool_size": 100}
    assert counts(catalog, "pool") == {**AS_OF, "r003": 100}
    assert read_as_of(legacy, "pool", "r003")["id"].to_list() == [
        *open_store(FIXTURE).read("pool", "r002")["id"], *verified["id"]]


def test_an_old_round_rematerialized_reads_only_the_rounds_before_it(deltas):
    store, catalog = deltas
    assert rounds_as_of(store, "pool", "r000") == ["r000"] and read_as_of(store, "pool", "r000").height == 84
    fewer = open_store(FIXTURE).read("selection", "r001")
    fewer = fewer.with_columns(kept=pl.col("kept") & (pl.int_range(pl.len()) < 2))  # of 7 kept, the first 2
    assert int(fewer["kept"].sum()) == 2
    facts = run_pool(store, catalog, "r001", inputs=open_store(FIXTURE), selection=fewer)
    assert facts == {"added": 2, "pool_size": 86}  # r000's 84, not r002's rows
    assert counts(catalog, "pool") == {"r000": 84, "r001": 86, "r002": 89}
    as_of = read_as_of(store, "pool", "r002")
    assert as_of.filter(round_added="r002").equals(store.read("pool", "r002")) and as_of["id"].is_unique().all()


def test_a_round_that_adds_nothing_is_still_a_round_of_the_pool(deltas):
    store, catalog = deltas
    inputs = open_store(FIXTURE)
    verified = inputs.read("verified_samples", "r002").with_columns(id=pl.col("id") + "x")
    store.write("verified_samples", "r003", verified)
    store.write("selection", "r003", inputs.read("selection", "r002").with_columns(
        id=pl.col("id") + "x", kept=pl.lit(False)))
    assert run_pool(store, catalog, "r003") == {"added": 0, "pool_size": 94}
    assert store.read("pool", "r003").is_empty()
    assert counts(catalog, "pool") == {**AS_OF, "r003": 94} and "r003" not in counts(catalog, "pool_added")
    assert read_as_of(store, "pool", "r003").equals(read_as_of(store, "pool", "r002"))


def test_rounds_past_r999_are_ordered_by_number(tmp_path):
    store = open_store(tmp_path / "store")
    catalog = Catalog(tmp_path / "catalog.duckdb", store)
    for number, key in enumerate(("r998", "r999", "r1000")):
        rows = pl.DataFrame({"id": [f"{key}-{i}" for i in range(number + 1)], "prompt": "q", "response": "r",
                             "answer": "1", "task": "math", "origin": "generated", "round_added": key})
        catalog.write_partition("pool", key, rows, {})
    assert read_as_of(store, "pool", "r999")["round_added"].to_list() == ["r998", "r999", "r999"]
    assert read_as_of(store, "pool", "r1000").height == 6
    assert counts(catalog, "pool") == {"r998": 1, "r999": 3, "r1000": 6}  # "r1000" < "r999" as text


def test_a_kept_id_already_in_the_pool_is_refused_and_a_missing_round_named(deltas, tmp_path):
    store, _ = deltas
    inputs = open_store(FIXTURE)
    verified = inputs.read("verified_samples", "r002").with_columns(
        id=pl.when(pl.int_range(pl.len()) == 1).then(pl.lit("r001-p000-0-s0")).otherwise("id"))
    selection = inputs.read("selection", "r002").with_columns(id=verified["id"])
    with pytest.raises(PrismError, match=r"round r002 keeps id\(s\) already in the pool, e.g. \['r001-p000-0-s0'\]$"):
        pool_step("r002", previous_pool=read_as_of(store, "pool", "r001"), selection=selection, verified=verified)
    with pytest.raises(PrismError, match="table 'pool' has no round 'r007'"):
        read_as_of(store, "pool", "r007")
    with pytest.raises(PrismError, match="table 'pool' has no round 'r000'"):
        read_as_of(open_store(tmp_path / "empty"), "pool", "r000")
    assert read_as_of(inputs, "selection", "r001").equals(inputs.read("selection", "r001"))  # a plain table
