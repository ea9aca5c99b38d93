"""The Prism home folder: `prism.yaml`, models, store, catalog and the Dagster instance live under it."""

from dagster import ConfigurableResource

from prismatic.config import PrismConfig, load_config


class PrismHome(ConfigurableResource):
    """Where `prism.yaml` is; resolves like the CLI (`$PRISM_HOME`, else `./.prism`)."""

    home: str = ".prism"

    def config(self) -> PrismConfig:
        return load_config(self.home)
