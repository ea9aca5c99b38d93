"""Every token counted, rate limits and the per-round budget, against fake OpenAI-compatible servers
(tests/fake_openai.py) that count what they receive and when: each response's tokens and latency reach
the journal; `max_requests_per_minute` / `max_tokens_per_minute` hold over all URLs together (windows
of 2 seconds here, not a minute; arrivals are counted in 1.5-second stretches, a margin for the delay
between sending and the server's handler running, which a loaded machine stretches to a tenth of a
second); `Retry-After` rests a URL that long; a budget stops sending, and a rerun with a larger one
sends exactly the requests that were not answered."""

from __future__ import annotations

import itertools
import json

import pytest
from fake_openai import fake_servers

from prismatic.config import PriceTable, SynthesisConfig
from prismatic.errors import PrismError
from prismatic.generation.engines.openai import OpenAIEngine, retry_after_s
from prismatic.generation.engines.ratelimit import RateLimiter
from prismatic.generation.journal import Journal, generate_journaled
from prismatic.generation.prompts import solution_prompt
from prismatic.generation.requests import GenerationRequest, Sampling
from prismatic.generation.usage import Budget, Completion, Usage

SHORT = Sampling.from_config(SynthesisConfig().solution_sampling, seed=0).model_copy(update={"max_tokens": 8})
COMPLETION = 3
"""Completion tokens the fake server reports per answer."""


@pytest.fixture
def servers():
    yield from fake_servers()


def make_requests(n: int, tag: str = "") -> list[GenerationRequest]:
    return [GenerationRequest.build("m", solution_prompt(f"What is {i} + {i}?{tag}", "math"), SHORT, 0)
            for i in range(n)]


def words(request: GenerationRequest) -> int:
    """The prompt tokens the fake server reports for `request`, counted here from the request itself."""
    return sum(len(message["content"].split()) for message in request.messages)


def question(body: dict) -> str:
    return body["messages"][-1]["content"]


def most_in_window(times: list[float], window: float, weights: list[int] | None = None) -> int:
    """The largest sum of `weights` (1 each by default) of the `times` inside any half-open window
    [t, t + window) (it suffices to start windows at the times themselves)."""
    weights = weights or [1] * len(times)
    pairs = sorted(zip(times, weights))
    return max(sum(w for u, w in pairs if t <= u < t + window) for t, _ in pairs)


# ------------------------------------------------------------------------------------------ counts


def test_each_response_reports_its_tokens_and_latency_and_the_journal_keeps_them(servers, tmp_path):
    server = servers(delay=0.05)
    requests = make_requests(5)
    reported = {}
    engine = OpenAIEngine([server.url], "m", max_concurrency=2)
    texts = engine.generate(requests, on_results=lambda pairs: reported.update(pairs))
    assert sorted(reported) == list(range(5)) and [reported[i].text for i in range(5)] == texts
    for i, request in enumerate(requests):
        assert (reported[i].prompt_tokens, reported[i].completion_tokens) == (words(request), COMPLETION)
        assert 0.05 <= reported[i].latency_s < 30  # the server slept 0.05 s before answering

    path = tmp_path / "j.jsonl"
    more = make_requests(3, tag=" Again.")
    generate_journaled(engine, more, Journal(path))
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [list(line) for line in lines] == [["key", "text", "prompt_tokens", "completion_tokens", "latency_s"]] * 3
    reopened = Journal(path)
    for request in more:
        completion = reopened.completion(request.key)
        assert (completion.prompt_tokens, completion.completion_tokens) == (words(request), COMPLETION)
    usage = reopened.usage()
    assert (usage.responses, usage.prompt_tokens, usage.completion_tokens, usage.uncounted) == (
        3, sum(map(words, more)), 3 * COMPLETION, 0)


def test_usage_summary_and_cost_follow_the_price_table():
    usage = Usage()
    for prompt, completion, latency in [(1000, 200, 1.0), (3000, 600, 3.0), (10, 5, 2.0)]:
        usage.add(Completion("x", prompt, completion, latency))
    usage.add(Completion("an old response"))
    prices = PriceTable(input_usd_per_million=0.5, output_usd_per_million=4.0)
    summary = usage.summary(prices)
    assert summary["responses"] == 4 and summary["uncounted"] == 1
    assert summary["prompt_tokens"] == 4010 and summary["completion_tokens"] == 805 and summary["total_tokens"] == 4815
    assert summary["cost_usd"] == pytest.approx((4010 * 0.5 + 805 * 4.0) / 1e6)
    assert summary["latency_s_mean"] == pytest.approx(2.0) and summary["latency_s_p95"] == 3.0
    assert usage.summary()["cost_usd"] is None and usage.summary()["prices"] is None


# ------------------------------------------------------------------------------------------ rate limits


def test_requests_per_minute_hold_over_all_urls_together(servers):
    """4 requests per 2-second window, over three servers: counted where they arrive, no 1.5-second
    stretch holds more than 4; without the limit one does."""
    urls = [servers().url for _ in range(3)]
    requests = make_requests(10)
    free = OpenAIEngine(urls, "m", max_concurrency=8)
    free.generate(requests)
    unlimited = sorted(itertools.chain.from_iterable(fake.arrivals for fake in servers.started))
    assert most_in_window(unlimited, 1.5) > 4  # the check below can fail

    for fake in servers.started:
        fake.arrivals.clear()
    engine = OpenAIEngine(urls, "m", max_concurrency=8, max_requests_per_minute=4, rate_window_s=2.0)
    texts = engine.generate(requests)
    assert texts == [f"echo:{r.messages[-1]['content'][-12:]}|seed={r.seed}" for r in requests]
    arrivals = sorted(itertools.chain.from_iterable(fake.arrivals for fake in servers.started))
    assert len(arrivals) == 10 and most_in_window(arrivals, 1.5) <= 4
    assert sum(fake.hits for fake in servers.started) == 20 and all(len(f.arrivals) for f in servers.started)


def test_tokens_per_minute_hold_with_the_servers_counts(servers):
    """Each request uses `words + 3` tokens (the server's usage); with a limit of about 3 such requests
    per 2-second window (a request is estimated at its prompt plus `max_tokens` until it is answered),
    no 1.5-second stretch of arrivals holds more tokens than the limit plus one request's."""
    server = servers()
    requests = make_requests(8)
    cost = [words(r) + COMPLETION for r in requests]
    limit = 3 * (max(cost) + SHORT.max_tokens)
    engine = OpenAIEngine([server.url], "m", max_concurrency=6, max_tokens_per_minute=limit, rate_window_s=2.0)
    engine.generate(requests)
    by_question = {question(body): at for body, at in zip(server.bodies, server.arrivals, strict=True)}
    times = [by_question[r.messages[-1]["content"]] for r in requests]
    assert len(server.arrivals) == 8
    assert most_in_window(times, 1.5, cost) <= limit + max(cost)
    assert most_in_window([0.0] * 8, 1.5, cost) > limit + max(cost)  # all at once would break it


def test_the_request_pace_spaces_sends_evenly():
    import asyncio

    limiter = RateLimiter(requests=4, window_s=1.0)

    async def run() -> list[float]:
        return [(await limiter.acquire()).at for _ in range(6)]

    times = asyncio.run(run())
    assert all(b - a >= 0.25 for a, b in zip(times, times[1:]))  # window / requests apart: ≤ 4 in any second


def test_the_token_pace_follows_what_the_server_counted():
    """0.1 s per token: a send estimated at 90 tokens holds the next one 9 s back; when the server
    counts 20, the waiting send goes 2 s after it instead."""
    import asyncio

    limiter = RateLimiter(tokens=100, window_s=10.0)

    async def run() -> float:
        first = await limiter.acquire(90)
        waiter = asyncio.ensure_future(limiter.acquire(lambda: 50))
        await asyncio.sleep(0.3)
        assert not waiter.done()
        limiter.settle(first, 20)
        second = await asyncio.wait_for(waiter, timeout=6.0)  # well before the 9 s of the estimate
        assert second.tokens == 50
        return second.at - first.at

    assert asyncio.run(run()) >= 2.0


@pytest.mark.parametrize("fault, rest", [("429:1", 1.0), ("503:1", 1.0), ("429-date:2", 1.0)])
def test_retry_after_rests_the_url_that_long(servers, fault, rest):
    """One URL: after a 429/503 with Retry-After (seconds, or an HTTP date of whole seconds), its next
    request arrives no sooner than that (without the header the rest would be `backoff`, 0.01 s)."""
    server = servers()
    server.faults = [fault]
    engine = OpenAIEngine([server.url], "m", max_concurrency=1, max_retries=2, backoff=0.01)
    texts = engine.generate(make_requests(3))
    assert len(texts) == 3 and all(t.startswith("echo:") for t in texts)
    assert server.hits == 4 and engine.endpoint_stats[server.url].failed == 1
    assert server.arrivals[1] - server.arrivals[0] >= rest


def test_retry_after_moves_the_work_to_the_other_urls(servers):
    resting, other = servers(), servers()
    resting.faults = ["429:5"]
    engine = OpenAIEngine([resting.url, other.url], "m", max_concurrency=1, max_retries=2, backoff=0.01)
    texts = engine.generate(make_requests(6))
    assert len(texts) == 6 and all(t.startswith("echo:") for t in texts)
    assert resting.hits == 1 and other.hits == 6  # request 0 was retried there; 2 and 4 started there


def test_retry_after_values():
    assert retry_after_s("2") == 2.0 and retry_after_s("0.5") == 0.5 and retry_after_s("-3") == 0.0
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert retry_after_s(None) is None and retry_after_s("soon") is None


# ------------------------------------------------------------------------------------------ budget


def test_a_token_budget_stops_sending_and_a_larger_one_sends_exactly_the_rest(servers, tmp_path):
    server = servers()
    requests = make_requests(10)
    cost = [words(r) + COMPLETION for r in requests]
    cumulative = list(itertools.accumulate(cost))
    limit = cumulative[3] - 1  # the 4th response reaches it: 4 answered, then nothing is sent
    path = tmp_path / "j.jsonl"
    journal = Journal(path)
    engine = OpenAIEngine([server.url], "m", max_concurrency=1)
    with pytest.raises(PrismError) as info:
        generate_journaled(engine, requests, journal, Budget(tokens=limit, spent=journal.usage()), "solution")
    spent_prompt = sum(words(r) for r in requests[:4])
    assert str(info.value) == (
        f"generator.budget_tokens = {limit} reached: spent {cumulative[3]} tokens ({spent_prompt} prompt + "
        f"{4 * COMPLETION} completion) on 4 responses of this round; 6 of the 10 solution requests to send are "
        f"unanswered. Nothing answered is lost: a rerun with a larger budget resumes from the journal {path} "
        f"and sends only those 6")
    assert "\n" not in str(info.value)
    assert [question(b) for b in server.bodies] == [r.messages[-1]["content"] for r in requests[:4]]
    assert set(Journal(path).texts) == {r.key for r in requests[:4]}

    again = Journal(path)  # the same budget: nothing more is sent
    with pytest.raises(PrismError, match="; 6 of the 6 solution requests to send are unanswered"):
        generate_journaled(engine, requests, again, Budget(tokens=limit, spent=again.usage()), "solution")
    assert server.hits == 4

    larger = Journal(path)
    texts = generate_journaled(engine, requests, larger, Budget(tokens=10 * limit, spent=larger.usage()))
    assert texts == [f"echo:{r.messages[-1]['content'][-12:]}|seed={r.seed}" for r in requests]
    sent = [question(b) for b in server.bodies]
    assert sent[4:] == [r.messages[-1]["content"] for r in requests[4:]]  # exactly the 6 not answered
    assert len(sent) == len(set(sent)) == 10
    assert Journal(path).usage().total_tokens == cumulative[-1]


def test_requests_in_flight_finish_and_are_kept_when_the_budget_is_reached(servers, tmp_path):
    server = servers(delay=0.05)
    requests = make_requests(12)
    cost = [words(r) + COMPLETION for r in requests]
    limit = cost[0] + 1  # reached by the second response
    journal = Journal(tmp_path / "j.jsonl")
    engine = OpenAIEngine([server.url], "m", max_concurrency=4)
    with pytest.raises(PrismError, match="generator.budget_tokens"):
        generate_journaled(engine, requests, journal, Budget(tokens=limit))
    answered = Journal(tmp_path / "j.jsonl")
    assert 2 <= server.hits == len(answered) <= 2 + 3  # at most the 3 others in flight went on
    assert answered.usage().total_tokens == sum(words(r) + COMPLETION for r in requests if r.key in answered)


def test_a_usd_budget_counts_with_the_price_table(servers, tmp_path):
    server = servers()
    requests = make_requests(6)
    prices = PriceTable(input_usd_per_million=2000.0, output_usd_per_million=10000.0)
    dollars = [(words(r) * 2000.0 + COMPLETION * 10000.0) / 1e6 for r in requests]
    limit = round(sum(dollars[:3]) - 1e-6, 6)  # reached by the third response
    journal = Journal(tmp_path / "j.jsonl")
    with pytest.raises(PrismError) as info:
        generate_journaled(OpenAIEngine([server.url], "m", max_concurrency=1), requests, journal,
                           Budget(usd=limit, prices=prices))
    assert server.hits == 3
    assert str(info.value).startswith(f"generator.budget_usd = {limit:g} reached: spent "
                                      f"{sum(words(r) + COMPLETION for r in requests[:3])} tokens")
    assert f"${sum(dollars[:3]):.4f}) on 3 responses" in str(info.value)
    assert "3 of the 6 requests to send are unanswered" in str(info.value)


def test_old_journals_count_what_they_can(tmp_path):
    """A journal written before counts existed reads back: its responses count as uncounted, and the
    budget starts from what the counted ones used."""
    path = tmp_path / "j.jsonl"
    path.write_text('{"key": "a", "text": "old"}\n'
                    '{"key": "b", "text": "new", "prompt_tokens": 7, "completion_tokens": 2, "latency_s": 0.25}\n')
    journal = Journal(path)
    assert journal["a"] == "old" and journal.completion("a").prompt_tokens is None
    usage = journal.usage()
    assert (usage.responses, usage.prompt_tokens, usage.completion_tokens, usage.uncounted) == (2, 7, 2, 1)
    budget = Budget(tokens=10, spent=usage)
    assert not budget.reached() and budget.spent.total_tokens == 9
