"""A real Ray cluster on this machine for tests and benchmarks: a head and worker nodes, each its own
`ray start --block` process (the venv's `ray`, so every node imports this checkout) in its own session.

The head has no CPUs (nothing is scheduled on it) and no dashboard; each worker node has
`--num-cpus 1` and the node name `worker-<i>`. Ray rewrites a node address of 127.0.0.1 to the
machine's own address (`ray._private.services.resolve_ip_for_localhost`), so the nodes register under
that address; the cluster is still only this machine's processes. Everything started is killed
(SIGKILL to each node's process group) on exit, however the block ends.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

RAY = str(Path(sys.executable).parent / "ray")
ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    # A killed node is declared dead after 3 missed 1 s health checks (Ray's default waits longer).
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
    "RAY_health_check_initial_delay_ms": "1000",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RayNode:
    """One `ray start --block` process and everything it started (its session and process group)."""

    name: str
    process: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL every process of the node's session, as a lost machine would go: its raylet, workers and
        actors die at once (a worker in a process group of its own included)."""
        for pid in [self.process.pid, *self.session_pids()]:
            try:
                os.killpg(pid, signal.SIGKILL) if pid == self.process.pid else os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(timeout=30)

    def session_pids(self) -> list[int]:
        """Pids of the live processes in this node's session (its raylet, agents, workers)."""
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if os.getsid(int(entry.name)) == self.process.pid:
                        pids.append(int(entry.name))
                except OSError:
                    continue
        return pids


@dataclass
class LocalRayCluster:
    address: str
    temp: Path
    head: RayNode
    workers: list[RayNode] = field(default_factory=list)
    start_seconds: float = 0.0
    timeout: float = 120

    def start_worker(self, index: int) -> RayNode:
        """Start worker node `worker-<index>` (1 CPU) and put it at `workers[index - 1]`."""
        node = _start_node(f"worker-{index}", ["--address", self.address, "--node-ip-address", "127.0.0.1",
                                                "--num-cpus", "1", "--node-name", f"worker-{index}"],
                           self.temp / f"worker-{index}.log", self.timeout)
        if index <= len(self.workers):
            self.workers[index - 1] = node
        else:
            self.workers.append(node)
        return node

    def restart_dead_workers(self) -> None:
        """Start again every worker node that was killed (a test that kills one leaves the next a full cluster)."""
        for index, node in enumerate(self.workers, start=1):
            if not node.alive():
                self.start_worker(index)

    def kill(self) -> None:
        """SIGKILL every worker node, then the head."""
        for node in [*self.workers, self.head]:
            node.kill()


def _start_node(name: str, args: list[str], log: Path, timeout: float) -> RayNode:
    handle = log.open("w")
    process = subprocess.Popen([RAY, "start", "--block", "--disable-usage-stats", *args], stdout=handle,
                               stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **ENV})
    handle.close()
    node = RayNode(name, process, log)
    deadline = time.monotonic() + timeout
    while "Ray runtime started" not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            node.kill()
            raise RuntimeError(f"ray node {name} did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    return node


@contextmanager
def local_ray_cluster(workers: int = 2, timeout: float = 120) -> Iterator[LocalRayCluster]:
    """A head on a free 127.0.0.1 port and `workers` worker nodes, started one after another;
    `start_seconds` is the wall time until the last node reported it had started."""
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # Ray's socket paths must stay short
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, temp, True)
        port = free_port()
        address = f"127.0.0.1:{port}"
        started = time.perf_counter()
        head = _start_node("head", ["--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                                    "--num-cpus", "0", "--include-dashboard", "false", "--temp-dir", str(temp)],
                           temp / "head.log", timeout)
        cluster = LocalRayCluster(address, temp, head, timeout=timeout)
        stack.callback(cluster.kill)
        for index in range(1, workers + 1):
            cluster.start_worker(index)
        cluster.start_seconds = time.perf_counter() - started
        yield cluster
