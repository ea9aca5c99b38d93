"""Engines (prismatic.generation.engines): OpenAI-compatible failover and resume against fake servers, orphaned
vLLM engine cores, real in-process vLLM on CPU with the tiny model."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time

import pytest
from conftest import vllm_engine_for
from fake_openai import FAULTS, fake_servers, shut_down, unused_url

from prismatic.config import SynthesisConfig
from prismatic.errors import PrismError
from prismatic.generation.engines.openai import OpenAIEngine
from prismatic.generation.journal import Journal, generate_journaled
from prismatic.generation.prompts import NLI_LABELS, nli_prompt, solution_prompt
from prismatic.generation.requests import GenerationRequest, Sampling

API_KEY = "sk-test-SECRET-4f9a1c"
SOLUTION = Sampling.from_config(SynthesisConfig().solution_sampling, seed=0)
PROBLEM = Sampling.from_config(SynthesisConfig().problem_sampling, seed=0)

HEALTHY_S = 3.0
"""The engine's timeout in the fault tests: a bound on how long a healthy local answer may take on a busy
machine (the hung, dripping or faulty answers take far longer: they never complete)."""


def make_requests(n: int, model: str = "m", **kwargs) -> list[GenerationRequest]:
    return [GenerationRequest.build(model, solution_prompt(f"What is {i} + {i}?", "math"), SOLUTION, 0,
                                    **kwargs) for i in range(n)]


# ------------------------------------------------------------------------------------------ OpenAI


@pytest.fixture
def servers():
    yield from fake_servers()


def test_openai_engine_answers_in_order_with_bounded_concurrency(servers):
    a, b = servers(delay=0.05), servers(delay=0.05)
    requests = make_requests(12)
    with OpenAIEngine([a.url, b.url + "/"], "served-model", api_key=API_KEY, max_concurrency=3) as engine:
        texts = engine.generate(requests)
    assert texts == [f"echo:{r.messages[-1]['content'][-12:]}|seed={r.seed}" for r in requests]
    assert a.hits == b.hits == 6  # round-robin
    assert a.max_in_flight + b.max_in_flight <= 3 * 2 and max(a.max_in_flight, b.max_in_flight) <= 3
    stats = engine.endpoint_stats
    assert stats[a.url].ok == stats[b.url].ok == 6 and stats[a.url].failed == 0
    assert engine.output_tokens == 12 * 3 and engine.completed == 12
    body = a.bodies[0]
    assert body["model"] == "served-model" and body["temperature"] == 0.75 and body["top_p"] == 0.95
    assert body["max_tokens"] == SOLUTION.max_tokens and "structured_outputs" not in body
    assert set(a.auth) == {f"Bearer {API_KEY}"}


def test_openai_engine_sends_structured_outputs(servers):
    server = servers()
    schema = {"type": "object", "properties": {"label": {"enum": list(NLI_LABELS)}}, "required": ["label"]}
    engine = OpenAIEngine([server.url], "m")
    texts = engine.generate([
        GenerationRequest.build("m", solution_prompt(nli_prompt("a", "b"), "nli", reasoning=False),
                                SOLUTION, choices=list(NLI_LABELS)),
        GenerationRequest.build("m", solution_prompt("1+1?", "math"), SOLUTION, json_schema=schema),
    ])
    assert texts[0] == "entailment"
    by_kind = {("choice" if "structured_outputs" in b else "json"): b for b in server.bodies}
    assert by_kind["choice"]["structured_outputs"] == {"choice": list(NLI_LABELS)}
    assert by_kind["json"]["response_format"] == {"type": "json_schema",
                                                  "json_schema": {"name": "output", "schema": schema}}
    assert server.auth == [None, None]


def test_failing_url_moves_its_requests_to_the_others(servers, caplog):
    good, bad = servers(), servers("500")
    dead = unused_url()
    requests = make_requests(12)
    engine = OpenAIEngine([good.url, bad.url, dead], "m", api_key=API_KEY, max_concurrency=4, backoff=0.01)
    with caplog.at_level(logging.WARNING, logger="prismatic.generation.engines.openai"):
        texts = engine.generate(requests)
    assert len(texts) == 12 and all(t.startswith("echo:") for t in texts)
    stats = engine.endpoint_stats
    assert stats[good.url].ok == 12 and stats[good.url].failed == 0 and stats[good.url].sent == good.hits == 12
    assert stats[bad.url].ok == 0 and stats[bad.url].failed == stats[bad.url].sent == bad.hits >= 1
    assert stats[dead].ok == 0 and stats[dead].failed >= 1
    assert "HTTP 500" in caplog.text and API_KEY not in caplog.text


def test_exhausted_retries_raise_without_the_key(servers, caplog):
    bad = servers("500")
    engine = OpenAIEngine([bad.url, unused_url()], "m", api_key=API_KEY, max_concurrency=2, max_retries=3,
                          backoff=0.001)
    with caplog.at_level(logging.DEBUG), pytest.raises(PrismError, match="failed after 4 attempts") as info:
        engine.generate(make_requests(3))
    assert API_KEY not in str(info.value) and API_KEY not in repr(info.value) and API_KEY not in caplog.text
    assert info.value.__cause__ is None and info.value.__context__ is None
    assert API_KEY not in repr(engine)
    assert bad.auth[0] == f"Bearer {API_KEY}"  # the key was sent, just never shown


def test_client_errors_fail_at_once_without_the_key(servers):
    refusing = servers("400")
    engine = OpenAIEngine([refusing.url], "m", api_key=API_KEY, max_concurrency=1, max_retries=4, backoff=0.001)
    with pytest.raises(PrismError, match="HTTP 400") as info:
        engine.generate(make_requests(3))
    assert API_KEY not in str(info.value) and "***" in str(info.value)
    assert refusing.hits == 1  # no retry, and the remaining requests were not sent


@pytest.mark.parametrize("fault", ["500", "garbage", "hang"])
def test_openai_resume_journals_each_response_as_it_completes(servers, tmp_path, fault):
    server = servers()
    requests = make_requests(5)
    server.poison = requests[-1].messages[-1]["content"][-12:]
    server.poison_fault = fault
    journal_path = tmp_path / "j.jsonl"
    engine = OpenAIEngine([server.url], "m", max_concurrency=1, max_retries=1, timeout=HEALTHY_S, backoff=0.001)
    with pytest.raises(PrismError) as info:
        generate_journaled(engine, requests, Journal(journal_path))
    assert "failed after 2 attempts" in str(info.value)
    assert f"4 of the 5 requests sent finished and are kept in the journal {journal_path}" in str(info.value)
    assert "a rerun sends only the other 1" in str(info.value)
    assert set(Journal(journal_path).texts) == {r.key for r in requests[:4]}
    server.poison = None
    hits_before = server.hits
    texts = generate_journaled(engine, requests, Journal(journal_path))
    assert server.hits - hits_before == 1 and len(texts) == 5
    assert texts[-1].startswith("echo:")


@pytest.mark.parametrize("fault", FAULTS)
def test_each_kind_of_server_fault_is_retried_with_backoff(servers, fault, caplog):
    server = servers()
    server.faults = [fault, fault]  # the first request fails twice, then succeeds
    requests = make_requests(3)
    engine = OpenAIEngine([server.url], "m", api_key=API_KEY, max_concurrency=1, max_retries=2, timeout=HEALTHY_S,
                          backoff=0.01)
    with caplog.at_level(logging.WARNING, logger="prismatic.generation.engines.openai"):
        texts = engine.generate(requests)
    assert texts == [f"echo:{r.messages[-1]['content'][-12:]}|seed={r.seed}" for r in requests]
    stats = engine.endpoint_stats[server.url]
    assert (stats.failed, stats.ok, stats.sent) == (2, 3, 5)
    assert caplog.text.count("retrying") == 2 and API_KEY not in caplog.text


def test_faults_beyond_the_retry_budget_fail_clearly(servers):
    server = servers()
    server.faults = ["garbage", "abort", "empty_body"]
    engine = OpenAIEngine([server.url], "m", api_key=API_KEY, max_concurrency=1, max_retries=2, backoff=0.001)
    with pytest.raises(PrismError, match=r"failed after 3 attempts; last error: .*not a chat completion response"):
        engine.generate(make_requests(2))
    assert server.hits == 3  # bounded: the second request was never sent


def test_an_empty_answer_that_ran_to_its_end_is_the_models_answer(servers):
    server = servers()
    server.faults = ["empty_stop"]  # content "", finish_reason "stop": a seeded retry would repeat it
    assert OpenAIEngine([server.url], "m", max_retries=3).generate(make_requests(1)) == [""]
    assert server.hits == 1


def test_a_server_restart_is_ridden_out(servers):
    first = servers()
    port = int(first.url.rsplit(":", 1)[1].split("/")[0])
    engine = OpenAIEngine([first.url], "m", max_concurrency=2, max_retries=8, backoff=0.05, max_backoff=0.4)
    assert len(engine.generate(make_requests(4))) == 4  # then the same port goes away
    first.close()
    restarted = []
    threading.Timer(0.5, lambda: restarted.append(servers(port=port))).start()
    requests = make_requests(6, model="after-restart")
    texts = engine.generate(requests)
    assert texts == [f"echo:{r.messages[-1]['content'][-12:]}|seed={r.seed}" for r in requests]
    assert restarted[0].hits >= 6 and engine.endpoint_stats[first.url].failed >= 1


class DripServer:
    """A server on 127.0.0.1 that reads a request and sends a valid chat completion back one byte a
    second, status line and headers included (a response of ~300 bytes takes 5 minutes): the slow
    replica that an idle timeout, reset by every byte, never abandons. `sent` holds, per connection,
    the bytes it managed to send before the client went away."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/v1"
        self.sent: list[int] = []
        self.connections: list[socket.socket] = []
        self.stopped = threading.Event()
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self) -> None:
        while not self.stopped.is_set():
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.connections.append(connection)
            threading.Thread(target=self.drip, args=(connection,), daemon=True).start()

    def drip(self, connection: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += connection.recv(65536)
        head, body = data.split(b"\r\n\r\n", 1)
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        while len(body) < length:
            body += connection.recv(65536)
        payload = json.dumps({"choices": [{"index": 0, "finish_reason": "stop",
                                           "message": {"role": "assistant", "content": "slow"}}]}).encode()
        response = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
        sent = 0
        for byte in response:
            try:
                connection.sendall(bytes([byte]))
            except OSError:  # the client closed the connection
                break
            sent += 1
            if self.stopped.wait(1.0):
                break
        self.sent.append(sent)

    def close(self) -> None:
        self.stopped.set()
        self.listener.close()
        shut_down(self.connections)


@pytest.fixture
def drip_server():
    server = DripServer()
    yield server
    server.close()


def test_a_server_that_drips_its_answer_is_abandoned_at_the_deadline(servers, drip_server, tmp_path, caplog):
    """request_timeout bounds an attempt's wall-clock time although every byte restarts httpx's
    timeout: the requests that start on the dripping URL are abandoned at the deadline and answered by
    the healthy one, and the journal holds each response once."""
    healthy = servers()
    requests = make_requests(6)
    engine = OpenAIEngine([drip_server.url, healthy.url], "m", max_concurrency=6, max_retries=2, timeout=30,
                          request_timeout=HEALTHY_S, backoff=0.01)
    journal_path = tmp_path / "j.jsonl"
    started = time.time()
    with caplog.at_level(logging.WARNING, logger="prismatic.generation.engines.openai"):
        texts = generate_journaled(engine, requests, Journal(journal_path))
    elapsed = time.time() - started
    assert texts == [f"echo:{r.messages[-1]['content'][-12:]}|seed={r.seed}" for r in requests]
    # Requests 0, 2 and 4 started on the dripping URL (round-robin), were abandoned once each, then moved.
    dripped = engine.endpoint_stats[drip_server.url]
    assert (dripped.sent, dripped.failed, dripped.ok) == (3, 3, 0)
    assert engine.endpoint_stats[healthy.url].ok == healthy.hits == 6
    mark = f"request_timeout_s = {HEALTHY_S:g} s; abandoned"
    abandoned = [r.created - started for r in caplog.records if mark in r.message]
    assert len(abandoned) == 3 and min(abandoned) >= HEALTHY_S  # not before the deadline
    deadline = time.monotonic() + 10
    while len(drip_server.sent) < 3:  # the server notices the closed connections at its next byte
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert max(drip_server.sent) < 100  # the responses (~180 bytes at 1 byte/s) were never complete
    lines = [json.loads(line) for line in journal_path.read_text().splitlines()]
    assert sorted(line["key"] for line in lines) == sorted(r.key for r in requests)  # each response once
    print(f"\nrequest_timeout {HEALTHY_S:g} s: abandoned at {', '.join(f'{t:.2f}' for t in abandoned)} s; "
          f"bytes the dripping server sent {sorted(drip_server.sent)}; all 6 answered in {elapsed:.2f} s")


def test_orphaned_vllm_engine_processes_are_found():
    """An engine core whose owner died (re-parented away from Python) is reported; a live one is not."""
    import signal
    import subprocess

    from prismatic.generation.engines.vllm import orphaned_vllm_engines

    started = subprocess.run(["bash", "-c", "(exec -a VLLM::EngineCore sleep 60) >/dev/null 2>&1 & echo $!"],
                             capture_output=True, text=True, check=True)
    orphan = int(started.stdout)
    owned = subprocess.Popen(["bash", "-c", "exec -a VLLM::EngineCore sleep 60"])
    try:
        deadline = time.monotonic() + 10
        while orphan not in orphaned_vllm_engines():
            assert time.monotonic() < deadline, "the orphan was not found"
            time.sleep(0.05)
        assert owned.pid not in orphaned_vllm_engines()  # its parent is this Python process
    finally:
        os.kill(orphan, signal.SIGKILL)
        owned.kill()
        owned.wait()


def test_openai_engine_arguments_are_checked():
    with pytest.raises(PrismError):
        OpenAIEngine([], "m")
    with pytest.raises(PrismError):
        OpenAIEngine(["http://a/v1", "http://a/v1/"], "m")
    assert OpenAIEngine("http://a/v1", "m").base_urls == ["http://a/v1"]
    assert OpenAIEngine(["http://a/v1"], "m").generate([]) == []


# ------------------------------------------------------------------------------------------ vLLM


@pytest.fixture(scope="module")
def vllm_engine(tiny_model_dir, tmp_path_factory):
    """One vLLM engine (tiny random Qwen2, CPU) for the whole module: it takes ~1 min to start."""
    yield from vllm_engine_for(tiny_model_dir, tmp_path_factory.mktemp("models"))


@pytest.mark.slow
def test_vllm_engine_plain_choices_json_and_seed(vllm_engine, tmp_path):
    short = PROBLEM.model_copy(update={"max_tokens": 16})
    messages = [{"role": "user", "content": "Write a problem."}]
    plain = [GenerationRequest.build("tiny", messages, short, i) for i in range(4)]
    texts = vllm_engine.generate(plain)
    assert len(texts) == 4 and all(isinstance(t, str) for t in texts)
    assert len(set(texts)) > 1  # different indices, different seeds
    assert 0 < vllm_engine.output_tokens <= 4 * 16
    assert vllm_engine.generate(plain) == texts  # a fixed seed gives the same outputs

    labels = [GenerationRequest.build("tiny", solution_prompt(nli_prompt("A dog runs.", f"It moves {i}."), "nli",
                                                              reasoning=False),
                                      SOLUTION.model_copy(update={"max_tokens": 8}), i,
                                      choices=list(NLI_LABELS)) for i in range(6)]
    assert set(vllm_engine.generate(labels)) <= set(NLI_LABELS)

    schema = {"type": "object", "properties": {"label": {"enum": list(NLI_LABELS)}}, "required": ["label"],
              "additionalProperties": False}
    structured = [GenerationRequest.build("tiny", messages, SOLUTION.model_copy(update={"max_tokens": 32}),
                                          i, json_schema=schema) for i in range(2)]
    for text in vllm_engine.generate(structured):
        assert json.loads(text)["label"] in NLI_LABELS

    journal = Journal(tmp_path / "j.jsonl")
    assert generate_journaled(vllm_engine, plain, journal) == texts
    tokens = vllm_engine.output_tokens
    assert generate_journaled(vllm_engine, plain, Journal(tmp_path / "j.jsonl")) == texts
    assert vllm_engine.output_tokens == tokens  # nothing was generated the second time



@pytest.mark.slow
def test_vllm_engine_counts_tokens_and_stops_between_calls_at_a_budget(vllm_engine, tiny_model_dir, tmp_path,
                                                                       monkeypatch):
    """Prompt tokens are the chat template's tokens of the request (counted here with the model's own
    tokenizer), completion tokens the ones generated; a budget stops the engine between batched calls."""
    from transformers import AutoTokenizer

    import prismatic.generation.engines.vllm as vllm_module
    from prismatic.generation.usage import Budget

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    short = PROBLEM.model_copy(update={"max_tokens": 12})
    requests = [GenerationRequest.build("tiny", [{"role": "user", "content": f"Write problem {i} of {'x ' * i}."}],
                                        short, i) for i in range(5)]
    reported, before = {}, vllm_engine.output_tokens
    vllm_engine.generate(requests, on_results=lambda pairs: reported.update(pairs))
    for i, request in enumerate(requests):
        prompt = tokenizer.apply_chat_template(list(request.messages), add_generation_prompt=True, tokenize=True,
                                               return_dict=True)["input_ids"]
        assert reported[i].prompt_tokens == len(prompt)
        assert 1 <= reported[i].completion_tokens <= 12 and reported[i].latency_s > 0
    assert sum(c.completion_tokens for c in reported.values()) == vllm_engine.output_tokens - before

    monkeypatch.setattr(vllm_module, "BUDGET_CHUNK", 2)  # batched calls of 2 requests
    path = tmp_path / "j.jsonl"
    with pytest.raises(PrismError, match=r"generator.budget_tokens = 1 reached: .* on 2 responses of this round; "
                                         r"3 of the 5 requests to send are unanswered"):
        generate_journaled(vllm_engine, requests, Journal(path), Budget(tokens=1))
    assert len(Journal(path)) == 2  # the first call's two, then nothing
    journal = Journal(path)
    generate_journaled(vllm_engine, requests, journal, Budget(tokens=10**6, spent=journal.usage()))
    assert journal.usage().total_tokens == sum(c.total_tokens for c in reported.values())  # seeded: same counts
