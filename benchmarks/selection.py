"""Selection rules compared by the G-Vendi gain they give the pool, at equal kept counts; and, with
--steps, the cost of a round's `selection` and `diversity_scores` steps at the demo's size.

    python -m benchmarks.selection [--quick] --json
    python -m benchmarks.selection --steps [--repeats R] --json

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

--steps (`selection_steps.json`, no data needed): synthetic unit float32 features of d = 4096
(`features.dim`'s default) around 8 random directions, a pool of POOL_ROWS rows whose texts are the
bundled seeds (cycled), STEP_CANDIDATES candidates, the pool clustered as a round does; the medians
of wall and of process CPU seconds over R repeats (after one warm-up) of `selection_step` for each
rule (each includes the outcome: pool G-Vendi before and after and `control_draws` random draws) and of
`diversity_scores_step` with G-Vendi only and with the cheap text metrics (distinct_n, ngram_vendi,
compression_ratio, self_repetition; embedding Vendi is left out, its time is loading the encoder).
Beside them, side by side, the core calls whose form changed, in the n × n Gram form (what `auto`
picks here; median of R) and forced into the d × d moment form (once, as the steps ran before the
forms were split): ratio = moment seconds ÷ Gram seconds. Target: each step < 2 s of wall time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

from benchmarks.common import GSM8K, RESULTS, emit, gsm8k, machine, timed
from prismatic.config_file import load_config
from prismatic.errors import InputError
from prismatic.gradients.files import read_features, write_features
from prismatic.gradients.proxy import compute_features
from prismatic.metrics.vendi import gvendi
from prismatic.models import resolve_model
from prismatic.synthesis.kmeans import num_clusters, spherical_kmeans
from prismatic.synthesis.selection import select, select_balanced

EPSILONS = (0.01, 0.1, 1.0, 10.0)
POOL_ROWS, STEP_CANDIDATES, STEP_DIM = 100, 30, 4096
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


def demo_round(pool_rows: int = POOL_ROWS, candidates: int = STEP_CANDIDATES, dim: int = STEP_DIM,
               seed: int = 0) -> dict:
    """Inputs of one round's `selection` and `diversity_scores` steps at the demo's size (module docstring)."""
    import polars as pl

    from prismatic.config import PrismConfig
    from prismatic.data.samples import load_seeds

    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(8, dim))

    def unit(rows: int) -> np.ndarray:
        x = centers[rng.integers(0, 8, rows)] + rng.normal(size=(rows, dim))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    config = PrismConfig()
    pool_features, candidate_features = unit(pool_rows), unit(candidates)
    clustering = spherical_kmeans(pool_features, num_clusters(pool_rows, config.synthesis.cluster_ratio),
                                  iterations=config.synthesis.kmeans_iterations, seed=seed)
    seeds = load_seeds("bundled")
    texts = pl.concat([seeds] * (pool_rows // len(seeds) + 1)).head(pool_rows)
    array = pl.Array(pl.Float32, dim)
    return {"config": config, "pool_features": pool_features, "candidate_features": candidate_features,
            "pool": texts.with_columns(id=pl.Series([f"p{i:04d}" for i in range(pool_rows)])),
            "candidates": pl.DataFrame({"id": [f"c{i:04d}" for i in range(candidates)],
                                        "feature": pl.Series(candidate_features, dtype=array)}),
            "centroids": pl.DataFrame({"cluster": np.arange(clustering.k),
                                       "centroid": pl.Series(clustering.centroids, dtype=array),
                                       "size": clustering.sizes})}


def wall_and_cpu(fn, repeats: int, warmup: int = 1) -> dict:
    """{"wall_s", "cpu_s"}: medians over `repeats` calls (after `warmup`) of wall seconds and of this
    process's CPU seconds (all its threads). On a loaded machine wall time is inflated by waiting for
    a core; CPU time is not."""
    for _ in range(warmup):
        fn()
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return {"wall_s": round(statistics.median(walls), 3), "cpu_s": round(statistics.median(cpus), 3)}


def step_seconds(inputs: dict, repeats: int, warmup: int = 1) -> dict:
    """`wall_and_cpu` of `selection_step` per rule and of `diversity_scores_step` (G-Vendi only, and
    with the cheap text metrics). Uses only the steps' own signatures, so the same function times an
    older checkout of `prismatic` too."""
    from prismatic.synthesis.steps import diversity_scores_step, selection_step

    config = inputs["config"]
    seconds, outcome = {}, None
    for rule in ("novelty", "logdet", "paper"):
        synthesis = config.synthesis.model_copy(update={"selection_rule": rule})

        def select_once(synthesis=synthesis):
            return selection_step("r001", synthesis, candidates=inputs["candidates"], centroids=inputs["centroids"],
                                  pool_features=inputs["pool_features"])

        seconds[f"selection_{rule}"] = wall_and_cpu(select_once, repeats, warmup)
        outcome = outcome or select_once().provenance["selection"]["outcome"]
    text_metrics = ["distinct_n", "ngram_vendi", "compression_ratio", "self_repetition"]
    for name, names in (("diversity_scores_gvendi", []), ("diversity_scores_text", text_metrics)):
        scored = config.model_copy(update={"metrics": config.metrics.model_copy(update={"names": names})})
        seconds[name] = wall_and_cpu(lambda scored=scored: diversity_scores_step(
            scored, inputs["pool"], inputs["pool_features"], {"proxy": "synthetic"}, inputs["candidate_features"],
            outcome=outcome, previous_gvendi=1.0), repeats, warmup)
    return seconds


def form_seconds(inputs: dict, repeats: int) -> dict:
    """The core calls whose form changed, each in the Gram form (median of `repeats`) and forced into
    the moment form (once): {call: {"gram_s", "moment_s", "ratio" (moment ÷ Gram), "agree" (largest
    relative difference of the results)}}."""
    from prismatic.metrics.vendi import gvendi
    from prismatic.synthesis.control import selection_outcome
    from prismatic.synthesis.selection import select_logdet, select_novelty

    pool, cands = inputs["pool_features"], inputs["candidate_features"]
    ids = inputs["candidates"]["id"].to_list()
    kept = np.arange(len(cands)) % 3 == 0
    calls = {
        "gvendi(pool)": lambda form: gvendi(pool, form=form),
        "selection_outcome": lambda form: selection_outcome(pool, cands, kept, form=form)["control"]["gvendi"],
        "select_logdet": lambda form: select_logdet(ids, cands, pool, 10, form=form)["gain"].to_numpy(),
        "select_novelty": lambda form: select_novelty(ids, cands, pool, form=form)["gain"].to_numpy(),
    }
    result = {}
    for name, call in calls.items():
        gram, gram_s = timed(lambda call=call: call("gram"))
        gram_s = statistics.median([gram_s] + [timed(lambda call=call: call("gram"))[1] for _ in range(repeats - 1)])
        moment, moment_s = timed(lambda call=call: call("moment"))  # once: each takes seconds
        difference = np.abs(np.asarray(gram) - np.asarray(moment)) / np.abs(np.asarray(moment))
        result[name] = {"gram_s": round(gram_s, 4), "moment_s": round(moment_s, 3),
                        "ratio": round(moment_s / gram_s, 1), "agree": float(difference.max())}
    return result


def run_steps(repeats: int, as_json: bool) -> None:
    """--steps: the demo-size timing of the two steps, and the side-by-side of the forms."""
    started = time.perf_counter()
    info = machine()
    inputs = demo_round()
    load = os.getloadavg()[0]
    steps = step_seconds(inputs, repeats)
    forms = form_seconds(inputs, repeats)
    slowest = max(row["wall_s"] for row in steps.values())
    sizes = {"pool": POOL_ROWS, "candidates": STEP_CANDIDATES, "dim": STEP_DIM, "repeats": repeats}
    threads = {name: os.environ.get(name) for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    result = {"benchmark": "selection_steps", "seconds": slowest, "target": "each step < 2 s",
              "details": {"machine": info, "sizes": sizes, "load_average_1min": round(load, 2),
                          "thread_env": threads, "steps": steps,
                          "forms": forms, "seconds": round(time.perf_counter() - started, 1)}}
    lines = ["# selection and diversity_scores at the demo's size", "",
             f"`python -m benchmarks.selection --steps --repeats {repeats} --json` — pool {POOL_ROWS}, candidates "
             f"{STEP_CANDIDATES}, d = {STEP_DIM}, synthetic unit features; {info['threads']} threads, fp32 peak "
             f"{info['fp32_gflops']} GFLOP/s (thread variables {threads}), 1-min load average {load:.2f} at the start",
             "",
             "| step | wall s (median) | CPU s (median) |", "|---|---|---|",
             *[f"| {name} | {row['wall_s']} | {row['cpu_s']} |" for name, row in steps.items()], "",
             "| call | Gram form s | moment form s | moment ÷ Gram | largest relative difference |",
             "|---|---|---|---|---|",
             *[f"| {name} | {row['gram_s']} | {row['moment_s']} | {row['ratio']} | {row['agree']:.1e} |"
               for name, row in forms.items()], ""]
    emit(result, "\n".join(lines), as_json)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--steps", action="store_true", help="time the selection and diversity_scores steps")
    parser.add_argument("--repeats", type=int, default=3, help="--steps: timed repeats per call (median)")
    args = parser.parse_args()
    if args.steps:
        run_steps(args.repeats, args.json)
        return
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
