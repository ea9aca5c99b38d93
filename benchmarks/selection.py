"""Selection rules compared by the G-Vendi gain they give the pool, at equal kept counts.

    python -m benchmarks.selection [--quick] --json

On GSM8K test problems with their reference solutions (`../shared/data/gsm8k`; skipped cleanly
when absent): a fixed random subset of POOL + CANDIDATES problems gets SmolLM2-135M-Instruct fast
gradient features once (cached under benchmarks/results/ and reused when the ids and projection
match). For each seed s the subset is split at random into a pool of POOL problems and CANDIDATES
others; the pool is clustered (spherical k-means, k = cluster_ratio × POOL, kmeans_iterations,
seed s) and

    gain(rule) = G-Vendi(pool ∪ kept(rule)) − G-Vendi(pool)

for `random` (K uniformly drawn candidates), `paper`, `balanced` and `logdet`, where K = what
`paper` keeps in that split and the budgeted rules get count = K, so every rule keeps the same
number. `novelty` keeps as many as its threshold lets through (K_novelty, no budget); it is set
beside `random_novelty` (K_novelty uniformly drawn candidates, the control every round records).
Also reported: the threshold form of `balanced` (which keeps fewer) and logdet for several ridges ε
(not with --quick). Headline `ratio` = mean logdet gain ÷ mean paper gain, logdet with
ε = `synthesis.logdet_epsilon` (default 1). Targets: paper > random, logdet ≥ 1.2 × paper.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

from benchmarks.common import GSM8K, RESULTS, emit, gsm8k, machine
from prismatic.config_file import load_config
from prismatic.errors import InputError
from prismatic.gradients.files import read_features, write_features
from prismatic.gradients.proxy import compute_features
from prismatic.metrics.vendi import gvendi
from prismatic.models import resolve_model
from prismatic.synthesis.kmeans import num_clusters, spherical_kmeans
from prismatic.synthesis.selection import select, select_balanced

EPSILONS = (0.01, 0.1, 1.0, 10.0)
RULES = ("random", "paper", "balanced", "logdet", "novelty", "random_novelty")


def cached_features(samples, config) -> tuple[np.ndarray, dict]:
    """Features of `samples` under `config.features`, from the cache file when it matches."""
    path = RESULTS / f"selection_features_{len(samples)}.parquet"
    ids = samples["id"].to_list()
    wanted = {"mode": config.features.mode, "dim": config.features.dim,
              "proxy": resolve_model(config.features.proxy, config.models_dir)}
    if path.exists():
        try:
            cached_ids, matrix, meta = read_features(path)
        except InputError:
            cached_ids, meta = None, {}
        if cached_ids == ids and all(meta.get(k) == v for k, v in wanted.items()) and \
                meta.get("projection", {}).get("seed") == config.features.seed:
            print(f"features from cache {path}", file=sys.stderr)
            return matrix, {"cached": True, "proxy": meta.get("proxy"), "seconds": meta.get("seconds")}
    result, proxy = compute_features(samples, config.features, config.models_dir)
    result.meta["seconds"] = round(result.seconds, 1)
    write_features(path, result, proxy)
    return result.features, {"cached": False, "proxy": proxy, "seconds": round(result.seconds, 1)}


def one_split(features: np.ndarray, ids: list[str], pool_size: int, seed: int, config,
              epsilons: tuple[float, ...]) -> dict:
    """Gains of every rule on one random pool/candidate split (logdet at each ε of `epsilons`; the
    `logdet` entry is the one at `synthesis.logdet_epsilon`)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(ids))
    pool_idx, cand_idx = order[:pool_size], order[pool_size:]
    pool, cands = features[pool_idx], features[cand_idx]
    cand_ids = [ids[i] for i in cand_idx]
    synthesis = config.synthesis
    clustering = spherical_kmeans(pool, num_clusters(pool_size, synthesis.cluster_ratio),
                                  iterations=synthesis.kmeans_iterations, seed=seed, backend=synthesis.kmeans_backend)
    before = gvendi(pool)

    def gain(mask: np.ndarray) -> float:
        return gvendi(np.concatenate([pool, cands[mask]])) - before

    paper = select("paper", cand_ids, cands, clustering)["kept"].to_numpy()
    count = int(paper.sum())

    def random_mask(size: int) -> np.ndarray:
        mask = np.zeros(len(cand_ids), dtype=bool)
        mask[rng.choice(len(cand_ids), size=size, replace=False)] = True
        return mask

    masks = {"random": random_mask(count), "paper": paper,
             "balanced": select("balanced", cand_ids, cands, clustering, count=count)["kept"].to_numpy()}
    logdet_seconds = {}
    for eps in epsilons:
        started = time.perf_counter()
        masks[f"logdet_eps{eps:g}"] = select("logdet", cand_ids, cands, clustering, count=count,
                                             pool_features=pool, epsilon=eps)["kept"].to_numpy()
        logdet_seconds[f"{eps:g}"] = round(time.perf_counter() - started, 3)
    masks["logdet"] = masks[f"logdet_eps{synthesis.logdet_epsilon:g}"]
    masks["novelty"] = select("novelty", cand_ids, cands, clustering, pool_features=pool,
                              epsilon=synthesis.logdet_epsilon)["kept"].to_numpy()
    masks["random_novelty"] = random_mask(int(masks["novelty"].sum()))
    masks["balanced_threshold"] = select_balanced(cand_ids, cands, clustering)["kept"].to_numpy()
    return {"seed": seed, "k": clustering.k, "count": count, "gvendi_pool": round(before, 4),
            "kept": {name: int(mask.sum()) for name, mask in masks.items()},
            "gain": {name: round(gain(mask), 4) for name, mask in masks.items()},
            "logdet_seconds": logdet_seconds}


def summarize(splits: list[dict], name: str) -> dict:
    gains = [s["gain"][name] for s in splits]
    kept = [s["kept"][name] for s in splits]
    return {"mean_gain": round(statistics.mean(gains), 3),
            "sd_gain": round(statistics.stdev(gains), 3) if len(gains) > 1 else 0.0,
            "mean_kept": round(statistics.mean(kept), 1), "gains": gains}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sizes = dict(pool=32, candidates=96, seeds=5) if args.quick else dict(pool=200, candidates=600, seeds=5)
    target = "paper > random; logdet >= 1.2 x paper"
    if not GSM8K.exists():
        emit({"benchmark": "selection", "ratio": None, "target": target,
              "details": {"skipped": f"{GSM8K} not found"}}, "# selection\n\nskipped: GSM8K not found\n", args.json)
        return
    started = time.perf_counter()
    config = load_config()
    epsilon = config.synthesis.logdet_epsilon
    epsilons = (epsilon,) if args.quick else tuple(sorted(set(EPSILONS) | {epsilon}))  # --quick: no ε sweep
    info = machine()
    data = gsm8k(10**6)
    subset = np.sort(np.random.default_rng(0).choice(len(data), size=sizes["pool"] + sizes["candidates"],
                                                     replace=False))
    samples = data[subset.tolist()]
    features, feature_info = cached_features(samples, config)
    ids = samples["id"].to_list()
    splits = []
    for seed in range(sizes["seeds"]):
        splits.append(one_split(features, ids, sizes["pool"], seed, config, epsilons))
        print(f"seed {seed}: kept {splits[-1]['count']}, gains {splits[-1]['gain']}", file=sys.stderr)
    names = list(RULES) + ["balanced_threshold"] + [f"logdet_eps{eps:g}" for eps in epsilons]
    summary = {name: summarize(splits, name) for name in names}
    paper_gain = summary["paper"]["mean_gain"]
    ratio = round(summary["logdet"]["mean_gain"] / paper_gain, 3) if paper_gain > 0 else None
    details = {"machine": info, "sizes": sizes, "features": feature_info, "epsilon": epsilon,
               "cluster_ratio": config.synthesis.cluster_ratio, "summary": summary, "splits": splits,
               "paper_beats_random": summary["paper"]["mean_gain"] > summary["random"]["mean_gain"],
               "seconds": round(time.perf_counter() - started, 1)}
    result = {"benchmark": "selection", "ratio": ratio, "target": target, "details": details}
    command = f"python -m benchmarks.selection{' --quick' if args.quick else ''} --json"
    lines = ["# Selection rules: pool G-Vendi gain at equal kept counts", "",
             f"`{command}` — GSM8K, pool {sizes['pool']}, candidates {sizes['candidates']}, {sizes['seeds']} "
             f"seeds, {feature_info['proxy']} fast features (d = {config.features.dim}), k = "
             f"{config.synthesis.cluster_ratio} × pool; bf16 peak {info['bf16_gflops']} GFLOP/s", "",
             "| rule | kept (mean) | gain mean | gain sd | ÷ paper |", "|---|---|---|---|---|"]
    for name in names:
        row = summary[name]
        vs = round(row["mean_gain"] / paper_gain, 2) if paper_gain > 0 else "—"
        lines.append(f"| {name} | {row['mean_kept']} | {row['mean_gain']} | {row['sd_gain']} | {vs} |")
    lines += ["", f"Headline ratio (logdet, ε = {epsilon:g}, ÷ paper): {ratio}. "
                  f"Pool G-Vendi per seed: {[s['gvendi_pool'] for s in splits]}. Features: "
                  f"{'cached' if feature_info['cached'] else 'computed'}, {feature_info['seconds']} s; whole run "
                  f"{details['seconds']} s.", ""]
    emit(result, "\n".join(lines), args.json)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
