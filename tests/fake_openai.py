"""A misbehaving-on-demand OpenAI-compatible chat server on 127.0.0.1 for the engine tests
(tests/generation): it answers, fails in the ways real servers fail, rate-limits with `Retry-After`,
reports token `usage`, and records every request it received and when (`arrivals`)."""

from __future__ import annotations

import email.utils
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAULTS = ("500", "garbage", "empty_body", "null_content", "abort", "drop", "hang")
"""What a misbehaving server does instead of answering: an HTTP 500, a 200 whose body is HTML, an
empty 200, a completion with `content: null`, one with `finish_reason: "abort"` (vLLM aborting on
shutdown), closing the connection without a response, answering after the client's timeout.
Also: "429:S" / "503:S" (that status with `Retry-After: S` seconds), "429-date:S" (`Retry-After` as
the HTTP date S seconds from now) and "empty_stop" (content "", finish_reason "stop")."""


def shut_down(connections) -> None:
    """Close every accepted connection as a dying server process would (peers see the connection drop)."""
    for connection in connections:
        try:
            connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def prompt_words(body: dict) -> int:
    """The `prompt_tokens` this server reports: the whitespace-separated words of every message's content
    (or of the raw prompt)."""
    if "messages" in body:
        return sum(len(message["content"].split()) for message in body["messages"])
    return len(body["prompt"].split())


class FakeServer:
    """An OpenAI-compatible chat completions endpoint on 127.0.0.1.

    mode: "ok" answers; "500" fails with a body that echoes the Authorization header (a careless
    server), "400" refuses. `poison`: requests whose last message contains it get `poison_fault`
    (default "500"). `faults`: the next requests get these (one of FAULTS each), then answers again.
    An answer's usage: `prompt_words(body)` prompt tokens, `completion_tokens` completion tokens.
    Every request is recorded: `bodies`, and `arrivals` (monotonic seconds, when its body was read).
    """

    def __init__(self, mode: str = "ok", delay: float = 0.0, port: int = 0):
        self.mode = mode
        self.delay = delay
        self.poison: str | None = None
        self.poison_fault = "500"
        self.faults: list[str] = []
        self.hang = 60.0  # a hung answer: far beyond any engine timeout of the tests
        self.completion_tokens = 3
        self.connections: list[socket.socket] = []
        self.bodies: list[dict] = []
        self.arrivals: list[float] = []
        self.auth: list[str | None] = []
        self.hits = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def setup(self):
                super().setup()
                with server.lock:
                    server.connections.append(self.connection)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.hits += 1
                    server.bodies.append(body)
                    server.arrivals.append(time.monotonic())
                    server.auth.append(self.headers.get("Authorization"))
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    fault = server.faults.pop(0) if server.faults else None
                try:
                    time.sleep(server.delay)
                    content = body["messages"][-1]["content"]
                    if server.poison and server.poison in content:
                        fault = server.poison_fault
                    if self.path != "/v1/chat/completions":
                        self.reply(404, {"error": "no such route"})
                    elif fault is not None:
                        self.misbehave(fault)
                    elif server.mode == "500":
                        self.reply(500, {"error": f"internal error for {self.headers.get('Authorization')}"})
                    elif server.mode == "400":
                        self.reply(400, {"error": f"bad request from {self.headers.get('Authorization')}"})
                    else:
                        text = body["structured_outputs"]["choice"][0] if "structured_outputs" in body \
                            else f"echo:{content[-12:]}|seed={body.get('seed')}"
                        prompt = prompt_words(body)
                        self.reply(200, {"id": "x", "object": "chat.completion", "model": body["model"],
                                         "choices": [{"index": 0, "finish_reason": "stop",
                                                      "message": {"role": "assistant", "content": text}}],
                                         "usage": {"prompt_tokens": prompt,
                                                   "completion_tokens": server.completion_tokens,
                                                   "total_tokens": prompt + server.completion_tokens}})
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def reply(self, status, payload, raw: bytes | None = None, headers: dict | None = None):
                data = json.dumps(payload).encode() if raw is None else raw
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def misbehave(self, fault):
                completion = {"choices": [{"index": 0, "finish_reason": "stop",
                                           "message": {"role": "assistant", "content": None}}]}
                kind, _, seconds = fault.partition(":")
                if kind in ("429", "503"):
                    self.reply(int(kind), {"error": "slow down"}, headers={"Retry-After": seconds})
                elif kind == "429-date":
                    when = email.utils.formatdate(time.time() + float(seconds), usegmt=True)
                    self.reply(429, {"error": "slow down"}, headers={"Retry-After": when})
                elif fault == "500":
                    self.reply(500, {"error": f"internal error for {self.headers.get('Authorization')}"})
                elif fault == "garbage":
                    self.reply(200, {}, raw=b"<html><body>502 Bad Gateway</body></html>")
                elif fault == "empty_body":
                    self.reply(200, {}, raw=b"")
                elif fault == "null_content":
                    self.reply(200, completion)
                elif fault in ("abort", "empty_stop"):
                    completion["choices"][0].update(finish_reason=fault.removeprefix("empty_"),
                                                    message={"role": "assistant", "content": ""})
                    self.reply(200, completion)
                elif fault == "drop":
                    self.close_connection = True
                elif fault == "hang":
                    server.stopping.wait(server.hang)  # until the hang is over or the server closes
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        """Stop as a killed server process would: listening socket and open connections closed (a hung
        answer ends at once)."""
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        shut_down(self.connections)


def unused_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def fake_servers():
    """The body of a `servers` fixture (`yield from fake_servers()`): it yields `start(mode, delay, port)`,
    which starts a `FakeServer`, and closes every server started when the test ends."""
    started: list[FakeServer] = []

    def start(mode: str = "ok", delay: float = 0.0, port: int = 0) -> FakeServer:
        started.append(FakeServer(mode, delay, port))
        return started[-1]

    start.started = started
    yield start
    for server in started:
        server.close()
