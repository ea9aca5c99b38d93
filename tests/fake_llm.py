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

from prismatic.generation.prompts import NLI_LABELS


class DeterministicServer:
    """Completions and chat completions whose text depends only on the request body.

    Few-shot continuation requests (`/completions`, a raw `prompt`) ending in `Premise:` get an NLI
    pair; ending in `Problem:`, one of `MATH_PROBLEMS` (good ones and planted junk) chosen by the
    seed. JSON-schema problem requests get NLI pairs; label requests (choices) get a label that the
    solutions of one problem mostly share; other chat requests (math solutions) end in a `\boxed{}`
    answer that the solutions of one problem share. `answered` lists the seed of every request
    answered with 200; a request's seed is 31 bits of its request key, so it names the request.
    Token usage: prompt tokens are the words of the prompt (every message's content), completion
    tokens the words of the answer; `tokens` maps each answered seed to (prompt, completion).
    """

    def __init__(self):
        self.answered: list[int] = []
        self.tokens: dict[int, tuple[int, int]] = {}
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
                if "prompt" in body:
                    text = _continue(body)
                    choice = {"index": 0, "finish_reason": "stop", "text": text}
                    prompt = len(body["prompt"].split())
                else:
                    text = _answer(body)
                    choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}
                    prompt = sum(len(message["content"].split()) for message in body["messages"])
                with server.lock:
                    server.tokens[body["seed"]] = (prompt, len(text.split()))
                data = json.dumps({"object": "text_completion" if "prompt" in body else "chat.completion",
                                   "usage": {"prompt_tokens": prompt, "completion_tokens": len(text.split())},
                                   "choices": [choice]})
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


MATH_PROBLEMS = [
    ("good", "A farmer has 12 rows of apple trees with 8 trees in each row. How many trees are there?"),
    ("good", "Lena reads 15 pages a day for 6 days and then 20 pages on the seventh. How many pages did she read?"),
    ("good", "A bus carries 42 people and 17 get off at the first stop. How many people are still on the bus?"),
    ("good", "Omar buys 3 notebooks at $4 each and a pen for $2. How much does he spend in all?"),
    ("long_token", "Triangle 150YD18MnEu5hItVgjbA54aFXImn7bnDjbafGtAtYmX+glvjKZfY8xIzSt has a base of 4 cm "
                   "and a height of 6 cm. What is its area?"),
    ("not_a_question", "a test score variation"),
    ("not_a_question", "difficulty level 1 to 5 with multiple-choice options"),
    ("too_few_words", "How many apples?"),
    ("repeated_characters", "A shop sells pens for $2 each!!!!!!!! How many pens can you buy with $10?"),
]
"""What a `Problem:` continuation returns: (the reason the filters must give, or "good"; the text)."""


def _continue(body: dict) -> str:
    prompt, seed = body["prompt"], body.get("seed")
    x = _hash(prompt, seed)
    if prompt.endswith("Premise:"):
        return (f" A cyclist number {x % 997} rides along river {x % 13} at dawn.\n"
                f"Hypothesis: Someone {x % 7} is outdoors.")
    return " " + MATH_PROBLEMS[x % len(MATH_PROBLEMS)][1] + "\n"


def _answer(body: dict) -> str:
    messages, seed = body["messages"], body.get("seed")
    if "response_format" in body:
        n = body["response_format"]["json_schema"]["schema"]["properties"]["problems"]["maxItems"]
        x = _hash(messages, seed)
        return json.dumps({"problems": [{"premise": f"A cyclist number {x % 997 + i} rides along river {x % 13}.",
                                         "hypothesis": f"Someone {i} is outdoors."} for i in range(n)]})
    question = messages[-1]["content"]
    if "structured_outputs" not in body and "Premise:" not in question:
        # A math solution: the answer depends on the problem alone.
        return f"Counting carefully step by step gives the result. \\boxed{{{_hash(question) % 50}}}"
    labels = body["structured_outputs"]["choice"] if "structured_outputs" in body else list(NLI_LABELS)
    agreed = labels[_hash(question) % len(labels)]
    label = agreed if _hash(question, seed) % 4 else labels[_hash(question, seed) % len(labels)]
    if "structured_outputs" in body:
        return label
    return f"The hypothesis is judged against what the premise says. \\boxed{{{label}}}"


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
