"""The OpenAI-compatible generator against real `vllm serve` processes of the tiny model on
127.0.0.1: structured outputs, seeds and the journal on one server, then failover between two, one
of them SIGKILLed mid-round. The servers start once for the module (each start costs a minute or
more on two cores), so the one-server test runs first, before the kill."""

import pytest
from conftest import vllm_servers

from prismatic.generation.engines.openai import OpenAIEngine
from prismatic.generation.journal import Journal, generate_journaled
from prismatic.generation.prompts import NLI_LABELS
from prismatic.generation.requests import GenerationRequest, Sampling
from prismatic.synthesis.generate import parse_structured_problems, problems_schema
from resources.generator import endpoint_counts

pytestmark = pytest.mark.slow

REQUESTS = 40
KILL_AFTER = 4


@pytest.fixture(scope="module")
def servers(tiny_model_dir, tmp_path_factory):
    # Eager mode: torch.compile's warm-up (~30 s a server on 2 cores, its cache keyed by the
    # per-run model path) tests nothing here.
    with vllm_servers(tiny_model_dir, tmp_path_factory.mktemp("serve"), count=2,
                      extra_args=["--enforce-eager"]) as served:
        yield served


def _serve_request(index, max_tokens=400, **constraint):
    messages = [{"role": "user", "content": f"Write something, number {index}."}]
    sampling = Sampling(temperature=1.0, top_p=0.95, max_tokens=max_tokens, seed=0)
    return GenerationRequest.build("tiny", messages, sampling, index, **constraint)


def test_openai_engine_against_vllm_serve(servers, tmp_path):
    server = servers[0].url
    engine = OpenAIEngine([server], "tiny", max_concurrency=4)
    requests = ([_serve_request(i) for i in range(3)]
                + [_serve_request(10 + i, choices=list(NLI_LABELS)) for i in range(3)]
                + [_serve_request(20, max_tokens=1900, json_schema=problems_schema("math", 2))])
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


def _request(index):
    messages = [{"role": "user", "content": f"Count to ten, number {index}."}]
    sampling = Sampling(temperature=1.0, top_p=0.95, max_tokens=16, seed=index)
    return GenerationRequest.build("tiny", messages, sampling, index)


class _KillingJournal(Journal):
    """A journal that SIGKILLs `victim` once `after` responses are in it (appends run on the thread
    that collects results, while the other requests are still in flight)."""

    def __init__(self, path, victim, after):
        super().__init__(path)
        self.victim, self.after, self.killed_at = victim, after, None

    def append_many(self, items):
        super().append_many(items)
        if self.killed_at is None and len(self) >= self.after:
            self.killed_at = len(self)
            self.victim.kill()


@pytest.mark.scaleout
def test_generator_survives_a_server_killed_mid_round(servers, tmp_path):
    survivor, victim = servers
    engine = OpenAIEngine([survivor.url, victim.url], "tiny", max_concurrency=2, max_retries=4,
                          timeout=60, backoff=0.2, max_backoff=2.0)
    requests = [_request(i) for i in range(REQUESTS)]
    journal = _KillingJournal(tmp_path / "journal.jsonl", victim, KILL_AFTER)
    texts = generate_journaled(engine, requests, journal)

    assert journal.killed_at is not None and journal.killed_at < REQUESTS
    assert victim.process.poll() is not None and survivor.process.poll() is None
    # Every request answered once: the journal on disk has each key exactly once.
    assert len(texts) == REQUESTS and all(isinstance(t, str) for t in texts)
    on_disk = [line for line in (tmp_path / "journal.jsonl").read_text().splitlines() if line]
    reopened = Journal(tmp_path / "journal.jsonl")
    assert len(on_disk) == REQUESTS and set(reopened.texts) == {r.key for r in requests}
    assert [reopened[r.key] for r in requests] == texts

    alive, dead = engine.endpoint_stats[survivor.url], engine.endpoint_stats[victim.url]
    assert alive.ok + dead.ok == REQUESTS == engine.completed
    assert dead.ok < REQUESTS // 2 and dead.failed >= 1 and alive.failed == 0
    assert dead.sent == dead.ok + dead.failed and alive.sent == alive.ok
    assert alive.output_tokens + dead.output_tokens == engine.output_tokens > 0

    # The per-endpoint counts the generations asset puts into its metadata.
    counts = endpoint_counts(engine)
    assert counts == {url: {"sent": s.sent, "ok": s.ok, "failed": s.failed, "output_tokens": s.output_tokens}
                      for url, s in engine.endpoint_stats.items()}

    # Seeded requests are deterministic across servers: the survivor alone answers a few of them
    # (the first ones, some of which the killed server answered) with the same texts.
    with OpenAIEngine([survivor.url], "tiny", max_concurrency=2) as again:
        assert again.generate(requests[:6]) == texts[:6]
    engine.close()
