"""The DuckDB catalog: one VIEW per store table over its Parquet files, queried read-only.

`$PRISM_HOME/catalog.duckdb` holds, for every table with at least one round in the store,

    CREATE OR REPLACE VIEW <table> AS SELECT * FROM read_parquet('<root>/<table>/round=*/*.parquet',
        hive_partitioning = true, union_by_name = true, hive_types = {'round': VARCHAR})

so `select round, count(*) from verified_samples group by 1` works, `round` being the VARCHAR of
the partition directory ('r001'). The views hold globs, not data: a round written after `refresh()`
shows up in the next query without another refresh; a view is (re)created only when its table has
none over this store's files yet (its first round), or when the whole catalog is rebuilt. DuckDB
reads the fixed-size `feature` arrays as `FLOAT[]` lists.

A table stored as deltas (`prismatic.storage.deltas`: the pool) gets two views. `pool_added` reads
its partitions as above, without the copies of earlier rounds' rows that a partition written before
the change holds (`round_added` naming an earlier round than `round`): the rows each round added.
`pool` is the table as of each round: every row of `pool_added` once for each stored round at or
after the one that added it, with that round as `round` (rounds in numeric order: r999 before r1000;
the rounds are the partitions' directories, so a round that added nothing is there too). So
`select round, count(*) from pool group by 1` counts the pool after each round, as `read_as_of`
reads it in Python.

Concurrency. DuckDB locks the database file: one read-write process at a time, or any number of
read-only ones, never both. So:
- `refresh()` (the writer: an asset after it writes, `prism run`) opens the file read-write only for
  the few DDL statements in one transaction, then closes it;
- `query()` (the reader: `prism query`) opens it `read_only=True`, runs the statement, closes it;
- both wait up to `lock_timeout` seconds for the other side's lock before giving up with a
  `PrismError`. Parquet files are replaced atomically by the store, so a query that runs while a
  round is being written sees the old partition or the new one.
Readers cannot write: the connection is read-only and `query` accepts only SELECT/EXPLAIN
statements (a read-only DuckDB connection would still let `COPY ... TO` write files).

S3 stores. The views hold `s3://bucket/prefix/<table>/round=*/*.parquet` globs, and every connection
to a catalog of an S3 store (or with a view over s3://, whatever the store given) registers an
fsspec `s3fs.S3FileSystem` (the `s3:` settings, credentials from the standard AWS chain) that DuckDB
reads them through. DuckDB's own httpfs extension is never used: its automatic install and load are
switched off, so nothing is downloaded at run time and a catalog works offline against any
S3-compatible endpoint. The filesystem's listings are cached for one connection (one query, or one
refresh) and forgotten at the next: a query lists each directory once, not once per file, and still
sees the partitions as they are when it starts.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import duckdb

from prismatic.config import S3Config
from prismatic.errors import PrismError
from prismatic.storage.base import Store
from prismatic.storage.deltas import DELTA_TABLES, added_view
from prismatic.storage.factory import open_store
from prismatic.storage.s3 import S3Store
from prismatic.storage.schema import PARTITION_COLUMN, TABLES

CATALOG_FILE = "catalog.duckdb"
READ_STATEMENTS = frozenset({duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN})


def one_line(exc: BaseException) -> str:
    """DuckDB's message without the caret picture under it, on one line."""
    head = str(exc).strip().split("\n\n", 1)[0]
    return " ".join(part.strip() for part in head.splitlines() if part.strip())


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class Catalog:
    """Views over a `Store`, in a DuckDB file that readers open read-only."""

    def __init__(self, db_path: str | Path, store: Store | str | Path, *, lock_timeout: float = 10.0,
                 s3: S3Config | None = None):
        self.db_path = Path(db_path).expanduser().absolute()
        self.store = store if isinstance(store, Store) else open_store(store, s3=s3)
        self.lock_timeout = lock_timeout
        self.s3 = self.store.settings if isinstance(self.store, S3Store) else (s3 or S3Config())
        self._filesystem = None

    def __repr__(self) -> str:
        return f"Catalog({str(self.db_path)!r}, {self.store.uri!r})"

    def view_sql(self, table: str) -> str:
        """The statements (`;`-separated) that (re)create the view of `table`, or of a delta table its two
        views (module docstring): first `<table>_added`, then `<table>`."""
        files = (f"read_parquet({_sql_string(self.store.glob(table))}, hive_partitioning = true, "
                 f"union_by_name = true, hive_types = {{'{PARTITION_COLUMN}': VARCHAR}})")
        if table not in DELTA_TABLES:
            return f'CREATE OR REPLACE VIEW "{table}" AS SELECT * FROM {files}'
        added, column = added_view(table), DELTA_TABLES[table]
        number = "CAST(substr({}, 2) AS BIGINT)"
        rounds = (f"SELECT DISTINCT regexp_extract(file, '{PARTITION_COLUMN}=(r[0-9]+)/[^/]*$', 1) "
                  f"AS {PARTITION_COLUMN} FROM glob({_sql_string(self.store.glob(table))})")
        return (f'CREATE OR REPLACE VIEW "{added}" AS SELECT * FROM {files} WHERE coalesce('
                f"TRY_CAST(substr({column}, 2) AS BIGINT) >= {number.format(PARTITION_COLUMN)}, true); "
                f'CREATE OR REPLACE VIEW "{table}" AS SELECT d.* EXCLUDE ({PARTITION_COLUMN}), r.{PARTITION_COLUMN} '
                f'FROM "{added}" AS d JOIN ({rounds}) AS r '
                f"ON {number.format('d.' + PARTITION_COLUMN)} <= {number.format('r.' + PARTITION_COLUMN)}")

    def write_partition(self, table: str, round_key: str, frame, metadata: dict) -> None:
        """`store.write(table, round_key, frame, metadata)`, then give the table its view if it has none
        over this store's files. Views read a file pattern, so new rounds of a table appear in queries
        by themselves; a view is created when its table gets its first partition, and the whole
        catalog is built when its file is missing. A run killed between a table's first write and
        its view leaves the table without one; its rerun writes that partition again and creates it.
        A delta table's views are checked by its `_added` view (a catalog made before the pool was
        stored as deltas has none, so its first new pool partition rebuilds both).
        The check reads the catalog file, not the store: it costs no S3 request."""
        self.store.write(table, round_key, frame, metadata=metadata)
        if not self.db_path.exists():
            self.refresh()
        elif _sql_string(self.store.glob(table)) not in self._view_definition(
                added_view(table) if table in DELTA_TABLES else table):
            self.refresh([table])

    def _view_definition(self, table: str) -> str:
        """The SQL of the catalog's view of `table` ('' when it has none)."""
        _, rows = self.query(f"SELECT sql FROM duckdb_views() WHERE NOT internal AND view_name = {_sql_string(table)}")
        return rows[0][0] if rows else ""

    def refresh(self, tables: list[str] | None = None) -> list[str]:
        """(Re)create the view of every table with data, drop the others; returns the viewed tables.
        tables: (re)create only the views of these tables, which have data, and leave the others.

        One short read-write transaction: readers wait at most that long.
        """
        present = self.store.tables() if tables is None else list(tables)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        current = ""
        with self._connect(read_only=False) as con:
            con.execute("BEGIN TRANSACTION")
            try:
                for table in TABLES if tables is None else present:
                    current = table
                    if table in present:
                        con.execute(self.view_sql(table))
                    else:
                        con.execute(f'DROP VIEW IF EXISTS "{table}"')
                        if table in DELTA_TABLES:
                            con.execute(f'DROP VIEW IF EXISTS "{added_view(table)}"')
                con.execute("COMMIT")
            except duckdb.Error as exc:
                con.execute("ROLLBACK")
                raise PrismError(f"catalog {self.db_path}: view '{current}': {one_line(exc)}") from None
        return present

    def views(self) -> list[str]:
        """Names of the views in the catalog (empty when it does not exist yet)."""
        if not self.db_path.exists():
            return []
        _, rows = self.query("SELECT view_name FROM duckdb_views() WHERE NOT internal ORDER BY 1")
        return [row[0] for row in rows]

    def query(self, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run read-only SQL; returns (column names, rows) of the last statement."""
        if not self.db_path.exists():
            raise PrismError(f"no catalog at {self.db_path}: run a round first (prism demo, or prism run "
                             f"--round r000), then query")
        try:
            statements = duckdb.extract_statements(sql)
        except duckdb.Error as exc:
            raise PrismError(one_line(exc)) from None
        if not statements:
            raise PrismError("empty query")
        for statement in statements:
            if statement.type not in READ_STATEMENTS:
                raise PrismError(f"queries are read-only: only SELECT statements run here, got "
                                 f"{statement.type.name}")
        with self._connect(read_only=True) as con:
            try:
                cursor = con.execute(sql)
                if cursor.description is None:
                    return [], []
                columns = [column[0] for column in cursor.description]
                return columns, cursor.fetchall()
            except duckdb.Error as exc:
                raise PrismError(one_line(exc)) from None

    def _connect(self, *, read_only: bool) -> duckdb.DuckDBPyConnection:
        """Open the catalog, waiting up to `lock_timeout` s while another process holds the lock."""
        deadline = time.monotonic() + self.lock_timeout
        pause = 0.02
        while True:
            try:
                con = duckdb.connect(str(self.db_path), read_only=read_only,
                                     config={"autoinstall_known_extensions": False,
                                             "autoload_known_extensions": False})
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower():
                    raise PrismError(f"catalog {self.db_path}: {one_line(exc)}") from None
                if time.monotonic() >= deadline:
                    raise PrismError(f"catalog {self.db_path} is locked by another process "
                                     f"(waited {self.lock_timeout:g} s); try again") from None
            except duckdb.Error as exc:
                raise PrismError(f"catalog {self.db_path}: {one_line(exc)}") from None
            else:
                try:
                    if isinstance(self.store, S3Store) or con.execute(
                            "SELECT count(*) FROM duckdb_views() WHERE sql LIKE '%''s3://%'").fetchone()[0]:
                        con.register_filesystem(self._s3_filesystem())
                except duckdb.Error as exc:
                    con.close()
                    raise PrismError(f"catalog {self.db_path}: {one_line(exc)}") from None
                return con
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, 0.5)

    def _s3_filesystem(self):
        """The fsspec filesystem DuckDB reads an S3 store through (one per catalog). Its listings cache
        is emptied here, at each connection: a partition rewritten since the last query is read as it
        is now, while one query or one refresh lists each directory once (a view over one round cost 9
        requests to create and 9 to query without the cache, 3 and 2 with it; over three rounds, 25
        and 43 without, 7 and 4 with)."""
        if self._filesystem is None:
            import s3fs

            settings = self.s3
            self._filesystem = s3fs.S3FileSystem(
                endpoint_url=settings.endpoint_url, profile=settings.profile_name,
                client_kwargs={"region_name": settings.region_name} if settings.region_name else {},
                skip_instance_cache=True, use_listings_cache=True)
        self._filesystem.invalidate_cache()
        return self._filesystem
