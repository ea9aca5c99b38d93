"""A round's generation step under a budget, against the deterministic HTTP server of tests/fake_llm.py
(which reports each request's tokens): the budget stops the round in its solution requests with one
line, a rerun with a larger budget sends exactly the requests that were not answered, and the round's
rows, provenance and facts count every token the server reported."""

import json

import pytest
from fake_llm import DeterministicServer

from prismatic.config import GeneratorConfig, PriceTable, SynthesisConfig
from prismatic.data.samples import load_seeds
from prismatic.errors import PrismError
from prismatic.generation.engines.factory import engine_from_config
from prismatic.generation.engines.openai import OpenAIEngine
from prismatic.generation.journal import Journal
from prismatic.generation.usage import Budget
from prismatic.synthesis.generate import problem_jobs
from prismatic.synthesis.steps import generations_step

CONFIG = SynthesisConfig(tasks=["nli"], prompts_per_round=4, problems_per_prompt=2, solutions_per_problem=3)
PRICES = PriceTable(input_usd_per_million=3.0, output_usd_per_million=15.0)


@pytest.fixture
def make_server():
    started = []

    def start() -> DeterministicServer:
        started.append(DeterministicServer())
        return started[-1]

    yield start
    for server in started:
        server.close()


def run(server, journal: Journal, budget: Budget | None = None):
    seeds = load_seeds("bundled")
    pool = seeds.drop("level", "source")
    engine = OpenAIEngine([server.url], "fake", max_concurrency=1)  # one at a time: the order is the requests'
    return generations_step("r001", CONFIG, pool=pool, seeds=seeds, engine=engine, journal=journal, model="fake",
                            budget=budget, prices=PRICES)


def test_a_round_stopped_by_its_budget_resumes_with_exactly_the_requests_left(make_server, tmp_path):
    reference_server = make_server()
    reference = run(reference_server, Journal(tmp_path / "reference.jsonl"))
    order = list(reference_server.answered)  # every request's seed, in the order sent
    tokens = reference_server.tokens  # seed → (prompt, completion), as the server counted them
    problem_seeds = [job.request.seed for job in problem_jobs(load_seeds("bundled").drop("source"), CONFIG,
                                                              "fake", "r001")]
    assert order[:len(problem_seeds)] == problem_seeds and len(order) > len(problem_seeds) + 3
    spent = [sum(tokens[seed]) for seed in order]
    stop_after = len(problem_seeds) + 2  # the 2nd solution reaches the budget
    limit = sum(spent[:stop_after]) - 1

    server = make_server()
    path = tmp_path / "r001.jsonl"
    journal = Journal(path)
    with pytest.raises(PrismError) as info:
        run(server, journal, Budget(tokens=limit, spent=journal.usage()))
    solutions = len(order) - len(problem_seeds)
    prompt = sum(tokens[seed][0] for seed in order[:stop_after])
    completion = sum(tokens[seed][1] for seed in order[:stop_after])
    assert str(info.value) == (
        f"generator.budget_tokens = {limit} reached: spent {prompt + completion} tokens ({prompt} prompt + "
        f"{completion} completion) on {stop_after} responses of this round; {solutions - 2} of the {solutions} "
        f"solution requests to send are unanswered. Nothing answered is lost: a rerun with a larger budget "
        f"resumes from the journal {path} and sends only those {solutions - 2}")
    assert server.answered == order[:stop_after]

    first = len(server.answered)
    journal = Journal(path)
    output = run(server, journal, Budget(tokens=10 * sum(spent), spent=journal.usage()))
    assert server.answered[first:] == order[stop_after:]  # exactly the requests not answered, each once
    assert sorted(server.answered) == sorted(order)

    gens, expected = output.tables["generations"], reference.tables["generations"]
    assert gens.drop("latency_s").equals(expected.drop("latency_s"))
    for row in gens.iter_rows(named=True):
        seed = json.loads(row["sampling"])["seed"]
        assert (row["prompt_tokens"], row["completion_tokens"]) == tokens[seed]
        assert row["latency_s"] > 0
    usage = output.provenance["generations"]["usage"]
    total_prompt, total_completion = (sum(tokens[s][i] for s in order) for i in (0, 1))
    assert (usage["responses"], usage["prompt_tokens"], usage["completion_tokens"]) == (
        len(order), total_prompt, total_completion)
    assert usage["cost_usd"] == pytest.approx((3.0 * total_prompt + 15.0 * total_completion) / 1e6, abs=1e-6)
    assert usage["prices"] == {"input_usd_per_million": 3.0, "output_usd_per_million": 15.0}
    facts = output.facts
    assert (facts["prompt_tokens"], facts["completion_tokens"], facts["total_tokens"]) == (
        total_prompt, total_completion, total_prompt + total_completion)
    assert facts["cost_usd"] == usage["cost_usd"] == reference.facts["cost_usd"]


def test_rows_parsed_from_one_answer_share_its_request_counts(make_server, tmp_path):
    """With the `json` format one request yields several problems: each row carries that request's
    counts, and the round's usage counts the request once."""
    server = make_server()
    config = CONFIG.model_copy(update={"problem_format": "json", "solutions_per_problem": 1})
    seeds = load_seeds("bundled")
    output = generations_step("r001", config, pool=seeds.drop("level", "source"), seeds=seeds,
                              engine=OpenAIEngine([server.url], "fake"), journal=Journal(tmp_path / "j.jsonl"),
                              model="fake")
    gens = output.tables["generations"]
    problems = gens.filter(kind="problem")
    assert problems.height == 2 * problems["request_key"].n_unique() == 2 * config.prompts_per_round
    for _, rows in problems.group_by("request_key"):
        seed = json.loads(rows["sampling"][0])["seed"]
        assert rows.height == 2 and set(zip(rows["prompt_tokens"], rows["completion_tokens"])) == {server.tokens[seed]}
    usage = output.provenance["generations"]["usage"]
    assert usage["responses"] == len(server.answered) == gens["request_key"].n_unique()
    assert usage["total_tokens"] == sum(sum(t) for t in server.tokens.values())
    assert usage["cost_usd"] is None and output.facts["cost_usd"] is None


def test_the_factory_gives_the_openai_engine_its_limits():
    engine = engine_from_config(GeneratorConfig(backend="openai", base_urls=["http://a/v1", "http://b/v1"],
                                                model="m", max_requests_per_minute=90, max_tokens_per_minute=5000),
                                "/nonexistent")
    assert (engine.limiter.requests, engine.limiter.tokens, engine.limiter.window_s) == (90, 5000, 60.0)
    assert engine_from_config(GeneratorConfig(backend="openai", base_urls=["http://a/v1"]), "/x").limiter is None
