"""Problem formats compared on a real small generator: which one gives problems worth solving?

    python -m benchmarks.problem_formats [--quick] [--problems N] --json

For each seed set (the bundled seeds, math and NLI; GSM8K test problems, math, from
`../shared/data/gsm8k`, skipped when absent) and each `synthesis.problem_format` (`fewshot`,
`delimited`, `json`), one round r001 is generated with the configured generator (SmolLM2 through
vLLM by default) and the pipeline's own code: `generate_round` with the quality filters, the
proxy-NLL rule and dedup, then `verify_round`, then fast gradient features of the verified samples.
Every cell asks for the same number of problems (N = prompts × 2) with the same few-shot draws.

Reported per cell:
- parsed: problems parsed from the answers, out of the N asked for (unparseable answers give none);
- junk_rate: parsed problems the quality filters or the proxy-NLL rule dropped ÷ parsed;
- duplicates: parsed problems dropped as exact or near duplicates;
- verified_share: problems with a verified solution ÷ problems solved;
- gvendi_candidates: G-Vendi of the verified samples' gradient features;
- seconds: wall time of the cell (generation, solving, features).
Every parsed problem, with its screening outcome, goes to
`benchmarks/results/problem_formats_problems.jsonl` for reading by eye.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

from benchmarks.common import GSM8K, RESULTS, emit, machine, stdout_to_stderr
from prismatic.config_file import load_config
from prismatic.data.filters import FILTER_REASONS
from prismatic.data.quality import REASONS, build_filter
from prismatic.data.samples import load_seeds
from prismatic.generation.journal import Journal
from prismatic.gradients.proxy import compute_features, load_proxy
from prismatic.metrics.vendi import gvendi
from prismatic.synthesis.generate import generate_round, problem_nll
from prismatic.synthesis.steps import verify_round
from resources.generator import build_engine, close_engines

FORMATS = ("fewshot", "delimited", "json")


def seed_sets(limit: int) -> dict[str, pl.DataFrame]:
    """The pools rounds are grown from: the bundled seeds, and GSM8K's first `limit` test problems."""
    sets = {"bundled": load_seeds("bundled").select("id", "prompt", "task", "level")}
    if GSM8K.exists():
        rows = [json.loads(line) for line in GSM8K.read_text().splitlines()[:limit]]
        sets["gsm8k"] = pl.DataFrame({"id": [f"gsm8k-{i}" for i in range(len(rows))],
                                      "prompt": [row["question"] for row in rows], "task": "math", "level": 3})
    return sets


def one_cell(name: str, pool: pl.DataFrame, problem_format: str, prompts: int, config, engine, proxy,
             workdir: Path) -> tuple[dict, list[dict]]:
    tasks = sorted(pool["task"].unique().to_list())
    synthesis = config.synthesis.model_copy(update={"problem_format": problem_format, "prompts_per_round": prompts,
                                                    "tasks": tasks, "problems_per_prompt": 2})
    model, tokenizer = proxy.model, proxy.tokenizer
    problem_filter = build_filter(pool.select("id", "prompt"), synthesis.dedup, synthesis.decontamination)
    started = time.perf_counter()
    gens, problems, rejections, about = generate_round(
        engine, Journal(workdir / f"{name}-{problem_format}.jsonl"), pool, synthesis, config.generator.model, "r001",
        problem_filter=problem_filter, nll=lambda texts, tasks: problem_nll(model, tokenizer, texts, tasks))
    verified, _ = verify_round(gens, synthesis.min_agree)
    gvendi_candidates = None
    if verified.height >= 2:
        features, _ = compute_features(verified, config.features, config.models_dir, proxy=proxy, progress=False)
        gvendi_candidates = round(gvendi(features.features), 3)
    seconds = time.perf_counter() - started
    parsed = gens.filter(kind="problem")
    reasons = dict(rejections.group_by("reason").len().iter_rows())
    junk = sum(reasons.get(r, 0) for r in FILTER_REASONS)
    duplicates = sum(reasons.get(r, 0) for r in REASONS if r != "benchmark_contamination")
    verified_problems = verified["problem_id"].n_unique()
    cell = {"seeds": name, "format": problem_format, "asked": prompts * 2, "parsed": parsed.height,
            "junk": junk, "junk_rate": round(junk / parsed.height, 3) if parsed.height else None,
            "duplicates": duplicates, "solved": problems.height, "verified_problems": verified_problems,
            "verified_share": round(verified_problems / problems.height, 3) if problems.height else None,
            "verified_samples": verified.height, "gvendi_candidates": gvendi_candidates,
            "dropped_by": {r: n for r, n in reasons.items() if r != "no_majority"},
            "nll_thresholds": about["nll_thresholds"], "seconds": round(seconds, 1)}
    outcome = dict(rejections.select("id", "reason").iter_rows())
    verified_ids = set(verified["problem_id"].to_list())
    rows = [{"seeds": name, "format": problem_format, "id": row["id"], "task": row["task"], "problem": row["text"],
             "dropped": outcome.get(row["id"]), "verified": row["id"] in verified_ids}
            for row in parsed.iter_rows(named=True)]
    return cell, rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="8 problems per cell, bundled seeds only")
    parser.add_argument("--problems", type=int, default=32, help="problems asked for per cell (even)")
    parser.add_argument("--formats", default=",".join(FORMATS), help="comma-separated subset of " + ",".join(FORMATS))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    formats = [f for f in args.formats.split(",") if f]
    if unknown := set(formats) - set(FORMATS):
        parser.error(f"unknown formats {sorted(unknown)}")
    problems = 8 if args.quick else args.problems
    config = load_config()
    sets = seed_sets(1319)
    if args.quick:
        sets = {"bundled": sets["bundled"]}
    info = machine()
    started = time.perf_counter()
    cells, rows = [], []
    with tempfile.TemporaryDirectory() as workdir, stdout_to_stderr():
        engine = build_engine(config.generator, config.models_dir)
        proxy = load_proxy(config.features, config.models_dir)
        try:
            for name, pool in sets.items():
                for problem_format in formats:
                    cell, cell_rows = one_cell(name, pool, problem_format, problems // 2, config, engine, proxy,
                                               Path(workdir))
                    cells.append(cell)
                    rows += cell_rows
                    print(json.dumps(cell), file=sys.stderr)
        finally:
            close_engines()
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "problem_formats_problems.jsonl", "w") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    command = (f"python -m benchmarks.problem_formats{' --quick' if args.quick else f' --problems {problems}'}"
               f"{'' if formats == list(FORMATS) else ' --formats ' + ','.join(formats)} --json")
    details = {"machine": info, "generator": config.generator.model, "proxy": config.features.proxy,
               "problem_sampling": config.synthesis.problem_sampling.model_dump(),
               "problems_per_cell": problems, "cells": cells, "seconds": round(time.perf_counter() - started, 1),
               "command": command}
    lines = ["# Problem formats on a small generator", "",
             f"`{command}`: generator {config.generator.model}, proxy {config.features.proxy}, {problems} problems "
             f"asked for per cell, problem sampling {details['problem_sampling']}; {details['seconds']} s in all.", "",
             "| seeds | format | parsed | junk rate | duplicates | solved | verified share | G-Vendi (candidates) |",
             "|---|---|---|---|---|---|---|---|"]
    for c in cells:
        lines.append(f"| {c['seeds']} | {c['format']} | {c['parsed']}/{c['asked']} | {c['junk_rate']} | "
                     f"{c['duplicates']} | {c['solved']} | {c['verified_share']} | {c['gvendi_candidates']} |")
    lines += ["", "Dropped by reason per cell:", ""]
    lines += [f"- {c['seeds']} / {c['format']}: {c['dropped_by']}" for c in cells]
    emit({"benchmark": "problem_formats", "details": details}, "\n".join(lines) + "\n", args.json)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
