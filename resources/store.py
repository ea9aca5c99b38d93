"""Store and catalog bound to the home's configuration: a local directory or an S3 prefix."""

from __future__ import annotations

from dagster import ConfigurableResource, InitResourceContext
from dagster_aws.s3 import S3Resource
from pydantic import PrivateAttr

from prismatic.config import PrismConfig
from prismatic.rounds import ROUND_RE
from prismatic.storage.base import Store
from prismatic.storage.catalog import Catalog
from prismatic.storage.factory import open_store
from resources.home import PrismHome


def s3_resource(config: PrismConfig) -> S3Resource:
    """dagster-aws's S3 resource for the home's `s3:` settings; credentials from the standard AWS chain."""
    return S3Resource(endpoint_url=config.s3.endpoint_url, region_name=config.s3.region_name,
                      profile_name=config.s3.profile_name)


class StoreResource(ConfigurableResource):
    """Parquet tables per round at `uri`, DuckDB views over them.

    uri: a directory or `s3://bucket/prefix` (`prism run --store`, shipped to every step in the run's
      resource config); None: the home's `store_uri` (prism.yaml's `store`, `$PRISM_STORE` over it,
      else `<home>/store`).
    s3: the S3 client's settings for an `s3://` store; None: built from the home's `s3:` section on use.
    """

    prism_home: PrismHome
    s3: S3Resource | None = None
    uri: str | None = None
    _lock: object | None = PrivateAttr(default=None)
    _opened: tuple[str, Store] | None = PrivateAttr(default=None)

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
        """The store, opened once per resource instance (an S3 store's client built once), and again only
        when the configured location changes.

        Dagster builds a fresh instance of this resource for each run in each process (and each sensor
        tick), so an S3 store is opened with its run cache (`S3Store`, `run_cache`): what this run wrote
        or read is not asked again (the S3 requests of a seed round: benchmarks/results/measurements.md)."""
        config = self.prism_home.config()
        uri = self.uri or config.store_uri
        if self._opened is None or self._opened[0] != uri:
            client = (self.s3 or s3_resource(config)).get_client() if uri.startswith("s3://") else None
            self._opened = (uri, open_store(uri, s3=config.s3, client=client, run_cache=True))
        return self._opened[1]

    def catalog(self) -> Catalog:
        return Catalog(self.prism_home.config().catalog_path, self.store())
