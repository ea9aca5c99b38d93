"""Run `prism` commands as forked children of one warm process (crash-resume tests).

Importing torch, transformers and Dagster takes 5–15 s on a 2-core machine; a crash-resume test
runs `prism run` about ten times. This driver imports them once, without running any torch or
polars operation (their thread pools would not survive a fork), then forks one child per command.
Each child is a real, separate process running `prismatic.cli.main()` exactly as the `prism`
console script does; the test kills it with SIGKILL (or the child kills itself at a fault point,
see `prismatic.faults`).

Protocol: one JSON object per line on stdin, one JSON answer per line on stdout.
- `{"cmd": "run", "args": [...], "env": {...}, "log": PATH}`: fork; the child's stdout and stderr go
  to PATH; answers `{"pid": PID}` at once.
- `{"cmd": "wait", "pid": PID}`: waits for that child; answers `{"exit": CODE}` (-9: SIGKILL).
"""

from __future__ import annotations

import json
import os
import sys
import traceback


def _warm_up() -> None:
    import dagster  # noqa: F401
    import faiss  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from transformers.models.qwen2 import modeling_qwen2  # noqa: F401

    import prism_assets.definitions  # noqa: F401
    import prism_cli.main  # noqa: F401
    import prism_cli.runner  # noqa: F401
    import prismatic.gradients.proxy  # noqa: F401
    import prismatic.synthesis.verify  # noqa: F401


def _child(job: dict) -> None:
    from prism_cli import main as cli

    fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ.update(job.get("env", {}))
    sys.argv = ["prism", *job["args"]]
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # a traceback is a test failure: show it in the log
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main() -> None:
    _warm_up()
    print(json.dumps({"ready": os.getpid()}), flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        if job["cmd"] == "run":
            pid = os.fork()
            if pid == 0:
                _child(job)
            print(json.dumps({"pid": pid}), flush=True)
        elif job["cmd"] == "wait":
            _, status = os.waitpid(job["pid"], 0)
            print(json.dumps({"exit": os.waitstatus_to_exitcode(status)}), flush=True)


if __name__ == "__main__":
    main()
