"""`defs`: everything Dagster loads (`dagster dev -w workspace.yaml`). Resources read `$PRISM_HOME`.

The executor is prism.yaml's `orchestration.executor` (prism_assets/scaleout.py). The default,
`in_process`, runs steps in the run's own process: a round is a chain of steps plus its checks, so
separate step processes would add nothing but a code load per step and a vLLM engine and proxy
model loaded again in each step that uses them. `multiprocess` and `k8s` pay that so that the
gradient-feature shards run side by side (k8s: one GPU pod per shard, values between steps in S3).
"""

import os

from dagster import Definitions, EnvVar

from prism_assets.assets.checks import ROUND_CHECKS
from prism_assets.assets.clusters import clusters
from prism_assets.assets.diversity import diversity_scores
from prism_assets.assets.features import build_gradient_features
from prism_assets.assets.generations import generations
from prism_assets.assets.pool import pool
from prism_assets.assets.report import round_report
from prism_assets.assets.seeds import seeds
from prism_assets.assets.selection import selection
from prism_assets.assets.student import student_eval
from prism_assets.assets.verification import verified_samples
from prism_assets.automation.jobs import prism_round, round_checks, round_provenance_checks, seed_job
from prism_assets.automation.schedules import build_round_schedule
from prism_assets.automation.sensors import lost_run_sensor, next_round_sensor, provenance_sensor
from prism_assets.scaleout import executor_for, io_manager_for
from resources.generator import GeneratorResource
from resources.home import PrismHome, home_config
from resources.proxy import ProxyResource
from resources.store import StoreResource, s3_resource


def build_definitions(home: str | None = None, store: str | None = None) -> Definitions:
    """Definitions bound to one Prism home and store.

    home: the home folder; None: `$PRISM_HOME` (the resource reads it as an `EnvVar`, so every step
      process and pod resolves its own), else `./.prism`.
    store: the store location (`prism run --store`); None: the home's `store_uri` (prism.yaml's
      `store`, `$PRISM_STORE` over it, else `<home>/store`). Step processes rebuild these definitions
      without it: `prism_cli.runner` ships it to them in the run's resource config.

    prism.yaml is loaded once per process (`home_config`); every resource shares that configuration.
    """
    config = home_config(home)
    if store:
        config = config.model_copy(update={"store": store})
    if home:
        prism_home = PrismHome(home=home)
    elif "PRISM_HOME" in os.environ:
        prism_home = PrismHome(home=EnvVar("PRISM_HOME"))
    else:
        prism_home = PrismHome()
    s3 = s3_resource(config)
    return Definitions(
        assets=[seeds, generations, verified_samples, build_gradient_features(config), selection, pool, clusters,
                diversity_scores, round_report, *([student_eval] if config.student.enabled else [])],
        asset_checks=ROUND_CHECKS,
        jobs=[prism_round, seed_job, round_checks, round_provenance_checks],
        sensors=[next_round_sensor, provenance_sensor, lost_run_sensor],
        schedules=[build_round_schedule(config.rounds.schedule_cron, config.rounds.schedule_timezone)],
        executor=executor_for(config),
        resources={"prism_home": prism_home, "store": StoreResource(prism_home=prism_home, s3=s3, uri=store),
                   "generator": GeneratorResource(prism_home=prism_home), "proxy": ProxyResource(prism_home=prism_home),
                   **io_manager_for(config, s3)},
    )


defs = build_definitions()
