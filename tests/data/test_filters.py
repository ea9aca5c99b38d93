"""Quality filters of generated problems (prismatic.data.filters) on real junk and real problems."""

import json
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
from conftest import GSM8K

from prismatic.config import ProblemFiltersConfig
from prismatic.config_file import load_config
from prismatic.data.filters import (
    FILTER_REASONS,
    apply_nll_filter,
    apply_text_filters,
    check_text,
    filter_counts,
    nll_threshold,
    pool_sample,
)
from prismatic.data.samples import load_seeds
from prismatic.errors import InputError
from prismatic.generation.prompts import NLI_QUESTION, nli_prompt
from prismatic.storage.schema import schema

DEFAULTS = ProblemFiltersConfig()
BASE64_JUNK = "150YD18MnEu5hItVgjbA54aFXImn7bnDjbafGtAtYmX+glvjKZfY8xIzSt"


def _reason(text, task="math", config=DEFAULTS):
    result = check_text(text, task, config)
    return None if result is None else result[0]


# ------------------------------------------------------------------------------------ junk and real


@pytest.mark.parametrize(("text", "reason"), [
    # Strings a small generator actually produced.
    (",oIlaga,yzBi} {", "not_a_question"),
    ("a test score variation", "not_a_question"),
    ("difficulty level 1 to 5 with multiple-choice options", "not_a_question"),
    ("Nadia earns 15.1% up to nadia", "not_a_question"),
    # The base64-like junk inside an otherwise well-formed question.
    (f"A right triangle has legs 3 and 4. What is the area of Triangle {BASE64_JUNK} and the base?", "long_token"),
    ("How many apples does Tom have left after lunch today!!!!!!!!!", "repeated_characters"),
    ("How many apples are in the basket? " * 6, "repeated_ngrams"),
    ("What is 2+2?", "too_few_words"),
])
def test_generator_junk_is_dropped_with_its_reason(text, reason):
    assert _reason(text) == reason


def test_junk_reasons_when_earlier_rules_are_off():
    # The 5-word junk as generated is a question, so the word count rejects it first...
    assert check_text(f"Triangle {BASE64_JUNK} and the base?", "math", DEFAULTS) == (
        "too_few_words", {"words": 5, "min_words": 8})
    # ...and without word bounds the long token does, with the measured length.
    reason, detail = check_text(f"Triangle {BASE64_JUNK} and the base?", "math",
                                ProblemFiltersConfig(min_words=None))
    assert reason == "long_token"
    assert detail["token_chars"] == len(BASE64_JUNK) == 58 and detail["max_token_chars"] == 25
    # Not a question is checked first; without that rule the junk is too short.
    assert check_text(",oIlaga,yzBi} {", "math", ProblemFiltersConfig(require_question=False)) == (
        "too_few_words", {"words": 2, "min_words": 8})
    # Then half its words have no letter ("{")...
    assert check_text(",oIlaga,yzBi} {", "math", ProblemFiltersConfig(require_question=False, min_words=None)) == (
        "low_alpha_words", {"alpha_word_share": 0.5, "min_alpha_words": 0.6})
    # ...and braces are not ordinary punctuation: 2 of 14 visible characters.
    config = ProblemFiltersConfig(require_question=False, min_words=None, min_alpha_words=None)
    assert check_text(",oIlaga,yzBi} {", "math", config) == (
        "high_symbol_ratio", {"symbol_ratio": round(2 / 14, 4), "max_symbol_ratio": 0.05})


def test_bundled_seed_problems_all_pass_the_defaults():
    rows = load_seeds("bundled").to_dicts()
    assert sum(row["task"] == "math" for row in rows) >= 20
    assert sum(row["task"] == "nli" for row in rows) >= 20
    failures = {row["id"]: check_text(row["prompt"], row["task"], DEFAULTS) for row in rows}
    assert {key: value for key, value in failures.items() if value is not None} == {}


@pytest.mark.skipif(not GSM8K.exists(), reason=f"optional data {GSM8K} is absent")
def test_gsm8k_questions_pass_the_defaults():
    questions = [json.loads(line)["question"] for line in GSM8K.read_text(encoding="utf-8").splitlines()
                 if line.strip()]
    assert len(questions) == 1319
    failures = [(question, check_text(question, "math", DEFAULTS)) for question in questions]
    failures = [(question, result) for question, result in failures if result is not None]
    for question, result in failures:
        print(f"GSM8K drop {result}: {question!r}")
    share = 1 - len(failures) / len(questions)
    print(f"GSM8K pass share {share:.4f} ({len(questions) - len(failures)}/{len(questions)})")
    assert share >= 0.99


# ------------------------------------------------------------------------------------ thresholds

WORDS_12 = "How many red marbles does Sam keep in his big blue bag today?"


@pytest.mark.parametrize(("config", "n_words", "reason", "detail"), [
    (ProblemFiltersConfig(min_words=8), 8, None, None),
    (ProblemFiltersConfig(min_words=8), 7, "too_few_words", {"words": 7, "min_words": 8}),
    (ProblemFiltersConfig(max_words=10), 10, None, None),
    (ProblemFiltersConfig(max_words=10), 11, "too_many_words", {"words": 11, "max_words": 10}),
])
def test_word_bounds_at_the_boundary(config, n_words, reason, detail):
    text = " ".join(WORDS_12.split()[:n_words - 1] + ["today?"])
    assert len(text.split()) == n_words
    assert check_text(text, "math", config) == (None if reason is None else (reason, detail))


def test_long_token_at_the_boundary():
    token = "abcdefghijklmnopqrstuvwxyz"
    assert check_text(f"How many letters are in the string {token[:25]} today?", "math", DEFAULTS) is None
    reason, detail = check_text(f"How many letters are in the string {token} today?", "math", DEFAULTS)
    assert reason == "long_token"
    assert detail == {"token_chars": 26, "max_token_chars": 25, "token": token}


def test_repeated_characters_at_the_boundary():
    assert check_text("How many letters does the string xaaaaax contain in total?", "math", DEFAULTS) is None
    assert check_text("How many letters does the string xaaaaaax contain in total?", "math", DEFAULTS) == (
        "repeated_characters", {"char_run": 6, "char": "a", "max_char_run": 5})
    # Whitespace runs are not repeated characters.
    assert check_text("How many letters does the string          xax contain in total?", "math", DEFAULTS) is None


def test_symbol_alpha_and_ngram_thresholds_at_the_boundary():
    # 20 visible characters, one of them (§) not ordinary punctuation: ratio exactly 0.05 passes, 1/19 fails.
    text = "What is § abcdefgh abcd?"
    assert sum(not ch.isspace() for ch in text) == 20
    config = ProblemFiltersConfig(min_words=None)
    assert check_text(text, "math", config) is None
    assert check_text(text.replace("abcd?", "abc?"), "math", config) == (
        "high_symbol_ratio", {"symbol_ratio": round(1 / 19, 4), "max_symbol_ratio": 0.05})
    # 10 words, 6 with a letter: share exactly 0.6 passes, 5 of 10 fails.
    six = "Find the sum of these 1 2 3 4 numbers"
    assert check_text(six, "math", DEFAULTS) is None
    assert check_text(six.replace("numbers", "5"), "math", DEFAULTS) == (
        "low_alpha_words", {"alpha_word_share": 0.5, "min_alpha_words": 0.6})
    # 12 words, 10 trigrams of which 3 repeat an earlier one: share 0.3 passes; 4 of 10 fails.
    repeated = "What is the total sum what is the total sum of apples"
    assert check_text(repeated, "math", DEFAULTS) is None
    assert check_text(repeated.replace("of apples", "what x"), "math", DEFAULTS) == (
        "repeated_ngrams", {"duplicate_ngram_share": 0.4, "ngram": 3, "max_duplicate_ngram_share": 0.3})
    # Case does not hide a repeat.
    assert _reason(repeated.replace("of apples", "WHAT x")) == "repeated_ngrams"


@pytest.mark.parametrize(("text", "on", "field", "reason"), [
    ("What is 2+2?", {}, "min_words", "too_few_words"),
    ("What is the total cost of twelve red pencils and nine blue pens?", {"max_words": 10}, "max_words",
     "too_many_words"),
    ("Find the sum of these 1 2 3 4 5", {}, "min_alpha_words", "low_alpha_words"),
    ("What is the value of x in §§ ¶ ¤ equals ten?", {}, "max_symbol_ratio", "high_symbol_ratio"),
    (f"A right triangle has legs 3 and 4. What is the area of Triangle {BASE64_JUNK}?", {}, "max_token_chars",
     "long_token"),
    ("How many apples does Tom have left after lunch today!!!!!!!!!", {}, "max_char_run", "repeated_characters"),
    ("How many apples are in the basket? " * 6, {}, "max_duplicate_ngram_share", "repeated_ngrams"),
    ("difficulty level 1 to 5 with multiple-choice options", {}, "require_question", "not_a_question"),
])
def test_a_rule_set_to_none_is_off(text, on, field, reason):
    assert _reason(text, config=ProblemFiltersConfig(**on)) == reason
    off = False if field == "require_question" else None
    assert check_text(text, "math", ProblemFiltersConfig(**{**on, field: off})) is None


def test_disabled_filters_remove_nothing():
    problems = pl.DataFrame({"id": ["a", "b"], "task": ["math", "nli"], "prompt": ["a test score variation", "x"]})
    assert check_text("a test score variation", "math", ProblemFiltersConfig(enabled=False)) is None
    kept, rejections = apply_text_filters(problems, ProblemFiltersConfig(enabled=False))
    assert kept.equals(problems)
    assert rejections.is_empty() and rejections.schema == schema("rejections")
    kept, rejections = apply_text_filters(problems, DEFAULTS)
    assert kept.is_empty() and rejections["reason"].to_list() == ["not_a_question", "not_an_nli_pair"]


# ------------------------------------------------------------------------------------ NLI


def test_nli_pairs():
    good = nli_prompt("A man in a green jacket is repairing a bicycle in the garage.", "Someone is fixing a bike.")
    assert check_text(good, "nli", DEFAULTS) is None  # no "?" needed in the pair, no asking word
    no_hypothesis = f"Premise: A man in a green jacket is repairing a bicycle in the garage.\n{NLI_QUESTION}"
    assert check_text(no_hypothesis, "nli", DEFAULTS) == (
        "not_an_nli_pair", {"parsed": False, "require_question": True})
    reason, detail = check_text(nli_prompt("Dogs bark.", "Animals make noise loudly."), "nli", DEFAULTS)
    assert reason == "not_an_nli_pair" and (detail["premise_words"], detail["hypothesis_words"]) == (2, 4)
    reason, detail = check_text(nli_prompt("The dogs bark loudly.", "Silence."), "nli", DEFAULTS)
    assert reason == "not_an_nli_pair" and detail["hypothesis_words"] == 1
    # The rules see premise + hypothesis only: the fixed question line's 15 words are not counted.
    assert check_text(nli_prompt("The dogs bark loudly.", "Animals are loud."), "nli", DEFAULTS) == (
        "too_few_words", {"words": 7, "min_words": 8})
    # A junk token in the question line is not checked, in the hypothesis it is.
    assert check_text(good + " " + BASE64_JUNK, "nli", DEFAULTS) is None
    assert _reason(nli_prompt("A man in a green jacket is repairing a bicycle.", BASE64_JUNK + " works"),
                   "nli") == "long_token"
    with pytest.raises(ValueError, match="unknown task"):
        check_text(good, "code", DEFAULTS)


# ------------------------------------------------------------------------------------ frames


def test_apply_text_filters_keeps_order_and_columns():
    texts = [
        ("m0", "math", "Maya has 23 stickers, and her brother gives her 15 more. How many stickers now?"),
        ("m1", "math", "a test score variation"),
        ("n0", "nli", nli_prompt("The chef sliced the onions before adding them to the pan.", "Onions were cut.")),
        ("m2", "math", "What is 2+2?"),
        ("m3", "math", "A bakery packs its muffins in boxes of 6. How many muffins are in 9 full boxes?"),
        ("n1", "nli", "Premise: The chef sliced the onions.\nsomething else"),
    ]
    problems = pl.DataFrame({"id": [t[0] for t in texts], "task": [t[1] for t in texts],
                             "prompt": [t[2] for t in texts], "level": list(range(len(texts)))})
    kept, rejections = apply_text_filters(problems, DEFAULTS)
    assert kept.columns == problems.columns
    assert kept["id"].to_list() == ["m0", "n0", "m3"] and kept["level"].to_list() == [0, 2, 4]
    assert rejections.schema == schema("rejections")
    assert rejections["id"].to_list() == ["m1", "m2", "n1"]
    assert rejections["reason"].to_list() == ["not_a_question", "too_few_words", "not_an_nli_pair"]
    assert json.loads(rejections["detail"][1]) == {"words": 3, "min_words": 8}
    counts = filter_counts(rejections)
    assert list(counts) == list(FILTER_REASONS)
    assert counts == {**dict.fromkeys(FILTER_REASONS, 0), "not_a_question": 1, "too_few_words": 1,
                      "not_an_nli_pair": 1}


def test_filter_reasons_are_in_check_order():
    assert FILTER_REASONS == ("not_a_question", "not_an_nli_pair", "too_few_words", "too_many_words",
                              "low_alpha_words", "high_symbol_ratio", "long_token", "repeated_characters",
                              "repeated_ngrams", "proxy_nll_outlier")


# ------------------------------------------------------------------------------------ proxy NLL


def test_nll_threshold_and_filter():
    rng = np.random.default_rng(7)
    pool_nll = rng.normal(2.0, 0.4, size=257).tolist()
    config = ProblemFiltersConfig(nll_quantile=0.9, nll_margin=0.25)
    expected = float(np.quantile(np.array(pool_nll), 0.9)) + 0.25
    threshold = nll_threshold(pool_nll, config)
    assert threshold == pytest.approx(expected, abs=1e-12)
    assert nll_threshold(pool_nll, DEFAULTS) == pytest.approx(float(np.quantile(pool_nll, 0.99)) + 0.5, abs=1e-12)
    assert nll_threshold(pool_nll, ProblemFiltersConfig(nll_quantile=None)) is None
    assert nll_threshold(pool_nll, ProblemFiltersConfig(enabled=False)) is None
    assert nll_threshold([], DEFAULTS) is None

    nll = [threshold - 1.0, threshold + 0.01, threshold, threshold + 3.0, 0.5]
    problems = pl.DataFrame({"id": [f"p{i}" for i in range(5)], "task": ["math"] * 5, "prompt": ["q"] * 5})
    kept, rejections = apply_nll_filter(problems, nll, threshold)
    assert kept["id"].to_list() == ["p0", "p2", "p4"]  # equal to the threshold is kept
    assert kept.columns == problems.columns
    assert rejections.schema == schema("rejections")
    assert rejections["id"].to_list() == ["p1", "p3"]
    assert set(rejections["reason"].to_list()) == {"proxy_nll_outlier"}
    assert json.loads(rejections["detail"][1]) == {"nll": round(threshold + 3.0, 4), "threshold": round(threshold, 4)}
    assert filter_counts(rejections)["proxy_nll_outlier"] == 2

    kept, rejections = apply_nll_filter(problems, nll, None)
    assert kept.equals(problems) and rejections.is_empty()
    with pytest.raises(ValueError, match="4 NLL values for 5 problems"):
        apply_nll_filter(problems, nll[:4], threshold)


def test_pool_sample():
    prompts = [f"problem {i % 300}" for i in range(400)]  # 300 distinct prompts, 100 repeated
    pool = pl.DataFrame({"id": [f"s{i}" for i in range(400)], "prompt": prompts})
    config = ProblemFiltersConfig(nll_pool_sample=50)
    sample = pool_sample(pool, config, seed=3)
    assert sample.height == 50 and sample["prompt"].n_unique() == 50
    assert set(sample["id"].to_list()) <= {f"s{i}" for i in range(300)}  # first of each prompt
    assert sample.equals(pool_sample(pool, config, seed=3))
    assert not sample.equals(pool_sample(pool, config, seed=4))
    everything = pool_sample(pool, ProblemFiltersConfig(nll_pool_sample=1000), seed=3)
    assert everything["id"].to_list() == [f"s{i}" for i in range(300)]


# ------------------------------------------------------------------------------------ config and purity


def test_bad_thresholds_in_prism_yaml(tmp_path):
    (tmp_path / "prism.yaml").write_text("synthesis:\n  filters:\n    max_symbol_ratio: 2\n", encoding="utf-8")
    with pytest.raises(InputError) as info:
        load_config(tmp_path)
    assert "synthesis.filters.max_symbol_ratio" in str(info.value) and ":3" in str(info.value)
    (tmp_path / "prism.yaml").write_text("synthesis:\n  filters:\n    min_words: 50\n    max_words: 10\n",
                                         encoding="utf-8")
    with pytest.raises(InputError, match=r"synthesis\.filters.*min_words \(50\) is above max_words \(10\)"):
        load_config(tmp_path)
    (tmp_path / "prism.yaml").write_text("synthesis:\n  filters:\n    max_char_run: 9\n    ngram: 4\n",
                                         encoding="utf-8")
    filters = load_config(tmp_path).synthesis.filters
    assert (filters.max_char_run, filters.ngram, filters.min_words) == (9, 4, DEFAULTS.min_words)


def test_module_is_pure():
    code = ("import sys, prismatic.data.filters; "
            "print(sorted(m for m in ('dagster', 'typer', 'torch') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_digits_and_a_hypothesis_that_reuses_the_premise_are_not_repetition():
    config = ProblemFiltersConfig()
    assert check_text("A city has 1000000 people and 250000 of them ride the bus. How many do not ride it?",
                      "math", config) is None
    pair = nli_prompt("A man is playing a guitar on stage.", "A man is playing a guitar.")
    assert check_text(pair, "nli", config) is None  # joined, the two parts share most 3-grams
    repeated = nli_prompt("The dog ran and the dog ran and the dog ran and the dog ran home.", "A dog ran.")
    assert check_text(repeated, "nli", config)[0] == "repeated_ngrams"
