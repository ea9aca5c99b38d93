"""Gradient features, side by side: fast (ours) vs faithful (ours) vs the paper code's method.

    python -m benchmarks.gradients [--quick] --json

On GSM8K test problems (`../shared/data/gsm8k`; skipped cleanly when absent), same samples, same
machine, one run, for (a) SmolLM2-135M-Instruct and (b) a random model in Qwen2.5-0.5B's exact
shape, both bf16:
- fast: `FastFeaturizer` (batched, factored per-layer projection), samples/s (median of repeats),
  achieved FLOP/s counted as 4·params·tokens (forward + input-gradient backward) against the
  machine's measured bf16 matmul peak;
- faithful: this project's paper-faithful path (one backward per sample, dense projection);
- anchor: the paper code's method run for real: one backward per sample, the flattened full
  gradient, TRAK's `BasicProjector` (PyPI `traker`; Rademacher, proj_dim 1024, fp16, 4 gradients a
  call, the largest block that fits the memory budget). One call regenerates the whole d × D
  matrix block by block; the benchmark times `anchor_blocks` of those blocks for real and
  multiplies by the number of blocks (every block is the same work), so the anchor column is
  measured, then extrapolated — the report says how many blocks were timed.
Agreement on SmolLM2 (fast vs faithful features of the same samples): relative G-Vendi
difference and Pearson r of the off-diagonal cosine matrices; on the tiny model, both against
the exact (unprojected) gradient cosines. Headline `ratio` = fast ÷ anchor samples/s on the
0.5B-shaped model.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time

import numpy as np
import polars as pl
import torch

from benchmarks.common import GSM8K, emit, machine, median_seconds, peak_rss_gb
from prismatic.config import load_config
from prismatic.fast_gradients import FastFeaturizer
from prismatic.gradients import encode_chat, faithful_features, per_sample_gradient
from prismatic.gvendi import vendi_from_gram
from prismatic.models import build_random_model, install_smollm2, load_causal_lm

ANCHOR_MEMORY_BYTES = 6e9  # budget for TRAK's projection block (grad_dim × block × fp16)


def gsm8k(n: int) -> pl.DataFrame | None:
    """The first n GSM8K test problems as (id, prompt, response) with the answer in \\boxed{}."""
    if not GSM8K.exists():
        return None
    rows = []
    for i, line in enumerate(GSM8K.read_text().splitlines()[:n]):
        item = json.loads(line)
        body, _, final = item["answer"].rpartition("####")
        body = re.sub(r"<<[^>]*>>", "", body).strip()
        rows.append({"id": f"gsm8k-{i}", "prompt": item["question"], "response": f"{body}\n\\boxed{{{final.strip()}}}"})
    return pl.DataFrame(rows)


def fast_column(model, tok, samples, repeats, peak_bf16) -> dict:
    featurizer = FastFeaturizer(model, tok)
    seconds = median_seconds(lambda: featurizer.features(samples, progress=False), repeats=repeats, warmup=1)
    tokens = sum(encode_chat(tok, r["prompt"], r["response"]).n_tokens for r in samples.iter_rows(named=True))
    flops = 4 * model.num_parameters() * tokens
    return {"samples": len(samples), "samples_per_s": round(len(samples) / seconds, 3),
            "tokens": tokens, "achieved_gflops": round(flops / seconds / 1e9, 1),
            "fraction_of_bf16_peak": round(flops / seconds / 1e9 / peak_bf16, 3), "repeats": repeats}


def faithful_column(model, tok, samples) -> dict:
    start = time.perf_counter()
    faithful_features(model, tok, samples, progress=False)
    seconds = time.perf_counter() - start
    return {"samples": len(samples), "samples_per_s": round(len(samples) / seconds, 4)}


def anchor_column(model, tok, samples, blocks_timed: int, max_block: int) -> dict:
    """Paper code's method: per-sample backward + flattened gradient + TRAK BasicProjector (fp16)."""
    from trak.projectors import BasicProjector, ProjectionType

    grad_dim = model.num_parameters()
    block = max(1, min(max_block, int(ANCHOR_MEMORY_BYTES // (grad_dim * 2))))
    projector = BasicProjector(grad_dim=grad_dim, proj_dim=1024, seed=0, proj_type=ProjectionType.rademacher,
                               device=torch.device("cpu"), block_size=block, dtype=torch.float16)
    chats = [encode_chat(tok, r["prompt"], r["response"]) for r in samples.head(4).iter_rows(named=True)]
    start = time.perf_counter()
    grads = torch.stack([per_sample_gradient(model, chat).to(torch.float16) for chat in chats])
    backward_s = time.perf_counter() - start
    start = time.perf_counter()
    for index in range(blocks_timed):
        projector.generate_sketch_matrix(projector.generator_states[index])
        grads @ projector.proj_matrix
    per_block = (time.perf_counter() - start) / blocks_timed
    projection_s = per_block * projector.num_blocks
    del projector, grads
    return {"samples": len(chats), "samples_per_s": round(len(chats) / (backward_s + projection_s), 6),
            "backward_s": round(backward_s, 2), "block_size": block, "num_blocks": math.ceil(1024 / block),
            "blocks_timed": blocks_timed, "projection_s_extrapolated": round(projection_s, 1)}


def agreement(a: np.ndarray, b: np.ndarray) -> dict:
    """Pearson r of off-diagonal cosines and relative G-Vendi difference of unit-row matrices a, b.

    G-Vendi is taken in the primal form (n × n Gram), since b may be exact gradients (d ≫ n).
    """
    gram_a, gram_b = a @ a.T, b @ b.T
    off = ~np.eye(len(a), dtype=bool)
    r = float(np.corrcoef(gram_a[off], gram_b[off])[0, 1])
    ga, gb = vendi_from_gram(gram_a), vendi_from_gram(gram_b)
    return {"pearson_offdiag_cosine": round(r, 4), "gvendi_a": round(ga, 3), "gvendi_b": round(gb, 3),
            "gvendi_rel_diff": round(abs(ga - gb) / gb, 4)}


def exact_agreement(samples: pl.DataFrame) -> dict:
    """Tiny model: fast and faithful features against the exact unprojected gradient cosines."""
    model, tok = build_random_model("tiny")
    exact = torch.stack([per_sample_gradient(model, encode_chat(tok, r["prompt"], r["response"]))
                         for r in samples.iter_rows(named=True)]).double()
    exact = (exact / exact.norm(dim=1, keepdim=True)).numpy()
    fast = FastFeaturizer(model, tok).features(samples, progress=False).features.astype(np.float64)
    faithful = faithful_features(model, tok, samples, projection_dtype=torch.float32,
                                 progress=False).features.astype(np.float64)
    return {"fast_vs_exact": agreement(fast, exact), "faithful_vs_exact": agreement(faithful, exact)}


def _progress(model: str, column: str, values: dict) -> None:
    print(f"[gradients] {model} {column}: {json.dumps(values)}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    # --quick: fewer samples, TRAK blocks of 2 columns (the per-block time is extrapolated either way),
    # no faithful column on the 0.5B shape (one pass of its sign generation alone takes minutes).
    sizes = dict(fast=16, faithful=2, agree=24, exact=24, repeats=1, blocks=1, max_block=2) if args.quick else \
        dict(fast=128, faithful=8, agree=256, exact=96, repeats=3, blocks=1, max_block=1024)
    data = gsm8k(max(sizes["fast"], sizes["agree"]))
    if data is None:
        emit({"benchmark": "gradients", "ratio": None, "target": ">= 50", "details": {"skipped": f"{GSM8K} not found"}},
             "# gradients\n\nskipped: GSM8K not found\n", args.json)
        return
    info = machine()
    peak = info["bf16_gflops"]
    details: dict = {"machine": info, "sizes": sizes}
    smol_path = install_smollm2(load_config().models_dir)
    for name, loader in (("smollm2-135m", lambda: load_causal_lm(str(smol_path), torch.bfloat16, torch.device("cpu"))),
                         ("qwen2.5-0.5b-shape", lambda: build_random_model("qwen2.5-0.5b"))):
        model, tok = loader()
        model.eval()
        column = {"params": model.num_parameters()}
        column["fast"] = fast_column(model, tok, data.head(sizes["fast"]), sizes["repeats"], peak)
        _progress(name, "fast", column["fast"])
        if args.quick and name != "smollm2-135m":
            column["faithful"] = {"samples": 0, "samples_per_s": None, "note": "not run with --quick"}
        else:
            column["faithful"] = faithful_column(model, tok, data.head(sizes["faithful"]))
        _progress(name, "faithful", column["faithful"])
        column["anchor"] = anchor_column(model, tok, data, sizes["blocks"], sizes["max_block"])
        _progress(name, "anchor", column["anchor"])
        column["fast_vs_anchor"] = round(column["fast"]["samples_per_s"] / column["anchor"]["samples_per_s"], 1)
        faithful_rate = column["faithful"]["samples_per_s"]
        fast_rate = column["fast"]["samples_per_s"]
        column["fast_vs_faithful"] = round(fast_rate / faithful_rate, 1) if faithful_rate else None
        if name == "smollm2-135m":
            agree = data.head(sizes["agree"])
            fast = FastFeaturizer(model, tok).features(agree, progress=False).features
            faithful = faithful_features(model, tok, agree, progress=False).features
            column["agreement_fast_vs_faithful"] = agreement(fast.astype(np.float64), faithful.astype(np.float64))
            _progress(name, "agreement", column["agreement_fast_vs_faithful"])
        column["peak_rss_gb_so_far"] = round(peak_rss_gb(), 2)
        details[name] = column
        del model
    details["tiny_exact"] = exact_agreement(data.head(sizes["exact"]))
    _progress("tiny", "exact", details["tiny_exact"])
    qwen = details["qwen2.5-0.5b-shape"]
    result = {"benchmark": "gradients", "ratio": qwen["fast_vs_anchor"],
              "target": "fast >= 50x anchor and >= 10x faithful (0.5B shape); >= 50% bf16 peak; "
                        "|dG-Vendi| <= 3%, Pearson >= 0.95 (SmolLM2, >= 256 samples)", "details": details}
    lines = ["# Gradient features: fast vs faithful vs paper-code anchor", "",
             f"`python -m benchmarks.gradients{' --quick' if args.quick else ''} --json` — bf16 peak {peak} GFLOP/s, "
             f"fp32 peak {info['fp32_gflops']} GFLOP/s", "",
             "| model | fast samples/s | faithful samples/s | anchor samples/s | fast÷anchor | fast÷faithful "
             "| fast % bf16 peak |",
             "|---|---|---|---|---|---|---|"]
    for name in ("smollm2-135m", "qwen2.5-0.5b-shape"):
        c = details[name]
        lines.append(f"| {name} | {c['fast']['samples_per_s']} | {c['faithful']['samples_per_s']} | "
                     f"{c['anchor']['samples_per_s']} | {c['fast_vs_anchor']} | {c['fast_vs_faithful']} | "
                     f"{100 * c['fast']['fraction_of_bf16_peak']:.1f}% |")
    a = details["smollm2-135m"]["agreement_fast_vs_faithful"]
    lines += ["", f"Agreement on SmolLM2 ({sizes['agree']} samples): Pearson {a['pearson_offdiag_cosine']}, "
                  f"G-Vendi fast {a['gvendi_a']} vs faithful {a['gvendi_b']} ({100 * a['gvendi_rel_diff']:.1f}%).",
              f"Tiny model vs exact gradients: {json.dumps(details['tiny_exact'])}", ""]
    emit(result, "\n".join(lines), args.json)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
