"""Prompts and their parsers for Prismatic Synthesis generation (docs/architecture.md).

Two kinds of generation happen in a round:

- Problems: a few-shot prompt shows `synthesis.few_shot` (default 5) problems from the pool, drawn
  without replacement with probability ∝ `level` (`sample_few_shot`), in one of three formats
  (`synthesis.problem_format`):
  - `fewshot` (default): a raw-text continuation, `Problem: …` blocks ending in `Problem:`, one
    new problem per completion (`continuation_prompt`, `parse_continuation`);
  - `delimited`: the paper's chat request for `n_new` (paper: 2) new problems that are similar to
    or harder than them, each under a `### Problem i` line and closed by `### End`
    (`problem_prompt`, `parse_problems`);
  - `json`: the same chat request, decoded under a JSON schema (structured output).
  Paper sampling: T=1.0, top_p=0.95 (the default `synthesis.problem_sampling`).
- Solutions: several per problem, reasoning step by step and ending with the final answer in
  `\\boxed{}` (`solution_prompt`). Paper sampling: T=0.75, top_p=0.95 (the default
  `synthesis.solution_sampling`).

An NLI "problem" is a premise/hypothesis pair. The model writes only the `Premise:` and
`Hypothesis:` lines; `parse_problems(..., task="nli")` re-renders each pair in the seeds' exact prompt
format (`nli_prompt`), so generated NLI prompts look like the bundled ones.

Requests, sampling and request keys are in `prismatic.generation.requests`. The prompts are this
project's own wording of the paper's method.
"""

from __future__ import annotations

import bisect
import itertools
import random
import re

from prismatic.errors import PrismError
from prismatic.generation.requests import Message

TASKS = ("math", "nli")
NLI_LABELS = ("entailment", "neutral", "contradiction")
NLI_QUESTION = "Does the premise entail the hypothesis? Answer with one word: entailment, neutral, or contradiction."
N_NEW_PROBLEMS = 2


# --------------------------------------------------------------------------------------- few-shot


def sample_few_shot(pool: list[dict], k: int, rng: random.Random, *, weight_key: str = "level",
                    default_weight: float | None = None) -> list[dict]:
    """`k` distinct examples drawn without replacement, each draw ∝ `weight_key` among those left.

    This is successive weighted sampling (like `numpy.random.choice(replace=False, p=w)`): drawn by
    bisection on the cumulative weights and redrawing an example already taken, which gives exactly
    the conditional distribution over the remaining ones. Deterministic for a seeded `rng`.
    Rows without `weight_key` get `default_weight`, or are refused when it is None. Many draws from
    one pool: `FewShotSampler` (the same draws, the weights summed once).
    """
    if k < 0:
        raise PrismError(f"cannot draw {k} few-shot examples")
    if k > len(pool):
        raise PrismError(f"cannot draw {k} distinct few-shot examples from a pool of {len(pool)}")
    return FewShotSampler(pool, weight_key=weight_key, default_weight=default_weight).draw(k, rng)


class FewShotSampler:
    """The draws of `sample_few_shot` from one pool, whose weights and cumulative sums are computed once:
    a draw of k costs O(k log n) (bisections) instead of O(n), so a round's P prompts cost O(n + P·k log n)
    rather than O(P·n). `draw(k, rng)` gives exactly what `sample_few_shot(pool, k, rng)` gives."""

    def __init__(self, pool: list[dict], *, weight_key: str = "level", default_weight: float | None = None):
        weights = []
        for i, row in enumerate(pool):
            weight = row.get(weight_key, default_weight)
            if weight is None:
                raise PrismError(f"few-shot pool row {row.get('id', i)!r} has no {weight_key!r}")
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
                raise PrismError(f"few-shot pool row {row.get('id', i)!r}: {weight_key!r} must be a positive "
                                 f"number, got {weight!r}")
            weights.append(float(weight))
        self.pool = pool
        self.weights = weights
        self.cumulative = list(itertools.accumulate(weights))

    def draw(self, k: int, rng: random.Random) -> list[dict]:
        pool, weights, cumulative = self.pool, self.weights, self.cumulative
        if k < 0 or k > len(pool):
            raise PrismError(f"cannot draw {k} distinct few-shot examples from a pool of {len(pool)}")
        total = cumulative[-1] if cumulative else 0.0
        chosen: list[int] = []
        taken: set[int] = set()
        attempts = 0
        while len(chosen) < k:
            attempts += 1
            if attempts > 50 * (k + 1):  # heavy weights keep being redrawn: draw among the rest directly
                rest = [i for i in range(len(pool)) if i not in taken]
                rest_cum = list(itertools.accumulate(weights[i] for i in rest))
                index = rest[min(bisect.bisect_right(rest_cum, rng.random() * rest_cum[-1]), len(rest) - 1)]
            else:
                index = min(bisect.bisect_right(cumulative, rng.random() * total), len(pool) - 1)
                if index in taken:
                    continue
            chosen.append(index)
            taken.add(index)
        return [pool[i] for i in chosen]


# --------------------------------------------------------------------------------------- prompts


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise PrismError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")


def nli_prompt(premise: str, hypothesis: str) -> str:
    """An NLI problem in the bundled seeds' format."""
    return f"Premise: {premise.strip()}\nHypothesis: {hypothesis.strip()}\n{NLI_QUESTION}"


_PREMISE = re.compile(r"^\W*premise\W*:\s*(.*)$", re.IGNORECASE)
_HYPOTHESIS = re.compile(r"^\W*hypothesis\W*:\s*(.*)$", re.IGNORECASE)


def parse_nli_pair(text: str) -> tuple[str, str] | None:
    """(premise, hypothesis) from `Premise: …` and `Hypothesis: …` lines, or None when one is missing.

    A premise may run over several lines (up to the hypothesis line); the hypothesis is its line.
    Markdown emphasis around the labels (`**Premise:**`) is tolerated.
    """
    premise: list[str] | None = None
    hypothesis = None
    for line in text.splitlines():
        if hypothesis is None and (match := _HYPOTHESIS.match(line)):
            hypothesis = match.group(1)
        elif premise is None and hypothesis is None and (match := _PREMISE.match(line)):
            premise = [match.group(1)]
        elif premise is not None and hypothesis is None and line.strip():
            premise.append(line)
    if premise is None or hypothesis is None:
        return None
    premise_text = " ".join(part.strip() for part in premise).strip(" *_")
    hypothesis_text = hypothesis.strip(" *_")
    if not premise_text or not hypothesis_text:
        return None
    return premise_text, hypothesis_text


def _example_text(example: dict, task: str) -> str:
    prompt = str(example["prompt"]).strip()
    if task == "nli":
        pair = parse_nli_pair(prompt)
        if pair is not None:
            return f"Premise: {pair[0]}\nHypothesis: {pair[1]}"
    return prompt


_PROBLEM_INSTRUCTIONS = {
    "math": (
        "You write math word problems. Below are {n_examples} example problems. Write {n_new} new "
        "problems that are similar to them or harder: vary the setting, the quantities and the "
        "reasoning needed. Each new problem must be self-contained and have exactly one correct final "
        "answer (a number or a short expression). Do not copy an example, and do not include "
        "solutions or answers."
    ),
    "nli": (
        "You write natural language inference problems. Each problem is a premise and a hypothesis; "
        "the hypothesis is either entailed by the premise, neutral, or contradicted by it. Below are "
        "{n_examples} examples. Write {n_new} new problems that are similar to them or harder: vary "
        "the topic and the kind of inference needed, and mix the three relations. Write each problem "
        "as two lines, `Premise: ...` and `Hypothesis: ...`, with no label and no explanation."
    ),
}


def problem_prompt(examples: list[dict], task: str, n_new: int = N_NEW_PROBLEMS) -> list[Message]:
    """Chat messages asking for `n_new` new problems like the few-shot `examples` (rows with `prompt`).

    The answer format is fixed so `parse_problems` can read it:
    `### Problem 1`, the problem, `### Problem 2`, …, then a final `### End` line.
    """
    _check_task(task)
    if not examples:
        raise PrismError("a problem prompt needs at least one few-shot example")
    if n_new < 1:
        raise PrismError(f"n_new must be at least 1, got {n_new}")
    intro = _PROBLEM_INSTRUCTIONS[task].format(n_examples=len(examples), n_new=n_new)
    shown = "\n\n".join(f"### Example {i}\n{_example_text(ex, task)}" for i, ex in enumerate(examples, 1))
    layout = "\n".join(f"### Problem {i}\n<new problem {i}>" for i in range(1, n_new + 1))
    text = (f"{intro}\n\n{shown}\n\n"
            f"Answer in exactly this format, with nothing before the first heading:\n\n"
            f"{layout}\n### End")
    return [{"role": "user", "content": text}]


CONTINUATION_HEADERS = {"math": "Problem:", "nli": "Premise:"}
CONTINUATION_STOP = {"math": ("\n",), "nli": ("\n\n", "\nPremise:")}
"""Where a continuation ends: math problems are one line (as every example is); an NLI problem is
its `Premise:` and `Hypothesis:` lines."""


def continuation_prompt(examples: list[dict], task: str) -> str:
    """A raw-text few-shot prompt that a small model continues with one new problem.

    math:  `Problem: <example 1>` … `Problem: <example k>`, one per line with a blank line between,
           then a final `Problem:` for the model to continue (stopped at the line end).
    nli:   `Premise: …` / `Hypothesis: …` blocks, then a final `Premise:`.
    No chat template and no instruction: a 135M instruct model follows the pattern of the examples
    far more reliably than a written request for a format (docs/performance.md#problem-formats).
    """
    _check_task(task)
    if not examples:
        raise PrismError("a continuation prompt needs at least one few-shot example")
    header = CONTINUATION_HEADERS[task]
    blocks = []
    for example in examples:
        text = _example_text(example, task)
        blocks.append(text if task == "nli" else f"{header} {' '.join(text.split())}")
    return "\n\n".join(blocks) + f"\n\n{header}"


def parse_continuation(text: str, task: str) -> list[str]:
    """The one problem of a `continuation_prompt` completion ([] when there is none).

    math: the text up to the first line end, whitespace-collapsed. nli: `Premise:` + the text must
    parse as a pair (`parse_nli_pair`); it is re-rendered in the seeds' format (`nli_prompt`).
    """
    _check_task(task)
    if task == "nli":
        pair = parse_nli_pair(f"{CONTINUATION_HEADERS['nli']}{text}")
        return [nli_prompt(*pair)] if pair else []
    line = text.strip().split("\n", 1)[0] if text.strip() else ""
    problem = " ".join(line.split())
    return [problem] if problem else []


def solution_prompt(problem: str, task: str, *, reasoning: bool = True,
                    example: tuple[str, str] | None = None) -> list[Message]:
    """Chat messages asking for a solution of `problem`.

    math: step-by-step reasoning that ends with the final answer in `\\boxed{}`.
    nli: a short justification, then exactly one label in `\\boxed{}` (as in the seeds); with
      `reasoning=False` only the label, which pairs with the structured output `choices=NLI_LABELS`.
    example: a solved (problem, solution) pair shown first as an earlier user/assistant turn, so a
      small model sees the answer format it must end with.
    """
    _check_task(task)
    messages: list[Message] = []
    if example is not None:
        messages += [{"role": "user", "content": _solution_request(example[0], task, reasoning)},
                     {"role": "assistant", "content": example[1].strip()}]
    return messages + [{"role": "user", "content": _solution_request(problem, task, reasoning)}]


def _solution_request(problem: str, task: str, reasoning: bool) -> str:
    problem = problem.strip()
    if task == "math":
        return (f"Solve the following problem. Reason step by step, then write the final answer as "
                f"\\boxed{{answer}} at the end.\n\n{problem}")
    if reasoning:
        return (f"{problem}\n\nExplain your reasoning in a few sentences, then give exactly one label "
                f"({', '.join(NLI_LABELS)}) as \\boxed{{label}} at the end.")
    return f"{problem}\n\nReply with exactly one word: {', '.join(NLI_LABELS)}."


# --------------------------------------------------------------------------------------- parsing

# A problem heading on its own line: `### Problem 2`, `## Problem 2:`, `**Problem 2.**`, `Problem 2:`.
# Text may follow on the same line (`### Problem 1: A train ...`). A bare `Problem 2 asks ...` inside
# a problem is not a heading: without `#`/`**` the number must be followed by `:`/`.`/`)` or the line end.
_NUM = r"(?:new[ \t]+)?(?:problem|question)[ \t]*#?[ \t]*\d+"
_BARE_NUM = r"(?:new[ \t]+)?problem[ \t]*#?[ \t]*\d+"
_HEADING = re.compile(
    rf"^[ \t]*(?:#{{1,6}}[ \t]*(?:\*\*)?[ \t]*{_NUM}[ \t]*(?:\*\*)?[ \t]*[:.)]?(?:\*\*)?"
    rf"|\*\*[ \t]*{_NUM}[ \t]*[:.)]?[ \t]*\*\*[ \t]*[:.)]?"
    rf"|{_BARE_NUM}[ \t]*(?:[:.)]|(?=[ \t]*$)))[ \t]*",
    re.IGNORECASE | re.MULTILINE)
_END = re.compile(r"^[ \t]*(?:#{1,6}|\*\*)[ \t]*end\b.*$", re.IGNORECASE | re.MULTILINE)
_SOLUTION = re.compile(r"^[ \t]*(?:#{1,6}[ \t]*)?(?:\*\*)?[ \t]*(?:solution|answer)s?\b[ \t]*(?:\*\*)?[ \t]*:",
                       re.IGNORECASE | re.MULTILINE)


def parse_problems(text: str, task: str = "math", *, require_end: bool = False) -> list[str]:
    """The problems of a `problem_prompt` answer, in order, stripped, without empties or duplicates.

    Text before the first `### Problem` heading and after an `### End` line is ignored; a missing
    final `### End` is tolerated (the last problem runs to the end of the text), unless `require_end`
    is set, in which case an unterminated last problem (e.g. cut by max_tokens) is dropped. Math
    problems are cut at a `Solution:`/`Answer:` line. NLI problems are kept only when they have both
    a premise and a hypothesis, and are re-rendered in the seeds' format (`nli_prompt`). Duplicates
    are judged after collapsing whitespace and case.
    """
    _check_task(task)
    headings = list(_HEADING.finditer(text))
    problems: list[str] = []
    seen: set[str] = set()
    for i, match in enumerate(headings):
        last = i + 1 == len(headings)
        block = text[match.end():len(text) if last else headings[i + 1].start()]
        end = _END.search(block)
        if end is not None:
            block = block[:end.start()]
        elif last and require_end:
            break
        if task == "nli":
            pair = parse_nli_pair(block)
            if pair is None:
                continue
            problem = nli_prompt(*pair)
        else:
            solution = _SOLUTION.search(block)
            problem = (block[:solution.start()] if solution else block).strip().strip("`").strip()
        norm = " ".join(problem.split()).lower()
        if not norm or norm in seen:
            continue
        seen.add(norm)
        problems.append(problem)
    return problems
