"""Gradient-feature shards as Ray actors on a cluster (`orchestration.executor: ray`; docs/architecture.md
"Executors").

`ray_feature_shards` joins the cluster at `orchestration.ray.address` (`prismatic.ray_connect`), puts the round's
samples in the cluster's object store once, and starts one `ShardWorker` actor per shard, each asking
for `num_cpus_per_shard` CPUs and `num_gpus_per_shard` GPUs and spread over the nodes. An actor loads
the proxy once, computes its shard's whole contiguous run of the batch plan
(`prismatic.gradients.featureset.shard_units`), so the merged features equal the unsharded ones bit
for bit, and is stopped as soon as its result is in, which frees its CPUs/GPUs for a shard still
waiting or being retried. A worker node that dies mid-shard takes its actor with it: Ray restarts the
actor on another node (up to `shard_retries` times) and runs the shard again there.

Each shard reports where it ran (`Placement`): its sample count, node id, node name (`ray start --node-name`, default
the node's IP), IP, worker pid, whether its actor was a restart, and its proxy-load and compute
seconds. Imports Ray only when called.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import polars as pl

from prismatic.config import FeaturesConfig, RayConfig
from prismatic.errors import PrismError
from prismatic.gradients.featureset import FeatureSet
from prismatic.ray_connect import connect
from prismatic.synthesis.steps import feature_shard_step


@dataclass
class Placement:
    """Where one shard ran and what it cost there (seconds are wall seconds on the worker)."""

    shard: int
    samples: int
    node_id: str
    node_name: str
    node_ip: str
    pid: int
    restarted: bool
    load_s: float
    compute_s: float


@dataclass
class RayShards:
    """Every shard's features, in shard order, and where each ran."""

    shards: list[FeatureSet]
    placements: list[Placement]

    def nodes(self) -> list[dict[str, Any]]:
        """The placements as plain dicts (metadata, provenance)."""
        return [asdict(placement) for placement in self.placements]


class ShardWorker:
    """A Ray actor that holds the proxy on one worker process and computes feature shards with it. The
    proxy loads on the first shard, so a proxy that cannot load fails that call with its own error."""

    def __init__(self, features: FeaturesConfig, models_dir: str, threads: int):
        import torch

        torch.set_num_threads(threads)
        self.features, self.models_dir = features, Path(models_dir)
        self.proxy: tuple | None = None
        self.load_s = 0.0

    def featurize(self, samples: pl.DataFrame, index: int, count: int) -> tuple[FeatureSet, Placement]:
        """Shard `index` of `count` of `samples` (`prismatic.synthesis.steps.feature_shard_step`) and where it ran."""
        import ray

        from prismatic.gradients.proxy import compute_features, load_proxy

        if self.proxy is None:
            started = time.perf_counter()
            self.proxy = load_proxy(self.features, self.models_dir)
            self.load_s = time.perf_counter() - started

        def featurize(frame: pl.DataFrame, shard: tuple[int, int]) -> tuple[FeatureSet, str]:
            return compute_features(frame, self.features, self.models_dir, proxy_model=self.proxy, progress=False,
                                    shard=shard)

        started = time.perf_counter()
        result = feature_shard_step(samples, (index, count), featurize)
        context = ray.get_runtime_context()
        node_id = context.get_node_id()
        node = next((n for n in ray.nodes() if n["NodeID"] == node_id), {})
        return result, Placement(shard=index, samples=len(result.ids), node_id=node_id,
                                 node_name=node.get("NodeName", ""), node_ip=node.get("NodeManagerAddress", ""),
                                 pid=os.getpid(), restarted=context.was_current_actor_reconstructed,
                                 load_s=round(self.load_s, 3), compute_s=round(time.perf_counter() - started, 3))


def _no_proxy(samples: pl.DataFrame, shard: tuple[int, int]) -> tuple[FeatureSet, str]:
    raise PrismError("no proxy is loaded for an empty round")


def ray_feature_shards(samples: pl.DataFrame, count: int, features: FeaturesConfig, models_dir: str | Path,
                       ray_config: RayConfig, config_path: str | Path,
                       log: Callable[[str], None] | None = None) -> RayShards:
    """Features of all `count` shards of `samples`, each computed by its own `ShardWorker` actor on the
    cluster of `ray_config` (see the module docstring), in shard order, with their placements.

    An error raised by a shard (an overlong sample, a proxy that does not load) is re-raised as it
    was; a shard whose actor died more than `shard_retries` times is a `PrismError` naming it.
    """
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    joined = connect(ray_config, config_path)
    if samples.is_empty():  # nothing to featurize: no actor, no proxy load
        if joined:
            ray.shutdown()
        return RayShards(shards=[feature_shard_step(samples, (index, count), _no_proxy) for index in range(count)],
                         placements=[])
    worker = ray.remote(ShardWorker).options(
        num_cpus=ray_config.num_cpus_per_shard, num_gpus=ray_config.num_gpus_per_shard,
        max_restarts=ray_config.shard_retries, max_task_retries=ray_config.shard_retries,
        scheduling_strategy="SPREAD")
    threads = max(1, round(ray_config.num_cpus_per_shard))
    actors: dict[int, Any] = {}
    try:
        samples_ref = ray.put(samples)
        actors = {index: worker.remote(features, str(models_dir), threads) for index in range(count)}
        pending = {actors[index].featurize.remote(samples_ref, index, count): index for index in range(count)}
        results: dict[int, tuple[FeatureSet, Placement]] = {}
        while pending:
            (ready,), _ = ray.wait(list(pending), num_returns=1)
            index = pending.pop(ready)
            try:
                results[index] = ray.get(ready)
            except RayTaskError as exc:
                raise (exc.cause if isinstance(exc.cause, PrismError) else exc) from None
            except RayActorError as exc:
                raise PrismError(f"feature shard {index} of {count} failed on every try ({ray_config.shard_retries} "
                                 f"retries; orchestration.ray.shard_retries): {exc}".replace("\n", " ")) from None
            ray.kill(actors.pop(index))  # frees its CPUs/GPUs for a shard still waiting or retried
            placement = results[index][1]
            if log is not None:
                log(f"shard {index} of {count}: {placement.samples} samples on node {placement.node_name} "
                    f"({placement.node_id[:12]}, pid {placement.pid}{', restarted' if placement.restarted else ''}): "
                    f"proxy loaded in {placement.load_s:.1f} s, computed in {placement.compute_s:.1f} s")
    finally:
        for actor in actors.values():
            ray.kill(actor)
        if joined:
            ray.shutdown()
    return RayShards(shards=[results[index][0] for index in range(count)],
                     placements=[results[index][1] for index in range(count)])
