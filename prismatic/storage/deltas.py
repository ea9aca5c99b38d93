"""Tables stored as deltas: round rN's partition holds only the rows rN added, and readers see the table
as of rN, the rows of every partition up to rN. See docs/data-model.md#pool.

`DELTA_TABLES` names them (today: `pool`) with the column that says which round added a row. For such a
table,

    as of rN  =  added(r000) ∪ added(r001) ∪ … ∪ added(rN)      (every stored round ≤ rN, in round order;
                                                                within a round, in stored order)

which is, row for row, the full copy that round rN's partition held before the pool was stored as
deltas. Writing a round costs what the round adds; reading the table as of a round costs its rows,
one file per round. `read_as_of` is the one reader of every table (a plain table: its partition), used by
the assets, the checks, the CLI and the export; the DuckDB catalog expands the deltas the same way in
SQL (`prismatic.storage.catalog`: the view `pool` as of each round, and `pool_added`, what each round
added).

Stores written before the change hold a full copy in every partition. They need no migration: a row
of partition rN whose round column names an earlier round is a copy, and `added_rows` drops it (the
row is read from the partition of the round that added it), so a full-copy partition reads as the
delta it stands for, and a store that mixes both kinds reads right. Such a store keeps the bytes of
its copies until its rounds are rematerialized.
"""

from __future__ import annotations

import polars as pl

from prismatic.rounds import round_number, sort_rounds
from prismatic.storage.base import Store
from prismatic.storage.schema import check_table

DELTA_TABLES: dict[str, str] = {"pool": "round_added"}
"""Tables stored as deltas → the column naming the round that added each row (equal to the partition's
round in every row written since the change)."""

ADDED_SUFFIX = "_added"
"""The catalog's view of a delta table's raw partitions is `<table>_added` (`pool_added`)."""


def is_delta(table: str) -> bool:
    """Whether `table` is stored as deltas (`DELTA_TABLES`)."""
    return check_table(table) in DELTA_TABLES


def added_view(table: str) -> str:
    """The name of the catalog view of what each round added to delta table `table`: `pool_added`."""
    return table + ADDED_SUFFIX


def not_a_copy(column: str, key: str) -> pl.Expr:
    """True for the rows of partition `key` that `key` added: those whose `column` names round `key` (or
    a later one, or no round at all, which only a hand-written file holds); False for the copies of earlier
    rounds' rows that a full-copy partition written before the change holds."""
    number = round_number(key)
    return pl.col(column).str.slice(1).cast(pl.Int64, strict=False).fill_null(number) >= number


def added_rows(store: Store, table: str, key: str, columns: list[str] | None = None) -> pl.DataFrame:
    """The rows round `key` added to delta table `table`: its partition without copies of earlier rounds'
    rows (`not_a_copy`); `columns`: only those (all, in schema order, when None)."""
    column = DELTA_TABLES[check_table(table)]
    wanted = None if columns is None else list(dict.fromkeys([*columns, column]))
    frame = store.read(table, key, wanted).filter(not_a_copy(column, key))
    return frame if columns is None else frame.select(columns)


def rounds_as_of(store: Store, table: str, key: str) -> list[str]:
    """The stored rounds of `table` up to and including `key`, in round order; `key` must be stored (a
    `PrismError` naming table, round and store when it is not)."""
    number = round_number(key)
    if number == 0:  # nothing before it: no listing (an S3 LIST), only the partition's own check
        if not store.exists(table, key):
            raise store._missing(table, key)
        return [key]
    stored = store.rounds(table)
    if key not in stored:
        raise store._missing(table, key)
    return [r for r in sort_rounds(stored) if round_number(r) <= number]


def read_as_of(store: Store, table: str, key: str, columns: list[str] | None = None) -> pl.DataFrame:
    """Table `table` as of round `key`: for a delta table the union of `added_rows` of every stored round
    up to `key` (module docstring), otherwise the partition `key` itself (`Store.read`). `columns`: only
    those. A missing partition `key` is a `PrismError`."""
    if not is_delta(table):
        return store.read(table, key, columns)
    return pl.concat([added_rows(store, table, r, columns) for r in rounds_as_of(store, table, key)])
