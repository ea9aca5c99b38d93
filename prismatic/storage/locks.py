"""What the two round locks share: `RoundLockedError`, the holder record, the refusal message, and
`BaseRoundLock`, the re-entrant context-manager base with this process's registry of held locks.

One run at a time per round: `Store.lock_round(key)` is an exclusive claim on every table of one round
partition (`local.RoundLock`: an flock; `s3.S3RoundLock`: a conditional PUT). See docs/data-model.md.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from abc import ABC, abstractmethod
from typing import Any

from prismatic.errors import PrismError
from prismatic.rounds import check_round

log = logging.getLogger(__name__)

_held: dict[str, list] = {}
"""Locks this process holds: lock path or URL → [file descriptor or S3RoundLock, nesting depth]."""


class RoundLockedError(PrismError):
    """Another live run holds the lock of the round this run wants to write."""


class BaseRoundLock(ABC):
    """Exclusive right to write one round partition (all its tables) of a store; `with lock:` takes the
    lock (`acquire`) and gives it back (`release`).

    Re-entrant in a process: `prism run` holds the lock and the Dagster run it starts in-process takes it
    again (the store resource locks each run's partition); only the outermost release gives it back. A
    process of the run named in the holder's record (`run_id`: multiprocess or k8s steps of one run) may
    write while the lock is held in that run's name; it does not hold the lock itself.
    """

    _guard = threading.Lock()
    """Taken around every look at `_held` (one for every lock of the process), and around a lock's whole
    acquisition."""

    removed_what = "removed %d temporary file(s) left by an interrupted write"
    """The log line (with the count) when taking the lock removed what a killed writer left."""

    def __init__(self, store: Any, round_key: str, owner: str, *, run_id: str | None = None):
        self.store = store
        self.round_key = check_round(round_key)
        self.owner = owner
        self.run_id = run_id
        self.replaced: dict[str, Any] | None = None
        """The record of a dead holder whose lock this one took over (None when there was none)."""
        self._holding = False

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    @abstractmethod
    def acquire(self) -> BaseRoundLock:
        """Take the lock, or raise `RoundLockedError` naming the holder."""

    @abstractmethod
    def release(self) -> None:
        """Give the lock back (only the outermost release of this process frees it)."""

    # -- the registry of held locks (call these while holding `self._guard`) ----------------------

    def _reenter(self, key: str) -> bool:
        """Count one more hold of a lock this process holds already; False when it does not."""
        if key not in _held:
            return False
        _held[key][1] += 1
        self._holding = True
        return True

    def _register(self, key: str, handle: Any) -> None:
        """Record the first hold of lock `key` by this process (`handle`: what releasing needs)."""
        _held[key] = [handle, 1]
        self._holding = True

    def _unregister(self, key: str) -> tuple[bool, Any]:
        """Count one release: (True, handle) when it was the outermost one, (False, None) otherwise."""
        entry = _held[key]
        entry[1] -= 1
        if entry[1]:
            return False, None
        del _held[key]
        return True, entry[0]

    # -- shared by both backends ------------------------------------------------------------------

    def _record(self) -> dict[str, Any]:
        """The holder record written into the lock: `{round, owner, run_id, pid, host, started}`."""
        return {"round": self.round_key, "owner": self.owner, "run_id": self.run_id, "pid": os.getpid(),
                "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    def _refusal(self, holder: dict[str, Any], where: str) -> RoundLockedError:
        """The error a refused run raises, naming the holder and the lock (`where`)."""
        if holder:
            who = (f"{holder.get('owner') or 'another run'} (pid {holder.get('pid')} on host {holder.get('host')}, "
                   f"since {holder.get('started')})")
        else:
            who = "another process that is just starting"
        return RoundLockedError(
            f"round {self.round_key} of the store {self.store.uri} is being written by {who}; two runs of one "
            f"round would interleave their writes, so this run stops without writing. Wait for that run to "
            f"finish or stop it ({where})")

    def _taken(self) -> None:
        """After taking the lock: log whose dead lock was taken over, and remove what killed writers of the
        round left unpublished (`Store.remove_temporary_files`; safe now that no live writer exists)."""
        if self.replaced:
            log.warning("round %s: took over the lock of %s (pid %s on %s, since %s), which is no longer running",
                        self.round_key, self.replaced.get("owner"), self.replaced.get("pid"),
                        self.replaced.get("host"), self.replaced.get("started"))
        removed = self.store.remove_temporary_files(self.round_key)
        if removed:
            log.warning("round %s: " + self.removed_what, self.round_key, removed)


def parse_record(raw: bytes) -> dict[str, Any]:
    """The holder record in a lock's bytes ({} when empty or not a JSON object)."""
    try:
        value = json.loads(raw.decode())
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
