"""Prompt building, problem parsing and few-shot sampling (prismatic.generation.prompts)."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from prismatic.data.samples import bundled_seeds_path
from prismatic.errors import PrismError
from prismatic.generation.prompts import (
    NLI_QUESTION,
    FewShotSampler,
    nli_prompt,
    parse_nli_pair,
    parse_problems,
    problem_prompt,
    sample_few_shot,
    solution_prompt,
)


@pytest.fixture(scope="module")
def seeds() -> list[dict]:
    return [json.loads(line) for line in bundled_seeds_path().read_text().splitlines()]


# ------------------------------------------------------------------------------------------ prompts


def test_problem_prompt_shows_examples_and_the_format(seeds):
    examples = [s for s in seeds if s["task"] == "math"][:5]
    messages = problem_prompt(examples, "math", n_new=2)
    assert [m["role"] for m in messages] == ["user"]
    text = messages[0]["content"]
    for i, example in enumerate(examples, 1):
        assert f"### Example {i}\n{example['prompt']}" in text
    assert "### Problem 1" in text and "### Problem 2" in text and "### Problem 3" not in text
    assert text.rstrip().endswith("### End")
    assert "2 new" in text
    # the prompt's own layout must not parse as problems the model wrote
    assert parse_problems(text) == ["<new problem 1>", "<new problem 2>"]


def test_nli_problem_prompt_shows_pairs_without_the_question(seeds):
    examples = [s for s in seeds if s["task"] == "nli"][:5]
    text = problem_prompt(examples, "nli", n_new=3)[0]["content"]
    assert NLI_QUESTION not in text
    premise, hypothesis = parse_nli_pair(examples[0]["prompt"])
    assert f"Premise: {premise}\nHypothesis: {hypothesis}" in text
    assert "### Problem 3" in text


def test_prompt_arguments_are_checked(seeds):
    with pytest.raises(PrismError, match="unknown task"):
        problem_prompt(seeds[:5], "code")
    with pytest.raises(PrismError):
        problem_prompt([], "math")
    with pytest.raises(PrismError):
        problem_prompt(seeds[:5], "math", n_new=0)
    with pytest.raises(PrismError, match="unknown task"):
        solution_prompt("x", "chess")


def test_solution_prompts():
    math = solution_prompt("What is 2 + 3?", "math")[0]["content"]
    assert "What is 2 + 3?" in math and "\\boxed{" in math and "step by step" in math
    nli = solution_prompt(nli_prompt("A dog runs.", "An animal moves."), "nli")[0]["content"]
    assert "\\boxed{label}" in nli and "entailment" in nli
    short = solution_prompt("Premise: a\nHypothesis: b", "nli", reasoning=False)[0]["content"]
    assert "\\boxed" not in short and "exactly one word" in short


def test_nli_prompt_matches_the_seed_format(seeds):
    for seed in (s for s in seeds if s["task"] == "nli"):
        assert nli_prompt(*parse_nli_pair(seed["prompt"])) == seed["prompt"]


# ------------------------------------------------------------------------------------------ parsing


def test_parse_well_formed():
    text = "### Problem 1\nA farmer has 12 cows.\nHow many legs?\n\n### Problem 2\nWhat is 7 * 8?\n### End\n"
    assert parse_problems(text) == ["A farmer has 12 cows.\nHow many legs?", "What is 7 * 8?"]


def test_parse_ignores_preamble_and_trailing_chatter():
    text = ("Sure! Here are two new problems:\n\n### Problem 1: Tom has 3 apples.\nHow many?\n"
            "### Problem 2\nA car goes 60 km/h.\n### End\n\nI hope these help!")
    assert parse_problems(text) == ["Tom has 3 apples.\nHow many?", "A car goes 60 km/h."]


def test_parse_tolerates_a_missing_end_and_can_require_it():
    text = "### Problem 1\nFirst problem.\n### Problem 2\nSecond problem, cut off mid-sen"
    assert parse_problems(text) == ["First problem.", "Second problem, cut off mid-sen"]
    assert parse_problems(text, require_end=True) == ["First problem."]
    assert parse_problems(text + "\n### End", require_end=True) == ["First problem.",
                                                                     "Second problem, cut off mid-sen"]


def test_parse_messy_headings_empties_duplicates_and_answers():
    text = ("**Problem 1:** Find x if 2x = 10.\n\n"
            "## problem 2\n\n\n"                      # empty
            "**Problem 3**\nFind   x if 2x = 10.\n"   # duplicate up to whitespace
            "Problem 4:\nA shop sells pens at $2.\nProblem 4 asks for the cost of 5 pens.\n"
            "**Answer:** $10\n"
            "### End of problems\n")
    assert parse_problems(text) == ["Find x if 2x = 10.",
                                    "A shop sells pens at $2.\nProblem 4 asks for the cost of 5 pens."]


def test_parse_end_between_problems_does_not_hide_later_ones():
    text = "### Problem 1\nOne?\n### End\n### Problem 2\nTwo?\n### End"
    assert parse_problems(text) == ["One?", "Two?"]


def test_parse_nothing():
    assert parse_problems("") == []
    assert parse_problems("I cannot help with that.") == []
    assert parse_problems("### Problem 1\n   \n### End") == []


def test_parse_nli_rerenders_pairs_in_seed_format():
    text = ("Here you go.\n### Problem 1\n**Premise:** A man is playing a guitar on stage.\n"
            "**Hypothesis:** A musician is performing.\n### Problem 2\nPremise: Only a premise here.\n"
            "### Problem 3\npremise: The store closes at 9 pm\nand opens at 8 am.\nHypothesis: It is open at noon.\n"
            "Label: entailment\n### Problem 4\nPremise: A man is playing a guitar on stage.\n"
            "Hypothesis: A musician is performing.\n### End")
    assert parse_problems(text, "nli") == [
        nli_prompt("A man is playing a guitar on stage.", "A musician is performing."),
        nli_prompt("The store closes at 9 pm and opens at 8 am.", "It is open at noon."),
    ]


# ------------------------------------------------------------------------------------------ few-shot


def test_few_shot_is_distinct_deterministic_and_checked(seeds):
    a = sample_few_shot(seeds, 5, random.Random(7))
    b = sample_few_shot(seeds, 5, random.Random(7))
    assert [s["id"] for s in a] == [s["id"] for s in b]
    assert len({s["id"] for s in a}) == 5
    assert sample_few_shot(seeds, 0, random.Random(0)) == []
    assert sorted(s["id"] for s in sample_few_shot(seeds[:5], 5, random.Random(0))) == \
        sorted(s["id"] for s in seeds[:5])
    with pytest.raises(PrismError, match="distinct"):
        sample_few_shot(seeds[:3], 4, random.Random(0))
    with pytest.raises(PrismError, match="level"):
        sample_few_shot([{"id": "x", "prompt": "p"}], 1, random.Random(0))
    with pytest.raises(PrismError, match="positive"):
        sample_few_shot([{"id": "x", "level": 0}], 1, random.Random(0))
    assert sample_few_shot([{"id": "x"}], 1, random.Random(0), default_weight=1.0) == [{"id": "x"}]


def test_single_draw_frequencies_follow_level_weights():
    pool = [{"id": str(i), "level": level} for i, level in enumerate([1, 2, 3, 4, 5])]
    rng = random.Random(0)
    draws = 30_000
    counts = Counter(sample_few_shot(pool, 1, rng)[0]["level"] for _ in range(draws))
    expected = {level: draws * level / 15 for level in range(1, 6)}
    chi2 = sum((counts[lv] - e) ** 2 / e for lv, e in expected.items())
    assert chi2 < 25.0  # 4 degrees of freedom: P(chi2 > 25) ≈ 5e-5


def test_without_replacement_inclusion_follows_successive_sampling():
    """Pool weights 1, 2, 3 and k=2: P(the weight-1 item is left out) = 2/6·3/4 + 3/6·2/3 = 7/12."""
    pool = [{"id": "a", "level": 1}, {"id": "b", "level": 2}, {"id": "c", "level": 3}]
    rng = random.Random(1)
    draws = 20_000
    left_out = Counter()
    first = Counter()
    for _ in range(draws):
        chosen = sample_few_shot(pool, 2, rng)
        first[chosen[0]["id"]] += 1
        left_out[({"a", "b", "c"} - {c["id"] for c in chosen}).pop()] += 1
    expected_out = {"a": (2 / 6) * (3 / 4) + (3 / 6) * (2 / 3),
                    "b": (1 / 6) * (3 / 5) + (3 / 6) * (1 / 3),
                    "c": (1 / 6) * (2 / 5) + (2 / 6) * (1 / 4)}
    assert abs(sum(expected_out.values()) - 1) < 1e-12
    for key, p in expected_out.items():
        sd = (p * (1 - p) / draws) ** 0.5
        assert abs(left_out[key] / draws - p) < 5 * sd
    for key, p in {"a": 1 / 6, "b": 2 / 6, "c": 3 / 6}.items():
        sd = (p * (1 - p) / draws) ** 0.5
        assert abs(first[key] / draws - p) < 5 * sd


def test_heavily_skewed_weights_still_finish():
    pool = [{"id": "big", "level": 1e9}] + [{"id": str(i), "level": 1} for i in range(5)]
    chosen = sample_few_shot(pool, 6, random.Random(3))
    assert {c["id"] for c in chosen} == {p["id"] for p in pool}


def test_a_sampler_draws_what_sample_few_shot_draws_and_reads_each_weight_once():
    """`FewShotSampler` (what a round's prompts draw from) gives the draws of `sample_few_shot` for the
    same seeded rng, reading each row's weight once however many draws follow."""
    class CountingRow(dict):
        reads = 0

        def get(self, key, default=None):
            CountingRow.reads += key == "level"
            return super().get(key, default)

    levels = [1, 5, 2, 4, 3, 1, 1, 5, 2, 2, 3, 4] * 10
    pool = [CountingRow(id=f"r{i}", level=level) for i, level in enumerate(levels)]
    plain = [dict(row) for row in pool]
    sampler, one, other = FewShotSampler(pool), random.Random(11), random.Random(11)
    for k in (5, 1, 5, 7, 0, 5) * 20:
        assert sampler.draw(k, one) == sample_few_shot(plain, k, other)
    assert CountingRow.reads == len(pool)  # 120 draws, the weights read once
    with pytest.raises(PrismError, match="cannot draw 121 distinct few-shot examples from a pool of 120"):
        sampler.draw(121, one)
