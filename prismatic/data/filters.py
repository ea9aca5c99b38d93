"""Quality filters of generated problems before they are solved: text heuristics and a proxy-NLL outlier rule.

Heuristics in the style of the Gopher / datatrove / NeMo Curator quality filters, written here for short
word problems (datatrove's English word tokenizer needs NLTK punkt data downloaded at run time). The
thresholds are `ProblemFiltersConfig` (`synthesis.filters`); a threshold that is None turns its rule off,
and `enabled: false` turns every rule off.

The checked text t is

    math   the whole prompt;
    nli    premise + " " + hypothesis of parse_nli_pair(prompt) (never the fixed question line); when the
           prompt is no pair and require_question is off, the whole prompt.

Notation: W(t) = t.split() (whitespace-separated words), |W| their number; C(t) the non-whitespace
characters of t; P = ORDINARY_PUNCTUATION, the characters  .,;:!?'"()-$%/+*=<>×÷–—’‘“”&[]^  .

The rules, checked in this order; the first that fails rejects the problem with its reason:

    not_a_question       math, require_question: "?" ∉ t and no word of ASKING_WORDS occurs in t
                         (case-insensitive, on word boundaries: how, what, which, who, when, where, why,
                         find, calculate, compute, determine, evaluate, solve, simplify, express,
                         estimate, prove, show).
    not_an_nli_pair      nli, require_question: parse_nli_pair(prompt) is None, or
                         |W(premise)| < 3, or |W(hypothesis)| < 2.
    too_few_words        |W| < min_words.
    too_many_words       |W| > max_words.
    low_alpha_words      |{w ∈ W : some character of w is a letter (str.isalpha)}| / |W| < min_alpha_words
                         (an empty text has share 0).
    high_symbol_ratio    |{c ∈ C : not c.isalnum() and c ∉ P}| / |C| > max_symbol_ratio (0 when C is empty).
    long_token           max_{w ∈ W} len(w) > max_token_chars (base64-like junk, glued words).
    repeated_characters  the longest run of one repeated character that is neither whitespace nor a
                         digit, e.g. "!!!!!!", is longer than max_char_run (1000000 is a number).
    repeated_ngrams      with w_i the lower-cased words and g_i = (w_i, …, w_{i+n-1}), n = `ngram`, the
                         N = |W| − n + 1 n-grams: |{i : g_i = g_j for some j < i}| / N > max_duplicate_ngram_share
                         (share 0 when |W| < n). For NLI, the larger of the premise's and the
                         hypothesis's own shares (a hypothesis may reuse the premise's words).

Each rejection is a row (id, reason, detail) of the `rejections` table (prismatic.storage.schema) whose detail is
JSON holding the measured value and the threshold, e.g. {"words": 3, "min_words": 8}.

The proxy-NLL outlier rule comes after the text rules, on the problems they keep:

    proxy_nll_outlier    nll(p) > T,   T = quantile_q(pool NLLs) + nll_margin,

q = nll_quantile, the quantile numpy's default (linear) method over the finite NLLs of a seeded sample of
the pool (`pool_sample`: at most nll_pool_sample problems of distinct prompts); nll(p) is the problem's
mean token NLL under the proxy model, computed by the caller. A NaN nll is never above T, so it is kept.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Sequence

import numpy as np
import polars as pl

from prismatic.config import ProblemFiltersConfig
from prismatic.generation.prompts import parse_nli_pair
from prismatic.storage.schema import schema

FILTER_REASONS: tuple[str, ...] = (
    "not_a_question", "not_an_nli_pair", "too_few_words", "too_many_words", "low_alpha_words",
    "high_symbol_ratio", "long_token", "repeated_characters", "repeated_ngrams", "proxy_nll_outlier",
)
ORDINARY_PUNCTUATION = frozenset(".,;:!?'\"()-$%/+*=<>×÷–—’‘“”&[]^")
ASKING_WORDS = ("how", "what", "which", "who", "when", "where", "why", "find", "calculate", "compute",
                "determine", "evaluate", "solve", "simplify", "express", "estimate", "prove", "show")
_ASKING = re.compile(r"\b(?:" + "|".join(ASKING_WORDS) + r")\b", re.IGNORECASE)
MIN_PREMISE_WORDS = 3
MIN_HYPOTHESIS_WORDS = 2

Rejection = tuple[str, dict]


def _question_rule(prompt: str, task: str, config: ProblemFiltersConfig) -> tuple[str, Rejection | None]:
    """(the text the other rules check, a not_a_question / not_an_nli_pair rejection or None)."""
    if task == "math":
        if config.require_question and "?" not in prompt and not _ASKING.search(prompt):
            return prompt, ("not_a_question", {"question_mark": False, "asking_word": False,
                                               "require_question": True})
        return prompt, None
    if task != "nli":
        raise ValueError(f"unknown task {task!r} (expected 'math' or 'nli')")
    pair = parse_nli_pair(prompt)
    if pair is None:
        if config.require_question:
            return prompt, ("not_an_nli_pair", {"parsed": False, "require_question": True})
        return prompt, None
    premise, hypothesis = pair
    n_premise, n_hypothesis = len(premise.split()), len(hypothesis.split())
    if config.require_question and (n_premise < MIN_PREMISE_WORDS or n_hypothesis < MIN_HYPOTHESIS_WORDS):
        return prompt, ("not_an_nli_pair", {"parsed": True, "premise_words": n_premise,
                                            "hypothesis_words": n_hypothesis,
                                            "min_premise_words": MIN_PREMISE_WORDS,
                                            "min_hypothesis_words": MIN_HYPOTHESIS_WORDS})
    return f"{premise} {hypothesis}", None


def alpha_word_share(words: Sequence[str]) -> float:
    """Share of words with at least one letter (0 for no words)."""
    if not words:
        return 0.0
    return sum(any(ch.isalpha() for ch in word) for word in words) / len(words)


def symbol_ratio(text: str) -> float:
    """Share of non-whitespace characters that are neither alphanumeric nor ORDINARY_PUNCTUATION."""
    chars = [ch for ch in text if not ch.isspace()]
    if not chars:
        return 0.0
    return sum(not ch.isalnum() and ch not in ORDINARY_PUNCTUATION for ch in chars) / len(chars)


def longest_char_run(text: str) -> tuple[int, str]:
    """(length, character) of the longest run of one repeated character that is neither whitespace nor a
    digit; (0, "") if none."""
    best, best_char = 0, ""
    for char, group in itertools.groupby(text):
        if char.isspace() or char.isdigit():
            continue
        length = sum(1 for _ in group)
        if length > best:
            best, best_char = length, char
    return best, best_char


def duplicate_ngram_share(words: Sequence[str], n: int) -> float:
    """Share of the word n-grams (lower-cased) that repeat an n-gram seen earlier (0 below n words)."""
    lowered = [word.lower() for word in words]
    total = len(lowered) - n + 1
    if total <= 0:
        return 0.0
    seen: set[tuple[str, ...]] = set()
    repeats = 0
    for i in range(total):
        gram = tuple(lowered[i:i + n])
        if gram in seen:
            repeats += 1
        else:
            seen.add(gram)
    return repeats / total


def check_text(text: str, task: str, config: ProblemFiltersConfig) -> Rejection | None:
    """(reason, detail) of the first rule `text` (a problem prompt of `task`) fails, or None if it passes."""
    if not config.enabled:
        return None
    checked, rejection = _question_rule(text, task, config)
    if rejection is not None:
        return rejection
    words = checked.split()
    if config.min_words is not None and len(words) < config.min_words:
        return "too_few_words", {"words": len(words), "min_words": config.min_words}
    if config.max_words is not None and len(words) > config.max_words:
        return "too_many_words", {"words": len(words), "max_words": config.max_words}
    if config.min_alpha_words is not None:
        share = alpha_word_share(words)
        if share < config.min_alpha_words:
            return "low_alpha_words", {"alpha_word_share": round(share, 4), "min_alpha_words": config.min_alpha_words}
    if config.max_symbol_ratio is not None:
        ratio = symbol_ratio(checked)
        if ratio > config.max_symbol_ratio:
            return "high_symbol_ratio", {"symbol_ratio": round(ratio, 4), "max_symbol_ratio": config.max_symbol_ratio}
    if config.max_token_chars is not None and words:
        token = max(words, key=len)
        if len(token) > config.max_token_chars:
            return "long_token", {"token_chars": len(token), "max_token_chars": config.max_token_chars,
                                  "token": token[:80]}
    if config.max_char_run is not None:
        run, char = longest_char_run(checked)
        if run > config.max_char_run:
            return "repeated_characters", {"char_run": run, "char": char, "max_char_run": config.max_char_run}
    if config.max_duplicate_ngram_share is not None:
        pair = parse_nli_pair(text) if task == "nli" else None
        parts = [part.split() for part in pair] if pair else [words]
        share = max(duplicate_ngram_share(part, config.ngram) for part in parts)
        if share > config.max_duplicate_ngram_share:
            return "repeated_ngrams", {"duplicate_ngram_share": round(share, 4), "ngram": config.ngram,
                                       "max_duplicate_ngram_share": config.max_duplicate_ngram_share}
    return None


def _rejection_frame(rows: list[tuple[str, str, dict]]) -> pl.DataFrame:
    return pl.DataFrame(
        {"id": [row[0] for row in rows], "reason": [row[1] for row in rows],
         "detail": [json.dumps(row[2], ensure_ascii=False) for row in rows]},
        schema=schema("rejections"),
    )


def apply_text_filters(problems: pl.DataFrame, config: ProblemFiltersConfig) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(kept problems in their order with their columns, rejections) of the text rules.

    `problems` has id, task and prompt columns; nothing is removed when `config.enabled` is False.
    """
    if not config.enabled or problems.is_empty():
        return problems, _rejection_frame([])
    keep: list[bool] = []
    rejected: list[tuple[str, str, dict]] = []
    for row_id, task, prompt in zip(problems["id"].to_list(), problems["task"].to_list(),
                                    problems["prompt"].to_list()):
        result = check_text(prompt, task, config)
        keep.append(result is None)
        if result is not None:
            rejected.append((row_id, result[0], result[1]))
    return problems.filter(pl.Series(keep, dtype=pl.Boolean)), _rejection_frame(rejected)


def nll_threshold(pool_nll: Sequence[float], config: ProblemFiltersConfig) -> float | None:
    """quantile_{nll_quantile}(finite pool NLLs) + nll_margin; None when the rule is off or no NLL is finite."""
    if not config.enabled or config.nll_quantile is None:
        return None
    values = np.asarray(pool_nll, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    return float(np.quantile(values, config.nll_quantile)) + config.nll_margin


def apply_nll_filter(problems: pl.DataFrame, nll: Sequence[float],
                     threshold: float | None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(kept problems, rejections): rows whose nll (aligned with the rows) is above `threshold` are dropped."""
    values = [float(v) for v in nll]
    if len(values) != problems.height:
        raise ValueError(f"{len(values)} NLL values for {problems.height} problems")
    if threshold is None:
        return problems, _rejection_frame([])
    drop = [v > threshold for v in values]
    rejected = [(row_id, "proxy_nll_outlier", {"nll": round(v, 4), "threshold": round(threshold, 4)})
                for row_id, v, dropped in zip(problems["id"].to_list(), values, drop) if dropped]
    return problems.filter(~pl.Series(drop, dtype=pl.Boolean)), _rejection_frame(rejected)


def pool_sample(pool: pl.DataFrame, config: ProblemFiltersConfig, seed: int) -> pl.DataFrame:
    """At most nll_pool_sample pool rows of distinct prompts (first of each), a seeded sample when more."""
    unique = pool.unique(subset="prompt", keep="first", maintain_order=True)
    if unique.height > config.nll_pool_sample:
        return unique.sample(config.nll_pool_sample, seed=seed)
    return unique


def filter_counts(rejections: pl.DataFrame) -> dict[str, int]:
    """Rejections per reason, for every reason of FILTER_REASONS (zeros included)."""
    counts = dict.fromkeys(FILTER_REASONS, 0)
    for reason in rejections["reason"].to_list():
        if reason in counts:
            counts[reason] += 1
    return counts
