"""Majority-vote verification of generated solutions (docs/formulas.md#majority-vote).

Each problem gets several solutions (paper: 3). Their final answers are extracted (`extract_answer`
for math, `nli_label` for NLI) and grouped by equality (`math_equal`: math-verify, equal only when
verification holds in both directions). The most common non-empty answer wins (`majority_vote`), and
the solutions that agree with it are kept: the paper's rule is `min_agree=1` (the most common answer,
even when every solution disagrees); `min_agree=2` is the stricter "at least 2 agree" option.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Callable, Sequence
from typing import Any

from prismatic.generation.prompts import NLI_LABELS

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")


def extract_boxed(text: str | None) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`) with balanced braces; None if there is none.

    An unclosed last box (a truncated answer) is skipped in favour of the one before it. Empty boxes
    count as no answer.
    """
    if not text:
        return None
    for match in reversed(list(_BOXED.finditer(text))):
        depth = 1
        for pos in range(match.end(), len(text)):
            char = text[pos]
            if char == "\\" and pos + 1 < len(text) and text[pos + 1] in "{}":
                continue
            if char == "{" and text[pos - 1] != "\\":
                depth += 1
            elif char == "}" and text[pos - 1] != "\\":
                depth -= 1
                if depth == 0:
                    content = text[match.end():pos].strip()
                    return content or None
    return None


PLACEHOLDERS = frozenset({"answer", "final answer", "label", "your answer"})
"""Box contents that copy the request's `\\boxed{answer}` template instead of answering."""
_FINAL_ANSWER = re.compile(r"(?:final answer|the answer)\s*(?:is|:|=)\s*:?\s*\$?\s*(-?\d[\d,]*(?:\.\d+)?)",
                           re.IGNORECASE)


def extract_answer(text: str | None) -> str | None:
    """A math solution's final answer: the last `\\boxed{}` (`extract_boxed`) unless it only copies the
    template (`PLACEHOLDERS`); else the number of the last "final answer is N" / "the answer is N"
    (commas dropped), the phrasing small models use when they forget the box; else None."""
    if not text:
        return None
    boxed = extract_boxed(text)
    if boxed is not None and boxed.strip().lower() not in PLACEHOLDERS:
        return boxed
    found = _FINAL_ANSWER.findall(text)
    return found[-1].replace(",", "") if found else None


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@functools.lru_cache(maxsize=8192)
def _parse(answer: str, with_timeout: bool) -> tuple[Any, ...]:
    from math_verify import parse

    # math-verify times out with SIGALRM, which only the main thread may set.
    timeout = 5 if with_timeout else None
    wrapped = answer if answer.lstrip().startswith("\\boxed") else f"\\boxed{{{answer}}}"
    return tuple(parse(wrapped, parsing_timeout=timeout))


def _norm(answer: str) -> str:
    return " ".join(answer.replace("$", " ").split())


def math_equal(a: str | None, b: str | None) -> bool:
    """Whether two final answers are mathematically equal, by math-verify in both directions.

    Answers are parsed as the content of `\\boxed{}` so plain numbers and LaTeX both parse
    ("0.5" = "\\frac{1}{2}", "1,000" = "1000"). Identical texts (after collapsing whitespace and dropping
    `$`) are equal without parsing; when either side does not parse, only identical texts are equal.
    """
    if a is None or b is None:
        return False
    if _norm(a) == _norm(b):
        return bool(_norm(a))
    from math_verify import verify

    main = _in_main_thread()
    parsed_a, parsed_b = _parse(a, main), _parse(b, main)
    if not parsed_a or not parsed_b:
        return False
    timeout = 5 if main else None
    return bool(verify(list(parsed_a), list(parsed_b), timeout_seconds=timeout)
                and verify(list(parsed_b), list(parsed_a), timeout_seconds=timeout))


def majority_vote(answers: Sequence[str | None], equal: Callable[[str, str], bool] = math_equal,
                  min_agree: int = 1) -> tuple[str | None, list[int], int]:
    """(winning answer, indices of the answers equal to it, group size), or (None, [], 0).

    Non-empty answers are grouped greedily: each joins the first group whose representative (its
    first answer) it equals. The largest group wins; ties go to the group seen first. No answer wins
    when the largest group has fewer than `min_agree` members (paper rule: 1; stricter: 2).
    """
    if min_agree < 1:
        raise ValueError(f"min_agree must be at least 1, got {min_agree}")
    groups: list[list[int]] = []
    for i, answer in enumerate(answers):
        if answer is None or not str(answer).strip():
            continue
        for group in groups:
            if equal(answers[group[0]], answer):
                group.append(i)
                break
        else:
            groups.append([i])
    if not groups:
        return None, [], 0
    best = max(groups, key=len)  # max keeps the first of equal-size groups
    if len(best) < min_agree:
        return None, [], 0
    return answers[best[0]], best, len(best)


_LABEL_WORDS = {
    "entailment": "entailment", "entails": "entailment", "entailed": "entailment", "entail": "entailment",
    "neutral": "neutral",
    "contradiction": "contradiction", "contradicts": "contradiction", "contradicted": "contradiction",
    "contradictory": "contradiction", "contradict": "contradiction",
}
_LABEL_RE = re.compile(r"\b(" + "|".join(sorted(_LABEL_WORDS, key=len, reverse=True)) + r")\b", re.IGNORECASE)


def nli_label(text: str | None) -> str | None:
    """The NLI label of a response, one of entailment/neutral/contradiction, or None.

    The last `\\boxed{}` decides when there is one; otherwise a response that is just a label (as
    produced with structured `choices`), otherwise the last label word in the text.
    """
    if not text:
        return None
    boxed = extract_boxed(text)
    if boxed is not None:
        text_part = re.sub(r"\\text\w*\s*\{([^{}]*)\}", r"\1", boxed)
        found = _LABEL_RE.findall(text_part)
        labels = {_LABEL_WORDS[word.lower()] for word in found}
        return labels.pop() if len(labels) == 1 else None
    stripped = text.strip().strip(".*_`'\"").lower()
    if stripped in NLI_LABELS:
        return stripped
    found = _LABEL_RE.findall(text)
    return _LABEL_WORDS[found[-1].lower()] if found else None
