"""A round's generation: few-shot problem requests, problem screening, then solution requests.

    pool(r−1) ──few-shot──▶ problems ──screening──▶ kept problems ──N solutions each──▶ generations

Generation goes through an `Engine` and a `Journal`, so a retried step sends only missing requests.
Ids are deterministic: `r001-p003-1` is the second problem of the fourth prompt of round r001, and
`r001-p003-1-s2` its third solution. The round step that calls `generate_round` is
`prismatic.synthesis.steps.generations_step`.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import polars as pl

from prismatic.config import SynthesisConfig
from prismatic.data.filters import apply_nll_filter, apply_text_filters, nll_threshold, pool_sample
from prismatic.data.quality import ProblemFilter
from prismatic.generation.engines.base import Engine
from prismatic.generation.journal import Journal, generate_journaled
from prismatic.generation.prompts import (
    CONTINUATION_STOP,
    NLI_LABELS,
    FewShotSampler,
    continuation_prompt,
    nli_prompt,
    parse_continuation,
    parse_problems,
    problem_prompt,
    solution_prompt,
)
from prismatic.generation.requests import GenerationRequest, Sampling
from prismatic.generation.usage import Budget, Completion
from prismatic.storage.schema import schema

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
GENERATED_LEVEL = 3.0
"""The few-shot weight of a pool row without a level (a generated problem): the middle of the 1–5 scale."""


def problems_schema(task: str, n_new: int) -> dict:
    """JSON schema of a structured problem answer: `n_new` problems (NLI: premise/hypothesis pairs)."""
    if task == "nli":
        item = {"type": "object", "properties": {"premise": {"type": "string", "minLength": 8, "maxLength": 160},
                                                 "hypothesis": {"type": "string", "minLength": 4, "maxLength": 100}},
                "required": ["premise", "hypothesis"], "additionalProperties": False}
    else:
        item = {"type": "string", "minLength": 16, "maxLength": 600}
    return {"type": "object", "properties": {"problems": {"type": "array", "items": item, "minItems": n_new,
                                                          "maxItems": n_new}},
            "required": ["problems"], "additionalProperties": False}


def parse_structured_problems(text: str, task: str) -> list[str]:
    """Problems of a JSON answer (see `problems_schema`); [] when it does not parse.

    Grammar-constrained decoding can emit raw control characters inside strings (not strict JSON):
    they are accepted and replaced by spaces.
    """
    try:
        items = json.loads(text, strict=False)["problems"]
    except (ValueError, KeyError, TypeError):
        return []
    problems = []
    for item in items:
        if task == "nli" and isinstance(item, dict):
            premise, hypothesis = _clean(item.get("premise", "")), _clean(item.get("hypothesis", ""))
            if premise and hypothesis:
                problems.append(nli_prompt(premise, hypothesis))
        elif isinstance(item, str) and _clean(item):
            problems.append(_clean(item))
    return list(dict.fromkeys(problems))


def _clean(text: object) -> str:
    return _CONTROL.sub(" ", str(text)).strip()


@dataclass
class ProblemJob:
    """One problem request: `problem_index` is None when the answer holds several problems."""

    request: GenerationRequest
    task: str
    parent_ids: list[str]
    prompt_index: int
    problem_index: int | None = None

    @property
    def id(self) -> str:
        """`p003` (a request for several problems) or `p003-1` (the second problem of prompt 3)."""
        prompt = f"p{self.prompt_index:03d}"
        return prompt if self.problem_index is None else f"{prompt}-{self.problem_index}"


def problem_jobs(pool: pl.DataFrame, config: SynthesisConfig, model: str, key: str) -> list[ProblemJob]:
    """Few-shot problem requests: prompts spread evenly over `config.tasks`, examples drawn ∝ `level`.

    Rows without a level (generated problems) weigh `GENERATED_LEVEL`, the middle of the 1–5 scale.
    `fewshot` sends `problems_per_prompt` continuation requests per few-shot draw (request index j,
    so each samples with its own seed); `delimited` and `json` one chat request asking for them all.
    """
    rng = random.Random(f"{config.seed}:{key}:problems")
    level = pl.col("level").fill_null(GENERATED_LEVEL) if "level" in pool.columns else pl.lit(GENERATED_LEVEL)
    pool = pool.with_columns(level=level)
    rows_by_task = {task: pool.filter(task=task).select("id", "prompt", "level").to_dicts() for task in config.tasks}
    samplers = {task: FewShotSampler(rows) for task, rows in rows_by_task.items() if rows}
    jobs = []
    tasks = [task for task in config.tasks if rows_by_task[task]]
    sampling = Sampling.from_config(config.problem_sampling, seed=config.seed)
    for index in range(config.prompts_per_round if tasks else 0):
        task = tasks[index % len(tasks)]
        rows = rows_by_task[task]
        examples = samplers[task].draw(min(config.few_shot, len(rows)), rng)
        parents = [row["id"] for row in examples]
        if config.problem_format == "fewshot":
            prompt = continuation_prompt(examples, task)
            stopped = sampling.model_copy(update={"stop": CONTINUATION_STOP[task]})
            for j in range(config.problems_per_prompt):
                jobs.append(ProblemJob(GenerationRequest.text(model, prompt, stopped, j), task, parents, index, j))
            continue
        messages = problem_prompt(examples, task, n_new=config.problems_per_prompt)
        answer_schema = problems_schema(task, config.problems_per_prompt) if config.problem_format == "json" else None
        request = GenerationRequest.build(model, messages, sampling, index, json_schema=answer_schema)
        jobs.append(ProblemJob(request, task, parents, index))
    return jobs


def parse_job(job: ProblemJob, text: str, problem_format: str) -> list[str]:
    """The problems of one problem request's answer, by the format it was asked in."""
    if problem_format == "fewshot":
        return parse_continuation(text, job.task)
    if problem_format == "json":
        return parse_structured_problems(text, job.task)
    return parse_problems(text, job.task)


ProblemNLL = Callable[[Sequence[str], Sequence[str]], list[float]]
"""(problem texts, their tasks) → the proxy's mean token NLL of each (nats; `problem_nll`)."""


def screen_problems(problems: pl.DataFrame, pool: pl.DataFrame, config: SynthesisConfig,
                    problem_filter: ProblemFilter | None = None, nll: ProblemNLL | None = None
                    ) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    """(kept, rejections, about) of a round's problems (id, task, prompt), before any is solved.

    In order: the text filters (`prismatic.data.filters`), the proxy-NLL outlier rule (per task:
    a problem whose NLL exceeds the `nll_quantile` quantile of a seeded sample of that task's pool
    problems plus `nll_margin`), then dedup and decontamination (`problem_filter`). `about` holds
    the NLL thresholds used per task.
    """
    filters = config.filters
    kept, rejected = apply_text_filters(problems, filters)
    parts = [rejected]
    thresholds: dict[str, float] = {}
    if nll is not None and filters.enabled and filters.nll_quantile is not None and len(kept):
        survivors: list[str] = []
        for task in kept["task"].unique(maintain_order=True).to_list():
            rows = kept.filter(task=task)
            reference = pool_sample(pool.filter(task=task), filters, config.seed)
            threshold = nll_threshold(nll(reference["prompt"].to_list(), [task] * len(reference)), filters)
            if threshold is not None:
                thresholds[task] = round(threshold, 4)
            rows, dropped = apply_nll_filter(rows, nll(rows["prompt"].to_list(), [task] * len(rows)), threshold)
            survivors += rows["id"].to_list()
            parts.append(dropped)
        kept = kept.filter(pl.col("id").is_in(survivors))  # in the order given
    if problem_filter is not None and len(kept):
        kept, removed = problem_filter.apply(kept)
        parts.append(removed)
    return kept, pl.concat(parts), {"nll_thresholds": thresholds}


NLL_REQUEST = {"math": "Write a math word problem.", "nli": "Write a natural language inference problem."}
"""The user turn a problem answers when the proxy scores it (`problem_nll`)."""


def problem_nll(model, tokenizer, texts: Sequence[str], tasks: Sequence[str]) -> list[float]:
    """Mean token NLL (nats) of each problem text under the proxy, written as the assistant's answer
    to the fixed request `NLL_REQUEST[task]` (`prismatic.metrics.baselines.proxy_nll_by_sample`)."""
    from prismatic.metrics.baselines import proxy_nll_by_sample

    if not texts:
        return []
    frame = pl.DataFrame({"prompt": [NLL_REQUEST[task] for task in tasks], "response": list(texts)})
    return proxy_nll_by_sample(model, tokenizer, frame)


def generate_round(engine: Engine, journal: Journal, pool: pl.DataFrame, config: SynthesisConfig,
                   model: str, key: str, problem_filter: ProblemFilter | None = None,
                   nll: ProblemNLL | None = None, budget: Budget | None = None
                   ) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, dict]:
    """(generations, problems, rejections, about) of round `key`: problems, then N solutions per problem.

    `problems` has id, task, prompt (the problems that passed screening); generations holds one row
    per parsed problem and per solution, with the tokens and latency of the request that produced it
    (rows parsed from one answer share them). `screen_problems` (filters, the proxy-NLL rule with
    `nll`, dedup and decontamination with `problem_filter`) removes problems before they are solved:
    their problem rows stay in generations (raw outputs), they get no solutions, and each removal is a
    rejections row with its reason. `about`: `nll_thresholds`, what screening used, and `usage`, the
    `Usage` of every request of the round (each once, unparseable answers included). `budget`: see
    `generate_journaled`; a reached budget fails the round with one line.
    """
    jobs = problem_jobs(pool, config, model, key)
    texts = generate_journaled(engine, [job.request for job in jobs], journal, budget, "problem")
    gen_rows, problem_rows, rejections, parents_of = [], [], [], {}
    for job, text in zip(jobs, texts, strict=True):
        parsed = parse_job(job, text, config.problem_format)
        job_id = f"{key}-{job.id}"
        if not parsed:
            rejections.append({"id": job_id, "reason": "unparseable_problems", "detail": text[:500]})
        if job.problem_index is not None:
            parsed = [(job_id, problem) for problem in parsed[:1]]
        else:
            parsed = [(f"{job_id}-{j}", problem) for j, problem in enumerate(parsed[:config.problems_per_prompt])]
        for pid, problem in parsed:
            problem_rows.append({"id": pid, "task": job.task, "prompt": problem})
            parents_of[pid] = job.parent_ids
            gen_rows.append(_generation_row(pid, "problem", job.task, job.parent_ids, problem, model, job.request,
                                            journal.completion(job.request.key)))

    problems = pl.DataFrame(problem_rows, schema={"id": pl.String, "task": pl.String, "prompt": pl.String})
    problems, removed, about = screen_problems(problems, pool, config, problem_filter, nll)
    rejections = pl.concat([pl.DataFrame(rejections, schema=schema("rejections")), removed])
    problem_rows = problems.to_dicts()
    solution_requests = []
    solution_sampling = Sampling.from_config(config.solution_sampling, seed=config.seed)
    # A label constrained to the label set must not be cut by max_tokens (any tokenizer spells one in < 32).
    label_sampling = solution_sampling.model_copy(update={"max_tokens": max(32, solution_sampling.max_tokens)})
    parents = {i for ids in parents_of.values() for i in ids}  # the only rows looked up: not the whole pool
    demonstrations = solution_examples(pool.filter(pl.col("id").is_in(list(parents))))
    for problem in problem_rows:
        constrained = problem["task"] == "nli" and config.nli_solutions == "label"
        example = None
        if not constrained:  # one solved pool problem: the first few-shot parent with a boxed answer
            example = next((demonstrations[i] for i in parents_of[problem["id"]] if i in demonstrations), None)
        messages = solution_prompt(problem["prompt"], problem["task"], reasoning=not constrained, example=example)
        for s in range(config.solutions_per_problem):
            solution_requests.append((problem["id"], s, GenerationRequest.build(
                model, messages, label_sampling if constrained else solution_sampling, s,
                choices=list(NLI_LABELS) if constrained else None)))
    texts = generate_journaled(engine, [r for _, _, r in solution_requests], journal, budget, "solution")
    task_of = {p["id"]: p["task"] for p in problem_rows}
    for (pid, s, request), text in zip(solution_requests, texts, strict=True):
        gen_rows.append(_generation_row(f"{pid}-s{s}", "solution", task_of[pid], [pid], text, model, request,
                                        journal.completion(request.key)))
    about["usage"] = journal.usage([job.request.key for job in jobs] + [r.key for _, _, r in solution_requests])
    return pl.DataFrame(gen_rows, schema=schema("generations")), problems, rejections, about


def solution_examples(pool: pl.DataFrame) -> dict[str, tuple[str, str]]:
    """id → (prompt, response) of the pool's rows whose response has a `\\boxed{}` answer: the solved
    examples shown before a problem (`solution_prompt(example=…)`)."""
    if "response" not in pool.columns:
        return {}
    rows = pool.filter(pl.col("response").str.contains(r"\\boxed\{", literal=False))
    return {row["id"]: (row["prompt"], row["response"]) for row in rows.iter_rows(named=True)}


def _generation_row(row_id, kind, task, parents, text, model, request: GenerationRequest,
                    completion: Completion) -> dict:
    sampling = dict(request.sampling.model_dump(), seed=request.seed, choices=request.choices,
                    structured=request.json_schema is not None)
    return {"id": row_id, "kind": kind, "task": task, "parent_ids": parents, "text": text, "model": model,
            "request_key": request.key, "sampling": json.dumps(sampling, sort_keys=True),
            "prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens,
            "latency_s": completion.latency_s}
