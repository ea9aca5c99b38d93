"""Screening generated problems before they are solved, in a whole generation step: planted junk from
a real HTTP server is dropped with its reason, good problems are solved, and the proxy-NLL rule
drops word salad under the real SmolLM2."""

import json

import polars as pl
import pytest
from fake_llm import MATH_PROBLEMS, DeterministicServer

from prismatic.config import SynthesisConfig
from prismatic.data.quality import build_filter
from prismatic.data.samples import load_seeds
from prismatic.generation.engines.openai import OpenAIEngine
from prismatic.generation.journal import Journal
from prismatic.synthesis.generate import generate_round, problem_nll, screen_problems


@pytest.fixture()
def server():
    server = DeterministicServer()
    yield server
    server.close()


def test_planted_junk_is_dropped_with_its_reason_and_good_problems_are_solved(server, tmp_path):
    seeds = load_seeds("bundled").filter(task="math")
    config = SynthesisConfig(tasks=["math"], prompts_per_round=12, solutions_per_problem=2)
    engine = OpenAIEngine([server.url], "fake", max_concurrency=4)
    gens, problems, rejections, _ = generate_round(
        engine, Journal(tmp_path / "j.jsonl"), seeds, config, "fake", "r001",
        problem_filter=build_filter(seeds.select("id", "prompt"), config.dedup, config.decontamination))
    planted = {text: reason for reason, text in MATH_PROBLEMS}
    parsed = gens.filter(kind="problem")
    assert parsed.height == 24  # one problem per continuation request, 2 per prompt
    reasons = dict(rejections.select("id", "reason").iter_rows())
    solved = set(gens.filter(kind="solution")["parent_ids"].list.first().to_list())
    seen_good, seen_junk, first_good = 0, set(), set()
    for row in parsed.iter_rows(named=True):
        expected = planted[row["text"]]
        if expected == "good":
            seen_good += 1
            if row["text"] in first_good:  # the same good problem again: a duplicate of the round
                assert reasons[row["id"]] == "exact_duplicate_round"
            else:
                first_good.add(row["text"])
                assert row["id"] in solved and row["id"] not in reasons
        else:
            seen_junk.add(expected)
            assert reasons[row["id"]] == expected, (row["text"], reasons.get(row["id"]))
            assert row["id"] not in solved
    assert seen_good >= 2 and len(seen_junk) >= 3, (seen_good, seen_junk)
    assert problems["id"].to_list() == sorted(solved)
    # Every rejection carries its measured value and threshold.
    detail = json.loads(rejections.filter(reason="long_token")["detail"][0]) if "long_token" in seen_junk else None
    assert detail is None or detail["token_chars"] > detail["max_token_chars"]


@pytest.mark.slow
def test_proxy_nll_rule_drops_word_salad_under_smollm2(smollm2_dir):
    import torch

    from prismatic.models import load_causal_lm

    model, tokenizer = load_causal_lm(str(smollm2_dir), torch.bfloat16, torch.device("cpu"))
    pool = load_seeds("bundled").filter(task="math").select("id", "prompt", "task")
    good = ["A library has 240 books and lends out 35 of them on Monday. How many books are left in the library?",
            "Sara buys 4 packs of pencils with 12 pencils in each pack. How many pencils does she have?"]
    salad = ["Purple seventeen ladder whispers because Tuesday melts the number of quietly orange spoons; "
             "how many seconds does the ocean owe the staircase?",
             "Gravel minus teapot equals the lantern of eleven forgotten verbs, so what is the drift of nadia?"]
    problems = pl.DataFrame({"id": ["g0", "g1", "s0", "s1"], "task": "math", "prompt": good + salad})
    config = SynthesisConfig(tasks=["math"])
    kept, rejections, about = screen_problems(
        problems, pool, config, nll=lambda texts, tasks: problem_nll(model, tokenizer, texts, tasks))
    assert kept["id"].to_list() == ["g0", "g1"]
    assert rejections["reason"].to_list() == ["proxy_nll_outlier"] * 2
    threshold = about["nll_thresholds"]["math"]
    for detail in map(json.loads, rejections["detail"]):
        assert detail["nll"] > detail["threshold"] == pytest.approx(threshold, abs=1e-4)
