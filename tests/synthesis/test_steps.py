"""The round's pure logic with a scripted engine (the LLM boundary); real vLLM runs in test_pipeline."""

import json

import numpy as np
import polars as pl

from prismatic.config import SynthesisConfig
from prismatic.generation.journal import Journal
from prismatic.gradients.featureset import FeatureSet
from prismatic.storage.catalog import Catalog
from prismatic.storage.factory import open_store
from prismatic.storage.schema import conform, empty, schema
from prismatic.synthesis.generate import generate_round, parse_structured_problems, problem_jobs, problems_schema
from prismatic.synthesis.kmeans import spherical_kmeans
from prismatic.synthesis.selection import select
from prismatic.synthesis.steps import (
    clustering_from_centroids,
    generations_step,
    gradient_features_step,
    pool_step,
    seeds_step,
    selection_step,
    verified_samples_step,
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


def test_seed_round_steps_write_whole_tables_with_their_provenance(tmp_path):
    """Round r000 of every step that has a seed-round branch: the seeds are the verified samples, all
    kept, and the pool; nothing is generated. Each output conforms to its table, and `StepOutput.write`
    puts the step's provenance and what the asset read (on its own table only) into the files."""
    seeds = seeds_step("bundled")
    frame = seeds.tables["seeds"]
    assert seeds.provenance == {"seeds": {"source": "bundled"}} and sum(seeds.facts["by_task"].values()) == len(frame)
    config = SynthesisConfig()
    generated = generations_step("r000", config)
    assert {table: out.height for table, out in generated.tables.items()} == {"generations": 0, "rejections": 0}
    verified = verified_samples_step("r000", 1, seeds=frame)
    selection = selection_step("r000", config, seeds=frame)
    pool = pool_step("r000", seeds=frame)
    for output in (seeds, generated, verified, selection, pool):
        for table, out in output.tables.items():
            assert conform(table, out).schema == schema(table), table  # what the store writes
    assert verified.tables["verified_samples"]["id"].to_list() == frame["id"].to_list()
    assert selection.tables["selection"]["kept"].all() and selection.facts == {"kept": len(frame)}
    assert set(pool.tables["pool"]["origin"]) == {"seed"}
    assert pool.facts == {"added": len(frame), "pool_size": len(frame)}

    store = open_store(tmp_path / "store")
    catalog = Catalog(tmp_path / "catalog.duckdb", store)
    generated.write(catalog, "r000", run_id="run", asset="generations", previous_pool={"round": "r999"})
    assert store.read_metadata("generations", "r000") == {"round": "r000", "run_id": "run", "asset": "generations",
                                                          "previous_pool": {"round": "r999"}}
    assert store.read_metadata("rejections", "r000") == {"round": "r000", "run_id": "run", "asset": "generations"}


def test_verified_samples_step_replaces_only_the_old_vote_rejections():
    gens = pl.DataFrame({
        "id": ["p", "p-s0", "p-s1", "q", "q-s0", "q-s1"], "kind": ["problem", "solution", "solution"] * 2,
        "task": ["math"] * 6,
        "parent_ids": [["m0"], ["p"], ["p"], ["m0"], ["q"], ["q"]],
        "text": ["P?", "\\boxed{3}", "\\boxed{3}", "Q?", "\\boxed{1}", "\\boxed{2}"], "model": ["m"] * 6,
        "request_key": ["k"] * 6, "sampling": ["{}"] * 6})
    earlier = pl.DataFrame({"id": ["x", "q"], "reason": ["near_duplicate", "no_majority"], "detail": ["", "old"]})
    output = verified_samples_step("r001", 2, generations=gens, rejections=earlier)
    assert output.tables["verified_samples"]["id"].to_list() == ["p-s0", "p-s1"]
    rejections = output.tables["rejections"]
    assert rejections["reason"].to_list() == ["near_duplicate", "no_majority"] and rejections["detail"][1] != "old"
    assert output.facts == {"problems": 2, "problems_verified": 1, "problem_pass_rate": 0.5,
                            "solution_pass_rate": 0.5}


def test_gradient_features_step_without_samples_writes_an_empty_table():
    no_samples = pl.DataFrame({"id": []}, schema={"id": pl.String})
    shard = FeatureSet(ids=[], features=np.zeros((0, 1), dtype=np.float32), n_tokens=[], truncated=[])
    output = gradient_features_step(no_samples, [shard])
    assert output.tables["gradient_features"].equals(empty("gradient_features"))
    assert output.provenance == {} and output.facts == {}


def test_pool_features_gathers_each_rounds_kept_rows_in_pool_order(tmp_path):
    """`pool_features`: the features of the pool's rows, read from the round that added each (only its pool
    rows kept), in the pool's own order; a pool row without features, or rounds of different
    projections, are refused."""
    import pytest

    from prismatic.errors import PrismError
    from prismatic.synthesis.steps import pool_features

    rng = np.random.default_rng(5)
    store = open_store(tmp_path / "store")
    features = {}
    for key, n in (("r000", 4), ("r001", 7)):
        x = rng.normal(size=(n, 6)).astype(np.float32)
        ids = [f"{key}-{i}" for i in range(n)]
        features.update(zip(ids, x, strict=True))
        store.write("gradient_features", key, pl.DataFrame({
            "id": ids, "feature": pl.Series(x, dtype=pl.Array(pl.Float32, 6)), "proxy": "p", "mode": "fast",
            "dim": 6, "n_tokens": 3, "truncated": False}), metadata={"proxy": "p", "projection": {"seed": 0, "dim": 6}})
    order = ["r001-5", "r000-2", "r000-0", "r001-1", "r000-3", "r000-1", "r001-6"]  # 3 of r001's 7 candidates
    pool = pl.DataFrame({"id": order, "round_added": [i.split("-")[0] for i in order]})
    x, projection = pool_features(store, pool)
    assert x.dtype == np.float32 and np.array_equal(x, np.stack([features[i] for i in order]))
    assert projection == {"proxy": "p", "seed": 0, "dim": 6}
    with pytest.raises(PrismError, match=r"pool rows without gradient features, e.g. \['r001-9'\]"):
        pool_features(store, pool.vstack(pl.DataFrame({"id": ["r001-9"], "round_added": ["r001"]})))
    frame = store.read("gradient_features", "r001")
    store.write("gradient_features", "r001", frame, metadata={"proxy": "p", "projection": {"seed": 1, "dim": 6}})
    with pytest.raises(PrismError, match="gradient_features of r001 were made with a different projection"):
        pool_features(store, pool)
