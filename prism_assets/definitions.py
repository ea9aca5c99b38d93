"""`defs`: everything Dagster loads (`dagster dev -w workspace.yaml`)."""

from dagster import Definitions, EnvVar

from prism_assets.seeds import seeds
from resources.home import PrismHome

defs = Definitions(
    assets=[seeds],
    resources={"prism_home": PrismHome(home=EnvVar("PRISM_HOME"))},
)
