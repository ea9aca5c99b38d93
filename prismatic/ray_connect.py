"""Joining the Ray cluster of `orchestration.ray` (docs/architecture.md "Executors"): one clear error,
naming `orchestration.ray.address`, when its head cannot be reached; and placing actors on nodes that are
alive, so that work lost with a node is retried elsewhere (`LiveNodes`)."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

from prismatic.config import RayConfig
from prismatic.errors import InputError

ADDRESS_FIELD = "orchestration.ray.address"
CONNECT_TIMEOUT_S = 10.0
"""How long the head's port gets to accept a TCP connection before the address is reported unreachable
(Ray itself would retry for minutes)."""


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of `host:port` or `ray://host:port`; None for `auto`."""
    if address == "auto":
        return None
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def check_head(ray_config: RayConfig, config_path: str | Path) -> None:
    """An `InputError` naming `orchestration.ray.address` in `config_path` unless the address is
    `auto`, `host:port` or `ray://host:port` and, for the latter two, the head's port accepts a TCP
    connection within `CONNECT_TIMEOUT_S` (`prism run` checks this before it writes anything)."""
    address = ray_config.address
    where = _host_port(address)
    if address != "auto" and where is None:
        raise InputError(config_path, f"{address!r} is not host:port, ray://host:port or auto", field=ADDRESS_FIELD)
    if where is not None:
        try:
            socket.create_connection(where, timeout=CONNECT_TIMEOUT_S).close()
        except OSError as exc:
            raise InputError(config_path, f"cannot reach the Ray head at {address} ({exc}); start it with "
                             "`ray start --head` or fix the address", field=ADDRESS_FIELD) from None


def connect(ray_config: RayConfig, config_path: str | Path) -> bool:
    """Join the cluster at `ray_config.address` with `ray_config.runtime_env`, unless this process has
    joined one already; True when this call joined it (the caller then leaves with `ray.shutdown()`).

    A head that cannot be reached is an `InputError` naming `orchestration.ray.address` in
    `config_path`: a failed `check_head`, or any failure of `ray.init` (`auto` with no cluster running, a wrong
    cluster, ...). This process never starts a cluster of its own.
    """
    import ray

    if ray.is_initialized():
        return False
    check_head(ray_config, config_path)
    address = ray_config.address
    try:
        ray.init(address=address, runtime_env=ray_config.runtime_env or None, namespace="prismatic",
                 logging_level="WARNING", log_to_driver=False)
    except Exception as exc:  # Ray raises ConnectionError, RuntimeError or ValueError for a cluster it cannot join
        raise InputError(config_path, f"cannot join the Ray cluster at {address}: {exc}".replace("\n", " "),
                         field=ADDRESS_FIELD) from None
    return True


SUSPECT_S = 60.0
"""Seconds a node on which an actor died is passed over when placing a retry, unless Ray declares it dead
first (then it is never chosen again). A node can look alive for many seconds after it is gone (Ray
declares a node dead only after several missed health checks, later on a loaded machine); a node
that is still alive after this long was not the cause, and is used again."""

BACKOFF_S = (0.5, 15.0)
"""First and largest wait in seconds between two placements of the same lost work (doubling each time)."""


def backoff_s(attempt: int) -> float:
    """The wait before retry `attempt` (1-based): min(BACKOFF_S[1], BACKOFF_S[0] · 2^(attempt − 1)) seconds."""
    first, largest = BACKOFF_S
    return min(largest, first * 2 ** max(0, attempt - 1))


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an error's text: what Ray reported, fit for a one-line message."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


class LiveNodes:
    """Places Ray actors on nodes that are alive: Ray's own view of node state (`ray.nodes()`), less the
    nodes on which an actor of this step died in the last `SUSPECT_S` seconds (Ray may not have
    noticed the loss yet). A node holds ⌊CPU / num_cpus⌋ (and ⌊GPU / num_gpus⌋) of these actors; the
    actors placed and not yet released are counted per node, and the least-used node is chosen."""

    def __init__(self, num_cpus: float, num_gpus: float):
        self.num_cpus, self.num_gpus = num_cpus, num_gpus
        self.suspects: dict[str, float] = {}
        self.names: dict[str, str] = {}
        self.used: dict[str, int] = {}

    def _nodes(self) -> list[dict]:
        import ray

        nodes = ray.nodes()
        for node in nodes:
            self.names[node["NodeID"]] = node.get("NodeName") or node.get("NodeManagerAddress", "")
        return nodes

    def _capacity(self, node: dict) -> float:
        """How many of these actors the node's resources hold (inf when the actor asks for none)."""
        resources = node["Resources"]
        fits = [resources.get(name, 0.0) // need for name, need in (("CPU", self.num_cpus), ("GPU", self.num_gpus))
                if need > 0]
        return min(fits, default=float("inf"))

    def name(self, node_id: str | None) -> str:
        """A node's name (`ray start --node-name`, or its address), or 'unplaced' for an actor that never
        reached a node."""
        if node_id is None:
            return "unplaced"
        return self.names.get(node_id) or node_id[:12]

    def choose(self, *, spare_only: bool = False) -> str | None:
        """The id of a live, unsuspected node that can hold one of these actors, the least used first,
        counted as used until `release`; with `spare_only`, only a node with room left now. None when
        there is no such node."""
        now = time.monotonic()
        fitting = {node["NodeID"]: self._capacity(node) for node in self._nodes()
                   if node["Alive"] and now - self.suspects.get(node["NodeID"], -SUSPECT_S) >= SUSPECT_S}
        fitting = {n: room for n, room in fitting.items()
                   if room >= 1 and (not spare_only or self.used.get(n, 0) < room)}
        if not fitting:
            return None
        chosen = min(fitting, key=lambda n: self.used.get(n, 0) / fitting[n])
        self.used[chosen] = self.used.get(chosen, 0) + 1
        return chosen

    def release(self, node_id: str | None, *, lost: bool = False) -> None:
        """An actor placed on `node_id` is gone; `lost`: it died there, so pass the node over for
        `SUSPECT_S` seconds."""
        if node_id is None:
            return
        if self.used.get(node_id, 0) > 0:
            self.used[node_id] -= 1
        if lost:
            self.suspects[node_id] = time.monotonic()

    def describe(self, node_ids: list[str | None]) -> str:
        """'worker-1 (dead), worker-2' for the nodes tried, in order."""
        dead = {node["NodeID"] for node in self._nodes() if not node["Alive"]}
        return ", ".join(f"{self.name(n)}{' (dead)' if n in dead else ''}" for n in node_ids) or "none"


def on_node(node_id: str | None) -> Any:
    """A scheduling strategy that pins an actor to `node_id` (hard affinity), or Ray's SPREAD for None (no
    node fits now: Ray queues the actor until one does)."""
    if node_id is None:
        return "SPREAD"
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id, soft=False)


def resolved(ref: Any) -> Any:
    """The value of an object ref that is ready now, else None (also None for a ref whose task failed)."""
    import ray

    ready, _ = ray.wait([ref], timeout=0)
    if not ready:
        return None
    try:
        return ray.get(ready[0])
    except Exception:  # its actor died before it answered
        return None


def next_ready(refs: list[Any], timeout: float | None) -> Any:
    """The first of `refs` to be ready within `timeout` seconds (None: no limit), else None; with no refs,
    it sleeps the timeout out (a retry is due then)."""
    import ray

    if not refs:
        time.sleep(timeout or 0.0)
        return None
    ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
    return ready[0] if ready else None
