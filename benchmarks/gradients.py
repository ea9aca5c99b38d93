"""Gradient features, side by side: fast (ours) vs faithful (ours) vs the paper code's method.

    python -m benchmarks.gradients [--quick] --json
    python -m benchmarks.gradients --sweep batch_tokens=2048 block=64,dim=4096,final=sparse   # fast path only

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
Agreement on SmolLM2 (full mode; fast vs faithful features of the same samples, the faithful
timing taken from that same run): relative G-Vendi difference and Pearson r of the off-diagonal
cosine matrices, swept over per-layer block sizes. Agreement against exact, unprojected gradients
is `benchmarks.gradient_agreement`. Headline `ratio` = fast ÷ anchor samples/s on the 0.5B-shaped
model.
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
import torch

from benchmarks.common import GSM8K, cosine_agreement, cosines, emit, gsm8k, machine, matmul_peak, peak_rss_gb, timed
from prismatic.config import FeaturesConfig
from prismatic.config_file import load_config
from prismatic.gradients.chat import encode_chat
from prismatic.gradients.faithful import faithful_features, per_sample_gradient
from prismatic.gradients.fast import FastFeaturizer
from prismatic.models import build_random_model, install_smollm2, load_causal_lm

ANCHOR_MEMORY_BYTES = 6e9  # budget for TRAK's projection block (grad_dim × block × fp16)


def fast_column(model, tok, samples, repeats, **featurizer_options):
    """Fast features of `samples`: (features of the last repeat, column with the median samples/s).

    The bf16 matmul peak is measured again before each repeat and after the last (this machine's
    peak moves with other tenants' load), and the achieved FLOP/s is set against their median (and,
    conservatively, against the highest of them).
    """
    featurizer = FastFeaturizer(model, tok, FeaturesConfig(**featurizer_options))
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
    """Pearson r of off-diagonal cosines and |relative G-Vendi difference| of feature matrices a, b."""
    row = cosine_agreement(a, cosines(b))
    return {"pearson_offdiag_cosine": row["pearson"], "gvendi_a": row["gvendi"], "gvendi_b": row["gvendi_reference"],
            "gvendi_rel_diff": abs(row["gvendi_rel"])}


def _progress(model: str, column: str, values: dict) -> None:
    print(f"[gradients] {model} {column}: {json.dumps(values)}", file=sys.stderr, flush=True)


QUICK = dict(smol=8, smol_faithful=False, repeats=1, qwen_fast=8, qwen_faithful=0, blocks=(), anchor_blocks=1,
             anchor_max_block=2)
FULL = dict(smol=256, smol_faithful=True, repeats=3, qwen_fast=64, qwen_faithful=8, blocks=(32, 64, 128),
            anchor_blocks=1, anchor_max_block=1024)


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
    default_block = FeaturesConfig().block_in
    column["block_sweep"] = [{"block": default_block, "samples_per_s": column_fast["samples_per_s"],
                              **column["agreement_fast_vs_faithful"]}]
    for block in (block for block in sizes["blocks"] if block != default_block):
        swept, timing = fast_column(model, tok, samples, 1, block_in=block, block_out=block)
        row = {"block": block, "samples_per_s": timing["samples_per_s"],
               **agreement(swept.astype(np.float64), faithful.astype(np.float64))}
        column["block_sweep"].append(row)
        _progress("smollm2-135m", "block sweep", row)
    # Two projections of the same gradients (seeds 0 and 1): how far the fast path moves with its seed alone.
    reseeded = FastFeaturizer(model, tok, FeaturesConfig(seed=1)).features(samples, progress=False).features
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


SWEPT = ("batch_tokens", "block", "dim", "final")
"""Fast-path options a --sweep setting may set: integers (`block` sets block_in and block_out), and
`final=dense|sparse`."""


def parse_setting(text: str) -> dict:
    """`block=64,dim=4096,final=sparse` → FastFeaturizer options (block_in, block_out, dim, final)."""
    options = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        if name == "final" and value in ("dense", "sparse"):
            options["final"] = value
            continue
        if name not in SWEPT or not value.isdigit():
            raise SystemExit(f"--sweep: {part!r} is not one of {', '.join(f'{n}=N' for n in SWEPT)}")
        if name == "block":
            options["block_in"] = options["block_out"] = int(value)
        else:
            options[name] = int(value)
    return options


def load_model(name: str):
    """(model, tokenizer) in eval mode: `smollm2-135m` (bf16) or `qwen2.5-0.5b-shape` (random, bf16)."""
    if name == "smollm2-135m":
        model, tok = load_causal_lm(str(install_smollm2(load_config().models_dir)), torch.bfloat16,
                                    torch.device("cpu"))
    else:
        model, tok = build_random_model("qwen2.5-0.5b")
    model.eval()
    return model, tok


def fast_sweep(settings: list[str], model_name: str, samples: int = 64, rounds: int = 2) -> None:
    """Fast samples/s of one model per setting, the settings interleaved within each round.

    Each run's achieved FLOP/s is set against the highest bf16 peak measured anywhere in the sweep
    (conservative) and against the median of all peak readings; `vs_first` is each setting's median
    samples/s ÷ the first setting's.
    """
    data = gsm8k(samples)
    if data is None:
        print(json.dumps({"benchmark": "gradients_sweep", "skipped": f"{GSM8K} not found"}))
        return
    options = {setting: parse_setting(setting) for setting in settings}
    model, tok = load_model(model_name)
    runs = {setting: [] for setting in settings}
    for _ in range(rounds):
        for setting in settings:
            runs[setting].append(fast_column(model, tok, data, 1, **options[setting])[1])
            _progress(model_name, setting, runs[setting][-1])
    peaks = [peak for columns in runs.values() for column in columns for peak in column["bf16_peaks_gflops"]]
    rows = {}
    for setting, columns in runs.items():
        gflops = statistics.median(column["achieved_gflops"] for column in columns)
        rows[setting] = {"samples_per_s": statistics.median(column["samples_per_s"] for column in columns),
                         "achieved_gflops": round(gflops, 1),
                         "fraction_of_highest_peak": round(gflops / max(peaks), 3),
                         "fraction_of_median_peak": round(gflops / statistics.median(peaks), 3),
                         "runs": [column["samples_per_s"] for column in columns]}
    for row in rows.values():
        row["vs_first"] = round(row["samples_per_s"] / rows[settings[0]]["samples_per_s"], 3)
    best = max(rows, key=lambda setting: rows[setting]["samples_per_s"])
    details = {"model": model_name, "best": best, "peaks": peaks, "settings": rows}
    print(json.dumps({"benchmark": "gradients_sweep", "ratio": rows[best]["fraction_of_highest_peak"],
                      "target": ">= 0.5 of the bf16 peak", "details": details}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="reduced sizes, under 3 minutes")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--sweep", nargs="+", default=None, metavar="SETTING",
                        help="only time the fast path per setting, e.g. batch_tokens=2048 or block=64,dim=4096 "
                             "(64 samples, two interleaved rounds); prints JSON, writes no report")
    parser.add_argument("--sweep-model", default="qwen2.5-0.5b-shape", choices=["qwen2.5-0.5b-shape", "smollm2-135m"])
    args = parser.parse_args()
    if args.sweep:
        fast_sweep(args.sweep, args.sweep_model)
        return
    # --quick: fewer samples, one repeat, TRAK blocks of 2 columns (the per-block time is extrapolated
    # either way), no faithful columns (one pass of the dense signs takes 1.5 min on SmolLM2, minutes on
    # the 0.5B shape), so no agreement.
    sizes = QUICK if args.quick else FULL
    data = gsm8k(max(sizes["smol"], sizes["qwen_fast"]))
    if data is None:
        emit({"benchmark": "gradients", "ratio": None, "target": ">= 50", "details": {"skipped": f"{GSM8K} not found"}},
             "# gradients\n\nskipped: GSM8K not found\n", args.json)
        return
    info = machine()
    details: dict = {"machine": info, "sizes": {k: list(v) if isinstance(v, tuple) else v for k, v in sizes.items()}}
    for name, columns in (("smollm2-135m", smollm2_columns), ("qwen2.5-0.5b-shape", qwen_columns)):
        model, tok = load_model(name)
        column = {"params": model.num_parameters(), **columns(model, tok, data, sizes)}
        column["anchor"] = anchor_column(model, tok, data, sizes["anchor_blocks"], sizes["anchor_max_block"])
        _progress(name, "anchor", column["anchor"])
        fast_rate, faithful_rate = column["fast"]["samples_per_s"], column["faithful"]["samples_per_s"]
        column["fast_vs_anchor"] = round(fast_rate / column["anchor"]["samples_per_s"], 1)
        column["fast_vs_faithful"] = round(fast_rate / faithful_rate, 1) if faithful_rate else None
        column["peak_rss_gb_so_far"] = round(peak_rss_gb(), 2)
        details[name] = column
        del model
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
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
