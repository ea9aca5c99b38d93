"""One Prismatic Synthesis round as pure table transformations (DESIGN §8); assets call these.

    pool(r−1) ──few-shot──▶ problems ──N solutions each──▶ majority vote ──▶ verified candidates
    candidates ──features──▶ nearest centroid of pool(r−1) ──sparse cluster?──▶ kept ──▶ pool(r)

Round r000 is the seed round: the seeds are its verified samples, all kept, and form the pool.
Generation goes through an `Engine` and a `Journal`, so a retried step sends only missing requests.
Ids are deterministic: `r001-p003-1` is the second problem of the fourth prompt of round r001, and
`r001-p003-1-s2` its third solution.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from prismatic.config import SamplingConfig, SynthesisConfig
from prismatic.data.filters import apply_nll_filter, apply_text_filters, nll_threshold, pool_sample
from prismatic.data.quality import REJECTION_SCHEMA, ProblemFilter
from prismatic.errors import PrismError
from prismatic.generation.engines import Engine, Journal, generate_journaled
from prismatic.generation.prompts import (
    CONTINUATION_STOP,
    NLI_LABELS,
    GenerationRequest,
    Sampling,
    continuation_prompt,
    nli_prompt,
    parse_continuation,
    parse_problems,
    problem_prompt,
    sample_few_shot,
    solution_prompt,
)
from prismatic.metrics.vendi import gvendi
from prismatic.storage.store import Store
from prismatic.synthesis.kmeans import Clustering, num_clusters, spherical_kmeans
from prismatic.synthesis.verify import extract_answer, majority_vote, math_equal, nli_label

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
GENERATED_LEVEL = 3.0


def pool_gvendi(store, key: str) -> float:
    """The G-Vendi of round `key`'s pool, as its `diversity_scores` recorded it (a `prismatic.storage.store.Store`)."""
    return float(store.read("diversity_scores", key).filter(metric="gvendi")["value"][0])


# ------------------------------------------------------------------------------------ seed round


def seeds_as_verified(seeds: pl.DataFrame) -> pl.DataFrame:
    """The seed round's verified samples: each seed is its own problem, verified by its reference."""
    return seeds.select(
        "id", pl.col("id").alias("problem_id"), "prompt", "response", "answer",
        pl.lit(1).alias("votes"), pl.lit(1).alias("majority_size"), "task")


def pool_rows(verified: pl.DataFrame, origin: str, round_added: str) -> pl.DataFrame:
    return verified.select("id", "prompt", "response", "answer", "task",
                           pl.lit(origin).alias("origin"), pl.lit(round_added).alias("round_added"))


# ------------------------------------------------------------------------------------ generation


def _sampling(config: SamplingConfig, seed: int) -> Sampling:
    return Sampling(temperature=config.temperature, top_p=config.top_p, max_tokens=config.max_tokens, seed=seed)


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
    rows_by_task = {task: pool.filter(task=task).to_dicts() for task in config.tasks}
    jobs = []
    tasks = [task for task in config.tasks if rows_by_task[task]]
    sampling = _sampling(config.problem_sampling, config.seed)
    for index in range(config.prompts_per_round if tasks else 0):
        task = tasks[index % len(tasks)]
        rows = rows_by_task[task]
        examples = sample_few_shot(rows, min(config.few_shot, len(rows)), rng)
        parents = [row["id"] for row in examples]
        if config.problem_format == "fewshot":
            prompt = continuation_prompt(examples, task)
            stopped = sampling.model_copy(update={"stop": CONTINUATION_STOP[task]})
            for j in range(config.problems_per_prompt):
                jobs.append(ProblemJob(GenerationRequest.text(model, prompt, stopped, j), task, parents, index, j))
            continue
        messages = problem_prompt(examples, task, n_new=config.problems_per_prompt)
        schema = problems_schema(task, config.problems_per_prompt) if config.problem_format == "json" else None
        request = GenerationRequest.build(model, messages, sampling, index, json_schema=schema)
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
                   nll: ProblemNLL | None = None) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, dict]:
    """(generations, problems, rejections, about) of round `key`: problems, then N solutions per problem.

    `problems` has id, task, prompt (the problems that passed screening); generations holds one row
    per parsed problem and per solution. `screen_problems` (filters, the proxy-NLL rule with `nll`,
    dedup and decontamination with `problem_filter`) removes problems before they are solved: their
    problem rows stay in generations (raw outputs), they get no solutions, and each removal is a
    rejections row with its reason. `about` is what screening used (the NLL thresholds).
    """
    jobs = problem_jobs(pool, config, model, key)
    texts = generate_journaled(engine, [job.request for job in jobs], journal)
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
            gen_rows.append(_generation_row(pid, "problem", job.task, job.parent_ids, problem, model, job.request))

    problems = pl.DataFrame(problem_rows, schema={"id": pl.String, "task": pl.String, "prompt": pl.String})
    problems, removed, about = screen_problems(problems, pool, config, problem_filter, nll)
    rejections = pl.concat([pl.DataFrame(rejections, schema=REJECTION_SCHEMA), removed])
    problem_rows = problems.to_dicts()
    solution_requests = []
    solution_sampling = _sampling(config.solution_sampling, config.seed)
    # A label constrained to the label set must not be cut by max_tokens (any tokenizer spells one in < 32).
    label_sampling = solution_sampling.model_copy(update={"max_tokens": max(32, solution_sampling.max_tokens)})
    demonstrations = solution_examples(pool)
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
    texts = generate_journaled(engine, [r for _, _, r in solution_requests], journal)
    task_of = {p["id"]: p["task"] for p in problem_rows}
    for (pid, s, request), text in zip(solution_requests, texts, strict=True):
        gen_rows.append(_generation_row(f"{pid}-s{s}", "solution", task_of[pid], [pid], text, model, request))
    schema = {"id": pl.String, "kind": pl.String, "task": pl.String, "parent_ids": pl.List(pl.String),
              "text": pl.String,
              "model": pl.String, "request_key": pl.String, "sampling": pl.String}
    return pl.DataFrame(gen_rows, schema=schema), problems, rejections, about


def solution_examples(pool: pl.DataFrame) -> dict[str, tuple[str, str]]:
    """id → (prompt, response) of the pool's rows whose response has a `\\boxed{}` answer: the solved
    examples shown before a problem (`solution_prompt(example=…)`)."""
    if "response" not in pool.columns:
        return {}
    rows = pool.filter(pl.col("response").str.contains(r"\\boxed\{", literal=False))
    return {row["id"]: (row["prompt"], row["response"]) for row in rows.iter_rows(named=True)}


def _generation_row(row_id, kind, task, parents, text, model, request: GenerationRequest) -> dict:
    sampling = dict(request.sampling.model_dump(), seed=request.seed, choices=request.choices,
                    structured=request.json_schema is not None)
    return {"id": row_id, "kind": kind, "task": task, "parent_ids": parents, "text": text, "model": model,
            "request_key": request.key, "sampling": json.dumps(sampling, sort_keys=True)}


# ------------------------------------------------------------------------------------ verification


def verify_round(generations: pl.DataFrame, min_agree: int = 1) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(verified_samples, rejections): per problem, the solutions in the winning answer group.

    Answers: math → `extract_answer` (the last `\\boxed{}`, else "final answer is N") compared with
    math-verify both ways; nli → the label. votes =
    non-empty answers among the problem's solutions; majority_size = the winning group's size.
    """
    problems = generations.filter(kind="problem")
    solutions = generations.filter(kind="solution").with_columns(problem_id=pl.col("parent_ids").list.first())
    rows, rejections = [], []
    for problem in problems.iter_rows(named=True):
        task = problem["task"]
        group = solutions.filter(problem_id=problem["id"]).sort("id")
        if group.is_empty():  # removed before solving (dedup/decontamination): already a rejection
            continue
        texts = group["text"].to_list()
        answers = [nli_label(t) if task == "nli" else extract_answer(t) for t in texts]
        equal = (lambda a, b: a == b) if task == "nli" else math_equal
        winner, members, size = majority_vote(answers, equal=equal, min_agree=min_agree)
        votes = sum(1 for a in answers if a)
        if winner is None:
            rejections.append({"id": problem["id"], "reason": "no_majority",
                               "detail": json.dumps({"answers": answers})})
            continue
        for i in members:
            rows.append({"id": group["id"][i], "problem_id": problem["id"], "prompt": problem["text"],
                         "response": texts[i], "answer": str(winner), "votes": votes, "majority_size": size,
                         "task": task})
    schema = {"id": pl.String, "problem_id": pl.String, "prompt": pl.String, "response": pl.String,
              "answer": pl.String, "votes": pl.Int64, "majority_size": pl.Int64, "task": pl.String}
    return (pl.DataFrame(rows, schema=schema),
            pl.DataFrame(rejections, schema={"id": pl.String, "reason": pl.String, "detail": pl.String}))


# ------------------------------------------------------------------------------------ selection


def clustering_from_centroids(centroids: np.ndarray, sizes: np.ndarray) -> Clustering:
    """A Clustering that carries only what selection needs: the centroids and pool cluster sizes."""
    empty = np.zeros(0)
    return Clustering(centroids=centroids.astype(np.float32), labels=empty.astype(np.int64),
                      sizes=sizes.astype(np.int64), similarity=empty.astype(np.float32), mean_similarity=float("nan"))


def cluster_pool(ids: pl.Series, features: np.ndarray, config: SynthesisConfig
                 ) -> tuple[Clustering, pl.DataFrame, pl.DataFrame]:
    """Spherical k-means of the pool's features (rows in `ids` order), k = num_clusters(|pool|,
    cluster_ratio), with the config's iterations, seed and backend. Returns the clustering, the
    per-sample `clusters` table (id, cluster, cluster_size, distance = 1 − cosine to its centroid)
    and the `centroids` table (cluster, centroid, size)."""
    result = spherical_kmeans(features, num_clusters(len(ids), config.cluster_ratio),
                              iterations=config.kmeans_iterations, seed=config.seed, backend=config.kmeans_backend)
    clusters = pl.DataFrame({"id": ids, "cluster": result.labels, "cluster_size": result.sizes[result.labels],
                             "distance": 1.0 - result.similarity.astype(np.float64)})
    centroids = pl.DataFrame({
        "cluster": np.arange(result.k),
        "centroid": pl.Series("centroid", result.centroids, dtype=pl.Array(pl.Float32, result.dim)),
        "size": result.sizes})
    return result, clusters, centroids


def pool_features(store: Store, pool: pl.DataFrame) -> tuple[np.ndarray, dict]:
    """Features of every pool row (in pool order), gathered from the rounds that added them.

    Features made with different projections (proxy, mode, dim, seed) are refused, never mixed.
    """
    parts, projection, first_round = [], None, None
    for round_added in sorted(pool["round_added"].unique().to_list()):
        stored = store.read("gradient_features", round_added)
        meta = store.read_metadata("gradient_features", round_added)
        identity = {"proxy": meta.get("proxy"), **(meta.get("projection") or {})}
        if projection is None:
            projection, first_round = identity, round_added
        elif identity != projection:
            raise PrismError(f"gradient_features of {round_added} were made with a different projection than "
                             f"{first_round} ({identity} vs {projection}); rematerialize them with one config")
        parts.append(stored.select("id", "feature"))
    table = pool.select("id").join(pl.concat(parts), on="id", how="left")
    if table["feature"].null_count():
        missing = table.filter(pl.col("feature").is_null())["id"].head(3).to_list()
        raise PrismError(f"pool rows without gradient features, e.g. {missing}")
    return np.asarray(table["feature"].to_numpy(), dtype=np.float32), projection or {}


def diversity_table(results: dict, pool_size: int, candidate_features: np.ndarray, about: dict,
                    selection_outcome: dict | None = None) -> pl.DataFrame:
    """The `diversity_scores` rows of a round: one per metric result of the pool (value, pool size,
    details as JSON), then `gvendi_candidates`, the G-Vendi of the round's candidate features (when
    there are any), whose details are the projection `about`, then `gvendi_control`, the pool
    G-Vendi had the selection kept as many candidates at random (`prismatic.synthesis.selection.random_control`,
    from the selection's recorded outcome; not in the seed round)."""
    rows = [{"metric": name, "value": result.value, "n": pool_size, "details": json.dumps(result.details)}
            for name, result in results.items()]
    if len(candidate_features):
        rows.append({"metric": "gvendi_candidates", "value": gvendi(candidate_features), "n": len(candidate_features),
                     "details": json.dumps(about)})
    if selection_outcome is not None:
        control = selection_outcome["control"]
        rows.append({"metric": "gvendi_control", "value": control["gvendi"], "n": pool_size,
                     "details": json.dumps(control)})
    return pl.DataFrame(rows, schema={"metric": pl.String, "value": pl.Float64, "n": pl.Int64, "details": pl.String})
