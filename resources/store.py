"""Store and catalog bound to the home's configuration (local Parquet now; S3 by config later)."""

from dagster import ConfigurableResource, InitResourceContext
from pydantic import PrivateAttr

from prismatic.catalog import Catalog
from prismatic.config import load_config
from prismatic.store import ROUND_RE, RoundLock, Store


class StoreResource(ConfigurableResource):
    """Parquet tables per round under `store` (default `$PRISM_HOME/store`), DuckDB views over them."""

    home: str = ".prism"
    _lock: RoundLock | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        """Lock the run's round partition while this process runs it: a run of a round that another
        run is writing (`prism run`, the UI, a sensor) fails here, before its steps write anything."""
        run = context.dagster_run
        tags = run.tags if run is not None else {}
        key = tags.get("dagster/partition")
        if key is None and tags.get("dagster/asset_partition_range_start") == tags.get(
                "dagster/asset_partition_range_end"):  # a backfill's one-round run
            key = tags.get("dagster/asset_partition_range_start")
        if key and ROUND_RE.fullmatch(key):
            self._lock = self.store().lock_round(key, f"dagster run {run.run_id} of {run.job_name}",
                                                 run_id=run.run_id).acquire()

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def store(self) -> Store:
        return Store(load_config(self.home).store_uri)

    def catalog(self) -> Catalog:
        config = load_config(self.home)
        return Catalog(config.catalog_path, config.store_uri)
