"""Store and catalog bound to the home's configuration (local Parquet now; S3 by config later)."""

from dagster import ConfigurableResource

from prismatic.catalog import Catalog
from prismatic.config import load_config
from prismatic.store import Store


class StoreResource(ConfigurableResource):
    """Parquet tables per round under `store` (default `$PRISM_HOME/store`), DuckDB views over them."""

    home: str = ".prism"

    def store(self) -> Store:
        return Store(load_config(self.home).store_uri)

    def catalog(self) -> Catalog:
        config = load_config(self.home)
        return Catalog(config.catalog_path, config.store_uri)
