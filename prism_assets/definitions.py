"""`defs`: everything Dagster loads (`dagster dev -w workspace.yaml`). Resources read `$PRISM_HOME`.

The executor is prism.yaml's `orchestration.executor` (prism_assets/scaleout.py). The default,
`in_process`, runs steps in the run's own process: a round is a chain of steps plus its checks, so
separate step processes would add nothing but a code load per step and a vLLM engine and proxy
model loaded again in each step that uses them. `multiprocess` and `k8s` pay that so that the
gradient-feature shards run side by side (k8s: one GPU pod per shard, values between steps in S3).
"""

import os

from dagster import Definitions

from prism_assets.checks import ROUND_CHECKS
from prism_assets.clustering import clusters, pool, selection
from prism_assets.diversity import diversity_scores
from prism_assets.features import build_gradient_features
from prism_assets.generations import generations
from prism_assets.jobs import prism_round, round_checks, round_provenance_checks, seed_job
from prism_assets.scaleout import executor_for, io_manager_for
from prism_assets.schedules import build_round_schedule
from prism_assets.seeds import seeds
from prism_assets.sensors import next_round_sensor, provenance_sensor
from prism_assets.verification import verified_samples
from prismatic.config import load_config
from resources.generator import GeneratorResource
from resources.home import PrismHome
from resources.proxy import ProxyResource
from resources.store import StoreResource


def build_definitions(home: str | None = None) -> Definitions:
    """Definitions bound to one Prism home (default `$PRISM_HOME`, else `./.prism`)."""
    home = home or os.environ.get("PRISM_HOME", ".prism")
    config = load_config(home)
    return Definitions(
        assets=[seeds, generations, verified_samples, build_gradient_features(config), selection, pool, clusters,
                diversity_scores],
        asset_checks=ROUND_CHECKS,
        jobs=[prism_round, seed_job, round_checks, round_provenance_checks],
        sensors=[next_round_sensor, provenance_sensor],
        schedules=[build_round_schedule(config.rounds.schedule_cron, config.rounds.schedule_timezone)],
        executor=executor_for(config),
        resources={"prism_home": PrismHome(home=home), "store": StoreResource(home=home),
                   "generator": GeneratorResource(home=home), "proxy": ProxyResource(home=home),
                   **io_manager_for(config)},
    )


defs = build_definitions()
