"""The round's pure logic with a scripted engine (the LLM boundary); real vLLM runs in test_pipeline."""

import json

import numpy as np
import polars as pl

from prismatic.config import SynthesisConfig
from prismatic.generation.engines import Journal
from prismatic.synthesis.kmeans import spherical_kmeans
from prismatic.synthesis.selection import select
from prismatic.synthesis.steps import (
    clustering_from_centroids,
    generate_round,
    parse_structured_problems,
    problem_jobs,
    problems_schema,
    verify_round,
)

SUBJECTS = ["apples and pears", "trains and timetables", "paint and walls", "coins in a jar", "laps of a track",
            "seeds in a garden", "pages of a book", "tiles on a floor"]


class ScriptedEngine:
    """Answers problem requests (few-shot continuations, or JSON) with distinct problems and solution
    requests from a per-problem script."""

    def __init__(self, answers):
        self.answers, self.output_tokens, self.seen = answers, 0, []

    def problem(self) -> str:
        n = len(self.seen)
        return f"Problem {n} is about {SUBJECTS[n % len(SUBJECTS)]}: how many are left over at the end?"

    def generate(self, requests, on_results=None):
        texts = []
        for request in requests:
            self.seen.append(request.key)
            if request.prompt is not None:
                texts.append(f" {self.problem()}\n")
            elif request.json_schema is not None:
                first = self.problem()
                self.seen.append(request.key)
                texts.append(json.dumps({"problems": [first, self.problem()]}))
            else:
                texts.append(self.answers[len(texts) % len(self.answers)])
        if on_results:
            on_results(list(enumerate(texts)))
        return texts


POOL = pl.DataFrame({"id": [f"m{i}" for i in range(6)], "prompt": [f"Problem {i}?" for i in range(6)],
                     "response": ["r"] * 6, "answer": ["1"] * 6, "task": ["math"] * 6, "level": [1, 1, 1, 5, 5, 5]})


def test_generation_round_ids_provenance_and_journal(tmp_path):
    config = SynthesisConfig(tasks=["math"], prompts_per_round=2, solutions_per_problem=3)
    engine = ScriptedEngine(["so \\boxed{4}", "thus \\boxed{4.0}", "maybe \\boxed{5}"])
    journal = Journal(tmp_path / "j.jsonl")
    gens, problems, rejections, _ = generate_round(engine, journal, POOL, config, "m", "r001")
    assert problems["id"].to_list() == ["r001-p000-0", "r001-p000-1", "r001-p001-0", "r001-p001-1"]
    assert gens.filter(kind="solution").height == 12 and rejections.is_empty()
    solution = gens.filter(id="r001-p000-0-s2").row(0, named=True)
    assert solution["parent_ids"] == ["r001-p000-0"] and solution["task"] == "math"
    assert all(len(p) == 5 for p in gens.filter(kind="problem")["parent_ids"].to_list())
    assert json.loads(solution["sampling"])["temperature"] == 0.75
    # A rerun sends nothing: every request key is in the journal.
    sent = len(engine.seen)
    again, _, _, _ = generate_round(engine, journal, POOL, config, "m", "r001")
    assert len(engine.seen) == sent and again.equals(gens)


def test_majority_vote_keeps_the_winning_group(tmp_path):
    config = SynthesisConfig(tasks=["math"], prompts_per_round=1, solutions_per_problem=3)
    engine = ScriptedEngine(["so \\boxed{4}", "thus \\boxed{4.0}", "maybe \\boxed{5}"])
    gens, _, _, _ = generate_round(engine, Journal(tmp_path / "j.jsonl"), POOL, config, "m", "r001")
    verified, rejected = verify_round(gens)
    assert verified["id"].to_list() == ["r001-p000-0-s0", "r001-p000-0-s1", "r001-p000-1-s0", "r001-p000-1-s1"]
    assert set(verified["majority_size"]) == {2} and set(verified["votes"]) == {3}
    strict, rejected = verify_round(gens, min_agree=3)
    assert strict.is_empty() and rejected["reason"].to_list() == ["no_majority"] * 2


def test_few_shot_prompts_spread_over_tasks_and_prefer_high_levels():
    pool = pl.concat([POOL, POOL.with_columns(id=pl.col("id") + "n", task=pl.lit("nli"))])
    jobs = problem_jobs(pool, SynthesisConfig(tasks=["math", "nli"], prompts_per_round=4), "m", "r001")
    assert [(job.task, job.prompt_index) for job in jobs] == [
        ("math", 0), ("math", 0), ("nli", 1), ("nli", 1), ("math", 2), ("math", 2), ("nli", 3), ("nli", 3)]
    # The continuation format: one problem per request; the two requests of a prompt share its examples
    # and differ only by their index (so by their seed).
    assert jobs[0].request.prompt == jobs[1].request.prompt and jobs[0].request.seed != jobs[1].request.seed
    assert jobs[0].request.prompt.endswith("\n\nProblem:") and jobs[2].request.prompt.endswith("\n\nPremise:")
    assert jobs[0].request.sampling.stop == ("\n",) and jobs[0].request.messages == []
    chat = problem_jobs(pool, SynthesisConfig(tasks=["math", "nli"], prompts_per_round=4, problem_format="json"),
                        "m", "r001")
    assert [job.task for job in chat] == ["math", "nli", "math", "nli"] and chat[0].request.json_schema is not None
    counts = {}
    for key in range(200):
        for job in problem_jobs(POOL, SynthesisConfig(tasks=["math"], prompts_per_round=1, few_shot=3), "m",
                                f"r{key:03d}"):
            for pid in job.parent_ids:
                counts[pid] = counts.get(pid, 0) + 1
    assert min(counts[f"m{i}"] for i in (3, 4, 5)) > max(counts[f"m{i}"] for i in (0, 1, 2))


def test_structured_problem_parsing():
    schema = problems_schema("nli", 2)
    assert schema["properties"]["problems"]["minItems"] == 2
    text = json.dumps({"problems": [{"premise": "A cat sleeps.", "hypothesis": "An animal rests."},
                                    {"premise": "A cat sleeps.", "hypothesis": "An animal rests."}]})
    parsed = parse_structured_problems(text, "nli")
    assert parsed == ["Premise: A cat sleeps.\nHypothesis: An animal rests.\nDoes the premise entail the "
                      "hypothesis? Answer with one word: entailment, neutral, or contradiction."]
    assert parse_structured_problems('{"problems": ["cut', "math") == []


def test_selection_against_previous_centroids_matches_a_fresh_clustering():
    rng = np.random.default_rng(0)
    pool = rng.normal(size=(40, 8)).astype(np.float32)
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    clustering = spherical_kmeans(pool, 4, seed=0)
    rebuilt = clustering_from_centroids(clustering.centroids, clustering.sizes)
    candidates = rng.normal(size=(10, 8)).astype(np.float32)
    ids = [f"c{i}" for i in range(10)]
    assert select("paper", ids, candidates, rebuilt).equals(select("paper", ids, candidates, clustering))
