"""Generation fanned out to vLLM replicas that are Ray actors (`orchestration.ray.generation_replicas`;
docs/architecture.md "Executors").

`RayReplicaEngine` joins the cluster of `orchestration.ray` (`prismatic.ray_connect`) on its first
`generate` and starts `generation_replicas` `Replica` actors, each asking for `num_cpus_per_replica`
CPUs and `num_gpus_per_replica` GPUs, spread over the nodes, and each holding one in-process vLLM
engine (built by the callable it is given: `engine_from_config` of the `generator` section) for the
engine's whole life, so the model loads once per replica, not once per step.

A `generate` cuts the requests into chunks of ⌈n / (replicas × `CHUNKS_PER_REPLICA`)⌉ and keeps
every replica busy with one chunk at a time. A chunk's texts are reported to `on_results` as soon as
it is back, so `prismatic.generation.journal.generate_journaled` journals them chunk by chunk: an
interrupted step loses only the chunks in flight, and a rerun sends only the requests it has no
answer for. A replica that dies (its node lost) is dropped and its chunk goes to the others: its
texts never came back, so nothing journaled is sent again; when no replica is left the call fails
(a `PrismError`, the journal keeping what finished).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from prismatic.config import RayConfig
from prismatic.errors import PrismError
from prismatic.generation.engines.base import Engine, ResultCallback
from prismatic.generation.requests import GenerationRequest
from prismatic.ray_connect import connect

CHUNKS_PER_REPLICA = 4
"""Chunks per replica in one `generate`: more chunks journal sooner and balance better; fewer batch
more requests per vLLM call."""


class Replica:
    """A Ray actor holding one engine: `generate` answers a chunk and says where it ran."""

    def __init__(self, build: Callable[[], Engine]):
        self.engine = build()
        getattr(self.engine, "llm", None)  # an in-process vLLM engine starts now, not on the first chunk

    def generate(self, requests: Sequence[GenerationRequest]) -> tuple[list[str], int, str]:
        """(texts in request order, output tokens generated, this node's id)."""
        import ray

        before = self.engine.output_tokens
        texts = self.engine.generate(requests)
        return texts, self.engine.output_tokens - before, ray.get_runtime_context().get_node_id()

    def close(self) -> None:
        close = getattr(self.engine, "close", None)
        if close is not None:
            close()


class RayReplicaEngine:
    """The engine interface (`prismatic.generation.engines.base`) over Ray replica actors (see the module
    docstring). Counts `output_tokens`, `completed` and, per node id, the requests it answered
    (`served`); `lost_replicas` counts replicas that died."""

    def __init__(self, build: Callable[[], Engine], ray_config: RayConfig, config_path: str | Path):
        self.build = build
        self.ray_config = ray_config
        self.config_path = config_path
        self.output_tokens = 0
        self.completed = 0
        self.served: dict[str, int] = {}
        self.lost_replicas = 0
        self._replicas: list[Any] = []
        self._joined = False

    def replicas(self) -> list[Any]:
        """The live replica actors, started (and the cluster joined) on first use."""
        if not self._replicas:
            import ray

            self._joined = connect(self.ray_config, self.config_path) or self._joined
            actor = ray.remote(Replica).options(num_cpus=self.ray_config.num_cpus_per_replica,
                                                num_gpus=self.ray_config.num_gpus_per_replica,
                                                max_restarts=0, scheduling_strategy="SPREAD")
            self._replicas = [actor.remote(self.build) for _ in range(self.ray_config.generation_replicas)]
        return self._replicas

    def generate(self, requests: Sequence[GenerationRequest], on_results: ResultCallback | None = None) -> list[str]:
        """Texts of `requests` in order, each chunk reported to `on_results` when it is back."""
        if not requests:
            return []
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        replicas = self.replicas()
        size = math.ceil(len(requests) / (len(replicas) * CHUNKS_PER_REPLICA))
        chunks = deque(list(range(start, min(start + size, len(requests)))) for start in range(0, len(requests), size))
        texts: list[str | None] = [None] * len(requests)
        idle, in_flight = list(replicas), {}
        while chunks or in_flight:
            while chunks and idle:
                replica, chunk = idle.pop(), chunks.popleft()
                in_flight[replica.generate.remote([requests[i] for i in chunk])] = (replica, chunk)
            (ready,), _ = ray.wait(list(in_flight), num_returns=1)
            replica, chunk = in_flight.pop(ready)
            try:
                answers, tokens, node = ray.get(ready)
            except RayTaskError as exc:
                raise (exc.cause if isinstance(exc.cause, PrismError) else exc) from None
            except RayActorError as exc:
                self.lost_replicas += 1
                self._replicas.remove(replica)
                chunks.appendleft(chunk)
                if not self._replicas:
                    cause = (str(exc).strip().splitlines() or ["?"])[0]
                    raise PrismError(f"every generation replica died ({self.lost_replicas}; the last: {cause}); "
                                     f"{sum(t is None for t in texts)} requests unanswered") from None
                continue
            idle.append(replica)
            for position, text in zip(chunk, answers, strict=True):
                texts[position] = text
            self.output_tokens += tokens
            self.completed += len(chunk)
            self.served[node] = self.served.get(node, 0) + len(chunk)
            if on_results is not None:
                on_results([(position, answers[k]) for k, position in enumerate(chunk)])
        return [text or "" for text in texts]

    def close(self) -> None:
        """Stop the replicas (their engines first) and leave the cluster if this engine joined it."""
        if not self._replicas and not self._joined:
            return
        import ray

        for replica in self._replicas:
            try:
                ray.get(replica.close.remote(), timeout=60)
            except Exception:  # a replica already gone has nothing left to close
                pass
            ray.kill(replica)
        self._replicas = []
        if self._joined:
            ray.shutdown()
            self._joined = False

    def __repr__(self) -> str:
        return f"RayReplicaEngine(replicas={self.ray_config.generation_replicas}, address={self.ray_config.address!r})"
