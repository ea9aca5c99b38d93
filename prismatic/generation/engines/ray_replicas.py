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
texts never came back, so nothing journaled is sent again. A replacement replica is placed, with
backoff, on a node that is alive (`prismatic.ray_connect.LiveNodes`); only when no replica is left and
none could be placed within `orchestration.ray.retry_deadline_s` does the call fail (a `PrismError`
naming the nodes tried; the journal keeps what finished).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prismatic.config import RayConfig
from prismatic.errors import PrismError
from prismatic.generation.engines.base import Engine, ResultCallback
from prismatic.generation.requests import GenerationRequest
from prismatic.generation.usage import Budget, BudgetExhausted, Completion
from prismatic.ray_connect import LiveNodes, backoff_s, connect, first_line, next_ready, on_node, resolved

CHUNKS_PER_REPLICA = 4
"""Chunks per replica in one `generate`: more chunks journal sooner and balance better; fewer batch
more requests per vLLM call."""


class Replica:
    """A Ray actor holding one engine: `generate` answers a chunk and says where it ran."""

    def __init__(self, build: Callable[[], Engine]):
        self.engine = build()
        getattr(self.engine, "llm", None)  # an in-process vLLM engine starts now, not on the first chunk

    def node(self) -> str:
        """The id of the node this replica runs on (asked first, so a lost replica's node is known)."""
        import ray

        return ray.get_runtime_context().get_node_id()

    def generate(self, requests: Sequence[GenerationRequest]) -> tuple[list[Completion], str]:
        """(completions in request order: text, tokens, latency; this node's id)."""
        import ray

        completions: list[Completion | None] = [None] * len(requests)

        def keep(pairs: list[tuple[int, Completion | str]]) -> None:
            for position, completion in pairs:
                completions[position] = Completion.of(completion)

        texts = self.engine.generate(requests, on_results=keep)
        return ([c if c is not None else Completion(t) for c, t in zip(completions, texts, strict=True)],
                ray.get_runtime_context().get_node_id())

    def close(self) -> None:
        close = getattr(self.engine, "close", None)
        if close is not None:
            close()


@dataclass(eq=False)
class _Slot:
    """One replica actor and the object ref of its node id (known once the replica has started)."""

    actor: Any
    placed: str | None
    node: Any


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
        self._replicas: list[_Slot] = []
        self._joined = False
        self._nodes = LiveNodes(ray_config.num_cpus_per_replica, ray_config.num_gpus_per_replica)

    def _start(self, node_id: str | None) -> _Slot:
        """A replica actor on `node_id` (None: no live node fits now; Ray queues it until one does)."""
        import ray

        actor = ray.remote(Replica).options(num_cpus=self.ray_config.num_cpus_per_replica,
                                            num_gpus=self.ray_config.num_gpus_per_replica, max_restarts=0,
                                            scheduling_strategy=on_node(node_id)).remote(self.build)
        slot = _Slot(actor, node_id, actor.node.remote())
        self._replicas.append(slot)
        return slot

    def replicas(self) -> list[_Slot]:
        """The live replicas, started (and the cluster joined) on first use."""
        if not self._replicas:
            self._joined = connect(self.ray_config, self.config_path) or self._joined
            for _ in range(self.ray_config.generation_replicas):
                self._start(self._nodes.choose())
        return self._replicas

    def generate(self, requests: Sequence[GenerationRequest], on_results: ResultCallback | None = None,
                 budget: Budget | None = None) -> list[str]:
        """Texts of `requests` in order, each chunk reported to `on_results` (as `Completion`s) when it is
        back. With a `budget`, no chunk is sent once it is reached: those out finish, then `BudgetExhausted`.

        A replica that dies is dropped and its chunk goes back to the queue; a new replica is started on
        a live node (`LiveNodes`) after `backoff_s` seconds. The call fails only when no replica is left
        and none could be placed within `retry_deadline_s` of the first loss."""
        if not requests:
            return []
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        size = math.ceil(len(requests) / (len(self.replicas()) * CHUNKS_PER_REPLICA))
        chunks = deque(list(range(start, min(start + size, len(requests)))) for start in range(0, len(requests), size))
        texts: list[str | None] = [None] * len(requests)
        idle, in_flight = list(self._replicas), {}
        replacements: list[float] = []  # when each replacement replica may be placed
        tried: list[str | None] = []
        first_loss: float | None = None
        while chunks or in_flight:
            for at in [at for at in replacements if at <= time.monotonic()]:
                replacements.remove(at)
                node_id = self._nodes.choose(spare_only=True)
                if node_id is not None:
                    idle.append(self._start(node_id))
                elif time.monotonic() - first_loss < self.ray_config.retry_deadline_s:
                    replacements.append(time.monotonic() + backoff_s(len(tried)))
            if not self._replicas and not replacements:
                raise PrismError(self._lost(tried, texts, "no live node is left"))
            if budget is not None and budget.reached():
                chunks.clear()  # nothing more is sent; the chunks out finish
            while chunks and idle:
                slot, chunk = idle.pop(), chunks.popleft()
                in_flight[slot.actor.generate.remote([requests[i] for i in chunk])] = (slot, chunk)
            wait_s = max(0.0, min(replacements) - time.monotonic()) if replacements else None
            ready = next_ready(list(in_flight), wait_s)
            if ready is None:
                continue
            slot, chunk = in_flight.pop(ready)
            try:
                answers, node = ray.get(ready)
            except RayTaskError as exc:
                raise (exc.cause if isinstance(exc.cause, PrismError) else exc) from None
            except RayActorError as exc:  # its node was lost: the chunk goes back, a replacement is placed
                lost_on = slot.placed or resolved(slot.node)
                self._nodes.release(lost_on, lost=True)
                tried.append(lost_on)
                self.lost_replicas += 1
                self._replicas.remove(slot)
                ray.kill(slot.actor, no_restart=True)
                chunks.appendleft(chunk)
                first_loss = first_loss or time.monotonic()
                if time.monotonic() - first_loss < self.ray_config.retry_deadline_s:
                    replacements.append(time.monotonic() + backoff_s(len(tried)))
                elif not self._replicas:
                    raise PrismError(self._lost(tried, texts, first_line(exc))) from None
                continue
            idle.append(slot)
            for position, completion in zip(chunk, answers, strict=True):
                texts[position] = completion.text
            self.output_tokens += sum(completion.completion_tokens or 0 for completion in answers)
            self.completed += len(chunk)
            self.served[node] = self.served.get(node, 0) + len(chunk)
            if on_results is not None:
                on_results(list(zip(chunk, answers)))
        if any(text is None for text in texts):  # only a reached budget leaves requests unsent
            raise BudgetExhausted("the generation budget is reached")
        return [text or "" for text in texts]

    def _lost(self, tried: list[str | None], texts: list[str | None], reported: str) -> str:
        """The one line of a generation given up on: replicas lost, nodes tried, what Ray reported."""
        return (f"every generation replica was lost ({self.lost_replicas}) and none was placed again within "
                f"{self.ray_config.retry_deadline_s:g} s (orchestration.ray.retry_deadline_s); nodes tried: "
                f"{self._nodes.describe(tried)}; Ray reported: {reported}; "
                f"{sum(t is None for t in texts)} requests unanswered (a rerun sends only those)")

    def close(self) -> None:
        """Stop the replicas (their engines first) and leave the cluster if this engine joined it."""
        if not self._replicas and not self._joined:
            return
        import ray

        for slot in self._replicas:
            try:
                ray.get(slot.actor.close.remote(), timeout=60)
            except Exception:  # a replica already gone has nothing left to close
                pass
            ray.kill(slot.actor)
            self._nodes.release(slot.placed)
        self._replicas = []
        if self._joined:
            ray.shutdown()
            self._joined = False

    def __repr__(self) -> str:
        return f"RayReplicaEngine(replicas={self.ray_config.generation_replicas}, address={self.ray_config.address!r})"
