"""Fault points: a test hook that makes this process kill (or stop) itself at a named place.

Crash-resume tests need a `kill -9` at a moment they choose, not one a timer happens to hit. The
code calls `fault_point(name)` at a few places; outside tests `PRISM_FAULT_POINT` is unset and the
call only reads it. With

    PRISM_FAULT_POINT=<name>[@<n>]      # e.g. journal.append@3, store.write:generations
    PRISM_FAULT_SIGNAL=KILL | STOP      # default KILL

the process sends itself SIGKILL (no cleanup, no `finally`, no flush: what a power cut or the OOM
killer does) or SIGSTOP (frozen while holding what it holds, until SIGCONT) the n-th time (default:
the first) it passes that point. Points:

- `journal.append`: a batch of finished generation responses was appended to the journal and
  fsynced (vLLM: one batch per call; OpenAI-compatible servers: one per response).
- `store.write:<table>`: a partition's new Parquet file is written and fsynced under its temporary
  name; the rename that publishes it has not happened.
- `features`: the proxy is loaded and gradient features are about to be computed.
"""

from __future__ import annotations

import os
import signal

ENV_POINT = "PRISM_FAULT_POINT"
ENV_SIGNAL = "PRISM_FAULT_SIGNAL"
_SIGNALS = {"KILL": signal.SIGKILL, "STOP": signal.SIGSTOP}
_hits: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Kill or stop this process here if `PRISM_FAULT_POINT` names this point (and this pass)."""
    spec = os.environ.get(ENV_POINT)
    if not spec:
        return
    target, _, count = spec.partition("@")
    if target != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == int(count or 1):
        os.kill(os.getpid(), _SIGNALS[os.environ.get(ENV_SIGNAL, "KILL").upper()])
