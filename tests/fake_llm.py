"""A deterministic OpenAI-compatible chat server for round tests that must not wait for a real LLM.

Generation is the one step of a round whose real engine (vLLM) takes minutes to start on a CPU;
tests of what happens around it (crash and resume, the S3 store) run rounds against this server:
its answers depend only on the request body, so a round's tables are reproducible, and it records
every request it answered.
"""

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class DeterministicServer:
    """Chat completions whose text depends only on the request body (messages, schema, seed).

    Problem requests (JSON schema) get NLI pairs; label requests (choices) get a label that the
    solutions of one problem mostly share. `answered` lists the seed of every request answered
    with 200; a request's seed is 31 bits of its request key, so it names the request.
    """

    def __init__(self):
        self.answered: list[int] = []
        self.auth: set[str | None] = set()
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:  # before answering: a journaled request is always counted
                    server.answered.append(body["seed"])
                    server.auth.add(self.headers.get("Authorization"))
                data = json.dumps({"object": "chat.completion", "usage": {"completion_tokens": 4},
                                   "choices": [{"index": 0, "finish_reason": "stop",
                                                "message": {"role": "assistant", "content": _answer(body)}}]})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data.encode())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _hash(*parts) -> int:
    return int(hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12], 16)


def _answer(body: dict) -> str:
    messages, seed = body["messages"], body.get("seed")
    if "response_format" in body:
        n = body["response_format"]["json_schema"]["schema"]["properties"]["problems"]["maxItems"]
        x = _hash(messages, seed)
        return json.dumps({"problems": [{"premise": f"A cyclist number {x % 997 + i} rides along river {x % 13}.",
                                         "hypothesis": f"Someone {i} is outdoors."} for i in range(n)]})
    labels = body["structured_outputs"]["choice"]
    agreed = labels[_hash(messages) % len(labels)]
    return agreed if _hash(messages, seed) % 4 else labels[_hash(messages, seed) % len(labels)]


ROUND_CONFIG = """
features:
  proxy: {proxy}
  dim: 64
generator:
  backend: openai
  base_urls: ["{url}"]
  model: tiny
  api_key_env: PRISM_TEST_API_KEY
  max_concurrency: 2
  max_retries: 2
  timeout_s: 30
synthesis:
  tasks: [nli]
  prompts_per_round: 3
metrics:
  names: [gvendi]
"""
"""prism.yaml of a round against this server (`.format(proxy=..., url=...)`): the tiny proxy, NLI
only, 3 problem prompts, G-Vendi as the one metric; the key is read from `PRISM_TEST_API_KEY`."""
