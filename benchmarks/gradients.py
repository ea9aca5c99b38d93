"""Gradient features, side by side: fast (ours) vs faithful (ours) vs the paper code's method.

    python -m benchmarks.gradients [--quick] --json
    python -m benchmarks.gradients --batch-tokens 1536,2048,4096    # the fast path's batch size only

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
Agreement on SmolLM2 (fast vs faithful features of the same samples, the faithful timing taken
from that same run): relative G-Vendi difference and Pearson r of the off-diagonal cosine
matrices, swept over per-layer block sizes (full mode); on the tiny model, both paths against the
exact (unprojected) gradient cosines at final sizes 1024 (and 4096 in full mode). Headline
`ratio` = fast ÷ anchor samples/s on the 0.5B-shaped model.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

import numpy as np
import polars as pl
import torch

from benchmarks.common import GSM8K, emit, gsm8k, machine, matmul_peak, peak_rss_gb, timed
from prismatic.config import load_config
from prismatic.fast_gradients import FastFeaturizer
from prismatic.gradients import encode_chat, faithful_features, per_sample_gradient
from prismatic.gvendi import vendi_from_gram
from prismatic.models import build_random_model, install_smollm2, load_causal_lm

ANCHOR_MEMORY_BYTES = 6e9  # budget for TRAK's projection block (grad_dim × block × fp16)


def fast_column(model, tok, samples, repeats, **featurizer_options):
    """Fast features of `samples`: (features of the last repeat, column with the median samples/s).

    The bf16 matmul peak is measured again before each repeat and after the last (this machine's
    peak moves with other tenants' load), and the achieved FLOP/s is set against their median (and,
    conservatively, against the highest of them).
    """
    featurizer = FastFeaturizer(model, tok, **featurizer_options)
    featurizer.features(samples.head(8), progress=False)  # warm-up: allocator, thread pools
    peaks, runs = [], []
    for _ in range(repeats):
        peaks.append(matmul_peak()["bf16_gflops"])
        runs.append(timed(lambda: featurizer.features(samples, progress=False).features))
    peaks.append(matmul_peak()["bf16_gflops"])
    seconds, peak = statistics.median(s for _, s in runs), statistics.median(peaks)
    tokens = sum(encode_chat(tok, r["prompt"], r["response"]).n_tokens for r in samples.iter_rows(named=True))
    flops = 4 * model.num_parameters() * tokens
    return runs[-1][0], {"samples": len(samples), "samples_per_s": round(len(samples) / seconds, 3),
                         "seconds": [round(s, 2) for _, s in runs], "tokens": tokens,
                         "achieved_gflops": round(flops / seconds / 1e9, 1), "bf16_peaks_gflops": peaks,
                         "fraction_of_bf16_peak": round(flops / seconds / 1e9 / peak, 3),
                         "fraction_of_highest_bf16_peak": round(flops / seconds / 1e9 / max(peaks), 3),
                         "repeats": repeats, "batch_tokens": featurizer.batch_tokens, **featurizer_options}


def faithful_column(model, tok, samples, **options):
    """Faithful features of `samples` (one timed run): (features, column)."""
    features, seconds = timed(lambda: faithful_features(model, tok, samples, progress=False, **options).features)
    return features, {"samples": len(samples), "samples_per_s": round(len(samples) / seconds, 4)}


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


def exact_agreement(samples: pl.DataFrame, dims: tuple[int, ...]) -> dict:
    """Tiny model: fast and faithful features at each final size against the exact gradient cosines.

    Both methods are Johnson–Lindenstrauss estimates of the same cosines, so the Pearson ceiling at a
    final size d is set by d itself (error of one cosine ≈ √((1 + cos²)/d)), whatever the method.
    """
    model, tok = build_random_model("tiny")
    exact = torch.stack([per_sample_gradient(model, encode_chat(tok, r["prompt"], r["response"]))
                         for r in samples.iter_rows(named=True)]).double()
    exact = (exact / exact.norm(dim=1, keepdim=True)).numpy()
    result = {"samples": len(samples)}
    for dim in dims:
        fast = FastFeaturizer(model, tok, dim=dim).features(samples, progress=False).features
        faithful = faithful_features(model, tok, samples, dim=dim, projection_dtype=torch.float32,
                                     progress=False).features
        result[f"dim_{dim}"] = {"fast_vs_exact": agreement(fast.astype(np.float64), exact),
                                "faithful_vs_exact": agreement(faithful.astype(np.float64), exact)}
    return result


def _progress(model: str, column: str, values: dict) -> None:
    print(f"[gradients] {model} {column}: {json.dumps(values)}", file=sys.stderr, flush=True)


QUICK = dict(smol=8, smol_faithful=False, repeats=1, qwen_fast=8, qwen_faithful=0, exact=16, dims=(1024,),
             blocks=(), anchor_blocks=1, anchor_max_block=2)
FULL = dict(smol=256, smol_faithful=True, repeats=3, qwen_fast=64, qwen_faithful=8, exact=96, dims=(1024, 4096),
            blocks=(64, 128), anchor_blocks=1, anchor_max_block=1024)


def smollm2_columns(model, tok, data, sizes) -> dict:
    """Fast and faithful on the same samples (timings + agreement), then the per-layer block sweep."""
    samples = data.head(sizes["smol"])
    fast, column_fast = fast_column(model, tok, samples, sizes["repeats"])
    _progress("smollm2-135m", "fast", column_fast)
    if not sizes["smol_faithful"]:
        return {"fast": column_fast, "faithful": {"samples": 0, "samples_per_s": None, "note": "not run with --quick"}}
    faithful, column_faithful = faithful_column(model, tok, samples)
    _progress("smollm2-135m", "faithful", column_faithful)
    column = {"fast": column_fast, "faithful": column_faithful,
              "agreement_fast_vs_faithful": agreement(fast.astype(np.float64), faithful.astype(np.float64))}
    _progress("smollm2-135m", "agreement", column["agreement_fast_vs_faithful"])
    column["block_sweep"] = [{"block": 32, "samples_per_s": column_fast["samples_per_s"],
                              **column["agreement_fast_vs_faithful"]}]
    for block in sizes["blocks"]:
        swept, timing = fast_column(model, tok, samples, 1, block_in=block, block_out=block)
        row = {"block": block, "samples_per_s": timing["samples_per_s"],
               **agreement(swept.astype(np.float64), faithful.astype(np.float64))}
        column["block_sweep"].append(row)
        _progress("smollm2-135m", "block sweep", row)
    # Two projections of the same gradients (seeds 0 and 1): how far the fast path moves with its seed alone.
    reseeded = FastFeaturizer(model, tok, seed=1).features(samples, progress=False).features
    column["agreement_fast_seed0_vs_seed1"] = agreement(fast.astype(np.float64), reseeded.astype(np.float64))
    _progress("smollm2-135m", "seed 0 vs seed 1", column["agreement_fast_seed0_vs_seed1"])
    return column


def qwen_columns(model, tok, data, sizes) -> dict:
    _, column_fast = fast_column(model, tok, data.head(sizes["qwen_fast"]), sizes["repeats"])
    _progress("qwen2.5-0.5b-shape", "fast", column_fast)
    column = {"fast": column_fast}
    if sizes["qwen_faithful"]:
        # One full 8 GB buffer of bf16 gradients (8 samples): the faithful path's steady state.
        _, column["faithful"] = faithful_column(model, tok, data.head(sizes["qwen_faithful"]))
    else:
        column["faithful"] = {"samples": 0, "samples_per_s": None, "note": "not run with --quick"}
    _progress("qwen2.5-0.5b-shape", "faithful", column["faithful"])
    return column


def batch_token_sweep(sizes: list[int], samples: int = 64, rounds: int = 2) -> None:
    """Fast samples/s of the 0.5B shape per `batch_tokens`, the sizes interleaved within each round.

    Each run's achieved FLOP/s is set against the highest bf16 peak measured anywhere in the sweep
    (conservative) and against the median of all peak readings.
    """
    data = gsm8k(samples)
    if data is None:
        print(json.dumps({"benchmark": "gradients_batch_tokens", "skipped": f"{GSM8K} not found"}))
        return
    model, tok = build_random_model("qwen2.5-0.5b")
    model.eval()
    runs = {size: [] for size in sizes}
    for _ in range(rounds):
        for size in sizes:
            runs[size].append(fast_column(model, tok, data, 1, batch_tokens=size)[1])
            _progress("qwen2.5-0.5b-shape", f"batch_tokens {size}", runs[size][-1])
    peaks = [peak for columns in runs.values() for column in columns for peak in column["bf16_peaks_gflops"]]
    rows = {}
    for size, columns in runs.items():
        gflops = statistics.median(column["achieved_gflops"] for column in columns)
        rows[size] = {"samples_per_s": statistics.median(column["samples_per_s"] for column in columns),
                      "achieved_gflops": round(gflops, 1),
                      "fraction_of_highest_peak": round(gflops / max(peaks), 3),
                      "fraction_of_median_peak": round(gflops / statistics.median(peaks), 3),
                      "runs": [column["samples_per_s"] for column in columns]}
    best = max(rows, key=lambda size: rows[size]["samples_per_s"])
    print(json.dumps({"benchmark": "gradients_batch_tokens", "ratio": rows[best]["fraction_of_highest_peak"],
                      "target": ">= 0.5 of the bf16 peak", "details": {"best": best, "peaks": peaks, "sizes": rows}}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="reduced sizes, under 3 minutes")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--batch-tokens", default=None, metavar="A,B,...",
                        help="only sweep the fast path's batch size on the 0.5B shape (64 samples, "
                             "two interleaved rounds); prints JSON, writes no report")
    args = parser.parse_args()
    if args.batch_tokens:
        batch_token_sweep([int(size) for size in args.batch_tokens.split(",")])
        return
    # --quick: fewer samples, one repeat, TRAK blocks of 2 columns (the per-block time is extrapolated
    # either way), no faithful columns (one pass of the dense signs takes 1.5 min on SmolLM2, minutes on
    # the 0.5B shape); agreement then comes from the tiny model against exact gradients only.
    sizes = QUICK if args.quick else FULL
    data = gsm8k(max(sizes["smol"], sizes["qwen_fast"], sizes["exact"]))
    if data is None:
        emit({"benchmark": "gradients", "ratio": None, "target": ">= 50", "details": {"skipped": f"{GSM8K} not found"}},
             "# gradients\n\nskipped: GSM8K not found\n", args.json)
        return
    info = machine()
    details: dict = {"machine": info, "sizes": {k: list(v) if isinstance(v, tuple) else v for k, v in sizes.items()}}
    smol_path = install_smollm2(load_config().models_dir)
    for name, loader, columns in (
            ("smollm2-135m", lambda: load_causal_lm(str(smol_path), torch.bfloat16, torch.device("cpu")),
             smollm2_columns),
            ("qwen2.5-0.5b-shape", lambda: build_random_model("qwen2.5-0.5b"), qwen_columns)):
        model, tok = loader()
        model.eval()
        column = {"params": model.num_parameters(), **columns(model, tok, data, sizes)}
        column["anchor"] = anchor_column(model, tok, data, sizes["anchor_blocks"], sizes["anchor_max_block"])
        _progress(name, "anchor", column["anchor"])
        fast_rate, faithful_rate = column["fast"]["samples_per_s"], column["faithful"]["samples_per_s"]
        column["fast_vs_anchor"] = round(fast_rate / column["anchor"]["samples_per_s"], 1)
        column["fast_vs_faithful"] = round(fast_rate / faithful_rate, 1) if faithful_rate else None
        column["peak_rss_gb_so_far"] = round(peak_rss_gb(), 2)
        details[name] = column
        del model
    details["tiny_exact"] = exact_agreement(data.head(sizes["exact"]), sizes["dims"])
    _progress("tiny", "exact", details["tiny_exact"])
    qwen = details["qwen2.5-0.5b-shape"]
    result = {"benchmark": "gradients", "ratio": qwen["fast_vs_anchor"],
              "target": "fast >= 50x anchor and >= 10x faithful (0.5B shape); >= 50% bf16 peak; "
                        "|dG-Vendi| <= 3%, Pearson >= 0.95 (SmolLM2, >= 256 samples)", "details": details}
    emit(result, markdown(details, args.quick), args.json)


def markdown(details: dict, quick: bool) -> str:
    info = details["machine"]
    lines = ["# Gradient features: fast vs faithful vs paper-code anchor", "",
             f"`python -m benchmarks.gradients{' --quick' if quick else ''} --json` — bf16 peak "
             f"{info['bf16_gflops']} GFLOP/s, fp32 peak {info['fp32_gflops']} GFLOP/s at the start; each fast "
             "column's % is against the median bf16 peak measured around its own repeats", "",
             "| model | fast samples/s | faithful samples/s | anchor samples/s | fast÷anchor | fast÷faithful "
             "| fast % bf16 peak | peak RSS GB |",
             "|---|---|---|---|---|---|---|---|"]
    for name in ("smollm2-135m", "qwen2.5-0.5b-shape"):
        c = details[name]
        lines.append(f"| {name} | {c['fast']['samples_per_s']} | {c['faithful']['samples_per_s']} | "
                     f"{c['anchor']['samples_per_s']} | {c['fast_vs_anchor']} | {c['fast_vs_faithful']} | "
                     f"{100 * c['fast']['fraction_of_bf16_peak']:.1f}% | {c['peak_rss_gb_so_far']} |")
    smol = details["smollm2-135m"]
    if "block_sweep" in smol:
        lines += ["", f"Agreement with the faithful path on SmolLM2 ({smol['fast']['samples']} GSM8K samples, "
                      "final size 1024):", "",
                  "| per-layer block | fast samples/s | Pearson off-diagonal cosine | G-Vendi fast | G-Vendi faithful "
                  "| relative difference |", "|---|---|---|---|---|---|"]
    for row in smol.get("block_sweep", []):
        lines.append(f"| {row['block']}×{row['block']} | {row['samples_per_s']} | {row['pearson_offdiag_cosine']} | "
                     f"{row['gvendi_a']} | {row['gvendi_b']} | {100 * row['gvendi_rel_diff']:.1f}% |")
    if "agreement_fast_seed0_vs_seed1" in smol:
        ceiling = smol["agreement_fast_seed0_vs_seed1"]
        lines += ["", f"Two fast projections of the same gradients (seeds 0 and 1): Pearson "
                      f"{ceiling['pearson_offdiag_cosine']}, G-Vendi {ceiling['gvendi_a']} vs {ceiling['gvendi_b']} "
                      f"({100 * ceiling['gvendi_rel_diff']:.1f}%): how far the fast path moves with its projection "
                      "seed alone."]
    tiny = details["tiny_exact"]
    lines += ["", f"Tiny model, both paths against the exact (unprojected) gradient cosines ({tiny['samples']} "
                  "samples):", "", "| final size | path | Pearson | G-Vendi | exact G-Vendi | relative difference |",
              "|---|---|---|---|---|---|"]
    for key, value in tiny.items():
        if key.startswith("dim_"):
            for path in ("fast_vs_exact", "faithful_vs_exact"):
                a = value[path]
                lines.append(f"| {key[4:]} | {path.split('_')[0]} | {a['pearson_offdiag_cosine']} | {a['gvendi_a']} | "
                             f"{a['gvendi_b']} | {100 * a['gvendi_rel_diff']:.1f}% |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
