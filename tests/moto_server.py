"""moto's S3 server on 127.0.0.1 for the tests of the S3 store, and the requests its log records.

Everything reaches it as it would reach AWS (boto3, s3fs and dagster-aws clients from the standard AWS
environment); only AWS itself is replaced. The server runs in its own process and logs one line per HTTP
request it answers (werkzeug's access log, colored by status), which `requests_in_log` counts: the
honest number of requests, whichever client sent them.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import boto3

REQUEST_LINE = re.compile(r'"(GET|HEAD|PUT|POST|DELETE) (\S+) HTTP/[\d.]+"')
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def moto_server(log: Path, bucket: str) -> Iterator[dict[str, str]]:
    """Start the server (its log at `log`), point this process's AWS environment at it, create `bucket`;
    yields that environment. The server is stopped and the environment restored on exit, even on error."""
    port = _free_port()
    with log.open("w") as out:
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        client = boto3.client("s3")
        deadline = time.monotonic() + 60
        while True:
            try:
                client.create_bucket(Bucket=bucket)
                break
            except Exception:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.2)
        yield env
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def requests_in_log(log: Path, start: int = 0) -> list[tuple[str, str]]:
    """(method, path and query) of every request the server logged after the first `start` lines."""
    lines = log.read_text(errors="replace").splitlines()[start:]
    return [match.groups() for line in lines if (match := REQUEST_LINE.search(ANSI.sub("", line)))]


def log_lines(log: Path) -> int:
    """How many lines the log has now (a `start` for `requests_in_log`)."""
    return len(log.read_text(errors="replace").splitlines())


def by_method(requests: list[tuple[str, str]]) -> dict[str, int]:
    return dict(sorted(Counter(method for method, _ in requests).items()))
