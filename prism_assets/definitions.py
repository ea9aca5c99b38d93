"""`defs`: everything Dagster loads (`dagster dev -w workspace.yaml`). Resources read `$PRISM_HOME`."""

import os

from dagster import Definitions

from prism_assets.clustering import clusters, pool, selection
from prism_assets.diversity import diversity_scores
from prism_assets.features import gradient_features
from prism_assets.generations import generations
from prism_assets.jobs import prism_round, seed_job
from prism_assets.seeds import seeds
from prism_assets.verification import verified_samples
from resources.generator import GeneratorResource
from resources.home import PrismHome
from resources.proxy import ProxyResource
from resources.store import StoreResource


def build_definitions(home: str | None = None) -> Definitions:
    """Definitions bound to one Prism home (default `$PRISM_HOME`, else `./.prism`)."""
    home = home or os.environ.get("PRISM_HOME", ".prism")
    return Definitions(
        assets=[seeds, generations, verified_samples, gradient_features, selection, pool, clusters, diversity_scores],
        jobs=[prism_round, seed_job],
        resources={"prism_home": PrismHome(home=home), "store": StoreResource(home=home),
                   "generator": GeneratorResource(home=home), "proxy": ProxyResource(home=home)},
    )


defs = build_definitions()
