"""Does the diversity of a training set predict how well a student trained on it does out of distribution?

The paper's central claim (docs/formulas.md#student), tested at this machine's scale:

- training pool: GSM8K test problems 0–999 with their reference solutions; in-distribution eval: GSM8K
  problems 1000–1318 (the first `--eval-limit`); out-of-distribution eval: SVAMP (the first `--eval-limit`).
- subsets of equal size `--size`, spread over diversity: random draws (5 seeds); greedy log-det in
  gradient space and in embedding space, each from a random half of the pool (5 seeds); few-cluster
  subsets (the nearest neighbours of 1, 2 or 4 random anchors in embedding space); duplicate-heavy
  subsets (m distinct problems, each repeated size/m times).
- for each subset: every diversity metric but the cluster-agent (it needs an LLM judge per subset), a
  student (`prismatic.student.train`, the same seed for every subset) and its NLL (and accuracy,
  `--accuracy-limit`) on both sets. Improvement = base model NLL − student NLL (nats per token).
- report: per metric, Spearman ρ with the improvement (signed so that "more diverse" is positive),
  with a 95% bootstrap interval over subsets, and a scatter plot; per seed, gradient log-det against
  random and against embedding log-det.

Each finished subset is appended to `results/generalization[_quick]_runs.jsonl` under a fingerprint of the
settings, so an interrupted run resumes where it stopped (`--fresh` ignores what is there).

    python -m benchmarks.generalization [--quick] [--size 64] [--epochs 2] [--eval-limit 100] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from benchmarks.common import RESULTS, emit, machine, save_plot, stdout_to_stderr
from prismatic.config import FeaturesConfig, MetricsConfig, StudentConfig
from prismatic.student.evaluate import evaluate_student
from prismatic.student.sets import EvalSet, load_eval_set
from prismatic.student.train import chat_of, train_student

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
GSM8K, SVAMP = SHARED / "gsm8k" / "test.jsonl", SHARED / "svamp" / "svamp.jsonl"
POOL_SIZE = 1000
TEXT_METRICS = ("distinct_n", "ngram_vendi", "compression_ratio", "self_repetition")
METRICS = ("gvendi", "embedding_vendi", *TEXT_METRICS)
MORE_DIVERSE = {"compression_ratio": -1, "self_repetition": -1}
"""Metrics whose lower value means more diverse: their ρ is reported with the sign flipped."""


@dataclass(frozen=True)
class Subset:
    name: str
    family: str
    seed: int | None
    rows: tuple[int, ...]


def greedy_log_det(vectors: np.ndarray, candidates: np.ndarray, size: int) -> list[int]:
    """Greedy maximum of log det(V_S V_Sᵀ) over |S| = size: each step adds the candidate whose residual
    (its part orthogonal to the span of the rows chosen so far) is longest (Gram–Schmidt)."""
    residual = vectors[candidates].astype(np.float64).copy()
    positions: list[int] = []
    for _ in range(size):
        norms = np.einsum("ij,ij->i", residual, residual)
        norms[positions] = -1.0
        best = int(np.argmax(norms))
        positions.append(best)
        direction = residual[best] / np.sqrt(max(norms[best], 1e-30))
        residual -= np.outer(residual @ direction, direction)
    return [int(candidates[position]) for position in positions]


def nearest_to_anchors(embeddings: np.ndarray, anchors: list[int], size: int) -> list[int]:
    """size/len(anchors) nearest rows (cosine) to each anchor, no row taken twice."""
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    taken: list[int] = []
    for position, anchor in enumerate(anchors):
        target = size * (position + 1) // len(anchors)
        for row in np.argsort(-(unit @ unit[anchor])):
            if len(taken) == target:
                break
            if int(row) not in taken:
                taken.append(int(row))
    return taken


def build_subsets(features: np.ndarray, embeddings: np.ndarray, size: int, seeds: int,
                  anchors: tuple[int, ...], duplicates: tuple[int, ...]) -> list[Subset]:
    """The subsets in the order they are trained: each seed's random, gradient and embedding log-det subsets,
    with one low-diversity subset (few clusters, duplicates) after each seed, so that a run cut short by
    `--budget-minutes` still spans the whole range of diversity."""
    n = len(features)
    rng = np.random.default_rng(2000)
    narrow = [Subset(f"clusters-{count}", "few-clusters", None,
                     tuple(nearest_to_anchors(embeddings, rng.choice(n, count, replace=False).tolist(), size)))
              for count in anchors]
    for distinct in duplicates:
        problems = rng.choice(n, distinct, replace=False).tolist()
        narrow.append(Subset(f"duplicates-{distinct}x{size // distinct}", "duplicates", None,
                             tuple(problems[i % distinct] for i in range(size))))
    narrow = _interleave(narrow[len(anchors):], narrow[:len(anchors)])
    subsets = []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        subsets.append(Subset(f"random-s{seed}", "random", seed, tuple(rng.choice(n, size, replace=False).tolist())))
        half = np.sort(np.random.default_rng(1000 + seed).choice(n, n // 2, replace=False))
        subsets.append(Subset(f"grad-logdet-s{seed}", "grad-logdet", seed,
                              tuple(greedy_log_det(features, half, size))))
        subsets.append(Subset(f"emb-logdet-s{seed}", "emb-logdet", seed, tuple(greedy_log_det(embeddings, half, size))))
        if narrow:
            subsets.append(narrow.pop(0))
    return subsets + narrow


def _interleave(first: list, second: list) -> list:
    """first[0], second[0], first[1], second[1], …, then the rest of the longer list."""
    merged = [item for pair in zip(first, second) for item in pair]
    return merged + first[len(second):] + second[len(first):]


def diversity(subset: Subset, pool: pl.DataFrame, features: np.ndarray, embeddings: np.ndarray,
              config: MetricsConfig) -> dict[str, float]:
    from prismatic.metrics.baselines import (
        compression_ratio,
        distinct_n,
        embedding_vendi,
        ngram_vendi,
        self_repetition,
    )
    from prismatic.metrics.vendi import gvendi

    rows = list(subset.rows)
    texts = [f"{p}\n\n{r}" for p, r in zip(pool["prompt"][rows], pool["response"][rows])]
    return {"gvendi": gvendi(features[rows]), "embedding_vendi": embedding_vendi(embeddings[rows]),
            "distinct_n": distinct_n(texts, config.max_n), "ngram_vendi": ngram_vendi(texts, config.max_n),
            "compression_ratio": compression_ratio(texts),
            "self_repetition": self_repetition(texts, config.repetition_n)}


def spearman_with_interval(x: list[float], y: list[float], reps: int = 2000, seed: int = 0) -> dict:
    """Spearman ρ of (x, y) and the 2.5/97.5 percentiles of ρ over bootstrap resamples of the pairs."""
    from scipy.stats import spearmanr

    x_array, y_array = np.asarray(x), np.asarray(y)
    rho = float(spearmanr(x_array, y_array).statistic)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(reps):
        pick = rng.integers(0, len(x_array), len(x_array))
        if np.ptp(x_array[pick]) > 0 and np.ptp(y_array[pick]) > 0:
            draws.append(spearmanr(x_array[pick], y_array[pick]).statistic)
    low, high = np.percentile(draws, [2.5, 97.5]) if draws else (float("nan"), float("nan"))
    return {"rho": round(rho, 3), "ci95": [round(float(low), 3), round(float(high), 3)], "n": len(x_array)}


def fingerprint(args: argparse.Namespace) -> str:
    settings = {k: getattr(args, k) for k in ("size", "epochs", "lr", "batch_size", "eval_limit", "accuracy_limit",
                                             "pool", "lora_rank")}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def load_runs(path: Path, key: str) -> dict[str, dict]:
    if not path.exists():
        return {}
    runs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {run["name"]: run for run in runs if run.get("fingerprint") == key}


def scatter(runs: list[dict], target: str, name: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = sorted({run["family"] for run in runs})
    colors = dict(zip(families, plt.cm.tab10.colors))
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5))
    for axis, metric in zip(axes.flat, METRICS):
        for family in families:
            points = [(run["metrics"][metric], run[target]) for run in runs if run["family"] == family]
            axis.scatter(*zip(*points), label=family, color=colors[family], s=28)
        axis.set_xlabel(metric)
        axis.set_ylabel("SVAMP NLL improvement (nats/token)" if target == "gain_ood" else target)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("Diversity of a training subset vs the student's out-of-distribution improvement")
    return save_plot(fig, f"{name}_scatter.png")


def pool_vectors(pool: pl.DataFrame, home: Path, config: MetricsConfig, timings: dict) -> tuple[np.ndarray, np.ndarray]:
    """Gradient features (the default `features` settings) and sentence embeddings of the pool's samples,
    cached under `$PRISM_HOME/cache/` by the pool's content, so a resumed run does not compute them again."""
    digest = hashlib.sha256(pool.write_json().encode() + FeaturesConfig().model_dump_json().encode()).hexdigest()[:16]
    cache = home / "cache" / f"generalization-{digest}.npz"
    if cache.exists():
        saved = np.load(cache)
        return saved["features"], saved["embeddings"]
    from prismatic.gradients.proxy import compute_features
    from prismatic.metrics.embeddings import embed, load_encoder

    started = time.perf_counter()
    features = compute_features(pool, FeaturesConfig(), home / "models", progress=False)[0].features
    timings["features_s"] = round(time.perf_counter() - started, 1)
    started = time.perf_counter()
    embeddings = embed(load_encoder(config.embedding_model),
                       [f"{p}\n\n{r}" for p, r in zip(pool["prompt"], pool["response"])])
    timings["embeddings_s"] = round(time.perf_counter() - started, 1)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, features=features, embeddings=embeddings)
    return features, embeddings


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 4-subset smoke run under 5 minutes")
    parser.add_argument("--size", type=int, default=64, help="samples per training subset")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lora-rank", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--pool", type=int, default=POOL_SIZE, help="GSM8K problems 0..pool-1 form the pool")
    parser.add_argument("--eval-limit", type=int, default=100, help="problems of each eval set (NLL)")
    parser.add_argument("--accuracy-limit", type=int, default=0, help="greedy answers scored per set (0: none)")
    parser.add_argument("--fresh", action="store_true", help="ignore finished subsets of an earlier run")
    parser.add_argument("--budget-minutes", type=float, default=None,
                        help="start no new subset after this many minutes; report on the finished ones")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.size, args.epochs, args.seeds, args.pool, args.eval_limit = 16, 1, 1, 200, 24
    return args


def main() -> None:
    args = parse_args()
    if not (GSM8K.exists() and SVAMP.exists()):
        print(json.dumps({"benchmark": "generalization", "skipped": f"needs {GSM8K} and {SVAMP}"}))
        return
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    home = Path(os.environ.get("PRISM_HOME", Path(__file__).resolve().parents[1] / ".prism"))
    base = home / "models" / "smollm2-135m-instruct"
    gsm8k = load_eval_set(GSM8K)
    pool_items = gsm8k.items[:args.pool]
    pool = pl.DataFrame({"id": [f"gsm8k-{i}" for i in range(len(pool_items))],
                         "prompt": [item.prompt for item in pool_items],
                         "response": [item.reference for item in pool_items]})
    in_dist = EvalSet("gsm8k-1000+", GSM8K, gsm8k.items[POOL_SIZE:POOL_SIZE + args.eval_limit])
    out_dist = load_eval_set(SVAMP, limit=args.eval_limit)
    timings: dict[str, float] = {}

    metrics_config = MetricsConfig()
    features, embeddings = pool_vectors(pool, home, metrics_config, timings)

    if args.quick:
        subsets = build_subsets(features, embeddings, args.size, 1, anchors=(1,), duplicates=(2,))
        subsets = [s for s in subsets if s.family != "emb-logdet"]
    else:
        subsets = build_subsets(features, embeddings, args.size, args.seeds, anchors=(1, 2, 4), duplicates=(4, 16))
    key = fingerprint(args)
    name = "generalization" + ("_quick" if args.quick else "")
    runs_file = RESULTS / f"{name}_runs.jsonl"
    RESULTS.mkdir(parents=True, exist_ok=True)
    done = {} if args.fresh else load_runs(runs_file, key)
    if "base" not in done:
        started = time.perf_counter()
        with stdout_to_stderr():
            report = evaluate_student(base, [in_dist, out_dist], accuracy_limit=args.accuracy_limit)
        done["base"] = {"name": "base", "fingerprint": key, "eval": report["sets"],
                        "eval_s": round(time.perf_counter() - started, 1)}
        with runs_file.open("a") as handle:
            handle.write(json.dumps(done["base"]) + "\n")
    base_eval = done["base"]["eval"]
    student = StudentConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, lora_rank=args.lora_rank)
    runs = []
    begun = time.perf_counter()
    for position, subset in enumerate(subsets, start=1):
        over_budget = args.budget_minutes is not None and time.perf_counter() - begun > 60 * args.budget_minutes
        if subset.name not in done and over_budget:
            continue
        if subset.name not in done:
            run = {"name": subset.name, "family": subset.family, "seed": subset.seed, "fingerprint": key,
                   "distinct": len(set(subset.rows)),
                   "metrics": diversity(subset, pool, features, embeddings, metrics_config)}
            chats = [chat_of(pool["prompt"][i], pool["response"][i]) for i in subset.rows]
            folder = Path(tempfile.mkdtemp(prefix="prism-student-"))
            try:
                with stdout_to_stderr():  # the trainer and vLLM print to stdout
                    trained = train_student(chats, folder, student, base_model=base)
                    started = time.perf_counter()
                    report = evaluate_student(folder, [in_dist, out_dist], accuracy_limit=args.accuracy_limit)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            run.update(train_s=trained.seconds, eval_s=round(time.perf_counter() - started, 1),
                       final_loss=trained.losses[-1], eval=report["sets"])
            with runs_file.open("a") as handle:
                handle.write(json.dumps(run) + "\n")
            done[subset.name] = run
            print(f"[{position}/{len(subsets)}] {subset.name}: train {run['train_s']:.0f} s, "
                  f"eval {run['eval_s']:.0f} s, SVAMP NLL {report['sets'][out_dist.name]['nll']:.4f}", file=sys.stderr)
        run = done[subset.name]
        run["gain_ood"] = base_eval[out_dist.name]["nll"] - run["eval"][out_dist.name]["nll"]
        run["gain_id"] = base_eval[in_dist.name]["nll"] - run["eval"][in_dist.name]["nll"]
        runs.append(run)

    correlations = {}
    for target in ("gain_ood", "gain_id"):
        correlations[target] = {}
        for metric in METRICS:
            sign = MORE_DIVERSE.get(metric, 1)
            correlations[target][metric] = spearman_with_interval([sign * r["metrics"][metric] for r in runs],
                                                                  [r[target] for r in runs])
    if args.accuracy_limit:
        correlations["accuracy_ood"] = {metric: spearman_with_interval(
            [MORE_DIVERSE.get(metric, 1) * r["metrics"][metric] for r in runs],
            [r["eval"][out_dist.name]["accuracy"] for r in runs]) for metric in METRICS}
    by_name = {run["name"]: run for run in runs}
    seeds = sorted({run["seed"] for run in runs if run["family"] == "grad-logdet"})
    head_to_head = {}
    for rival in ("random", "emb-logdet"):
        pairs = [(by_name[f"grad-logdet-s{s}"]["gain_ood"], by_name[f"{rival}-s{s}"]["gain_ood"]) for s in seeds
                 if f"{rival}-s{s}" in by_name]
        head_to_head[f"grad-logdet_vs_{rival}"] = {
            "wins": sum(a > b for a, b in pairs), "seeds": len(pairs),
            "mean_gain_grad": round(float(np.mean([a for a, _ in pairs])), 4) if pairs else None,
            f"mean_gain_{rival}": round(float(np.mean([b for _, b in pairs])), 4) if pairs else None}
    plot = scatter(runs, "gain_ood", name)
    result = {
        "benchmark": name, "commit": commit(),
        "settings": {"size": args.size, "epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size,
                     "lora_rank": args.lora_rank, "pool": args.pool, "eval_limit": args.eval_limit,
                     "accuracy_limit": args.accuracy_limit, "student": "smollm2-135m-instruct (full fine-tune)"
                     if not args.lora_rank else f"smollm2-135m-instruct (LoRA r{args.lora_rank})"},
        "machine": machine(), "load_average": list(os.getloadavg()), "timings": timings,
        "base": base_eval, "correlations": correlations, "head_to_head": head_to_head,
        "subsets_finished": f"{len(runs)} of {len(subsets)}",
        "seconds_per_training_run": round(float(np.median([r["train_s"] for r in runs])), 1),
        "seconds_per_evaluation": round(float(np.median([r["eval_s"] for r in runs])), 1),
        "subsets": [{k: run[k] for k in ("name", "family", "distinct", "metrics", "gain_ood", "gain_id", "train_s",
                                         "eval_s")} for run in runs],
        "plot": str(plot.relative_to(RESULTS.parent.parent)),
    }
    lines = [f"# Generalization ({result['benchmark']}, commit {result['commit']})", "",
             f"Settings: {json.dumps(result['settings'])}", "",
             "| metric | ρ with SVAMP gain | 95% CI | ρ with GSM8K gain | 95% CI |", "|---|---|---|---|---|"]
    for metric in METRICS:
        ood, ind = correlations["gain_ood"][metric], correlations["gain_id"][metric]
        lines.append(f"| {metric} | {ood['rho']} | {ood['ci95']} | {ind['rho']} | {ind['ci95']} |")
    lines += ["", "| subset | distinct | G-Vendi | SVAMP gain | GSM8K gain | train s |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['distinct']} | {r['metrics']['gvendi']:.2f} | {r['gain_ood']:+.4f} | "
              f"{r['gain_id']:+.4f} | {r['train_s']:.0f} |" for r in runs]
    lines += ["", f"Head to head: {json.dumps(head_to_head)}", ""]
    emit(result, "\n".join(lines) + "\n", args.json)


if __name__ == "__main__":
    main()
