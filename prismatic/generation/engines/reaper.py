"""The watchdog that makes an in-process vLLM engine die with the process that owns it (Linux).

vLLM runs its engine core in a child process of the owner (forked, or spawned when CUDA is already
initialized). Killed with SIGKILL, the owner gets no chance to stop it: the engine core is
re-parented and keeps its memory, on a GPU the GPU memory a new engine needs. A parent-death signal
(`PR_SET_PDEATHSIG`) cannot be set on it: vLLM starts it, and a spawned child runs none of our code
before loading the model.

`EngineReaper.start()` runs this module as its own small process (standard library only, its own
session, so a signal to the owner's process group does not stop it first). The reaper:

1. opens a pidfd of the owner, which becomes readable the moment the owner exits, however it exits;
2. while the owner starts its engine (until `engine_started`), adopts every process the owner starts
   that was not its child before (a pidfd each; looked for every `POLL_S` seconds);
3. when the owner exits, sends SIGKILL to the adopted processes that still live and to their
   descendants (vLLM's GPU workers, compile workers), then exits; it exits as well when every
   adopted process has ended or when the owner closes the engine (`stop`).

From the owner's SIGKILL to the engine's exit takes the kernel's wake-up and one /proc walk
(milliseconds; tests/integration/test_engine_lifecycle.py measures it). A child the owner forks less
than `POLL_S` before it dies can be missed; every other one is stopped.

Protocol on the reaper's stdin: `started` (stop adopting), `stop` (exit without killing).
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from pathlib import Path

POLL_S = 0.05
"""Seconds between looks for new children of the owner while its engine starts."""


def children(pid: int) -> set[int]:
    """Child pids of `pid` (every thread's `/proc/<pid>/task/<tid>/children`); empty when it is gone."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found.update(int(child) for child in (task / "children").read_text().split())
        except OSError:
            continue
    return found


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, parents before their children."""
    found, todo = [], sorted(children(pid))
    while todo:
        child = todo.pop(0)
        found.append(child)
        todo += sorted(children(child))
    return found


def watch(owner: int, before: set[int], commands: int, poll_s: float = POLL_S) -> list[int]:
    """Watch `owner` (see the module docstring), whose children `before` are not the engine's;
    `commands` is the file descriptor of the control stream (the reaper's stdin). Prints `ready` once
    it watches. Returns the pids it killed."""
    try:
        owner_fd = os.pidfd_open(owner)
    except OSError:  # the owner is gone before its engine started
        return []
    before = before | {os.getpid()}
    print("ready", flush=True)
    adopted: dict[int, int] = {}  # pid -> pidfd
    adopting = True
    reading = True
    while True:
        waits = [owner_fd, *adopted.values()] + ([commands] if reading else [])
        ready, _, _ = select.select(waits, [], [], poll_s if adopting else None)
        if owner_fd in ready:
            return kill(adopted)
        if commands in ready:
            words = os.read(commands, 1024).decode().split()
            if "stop" in words:
                return []
            adopting = adopting and "started" not in words
            reading = bool(words)  # end of file: the owner's end is closed
        for pid, fd in list(adopted.items()):
            if fd in ready:  # an adopted process ended
                os.close(fd)
                del adopted[pid]
        if adopting:
            for pid in children(owner) - before - adopted.keys():
                try:
                    adopted[pid] = os.pidfd_open(pid)
                except OSError:  # already gone
                    continue
        elif not adopted:
            return []


def kill(adopted: dict[int, int]) -> list[int]:
    """SIGKILL the adopted processes and everything below them (collected before any is killed, while
    the tree is still intact)."""
    below = [pid for root in adopted for pid in descendants(root)]
    killed = []
    for pid, fd in adopted.items():
        try:
            signal.pidfd_send_signal(fd, signal.SIGKILL)
            killed.append(pid)
        except OSError:
            pass
    for pid in below:
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except OSError:
            pass
    return killed


class EngineReaper:
    """The owner's handle on its reaper process (`start`, then `engine_started`, and `stop` on close).

    On systems without Linux's pidfds and /proc it does nothing (`process` is None)."""

    def __init__(self, process: subprocess.Popen | None):
        self.process = process

    @classmethod
    def start(cls) -> EngineReaper:
        """Start a reaper of this process and wait until it watches; call it right before starting the
        engine."""
        if not sys.platform.startswith("linux") or not hasattr(os, "pidfd_open"):
            return cls(None)
        before = children(os.getpid())
        process = subprocess.Popen([sys.executable, "-m", __name__, str(os.getpid()), *map(str, before)],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)
        if process.stdout.readline().strip() != "ready":
            process.wait()
            raise RuntimeError(f"the vLLM engine's reaper did not start (exit code {process.returncode})")
        return cls(process)

    def _send(self, command: str) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                self.process.stdin.write(command + "\n")
                self.process.stdin.flush()
            except OSError:
                pass

    def engine_started(self) -> None:
        """The engine is up: its processes are adopted, adopt no more."""
        self._send("started")

    def stop(self) -> None:
        """The owner closed its engine: the reaper exits without killing anything."""
        if self.process is not None:
            self._send("stop")
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process.stdin.close()
            self.process.stdout.close()
            self.process = None


if __name__ == "__main__":
    watch(int(sys.argv[1]), set(map(int, sys.argv[2:])), sys.stdin.fileno())
