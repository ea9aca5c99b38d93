"""Faithful G-Vendi features: samples/s, and what the projection adds to one forward+backward.

    python -m benchmarks.faithful [--quick] --json

On SmolLM2-135M-Instruct (bf16) over the bundled math seeds, measures in one run (medians of
repeats): (a) forward+backward alone per sample, (b) the whole faithful path (gradient flattening,
dense Rademacher projection to 1024 dims, normalization). Headline `ratio` = time of (a) ÷ time
the projection adds, (b − a); the target is ≥ 1 (projection adds at most 1× forward+backward).
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from benchmarks.common import emit, machine, peak_rss_gb
from prismatic.config_file import load_config
from prismatic.data.samples import bundled_seeds_path, load_samples
from prismatic.gradients.chat import encode_chat
from prismatic.gradients.faithful import assistant_loss, faithful_features
from prismatic.models import SMOLLM2_DIR, install_smollm2, load_causal_lm


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="8 samples, 1 repeat")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    n = 8 if args.quick else 32
    repeats = 1 if args.quick else 3
    config = load_config()
    model_dir = install_smollm2(config.models_dir)
    model, tok = load_causal_lm(str(model_dir), torch.bfloat16, torch.device("cpu"))
    samples = load_samples(bundled_seeds_path()).filter(task="math").head(n)
    chats = [encode_chat(tok, r["prompt"], r["response"]) for r in samples.iter_rows(named=True)]

    def forward_backward():
        for chat in chats:
            model.zero_grad(set_to_none=True)
            assistant_loss(model, chat).backward()
        model.zero_grad(set_to_none=True)

    fb_times, full_times = [], []
    forward_backward()  # warm-up
    for _ in range(repeats):
        start = time.perf_counter()
        forward_backward()
        fb_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        faithful_features(model, tok, samples, dim=1024, progress=False,
                          buffer_bytes=config.features.gradient_buffer_gb * 1e9)
        full_times.append(time.perf_counter() - start)
    fb, full = sorted(fb_times)[len(fb_times) // 2], sorted(full_times)[len(full_times) // 2]
    n_params = model.num_parameters()
    tokens = sum(c.n_tokens for c in chats)
    details = {
        "model": SMOLLM2_DIR, "n_params": n_params, "samples": n, "repeats": repeats,
        "mean_tokens": round(tokens / n, 1),
        "forward_backward_s_per_sample": round(fb / n, 3),
        "faithful_s_per_sample": round(full / n, 3),
        "faithful_samples_per_s": round(n / full, 3),
        "projection_s_per_sample": round((full - fb) / n, 3),
        "projection_flops_per_sample": 2 * 1024 * n_params,
        "forward_backward_flops_per_sample": 6 * n_params * tokens // n,
        "gradient_buffer_gb": config.features.gradient_buffer_gb,
        "peak_rss_gb": round(peak_rss_gb(), 2),
        "machine": machine(),
    }
    result = {"benchmark": "faithful", "ratio": round(fb / max(full - fb, 1e-9), 3),
              "target": ">= 1.0 (projection adds at most 1x forward+backward)", "details": details}
    markdown = (
        "# Faithful G-Vendi features (SmolLM2-135M, bf16, CPU)\n\n"
        "`python -m benchmarks.faithful" + (" --quick" if args.quick else "") + " --json`\n\n"
        "| samples | tokens/sample | fwd+bwd s/sample | faithful s/sample | projection s/sample | ratio |\n"
        "|---|---|---|---|---|---|\n"
        f"| {n} | {details['mean_tokens']} | {details['forward_backward_s_per_sample']} | "
        f"{details['faithful_s_per_sample']} | {details['projection_s_per_sample']} | {result['ratio']} |\n"
    )
    emit(result, markdown, args.json)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
