"""A store of real rounds for the atlas's tests: every table is made by the round's own steps
(`prismatic.synthesis.steps`: selection, pool, k-means, diversity scores) and written through
`StepOutput.write`; only the generator's text and the proxy's gradients are synthetic (seeded
unit vectors around a few directions, and sentences from a small vocabulary)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl

from prismatic.config import PrismConfig, SynthesisConfig
from prismatic.storage.catalog import Catalog
from prismatic.storage.factory import open_store
from prismatic.storage.schema import schema
from prismatic.synthesis.steps import (
    StepOutput,
    clusters_step,
    diversity_scores_step,
    pool_features,
    pool_step,
    selection_step,
)

PROJECTION = {"kind": "synthetic", "seed": 0}
WORDS = ("apples", "pears", "train", "leaves", "station", "minutes", "paint", "walls", "coins", "jar", "laps",
         "track", "garden", "seeds", "pages", "book", "tiles", "floor", "each", "total", "more", "fewer", "than",
         "twice", "half", "remaining", "after", "before", "buys", "sells", "gives", "keeps", "shares", "equally")
REASONS = ("too_few_words", "near_duplicate_pool", "no_majority")


def sentence(rng: np.random.Generator, words: int) -> str:
    picked = rng.choice(len(WORDS), size=words)
    numbers = rng.integers(2, 999, size=words)
    return " ".join(WORDS[w] if n % 4 else str(n) for w, n in zip(picked, numbers)) + "."


def _frame(table: str, rows: dict, dim: int | None = None) -> pl.DataFrame:
    """`rows` (columns → lists) with every other column of `table` null, in the schema's order."""
    target = schema(table, dim=dim) if dim else schema(table)
    n = len(next(iter(rows.values())))
    return pl.DataFrame({name: rows.get(name, [None] * n) for name in target}, schema=target)


class AtlasStore:
    """Writes rounds r000 … rN into `<root>/store` (catalog `<root>/catalog.duckdb`)."""

    def __init__(self, root: Path, *, dim: int = 16, directions: int = 6, seed: int = 0,
                 cluster_ratio: float = 0.1, prompt_words: int = 14, response_words: int = 30):
        self.store = open_store(root / "store")
        self.catalog = Catalog(root / "catalog.duckdb", self.store)
        self.rng = np.random.default_rng(seed)
        self.dim, self.words = dim, (prompt_words, response_words)
        self.centres = self._unit(self.rng.standard_normal((directions, dim)))
        self.synthesis = SynthesisConfig(cluster_ratio=cluster_ratio, control_draws=2)
        self.config = PrismConfig.model_validate({"metrics": {"names": ["gvendi"]}})

    @staticmethod
    def _unit(x: np.ndarray) -> np.ndarray:
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    def features(self, n: int, spread: float = 0.35) -> np.ndarray:
        around = self.centres[self.rng.integers(0, len(self.centres), size=n)]
        return self._unit(around + spread * self.rng.standard_normal((n, self.dim)))

    def _write(self, output: StepOutput, key: str, asset: str) -> None:
        output.write(self.catalog, key, run_id=f"run-{key}", asset=asset)

    def _features_table(self, ids: list[str], x: np.ndarray) -> StepOutput:
        frame = _frame("gradient_features", {
            "id": ids, "feature": list(x), "proxy": ["synthetic"] * len(ids), "mode": ["fast"] * len(ids),
            "dim": [self.dim] * len(ids), "n_tokens": [64] * len(ids), "truncated": [False] * len(ids)}, dim=self.dim)
        frame = frame.with_columns(pl.Series("feature", x, dtype=pl.Array(pl.Float32, self.dim)))
        return StepOutput({"gradient_features": frame},
                          provenance={"gradient_features": {"projection": PROJECTION, "proxy": "synthetic"}})

    def seed_round(self, n: int) -> None:
        ids = [f"seed-{i:06d}" for i in range(n)]
        answers = [str(v) for v in self.rng.integers(1, 500, size=n)]
        seeds = _frame("seeds", {
            "id": ids, "prompt": [sentence(self.rng, self.words[0]) + " How many?" for _ in ids],
            "response": [sentence(self.rng, self.words[1]) + f" \\boxed{{{a}}}" for a in answers],
            "answer": answers, "task": ["math" if i % 3 else "nli" for i in range(n)], "source": ["test"] * n,
            "level": [1] * n})
        self._write(StepOutput({"seeds": seeds}), "r000", "seeds")
        self._write(StepOutput({"generations": _frame("generations", {"id": []}),
                                "rejections": _frame("rejections", {"id": []})}), "r000", "generations")
        verified = seeds.select("id", pl.col("id").alias("problem_id"), "prompt", "response", "answer",
                                pl.lit(1).alias("votes"), pl.lit(1).alias("majority_size"), "task")
        self._write(StepOutput({"verified_samples": verified}), "r000", "verified_samples")
        self._write(self._features_table(ids, self.features(n)), "r000", "gradient_features")
        self._write(selection_step("r000", self.synthesis, seeds=seeds), "r000", "selection")
        self._write(pool_step("r000", seeds=seeds), "r000", "pool")
        self._finish("r000", previous=None)

    def round(self, key: str, previous: str, problems: int, solutions: int = 3) -> None:
        """Round `key`: `problems` generated problems, a few rejected (one per `REASONS`, and an unparseable
        request), `solutions` per problem with 2 of 3 agreeing."""
        number = int(key[1:])
        problem_ids = [f"{key}-p{i:05d}-0" for i in range(problems)]
        texts = [sentence(self.rng, self.words[0]) + " How many are left?" for _ in problem_ids]
        tasks = ["math" if i % 3 else "nli" for i in range(problems)]
        rows = {"id": [], "kind": [], "task": [], "parent_ids": [], "text": [], "completion_tokens": []}
        verified = {name: [] for name in ("id", "problem_id", "prompt", "response", "answer", "votes",
                                          "majority_size", "task")}
        rejected = {"id": [f"{key}-p99999"], "reason": ["unparseable_problems"], "detail": ["no problem here"]}
        for i, (pid, text, task) in enumerate(zip(problem_ids, texts, tasks)):
            rows["id"].append(pid)
            rows["kind"].append("problem")
            rows["task"].append(task)
            rows["parent_ids"].append(["seed-000000"])
            rows["text"].append(text)
            rows["completion_tokens"].append(40 + number)
            if i < len(REASONS):
                rejected["id"].append(pid)
                rejected["reason"].append(REASONS[i])
                rejected["detail"].append(json.dumps({"rule": REASONS[i], "i": i}))
                continue
            answer = str(100 + i)
            for s in range(solutions):
                sid = f"{pid}-s{s}"
                response = sentence(self.rng, self.words[1]) + f" \\boxed{{{answer if s < 2 else 7}}}"
                rows["id"].append(sid)
                rows["kind"].append("solution")
                rows["task"].append(task)
                rows["parent_ids"].append([pid])
                rows["text"].append(response)
                rows["completion_tokens"].append(100 + s)
                if s < 2:
                    for name, value in (("id", sid), ("problem_id", pid), ("prompt", text), ("response", response),
                                        ("answer", answer), ("votes", solutions), ("majority_size", 2),
                                        ("task", task)):
                        verified[name].append(value)
        present = {k: v for k, v in rows.items() if k in schema("generations")}
        self._write(StepOutput({"generations": _frame("generations", present),
                                "rejections": _frame("rejections", rejected)}), key, "generations")
        verified_frame = _frame("verified_samples", verified)
        self._write(StepOutput({"verified_samples": verified_frame}), key, "verified_samples")
        candidates = self._features_table(verified["id"], self.features(len(verified["id"]), spread=0.6))
        self._write(candidates, key, "gradient_features")
        previous_pool = self.read_pool(previous)
        pool_x, _ = pool_features(self.store, previous_pool)
        selection = selection_step(key, self.synthesis, candidates=candidates.tables["gradient_features"],
                                   centroids=self.store.read("centroids", previous), pool_features=pool_x)
        self._write(selection, key, "selection")
        self._write(pool_step(key, previous_pool=previous_pool, selection=selection.tables["selection"],
                              verified=verified_frame), key, "pool")
        self._finish(key, previous=previous)

    def read_pool(self, key: str) -> pl.DataFrame:
        from prismatic.storage.deltas import read_as_of

        return read_as_of(self.store, "pool", key)

    def _finish(self, key: str, previous: str | None) -> None:
        pool = self.read_pool(key)
        x, projection = pool_features(self.store, pool)
        self._write(clusters_step(pool, x, projection, self.synthesis), key, "clusters")
        candidates = self.store.read("gradient_features", key)["feature"].to_numpy()
        outcome = self.store.read_metadata("selection", key).get("outcome") if previous else None
        scores = diversity_scores_step(self.config, pool, x, projection, candidates, outcome=outcome)
        self._write(scores, key, "diversity_scores")


def build(root: Path, rounds: int = 2, seeds: int = 60, problems: int = 40, **options) -> AtlasStore:
    built = AtlasStore(root, **options)
    built.seed_round(seeds)
    for number in range(1, rounds + 1):
        built.round(f"r{number:03d}", f"r{number - 1:03d}", problems)
    return built
