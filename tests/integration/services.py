"""`dagster-webserver` and `dagster-daemon` of one temporary DAGSTER_HOME on 127.0.0.1, and the GraphQL
queries the service tests send (tests/integration/test_services.py, test_daemon_restart.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / ".venv" / "bin"

WORKSPACE = """{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus
  locationOrLoadError { __typename ... on PythonError { message } } } } } }"""
ADD_PARTITION = """mutation($selector: RepositorySelector!, $key: String!) {
  addDynamicPartition(repositorySelector: $selector, partitionsDefName: "rounds", partitionKey: $key) {
    __typename ... on Error { message } } }"""
LAUNCH_BACKFILL = """mutation($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {
  __typename ... on LaunchBackfillSuccess { backfillId } ... on Error { message } } }"""
BACKFILL = """query($id: String!) { partitionBackfillOrError(backfillId: $id) {
  __typename ... on PartitionBackfill { status } ... on Error { message } } }"""
RUNS = """query($tags: [ExecutionTag!]) { runsOrError(filter: {tags: $tags}) { ... on Runs { results {
  runId status startTime endTime tags { key value } } } } }"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tag(run: dict, key: str) -> str | None:
    return next((t["value"] for t in run["tags"] if t["key"] == key), None)


class Services:
    """The webserver and the daemon of one DAGSTER_HOME, and a GraphQL client of the webserver.

    Each service is started in its own process group: the code servers it starts and the runs they
    launch are in that group, so `stop` (and `kill`) reach them too."""

    def __init__(self, home: Path, logs: Path, env: dict[str, str] | None = None):
        self.home, self.logs = home, logs
        self.dagster_home = home / "dagster"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = dict(os.environ, DAGSTER_HOME=str(self.dagster_home), PRISM_HOME=str(home),
                        VLLM_CPU_KVCACHE_SPACE="1", TOKENIZERS_PARALLELISM="false", **(env or {}))
        self.processes: dict[str, subprocess.Popen] = {}

    def start(self, name: str, *args: str, log: str | None = None) -> subprocess.Popen:
        """Start a service (`dagster-webserver`, `dagster-daemon`); its output goes to `<logs>/<log or name>.log`."""
        with (self.logs / f"{log or name}.log").open("w") as out:
            process = subprocess.Popen([str(BIN / name), *args, "-w", "workspace.yaml"], cwd=REPO, env=self.env,
                                       stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.processes[log or name] = process
        return process

    def stop(self) -> None:
        """SIGTERM to every service's process group, SIGKILL to the group after 30 s."""
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()

    def graphql(self, query: str, **variables) -> dict:
        response = httpx.post(f"{self.url}/graphql", json={"query": query, "variables": variables}, timeout=60)
        response.raise_for_status()
        payload = response.json()
        assert "errors" not in payload, payload["errors"]
        return payload["data"]

    def wait_until_loaded(self, timeout: float = 180) -> str:
        """Wait for the webserver and the code location; returns the location name."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert all(p.poll() is None for p in self.processes.values()), self.tail("dagster-webserver")
            try:
                entries = self.graphql(WORKSPACE)["workspaceOrError"]["locationEntries"]
            except (httpx.HTTPError, AssertionError):
                entries = []
            for entry in entries:
                located = entry["locationOrLoadError"] or {}
                assert located.get("__typename") != "PythonError", located.get("message")
                if entry["loadStatus"] == "LOADED" and located.get("__typename") == "RepositoryLocation":
                    return entry["name"]
            time.sleep(1)
        raise TimeoutError(f"webserver not ready after {timeout}s\n{self.tail('dagster-webserver')}")

    def launch_backfill(self, keys: list[str], assets: list[str], title: str) -> str:
        """Add the round keys to the `rounds` partitions and backfill `assets` over them; returns the backfill id."""
        location = self.wait_until_loaded()
        selector = {"repositoryLocationName": location, "repositoryName": "__repository__"}
        for key in keys:
            added = self.graphql(ADD_PARTITION, selector=selector, key=key)["addDynamicPartition"]
            assert added["__typename"] == "AddDynamicPartitionSuccess", added
        launched = self.graphql(LAUNCH_BACKFILL, params={
            "partitionNames": keys, "assetSelection": [{"path": [name]} for name in assets],
            "title": title})["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched
        return launched["backfillId"]

    def backfill_status(self, backfill_id: str) -> str:
        return self.graphql(BACKFILL, id=backfill_id)["partitionBackfillOrError"]["status"]

    def tail(self, name: str, lines: int = 60) -> str:
        return "\n".join((self.logs / f"{name}.log").read_text().splitlines()[-lines:])

    def backfill_runs(self, backfill_id: str) -> list[dict]:
        data = self.graphql(RUNS, tags=[{"key": "dagster/backfill", "value": backfill_id}])
        return data["runsOrError"]["results"]
