"""Many rounds of many problems against a server that answers at once: what a round costs as the pool grows.

    python -m benchmarks.scale [--quick] [--json] [--rounds R] [--problems P]

Full: R = 20 rounds of P = 10,000 problems × 4 solutions (under 60 min is the target); `--quick`: 5 rounds
of 1,000 (under 5 min). Generation goes through the pipeline's own OpenAI-compatible engine
(`generator: {backend: openai, base_urls: [...]}`) to `benchmarks.instant_server` on 127.0.0.1, a
separate process that answers at once with realistic lengths and a `usage` field, so what is measured
is the pipeline. Features: the random `tiny` Qwen2 preset as the proxy (`prismatic.models.init_model`,
fast mode, `features.dim` 256, float32), in `FEATURE_SHARDS` = 2 shards under the `multiprocess` executor
(each step its own process, each shard one torch thread: on 2 cores this is about twice one process's
speed). Problems: the `fewshot` format, math only, P/2 few-shot prompts × 2
problems; every default screening rule (text filters, proxy-NLL outliers, dedup against the pool and
the round); selection `logdet` keeping P/2 candidates a round (a fixed count: the random proxy's
gradients would let `novelty` keep almost none, and the point is a pool that grows); metrics: G-Vendi
only.

Each round (r000, the seeds, then r001 … rR) runs in a fresh process, `python -m benchmarks.scale
--worker HOME rNNN`, which calls `prism_cli.runner.run_round` (the code of `prism run`: Dagster,
every asset and check of the round) and reports the peak RSS and the CPU seconds of its process tree (the
worker, the executor's step processes and their forkserver: their proportional set sizes summed, sampled
every 0.1 s, or the worker's own high-water mark if larger). Workers run
with `OMP_WAIT_POLICY=PASSIVE` unless it is set: on a machine shared with other work, torch's OpenMP
threads spin while they wait for a core, and the features step ran several times slower without it.
Per round: `round`,
`rows_added` (the pool's partition of the round), `pool_rows` (the pool as of the round),
`store_bytes_added` (bytes of the files under the store that the round created or rewrote, and by
table), `peak_rss_mb` and `seconds` per asset (Dagster step times), `wall_s` of the worker.

Overall: `engine_responses_per_s` = N solution requests (5,000; full 20,000) ÷ wall seconds of
`generate_journaled` with the engine built from the home's `generator:` section and a fresh journal
(every response journaled and fsynced), in this process after the rounds; `query_s` = wall seconds
of one `prism query` (a subprocess, as a user runs it) that joins every round's generated solutions
to the verified samples; `query_sql_s` = that query alone through `Catalog.query`; `pool_costs`: the
steps that work on the whole pool, measured apart at larger pools (`pool_costs`).

Targets (issue #29): the last round's `store_bytes_added` ≤ 1.5 × r001's; `peak_rss_mb` of the last
round ≤ 1.25 × that of round R/4 (r005 of 20; r001 with --quick); `engine_responses_per_s` ≥ 1,000;
`query_s` ≤ 2. Writes benchmarks/results/scale.json, scale.md and scale.png (bytes and RSS per
round). The machine's load average is in the report: timings on a shared machine move with it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

from benchmarks.common import emit, rss_mb, save_plot, stdout_to_stderr

REPO = Path(__file__).resolve().parents[1]
SOLUTIONS = 4
PROBLEMS_PER_PROMPT = 2
FEATURE_DIM = 256
FEATURE_SHARDS = 2
CONCURRENCY = 32
QUERY = ("select g.round, count(*) as solutions, count(v.id) as verified from generations g "
         "left join verified_samples v on v.round = g.round and v.id = g.id "
         "where g.kind = 'solution' group by 1 order by 1")
FULL_ROUNDS = {False: 20, True: 5}
"""Rounds after the seed round that the targets are set for: the full run's and `--quick`'s."""
TARGETS = {"bytes_ratio": 1.5, "rss_ratio": 1.25, "engine_responses_per_s": 1000.0, "query_s": 2.0}


# ------------------------------------------------------------------------------------ the server and the home


def start_server() -> tuple[subprocess.Popen, str]:
    """`benchmarks.instant_server` in its own process; (process, base URL)."""
    process = subprocess.Popen([sys.executable, "-m", "benchmarks.instant_server"], cwd=REPO,
                               stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline().strip()
    if not line.startswith("listening "):
        process.kill()
        raise RuntimeError(f"the instant server did not start: {line!r}")
    return process, line.split(" ", 1)[1]


def make_home(root: Path, model_dir: Path, url: str, problems: int) -> Path:
    """The benchmark's home under `root` (its prism.yaml written again on every start: the server's port
    changes, the store and the journals stay)."""
    home = root / "home"
    home.mkdir(parents=True, exist_ok=True)
    config = {
        # float32 (the preset's own dtype: bf16 is ~35 % slower on this CPU) in FEATURE_SHARDS processes of one
        # thread each: the tiny model's ops are too small for two threads to share (two were ~40 % slower than one).
        "features": {"proxy": str(model_dir), "dim": FEATURE_DIM, "model_dtype": "float32", "shards": FEATURE_SHARDS},
        "orchestration": {"executor": "multiprocess"},
        "generator": {"backend": "openai", "base_urls": [url], "model": "instant", "max_concurrency": CONCURRENCY,
                      "max_retries": 2},
        "synthesis": {"tasks": ["math"], "prompts_per_round": max(1, problems // PROBLEMS_PER_PROMPT),
                      "problems_per_prompt": PROBLEMS_PER_PROMPT, "solutions_per_problem": SOLUTIONS,
                      # A fixed count, so the pool grows by P/2 a round whatever the random proxy's gains.
                      "selection_rule": "logdet", "selection_count": max(1, problems // 2)},
        "metrics": {"names": ["gvendi"]},
    }
    (home / "prism.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return home


# ------------------------------------------------------------------------------------ one round (the worker)


def worker(home: Path, key: str) -> None:
    """Run round `key` of `home` in this process; print one JSON line: seconds per asset, peak RSS, the
    generation facts."""
    from benchmarks.round import group_steps, materialization_metadata
    from prism_cli.runner import instance_for, run_round

    samples: list[tuple[float, float, float]] = []
    stop = threading.Event()

    def sample_rss() -> None:  # (time, resident MB, CPU s) every 0.1 s: what each asset holds and uses
        while not stop.wait(0.1):
            samples.append((time.time(), _resident_mb(), _tree_cpu_s()))

    sampler = threading.Thread(target=sample_rss, daemon=True)
    sampler.start()
    started = time.perf_counter()
    with stdout_to_stderr():
        result = run_round(home, key)
    wall_s = time.perf_counter() - started
    stop.set()
    sampler.join()
    metadata = materialization_metadata(home, result["run_id"])
    generations = metadata.get("generations", {})
    steps = group_steps(result["seconds"])
    extra = {name: seconds for name, seconds in result["seconds"].items() if name.split(".")[0] == "round_report"}
    if extra:
        steps["round_report"] = round(sum(extra.values()), 3)
        steps["asset checks"] = round(steps["asset checks"] - steps["round_report"], 3)
    print(json.dumps({"seconds": steps, "peak_rss_mb": round(max([rss_mb(), *(mb for _, mb, _ in samples)]), 1),
                      "wall_s": round(wall_s, 2), "cpu_s": round(_tree_cpu_s(), 1),
                      **by_asset(instance_for(home), result["run_id"], samples),
                      "generations": {name: generations.get(name) for name in (
                          "problems_parsed", "problems", "problems_removed", "solutions", "responses_generated",
                          "tokens_per_s")},
                      "kept": metadata.get("selection", {}).get("kept"),
                      "verified": metadata.get("verified_samples", {}).get("dagster/row_count")}))


def _tree() -> list:
    """This process and its descendants (the executor's step processes and their forkserver)."""
    import psutil

    me = psutil.Process()
    return [me, *me.children(recursive=True)]


def _resident_mb() -> float:
    """Resident MB of this process and its descendants together, now: the sum of their proportional set sizes
    (PSS: a page shared by k processes counts 1/k in each), since the step processes fork from one forkserver
    and share its pages; summed RSS would count those pages once per process."""
    import psutil

    total = 0
    for process in _tree():
        with contextlib.suppress(psutil.Error):
            total += process.memory_full_info().pss
    return total / 1e6


def _tree_cpu_s() -> float:
    """CPU seconds of this process and its descendants, the finished ones included (each process's own and its
    reaped children's)."""
    import psutil

    total = 0.0
    for process in _tree():
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
    return total


def by_asset(instance, run_id: str, samples: list[tuple[float, float, float]]) -> dict[str, dict[str, float]]:
    """`rss_mb_by_asset`: the largest sampled resident MB while each asset's steps ran (from its first
    STEP_START to its last STEP_SUCCESS), and each asset check's; `cpu_s_by_asset`: the process's CPU
    seconds over the same span (all threads; it moves less with the machine's load than wall seconds)."""
    from dagster import DagsterEventType

    spans: dict[str, list[float]] = {}
    for entry in instance.all_logs(run_id, of_type={DagsterEventType.STEP_START, DagsterEventType.STEP_SUCCESS}):
        step = entry.dagster_event.step_key or ""
        name = step.split(".")[0]  # an asset (a graph asset's ops together), or one asset check
        span = spans.setdefault(name, [entry.timestamp, entry.timestamp])
        span[0], span[1] = min(span[0], entry.timestamp), max(span[1], entry.timestamp)
    rss, cpu = {}, {}
    for name, (start, end) in sorted(spans.items(), key=lambda item: item[1][0]):
        inside = [sample for sample in samples if start <= sample[0] <= end]
        rss[name] = round(max((mb for _, mb, _ in inside), default=0.0), 1)
        before = [c for t, _, c in samples if t <= start]
        after = [c for t, _, c in samples if t >= end]
        if samples:
            cpu[name] = round((after[0] if after else samples[-1][2]) - (before[-1] if before else 0.0), 2)
    return {"rss_mb_by_asset": rss, "cpu_s_by_asset": cpu}


def store_files(root: Path) -> dict[str, tuple[int, int]]:
    """path (relative) → (size, mtime_ns) of every file under the store but its locks."""
    found = {}
    for directory, _, names in os.walk(root):
        for name in names:
            path = Path(directory) / name
            relative = path.relative_to(root).as_posix()
            if not relative.startswith("_locks/"):
                stat = path.stat()
                found[relative] = (stat.st_size, stat.st_mtime_ns)
    return found


def run_round_process(home: Path, key: str) -> dict:
    """One round in a worker process, and what it wrote under the store."""
    from prismatic.storage.deltas import read_as_of
    from prismatic.storage.factory import open_store

    root = home / "store"
    before = store_files(root) if root.exists() else {}
    env = dict(os.environ, PRISM_HOME=str(home), TOKENIZERS_PARALLELISM="false")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # module docstring: a shared machine
    done = subprocess.run([sys.executable, "-m", "benchmarks.scale", "--worker", str(home), key], cwd=REPO, env=env,
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"round {key} failed:\n{done.stderr[-4000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    written = {path: size for path, (size, mtime) in store_files(root).items() if before.get(path) != (size, mtime)}
    by_table: dict[str, int] = {}
    for path, size in written.items():
        table = path.split("/", 1)[0]
        by_table[table] = by_table.get(table, 0) + size
    store = open_store(root)
    return {"round": key, "rows_added": store.read("pool", key).height,
            "pool_rows": read_as_of(store, "pool", key, columns=["id"]).height,
            "store_bytes_added": sum(written.values()), "store_bytes_by_table": dict(sorted(by_table.items())),
            **report}


# ------------------------------------------------------------------------------------ engine and query


def measure_engine(home: Path, n: int) -> dict:
    """N solution requests (problems as the server writes them) through the engine of the home's
    `generator:` section, journaled into a fresh journal: responses per wall second, and the client's
    CPU milliseconds per response."""
    from benchmarks.instant_server import problem_text
    from prismatic.config_file import load_config
    from prismatic.generation.engines.factory import engine_from_config
    from prismatic.generation.journal import Journal, generate_journaled
    from prismatic.generation.prompts import solution_prompt
    from prismatic.generation.requests import GenerationRequest, Sampling

    config = load_config(home)
    engine = engine_from_config(config.generator, config.models_dir)
    sampling = Sampling.from_config(config.synthesis.solution_sampling, seed=config.synthesis.seed)
    requests = [GenerationRequest.build(config.generator.model, solution_prompt(problem_text("engine", i), "math"),
                                        sampling, 0) for i in range(n)]
    with tempfile.TemporaryDirectory(prefix="prism-scale-journal-") as folder:
        journal = Journal(Path(folder) / "engine.jsonl")
        cpu_before, started = _cpu_s(), time.perf_counter()
        generate_journaled(engine, requests, journal)
        seconds, cpu = time.perf_counter() - started, _cpu_s() - cpu_before
        journaled = len(journal)
    return {"requests": n, "journaled": journaled, "seconds": round(seconds, 3),
            "responses_per_s": round(journaled / seconds, 1), "client_cpu_ms_per_response": round(1000 * cpu / n, 3),
            "max_concurrency": config.generator.max_concurrency}


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure_query(home: Path) -> dict:
    """`prism query QUERY --json` as a user runs it (wall seconds of the subprocess), and the SQL alone."""
    from prismatic.config_file import load_config
    from prismatic.storage.catalog import Catalog
    from prismatic.storage.factory import open_store

    prism = Path(sys.executable).parent / "prism"
    env = dict(os.environ, PRISM_HOME=str(home))
    started = time.perf_counter()
    done = subprocess.run([str(prism), "query", "--json", QUERY], env=env, capture_output=True, text=True)
    query_s = time.perf_counter() - started
    if done.returncode:
        raise RuntimeError(f"prism query failed: {done.stderr[-2000:]}")
    rows = json.loads(done.stdout)["rows"]
    config = load_config(home)
    catalog = Catalog(config.catalog_path, open_store(config.store_uri))
    started = time.perf_counter()
    catalog.query(QUERY)
    return {"sql": QUERY, "query_s": round(query_s, 3), "query_sql_s": round(time.perf_counter() - started, 3),
            "rows": rows}


def pool_costs(sizes: list[int]) -> list[dict]:
    """What the round steps that work on the whole pool cost at pool sizes beyond the rounds run: the
    dedup index of the pool's problems that generation builds (`build_filter`: exact keys, MinHash LSH,
    shingle sets), spherical k-means of the pool's features (k = 0.1 · n, the default `cluster_ratio`;
    20 iterations, the default backend) and G-Vendi of the pool (n × 256 random unit rows; problems as
    the instant server writes them). Seconds, and the MB the index holds (Python allocations, traced with
    tracemalloc in a second build: tracing slows the build down, so it is not the timed one)."""
    import tracemalloc

    import numpy as np
    import polars as pl

    from benchmarks.instant_server import problem_text
    from prismatic.config import SynthesisConfig
    from prismatic.data.quality import build_filter
    from prismatic.metrics.vendi import gvendi
    from prismatic.synthesis.kmeans import num_clusters, spherical_kmeans

    config = SynthesisConfig()
    rows = []
    for n in sizes:
        pool = pl.DataFrame({"id": [f"p{i}" for i in range(n)], "prompt": [problem_text("pool", i) for i in range(n)]})
        started = time.perf_counter()
        build_filter(pool, config.dedup, config.decontamination)
        dedup_s = time.perf_counter() - started
        tracemalloc.start()
        index = build_filter(pool, config.dedup, config.decontamination)
        dedup_mb = tracemalloc.get_traced_memory()[0] / 1e6
        tracemalloc.stop()
        del index
        x = np.random.default_rng(0).standard_normal((n, FEATURE_DIM)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        started = time.perf_counter()
        spherical_kmeans(x, num_clusters(n, config.cluster_ratio), iterations=config.kmeans_iterations,
                         seed=0, backend=config.kmeans_backend)
        kmeans_s = time.perf_counter() - started
        gvendi(x[:64])  # the first call starts the thread pool
        started = time.perf_counter()
        gvendi(x)
        rows.append({"pool_rows": n, "dedup_index_s": round(dedup_s, 2), "dedup_index_mb": round(dedup_mb, 1),
                     "kmeans_s": round(kmeans_s, 2), "gvendi_s": round(time.perf_counter() - started, 3)})
        print(f"pool costs at n={n}: {rows[-1]}", file=sys.stderr)
    return rows


# ------------------------------------------------------------------------------------ report


def verdicts(rounds: list[dict], engine: dict, query: dict) -> dict:
    """Each target: the measured value, the limit and whether it is met."""
    first, last = rounds[1], rounds[-1]
    base = rounds[max(1, (len(rounds) - 1) // 4)]
    measured = {
        "bytes_ratio": last["store_bytes_added"] / first["store_bytes_added"],
        "rss_ratio": last["peak_rss_mb"] / base["peak_rss_mb"],
        "engine_responses_per_s": engine["responses_per_s"], "query_s": query["query_s"],
    }
    higher_is_better = {"engine_responses_per_s"}
    return {name: {"value": round(value, 3), "limit": TARGETS[name],
                   "met": value >= TARGETS[name] if name in higher_is_better else value <= TARGETS[name],
                   **({"rounds": [last["round"], first["round"]]} if name == "bytes_ratio" else {}),
                   **({"rounds": [last["round"], base["round"]]} if name == "rss_ratio" else {})}
            for name, value in measured.items()}


def slopes(rounds: list[dict]) -> dict | None:
    """Least-squares slopes, over `rounds`, of the MB a round writes and of its peak RSS against its pool
    rows (per 1,000 rows); None with fewer than two rounds or one pool size."""
    import numpy as np

    pool = np.array([r["pool_rows"] for r in rounds], dtype=float)
    if len(rounds) < 2 or np.ptp(pool) == 0:
        return None
    written = np.polyfit(pool / 1000, [r["store_bytes_added"] / 1e6 for r in rounds], 1)[0]
    rss = np.polyfit(pool / 1000, [r["peak_rss_mb"] for r in rounds], 1)[0]
    return {"rounds": len(rounds), "mb_per_1000": round(float(written), 4), "rss_mb_per_1000": round(float(rss), 2)}


def plot(rounds: list[dict]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [r["round"] for r in rounds[1:]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.6), gridspec_kw={"wspace": 0.55})
    tables = sorted({t for r in rounds[1:] for t in r["store_bytes_by_table"]},
                    key=lambda t: -sum(r["store_bytes_by_table"].get(t, 0) for r in rounds[1:]))
    bottom = [0.0] * len(keys)
    for index, table in enumerate(tables):
        values = [r["store_bytes_by_table"].get(table, 0) / 1e6 for r in rounds[1:]]
        label = "atlas (_reports)" if table == "_reports" else table  # matplotlib hides labels starting with _
        left.bar(keys, values, bottom=bottom, label=label, color=f"C{index % 10}")
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    left.axhline(TARGETS["bytes_ratio"] * rounds[1]["store_bytes_added"] / 1e6, color="k", ls="--", lw=1,
                 label=f"{TARGETS['bytes_ratio']} × {rounds[1]['round']}")
    left.set_title("MB written under the store per round, by table")
    left.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    right.plot([r["round"] for r in rounds], [r["peak_rss_mb"] for r in rounds], "o-", label="peak RSS (MB)")
    twin = right.twinx()
    twin.plot([r["round"] for r in rounds], [r["pool_rows"] for r in rounds], "s:", color="C1", label="pool rows")
    right.set_title("peak RSS of the round's process, and the pool")
    right.set_ylabel("MB")
    twin.set_ylabel("pool rows")
    for axis in (left, right):
        axis.tick_params(axis="x", labelrotation=60, labelsize=7)
    right.legend(loc="upper left", fontsize=7)
    twin.legend(loc="lower right", fontsize=7)
    return save_plot(fig, "scale.png")


def markdown(result: dict) -> str:
    d = result["details"]
    lines = [
        "# Scale: rounds of many problems against an instant server",
        "",
        f"`python -m benchmarks.scale{' --quick' if d['quick'] else ''} --json` — {d['rounds']} rounds of "
        f"{d['problems']} problems × {SOLUTIONS} solutions, {d['total_s']:.0f} s in the command's last "
        f"run (it resumes with `--keep`); the rounds took {d['rounds_wall_s']:.0f} s of wall time and "
        f"{d['rounds_cpu_s']:.0f} s of CPU time in all. Load average (1, 5, "
        f"15 min) {d['load_average_start']} at the start, {d['load_average_end']} at the end, on "
        f"{os.cpu_count()} CPUs (a shared machine: timings move with its load). Generator: the pipeline's "
        f"OpenAI engine (max_concurrency {CONCURRENCY}) against `benchmarks.instant_server`; proxy: the random "
        f"`tiny` preset (fast, float32, dim {FEATURE_DIM}) in {FEATURE_SHARDS} one-thread shards under the "
        "multiprocess executor. Each round runs in its own process (`run_round`, as `prism run`)"
        + (f"; this run was stopped after round {d['per_round'][-1]['round']}, short of the "
           f"{FULL_ROUNDS[d['quick']]} rounds the targets are set for: they are measured at that round."
           if d["rounds"] < FULL_ROUNDS[d["quick"]] else "."),
        "",
        "## Targets",
        "",
        "| target | value | limit | met |",
        "|---|---|---|---|",
    ]
    for name, verdict in result["targets"].items():
        lines.append(f"| {name} | {verdict['value']} | {verdict['limit']} | {'yes' if verdict['met'] else 'NO'} |")
    assets = list(d["per_round"][-1]["seconds"])
    lines += ["", "## Per round", "",
              "Seconds per asset are Dagster step seconds summed over the asset's steps: `gradient_features`' "
              f"{FEATURE_SHARDS} shards run side by side, so its wall time is about 1/{FEATURE_SHARDS} of its "
              "figure. `peak RSS MB` and `cpu s` are those of the round's process tree (the worker, the step "
              "processes and their forkserver; memory as summed PSS); `cpu s` moves less with the machine's load "
              "than wall seconds; `load` is the 1-minute load average when the round started.", "",
              "| round | rows added | pool rows | MB written | peak RSS MB | wall s | cpu s | load | "
              + " | ".join(assets) + " |",
              "|---|---|---|---|---|---|---|---|" + "---|" * len(assets)]
    for r in d["per_round"]:
        load = r.get("load_average_start", [None])[0]
        lines.append(f"| {r['round']} | {r['rows_added']} | {r['pool_rows']} | {r['store_bytes_added'] / 1e6:.2f} | "
                     f"{r['peak_rss_mb']:.0f} | {r['wall_s']:.1f} | {r['cpu_s']:.0f} | {load} | "
                     + " | ".join(f"{r['seconds'].get(a, 0):.2f}" for a in assets) + " |")
    lines += ["", "MB written by table:", "",
              "| round | " + " | ".join(sorted(d["per_round"][-1]["store_bytes_by_table"])) + " |",
              "|---|" + "---|" * len(d["per_round"][-1]["store_bytes_by_table"])]
    for r in d["per_round"][1:]:
        lines.append(f"| {r['round']} | " + " | ".join(
            f"{r['store_bytes_by_table'].get(t, 0) / 1e6:.2f}" for t in sorted(d["per_round"][-1][
                "store_bytes_by_table"])) + " |")
    growth = slopes(d["per_round"][1:])
    if growth:
        lines += ["", f"Growth with the pool, least squares over {growth['rounds']} generated rounds: each 1,000 "
                      f"pool rows add {growth['mb_per_1000']:+.3f} MB to what a round writes and "
                      f"{growth['rss_mb_per_1000']:+.1f} MB to its peak RSS."]
    e, q = d["engine"], d["query"]
    lines += ["", "## Engine and query", "",
              f"Engine: {e['journaled']} solution requests journaled in {e['seconds']} s = **{e['responses_per_s']} "
              f"responses/s**, {e['client_cpu_ms_per_response']} ms of client CPU per response.",
              "", f"`prism query` (subprocess, wall): **{q['query_s']} s**; the SQL alone: {q['query_sql_s']} s.",
              "", "```sql", q["sql"], "```", "", "![bytes and RSS per round](scale.png)", "",
              "## Steps that work on the whole pool, at larger pools", "",
              "Measured apart (`pool_costs`): the dedup index generation builds over the pool's problems, "
              "k-means of the pool (k = 0.1 n) and its G-Vendi, on n problems / unit rows of width "
              f"{FEATURE_DIM}.", "",
              "| pool rows | dedup index s | dedup index MB | k-means s | G-Vendi s |", "|---|---|---|---|---|"]
    lines += [f"| {c['pool_rows']} | {c['dedup_index_s']} | {c['dedup_index_mb']} | {c['kmeans_s']} | "
              f"{c['gvendi_s']} |" for c in d["pool_costs"]]
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="Rounds of many problems against an instant server.")
    parser.add_argument("--quick", action="store_true", help="5 rounds of 1,000 problems")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--rounds", type=int, help="rounds after the seed round (default 20; --quick 5); with --keep "
                                                   "and fewer than are finished, a report of the first ROUNDS")
    parser.add_argument("--problems", type=int)
    parser.add_argument("--engine-requests", type=int)
    parser.add_argument("--pool-sizes", help="comma-separated pool sizes of `pool_costs` (default 2000,8000; full "
                                             "10000,50000)")
    parser.add_argument("--keep", type=Path, help="build the home here and keep it (default: a temporary folder); "
                                                "run again with the same folder, it resumes after the last finished "
                                                "round (`rounds.jsonl` there)")
    parser.add_argument("--worker", nargs=2, metavar=("HOME", "ROUND"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(Path(args.worker[0]), args.worker[1])
        return
    rounds = args.rounds or FULL_ROUNDS[args.quick]
    problems = args.problems or (1_000 if args.quick else 10_000)
    engine_requests = args.engine_requests or (5_000 if args.quick else 20_000)
    started, load_start = time.perf_counter(), [round(x, 2) for x in os.getloadavg()]
    root = args.keep or Path(tempfile.mkdtemp(prefix="prism-scale-"))
    server = None
    try:
        from prismatic.models import init_model
        from prismatic.rounds import round_key

        model_dir = root / "models" / "tiny"
        if not model_dir.exists():
            init_model("tiny", model_dir, seed=0)
        server, url = start_server()
        home = make_home(root, model_dir, url, problems)
        finished = root / "rounds.jsonl"  # one line per finished round: a rerun with --keep resumes after it
        per_round = [json.loads(line) for line in finished.read_text().splitlines()] if finished.exists() else []
        if per_round:
            print(f"resuming {root}: {len(per_round)} rounds already run", file=sys.stderr)
        for number in range(len(per_round), rounds + 1):
            key = round_key(number)
            load = [round(x, 2) for x in os.getloadavg()]
            per_round.append({**run_round_process(home, key), "load_average_start": load})
            with finished.open("a") as out:
                out.write(json.dumps(per_round[-1]) + "\n")
            r = per_round[-1]
            print(f"{key}: +{r['rows_added']} → {r['pool_rows']} pool rows, {r['store_bytes_added'] / 1e6:.1f} MB, "
                  f"{r['peak_rss_mb']:.0f} MB RSS, {r['wall_s']:.1f} s", file=sys.stderr)
        engine = measure_engine(home, engine_requests)
        query = measure_query(home)
        sizes = [int(n) for n in (args.pool_sizes or ("2000,8000" if args.quick else "10000,50000")).split(",")]
        costs = pool_costs(sizes)
    finally:
        if server is not None:
            server.kill()
        if args.keep is None:
            import shutil

            shutil.rmtree(root, ignore_errors=True)
    targets = verdicts(per_round, engine, query)
    details = {"quick": args.quick, "rounds": rounds, "problems": problems, "solutions": SOLUTIONS,
               "total_s": round(time.perf_counter() - started, 1), "load_average_start": load_start,
               "rounds_wall_s": round(sum(r["wall_s"] for r in per_round), 1),
               "rounds_cpu_s": round(sum(r["cpu_s"] for r in per_round), 1),
               "load_average_end": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
               "per_round": per_round, "engine": engine, "query": query, "pool_costs": costs}
    details["targets_met"] = {name: verdict["met"] for name, verdict in targets.items()}
    result = {"benchmark": "scale", "ratio": round(sum(details["targets_met"].values()) / len(targets), 3),
              "target": "1.0: all four targets met (bytes, RSS, engine responses/s, query seconds)",
              "engine_responses_per_s": engine["responses_per_s"], "query_s": query["query_s"],
              "rounds": [{key: r[key] for key in ("round", "rows_added", "pool_rows", "store_bytes_added",
                                                  "peak_rss_mb", "seconds")} for r in per_round],
              "targets": targets, "details": details}
    plot(per_round)
    emit(result, markdown(result), args.json)


if __name__ == "__main__":
    main()
