"""The executor and IO manager of prism.yaml's `orchestration` section (docs/architecture.md
"Executors"), and the op tags of a gradient-feature shard.

- `in_process` (default): `in_process_executor`, every step in the run's process.
- `multiprocess`: `multiprocess_executor` with `max_concurrent` steps at once (0: `os.cpu_count()`), each
  step process forked from a forkserver that has imported `prism_assets.definitions` once.
- `k8s`: dagster-k8s's `k8s_job_executor`, one Kubernetes job per step, in `k8s.namespace`, with
  `k8s.image` (None: the run pod's image), `k8s.service_account_name`, the keys of `k8s.env_secrets`
  as environment, `max_concurrent` pods at once (0: no limit), and `PRISM_HOME`/`PRISM_STORE` set
  to the run's home and store so that each step pod loads the same configuration. Step pods share
  no disk, so the values passed between ops go through `S3PickleIOManager` under
  `<store>/_dagster_io`, and a local store is refused (`InputError` naming
  `orchestration.executor`). Each feature shard's pod asks for `k8s.shard_gpus` GPUs through the op
  tag `dagster-k8s/config` (`shard_op_tags`).
- `ray`: `in_process_executor`: every step in the run's process, which joins the Ray cluster at
  `ray.address` for the gradient features and runs each shard there as an actor
  (`prism_assets/assets/features.py`, `prismatic.gradients.ray_shards`). Shard results come back through
  Ray's object store, so the default IO manager stays.
"""

from __future__ import annotations

import os
from typing import Any

from dagster import ExecutorDefinition, in_process_executor, multiprocess_executor
from dagster_aws.s3 import S3PickleIOManager, S3Resource

from prismatic.config import OrchestrationConfig, PrismConfig
from prismatic.config_file import CONFIG_FILE
from prismatic.errors import InputError
from prismatic.storage.s3 import parse_s3_uri

IO_PREFIX = "_dagster_io"
"""Under the store's prefix: the values passed between ops when steps run in separate pods."""
K8S_CONFIG_TAG = "dagster-k8s/config"


def _require_s3_store(config: PrismConfig) -> tuple[str, str]:
    if not config.store_uri.startswith("s3://"):
        raise InputError(config.home / CONFIG_FILE, f"the k8s executor runs each step in its own pod, which cannot "
                         f"reach the local store {config.store_uri}: set `store` to s3://bucket/prefix",
                         field="orchestration.executor")
    return parse_s3_uri(config.store_uri)


def executor_for(config: PrismConfig) -> ExecutorDefinition:
    """The executor of `config.orchestration.executor`; k8s with a local store is an `InputError`."""
    orchestration = config.orchestration
    if orchestration.executor == "multiprocess":
        # Step processes fork from a server that has imported the definitions (torch, transformers, dagster)
        # instead of each importing them again.
        return multiprocess_executor.configured({
            "max_concurrent": orchestration.max_concurrent or os.cpu_count(),
            "start_method": {"forkserver": {"preload_modules": ["prism_assets.definitions"]}},
        })
    if orchestration.executor == "k8s":
        from dagster_k8s import k8s_job_executor

        _require_s3_store(config)
        k8s = orchestration.k8s
        settings: dict[str, Any] = {
            "job_namespace": k8s.namespace,
            "env_secrets": list(k8s.env_secrets),
            "env_vars": [f"PRISM_HOME={config.home}", f"PRISM_STORE={config.store_uri}"],
        }
        if k8s.image:
            settings["job_image"] = k8s.image
        if k8s.service_account_name:
            settings["service_account_name"] = k8s.service_account_name
        if orchestration.max_concurrent:
            settings["max_concurrent"] = orchestration.max_concurrent
        return k8s_job_executor.configured(settings)
    return in_process_executor  # in_process, and ray: the shards fan out inside the features op


def io_manager_for(config: PrismConfig, s3: S3Resource) -> dict[str, Any]:
    """`{"io_manager": S3PickleIOManager}` under `<store>/_dagster_io`, through `s3` (the store's S3
    resource), for the k8s executor; else `{}` (Dagster's default IO manager, files under the instance's
    storage directory)."""
    if config.orchestration.executor != "k8s":
        return {}
    bucket, prefix = _require_s3_store(config)
    return {"io_manager": S3PickleIOManager(s3_resource=s3, s3_bucket=bucket,
                                            s3_prefix=f"{prefix}/{IO_PREFIX}" if prefix else IO_PREFIX)}


def shard_op_tags(config: PrismConfig | OrchestrationConfig) -> dict[str, Any]:
    """Tags of a gradient-feature shard op: with the k8s executor and `k8s.shard_gpus` > 0, the
    `dagster-k8s/config` tag whose container limit is `nvidia.com/gpu: shard_gpus`; else none."""
    orchestration = config.orchestration if isinstance(config, PrismConfig) else config
    gpus = orchestration.k8s.shard_gpus
    if orchestration.executor != "k8s" or gpus == 0:
        return {}
    return {K8S_CONFIG_TAG: {"container_config": {"resources": {"limits": {"nvidia.com/gpu": gpus}}}}}
