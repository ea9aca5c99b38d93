"""Helpers of the export and student tests: `fill_rounds` (a store of two finished rounds filled by hand,
no generation, no proxy), `tiny_student_base` (a base model that trains in seconds), `prism` (the CLI in
this process) and `reference_nll` (the NLL of a reference answer, computed independently of the code).

r000: the first 6 bundled seeds form the pool; r001: 4 verified samples (copies of seeds 6..9 under
generated ids), 3 of them kept, so r001's pool has 9 rows (its partition: the 3 it added). Each round
has random unit gradient features (dim 8) and its `diversity_scores` (the G-Vendi of those features)."""

from __future__ import annotations

import json

import numpy as np
import polars as pl

from prismatic.data.samples import bundled_seeds_path, load_samples
from prismatic.metrics.vendi import gvendi
from prismatic.storage.base import Store
from prismatic.storage.schema import schema

DIM = 8
PROJECTION = {"proxy": "p", "projection": {"seed": 0, "dim": DIM}}


def seeds() -> pl.DataFrame:
    return load_samples(bundled_seeds_path())


def _features(store: Store, key: str, ids: list[str], rng: np.random.Generator) -> np.ndarray:
    x = rng.standard_normal((len(ids), DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    n = len(ids)
    store.write("gradient_features", key, pl.DataFrame({
        "id": ids, "feature": pl.Series(x, dtype=pl.Array(pl.Float32, DIM)), "proxy": ["p"] * n,
        "mode": ["fast"] * n, "dim": [DIM] * n, "n_tokens": [10] * n, "truncated": [False] * n}),
        metadata={"run_id": f"run-{key}", **PROJECTION})
    return x


def _scores(store: Store, key: str, pool_x: np.ndarray, candidates: np.ndarray) -> None:
    store.write("diversity_scores", key, pl.DataFrame([
        {"metric": "gvendi", "value": gvendi(pool_x), "n": len(pool_x), "details": "{}"},
        {"metric": "gvendi_candidates", "value": gvendi(candidates), "n": len(candidates), "details": "{}"}],
        schema=schema("diversity_scores")))


def fill_rounds(store: Store) -> dict[str, np.ndarray]:
    """Write r000 and r001 (module docstring); returns each round's features (rows in verified order)."""
    rng = np.random.default_rng(0)
    rows = seeds()
    first = rows.head(6).select("id", "prompt", "response", "answer", "task")
    verified0 = first.with_columns(problem_id=pl.col("id"), votes=pl.lit(1), majority_size=pl.lit(1)).select(
        schema("verified_samples").names())
    store.write("verified_samples", "r000", verified0, metadata={"run_id": "run-r000"})
    store.write("selection", "r000", pl.DataFrame({"id": first["id"], "cluster": -1, "cluster_size_at_decision": 0,
                                                   "gain": None, "kept": True, "rule": "seed"},
                                                  schema=schema("selection")))
    pool0 = first.with_columns(origin=pl.lit("seed"), round_added=pl.lit("r000"))
    store.write("pool", "r000", pool0, metadata={"run_id": "run-r000"})
    x0 = _features(store, "r000", first["id"].to_list(), rng)
    _scores(store, "r000", x0, x0)

    generated = rows.slice(6, 4).select("prompt", "response", "answer", "task").with_columns(
        id=pl.Series([f"r001-p00{i}-0-s0" for i in range(4)]),
        problem_id=pl.Series([f"r001-p00{i}-0" for i in range(4)]),
        votes=pl.lit(3), majority_size=pl.lit(2)).select(schema("verified_samples").names())
    store.write("verified_samples", "r001", generated, metadata={"run_id": "run-r001"})
    kept = [True, False, True, True]
    store.write("selection", "r001", pl.DataFrame({
        "id": generated["id"], "cluster": [0, 1, 0, 1], "cluster_size_at_decision": [1, 2, 1, 2],
        "gain": [0.3, 0.1, 0.2, 0.4], "kept": kept, "rule": ["novelty"] * 4}))
    added = generated.filter(pl.Series(kept)).select("id", "prompt", "response", "answer", "task").with_columns(
        origin=pl.lit("generated"), round_added=pl.lit("r001"))
    store.write("pool", "r001", added, metadata={"run_id": "run-r001", "previous_pool": {"round": "r000"}})
    x1 = _features(store, "r001", generated["id"].to_list(), rng)
    _scores(store, "r001", np.concatenate([x0, x1[kept]]), x1)
    store.write("rejections", "r001", pl.DataFrame([{"id": "r001-p009", "reason": "no_majority",
                                                     "detail": json.dumps({"answers": ["1", "2"]})}],
                                                   schema=schema("rejections")))
    return {"r000": x0, "r001": x1}


def tiny_student_base(out_dir, smollm2_dir, seed: int = 0):
    """A random 2-layer Llama (hidden 64) with SmolLM2's tokenizer and chat template, saved to `out_dir`:
    the cheap base model of the tests that train (seconds on a CPU, where SmolLM2 takes minutes)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def prism(*args, home) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `prism ARGS` run in this process with PRISM_HOME=home, as the console
    script runs it (`prism_cli.main.main`): in-process, so a test pays no interpreter and import start-up."""
    import contextlib
    import io
    import os
    import sys
    from unittest import mock

    from prism_cli.main import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with mock.patch.dict(os.environ, {"PRISM_HOME": str(home)}), \
            mock.patch.object(sys, "argv", ["prism", *map(str, args)]), \
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def reference_nll(model_dir, prompt: str, reference: str) -> float:
    """Mean NLL (nats) of the reference's tokens and the end-of-turn token after it, given the rendered prompt:
    the chat template renders `prefix + reference + <|im_end|> ...`; the scored tokens are those after the
    prefix's tokens, up to and including the end-of-turn token."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    user = [{"role": "user", "content": prompt}]
    prefix = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": reference}], tokenize=False)
    start = len(tokenizer(prefix, add_special_tokens=False)["input_ids"])
    stop = len(tokenizer(prefix + reference + tokenizer.eos_token, add_special_tokens=False)["input_ids"])
    ids = torch.tensor([tokenizer(full, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    return -sum(float(logprobs[t - 1, ids[0, t]]) for t in range(start, stop)) / (stop - start)
