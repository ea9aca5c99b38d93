"""Gradient-feature shards as Ray actors on a cluster (`orchestration.executor: ray`; docs/architecture.md
"Executors").

`ray_feature_shards` joins the cluster at `orchestration.ray.address` (`prismatic.ray_connect`), puts the round's
samples in the cluster's object store once, and starts one `ShardWorker` actor per shard, each asking
for `num_cpus_per_shard` CPUs and `num_gpus_per_shard` GPUs and spread over the nodes. An actor loads
the proxy once, computes its shard's whole contiguous run of the batch plan
(`prismatic.gradients.featureset.shard_units`), so the merged features equal the unsharded ones bit
for bit, and is stopped as soon as its result is in, which frees its CPUs/GPUs for a shard still
waiting or being retried. A worker node that dies mid-shard takes its actor with it: the shard is placed
again, with backoff, on a node that is alive (`prismatic.ray_connect.LiveNodes`: Ray's view of the nodes, less
the one it was lost on, which Ray may still count alive for a while) until `orchestration.ray.retry_deadline_s`
passes. Finished shards are kept.

Each shard reports where it ran (`Placement`): its sample count, node id, node name (`ray start --node-name`, default
the node's IP), IP, worker pid, whether its actor was a retry (and which attempt), and its proxy-load and compute
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
from prismatic.ray_connect import LiveNodes, backoff_s, connect, first_line, next_ready, on_node, resolved
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
    attempt: int
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

    def node(self) -> str:
        """The id of the node this actor runs on (asked first, so a lost actor's node is known)."""
        import ray

        return ray.get_runtime_context().get_node_id()

    def featurize(self, samples: pl.DataFrame, index: int, count: int, attempt: int) -> tuple[FeatureSet, Placement]:
        """Shard `index` of `count` of `samples` (`prismatic.synthesis.steps.feature_shard_step`) and where it
        ran; `attempt` counts the earlier actors of this shard that were lost."""
        import ray

        from prismatic.gradients.proxy import compute_features, load_proxy

        if self.proxy is None:
            started = time.perf_counter()
            self.proxy = load_proxy(self.features, self.models_dir)
            self.load_s = time.perf_counter() - started

        def featurize(frame: pl.DataFrame, shard: tuple[int, int]) -> tuple[FeatureSet, str]:
            return compute_features(frame, self.features, self.models_dir, proxy=self.proxy, progress=False,
                                    shard=shard)

        started = time.perf_counter()
        result = feature_shard_step(samples, (index, count), featurize)
        context = ray.get_runtime_context()
        node_id = context.get_node_id()
        node = next((n for n in ray.nodes() if n["NodeID"] == node_id), {})
        return result, Placement(shard=index, samples=len(result.ids), node_id=node_id,
                                 node_name=node.get("NodeName", ""), node_ip=node.get("NodeManagerAddress", ""),
                                 pid=os.getpid(), restarted=attempt > 0, attempt=attempt,
                                 load_s=round(self.load_s, 3), compute_s=round(time.perf_counter() - started, 3))


def _no_proxy(samples: pl.DataFrame, shard: tuple[int, int]) -> tuple[FeatureSet, str]:
    raise PrismError("no proxy is loaded for an empty round")


def ray_feature_shards(samples: pl.DataFrame, count: int, features: FeaturesConfig, models_dir: str | Path,
                       ray_config: RayConfig, config_path: str | Path,
                       log: Callable[[str], None] | None = None) -> RayShards:
    """Features of all `count` shards of `samples`, each computed by its own `ShardWorker` actor on the
    cluster of `ray_config` (see the module docstring), in shard order, with their placements.

    An error raised by a shard (an overlong sample, a proxy that does not load) is re-raised as it
    was. A shard whose actor died is started again after `backoff_s(attempt)` seconds on a live node
    (`LiveNodes`: not the one it died on), for `retry_deadline_s` seconds from its first loss; then a
    `PrismError` names the shard, the nodes tried and what Ray reported. Finished shards are kept.
    """
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    joined = connect(ray_config, config_path)
    if samples.is_empty():  # nothing to featurize: no actor, no proxy load
        if joined:
            ray.shutdown()
        return RayShards(shards=[feature_shard_step(samples, (index, count), _no_proxy) for index in range(count)],
                         placements=[])
    worker = ray.remote(ShardWorker)
    threads = max(1, round(ray_config.num_cpus_per_shard))
    nodes = LiveNodes(ray_config.num_cpus_per_shard, ray_config.num_gpus_per_shard)
    actors: dict[int, Any] = {}
    placed: dict[int, str | None] = {}  # shard -> the node its actor was placed on (None: left to Ray)
    where: dict[int, Any] = {}  # shard -> object ref of its actor's node id
    tried: dict[int, list[str | None]] = {index: [] for index in range(count)}
    first_loss: dict[int, float] = {}
    due: dict[int, float] = {}  # shard -> when its next attempt may be placed
    pending: dict[Any, int] = {}
    results: dict[int, tuple[FeatureSet, Placement]] = {}

    def launch(index: int) -> None:
        node_id = nodes.choose()  # None: no live node fits now, and Ray queues the actor until one does
        actor = worker.options(num_cpus=ray_config.num_cpus_per_shard, num_gpus=ray_config.num_gpus_per_shard,
                               max_restarts=0, scheduling_strategy=on_node(node_id)).remote(features,
                                                                                            str(models_dir), threads)
        actors[index], placed[index], where[index] = actor, node_id, actor.node.remote()
        pending[actor.featurize.remote(samples_ref, index, count, len(tried[index]))] = index

    try:
        samples_ref = ray.put(samples)
        for index in range(count):
            launch(index)
        while pending or due:
            for index in [i for i, at in due.items() if at <= time.monotonic()]:
                del due[index]
                launch(index)
            for index in set(pending.values()) & set(first_loss):  # a retry that no node has taken in time
                if time.monotonic() - first_loss[index] > ray_config.retry_deadline_s and not resolved(where[index]):
                    raise PrismError(_lost(index, count, ray_config, nodes, tried[index], "no live node took it"))
            wait_s = max(0.0, min(due.values()) - time.monotonic()) if due else None
            if set(pending.values()) & set(first_loss):
                wait_s = min(wait_s or 1.0, 1.0)
            ready = next_ready(list(pending), wait_s)
            if ready is None:
                continue
            index = pending.pop(ready)
            try:
                results[index] = ray.get(ready)
            except RayTaskError as exc:
                raise (exc.cause if isinstance(exc.cause, PrismError) else exc) from None
            except RayActorError as exc:  # its node was lost (or its worker process died): place it again
                lost_on = placed.pop(index) or resolved(where[index])
                nodes.release(lost_on, lost=True)
                tried[index].append(lost_on)
                ray.kill(actors.pop(index), no_restart=True)
                first_loss.setdefault(index, time.monotonic())
                if time.monotonic() - first_loss[index] > ray_config.retry_deadline_s:
                    raise PrismError(_lost(index, count, ray_config, nodes, tried[index], first_line(exc))) from None
                due[index] = time.monotonic() + backoff_s(len(tried[index]))
                if log is not None:
                    log(f"shard {index} of {count}: its actor on node {nodes.name(lost_on)} died "
                        f"({first_line(exc)}); placing it again on a live node in {backoff_s(len(tried[index])):.1f} s")
                continue
            ray.kill(actors.pop(index))  # frees its CPUs/GPUs for a shard still waiting or retried
            nodes.release(placed.pop(index))
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


def _lost(index: int, count: int, ray_config: RayConfig, nodes: LiveNodes, tried: list[str | None],
          reported: str) -> str:
    """The one line of a shard given up on: which shard, the nodes tried and what Ray reported."""
    return (f"feature shard {index} of {count} was lost {len(tried)} times and not placed again within "
            f"{ray_config.retry_deadline_s:g} s (orchestration.ray.retry_deadline_s); nodes tried: "
            f"{nodes.describe(tried)}; Ray reported: {reported}")
