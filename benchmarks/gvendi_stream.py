"""G-Vendi streamed from a features Parquet file vs one plain XᵀX matmul of the same data in memory.

    python -m benchmarks.gvendi_stream [--quick] --json

Data: N × 1024 unit float32 rows (N = 1,000,000; 100,000 with --quick), synthetic and clustered
(seeded: 256 random unit centres, each row its centre plus isotropic noise of the same norm,
normalized), written once in the `prism features` format (id, feature, proxy, mode, dim, n_tokens,
truncated; snappy, row groups of 32768 rows) to benchmarks/results/gvendi_stream_{N}x1024.parquet,
which is git-ignored, and reused while its recorded recipe matches.

Side by side in one run, repeats interleaved (stream, matmul, stream, matmul, ...) after one
untimed warm-up of each, medians reported:
- stream: `gvendi_of_parquet(path, chunk_rows)` in a fresh child process per repeat; the child
  times the call itself (imports excluded) and reports its peak RSS (VmHWM: `ru_maxrss` would carry
  over the parent's peak), beside the peak RSS of an idle child with the same imports; the parent
  samples the child's RSS over time (gvendi_stream_rss.png);
- matmul: `X.T @ X` in torch float32 on the same N × 1024 matrix, loaded into memory beforehand.
Headline `ratio` = 2 × matmul_s ÷ stream_s, so ≥ 1 meets "stream ≤ 2 × matmul". Second target: the
streaming child's peak RSS (whole process, imports included) < 1 GB (10⁹ bytes). Agreement: the
streamed score against `gvendi()` of the in-memory matrix (same chunking; must agree to ~1e-6) and
against the score of the plain float32 matmul's product (one-shot float32 sum, for context).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from benchmarks.common import RESULTS, emit, machine, rss_mb, save_plot
from prismatic.gradients.files import PARQUET_CHUNK_ROWS, feature_chunks
from prismatic.metrics.vendi import gvendi, gvendi_of_parquet, vendi_from_eigenvalues

DIM = 1024
CLUSTERS = 256
SEED = 0
ROW_GROUP = 32768
RECIPE_KEY = b"benchmarks.gvendi_stream"
REPO = Path(__file__).resolve().parents[1]
GB = 1e9


def recipe(n: int) -> dict:
    return {"n": n, "dim": DIM, "clusters": CLUSTERS, "seed": SEED, "row_group": ROW_GROUP, "version": 1}


def data_file(n: int) -> tuple[Path, bool]:
    """The cached N × DIM features file (written when missing or made by another recipe), cached?"""
    path = RESULTS / f"gvendi_stream_{n}x{DIM}.parquet"
    if path.exists():
        try:
            meta = pq.read_schema(path).metadata or {}
            if json.loads(meta.get(RECIPE_KEY, b"{}")) == recipe(n):
                return path, True
        except (OSError, pa.ArrowException, ValueError):
            pass
    write_data(path, n)
    return path, False


def write_data(path: Path, n: int) -> None:
    from prismatic.gradients.files import META_KEY  # here: the streaming children need not import it

    rng = np.random.default_rng(SEED)
    centres = rng.standard_normal((CLUSTERS, DIM), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    schema = pa.schema([("id", pa.string()), ("feature", pa.list_(pa.float32(), DIM)), ("proxy", pa.string()),
                        ("mode", pa.string()), ("dim", pa.int32()), ("n_tokens", pa.int32()),
                        ("truncated", pa.bool_())],
                       metadata={META_KEY: json.dumps({"mode": "synthetic", "dim": DIM, "proxy": "none"}).encode(),
                                 RECIPE_KEY: json.dumps(recipe(n)).encode()})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    started = time.perf_counter()
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            for start in range(0, n, ROW_GROUP):
                rows = min(ROW_GROUP, n - start)
                x = rng.standard_normal((rows, DIM), dtype=np.float32) / np.sqrt(DIM, dtype=np.float32)
                x += centres[rng.integers(CLUSTERS, size=rows)]
                x /= np.linalg.norm(x, axis=1, keepdims=True)
                table = pa.table({
                    "id": pa.array([f"row-{i}" for i in range(start, start + rows)], pa.string()),
                    "feature": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), DIM),
                    "proxy": pa.array(["none"] * rows, pa.string()),
                    "mode": pa.array(["synthetic"] * rows, pa.string()),
                    "dim": pa.array(np.full(rows, DIM, dtype=np.int32)),
                    "n_tokens": pa.array(np.zeros(rows, dtype=np.int32)),
                    "truncated": pa.array(np.zeros(rows, dtype=bool)),
                }, schema=schema)
                writer.write_table(table, row_group_size=ROW_GROUP)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    print(f"wrote {path} ({n} × {DIM}) in {time.perf_counter() - started:.1f} s", file=sys.stderr)


def child(path: Path | None, chunk_rows: int) -> None:
    """In a fresh process: time the streamed score (or, without a path, stay idle); JSON on stdout."""
    result = {"idle_peak_rss_mb": round(rss_mb(), 1)}
    if path is not None:
        started = time.perf_counter()
        result["gvendi"] = gvendi_of_parquet(path, chunk_rows=chunk_rows)
        result["seconds"] = time.perf_counter() - started
    result["peak_rss_mb"] = round(rss_mb(), 1)
    print(json.dumps(result))


def run_child(args: list[str]) -> dict:
    """A child run of this module, its RSS sampled from /proc every 20 ms: (child's JSON + samples)."""
    command = [sys.executable, "-m", "benchmarks.gvendi_stream", *args]
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    samples = []
    status = Path(f"/proc/{proc.pid}/status")
    while proc.poll() is None:
        try:
            kib = next(int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith("VmRSS:"))
            samples.append((round(time.perf_counter() - started, 3), round(kib * 1024 / 1e6, 1)))
        except (OSError, StopIteration, ValueError):
            pass
        time.sleep(0.02)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{err}")
    return {**json.loads(out.strip().splitlines()[-1]), "wall_s": round(time.perf_counter() - started, 2),
            "rss_samples": samples}


def load_matrix(path: Path, n: int) -> np.ndarray:
    matrix = np.empty((n, DIM), dtype=np.float32)
    for start, chunk in feature_chunks(path):
        matrix[start:start + len(chunk)] = chunk
    return matrix


def plot_rss(runs: list[dict], idle_mb: float, n: int, chunk_rows: int) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for i, run in enumerate(runs):
        if run["rss_samples"]:
            t, mb = zip(*run["rss_samples"])
            ax.plot(t, mb, label=f"repeat {i + 1}", lw=1)
    ax.axhline(1000, color="red", ls="--", lw=1, label="1 GB target")
    ax.axhline(idle_mb, color="grey", ls=":", lw=1, label="idle child (imports)")
    ax.set_xlabel("seconds since the child started (interpreter + imports + stream)")
    ax.set_ylabel("RSS (MB)")
    ax.set_title(f"Streaming G-Vendi child RSS: {n:,} × {DIM}, chunk_rows {chunk_rows}")
    ax.legend(fontsize=8)
    return save_plot(fig, "gvendi_stream_rss.png")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--rows", type=int, help="N (default 1,000,000; 100,000 with --quick)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk-rows", type=int, default=PARQUET_CHUNK_ROWS)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--idle", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child or args.idle:
        child(args.child, args.chunk_rows)
        return

    started = time.perf_counter()
    n = args.rows or (100_000 if args.quick else 1_000_000)
    target = "stream <= 2 x matmul (ratio = 2 x matmul_s / stream_s, >= 1 meets it); peak RSS < 1 GB"
    info = machine()
    path, cached = data_file(n)
    meta = pq.ParquetFile(path).metadata
    idle = run_child(["--idle"])
    matrix = load_matrix(path, n)
    x = torch.from_numpy(matrix)

    def matmul() -> tuple[torch.Tensor, float]:
        start = time.perf_counter()
        product = x.T @ x
        return product, time.perf_counter() - start

    stream_args = ["--child", str(path), "--chunk-rows", str(args.chunk_rows)]
    run_child(stream_args)  # warm-ups: page cache, allocator, BLAS threads
    matmul()
    streams, matmuls = [], []
    for repeat in range(args.repeats):
        streams.append(run_child(stream_args))
        product, seconds = matmul()
        matmuls.append(seconds)
        print(f"repeat {repeat + 1}: stream {streams[-1]['seconds']:.2f} s "
              f"(peak RSS {streams[-1]['peak_rss_mb']} MB), matmul {seconds:.2f} s", file=sys.stderr)
    stream_s = statistics.median(r["seconds"] for r in streams)
    matmul_s = statistics.median(matmuls)
    peak_mb = statistics.median(r["peak_rss_mb"] for r in streams)
    max_peak_mb = max(r["peak_rss_mb"] for r in streams)

    reference_started = time.perf_counter()
    in_memory = gvendi(matrix, chunk_rows=args.chunk_rows)
    in_memory_s = time.perf_counter() - reference_started
    one_shot = vendi_from_eigenvalues(np.linalg.eigvalsh((product.double() / n).numpy()))
    streamed = streams[-1]["gvendi"]
    flops = 2 * n * DIM * DIM
    ratio = round(2 * matmul_s / stream_s, 3)
    details = {
        "machine": info, "rows": n, "dim": DIM, "chunk_rows": args.chunk_rows, "repeats": args.repeats,
        "file": {"path": str(path.relative_to(REPO)), "cached": cached, "bytes": path.stat().st_size,
                 "row_groups": meta.num_row_groups, "rows_per_row_group": ROW_GROUP,
                 "compression": meta.row_group(0).column(1).compression},
        "stream_s": round(stream_s, 3), "stream_runs_s": [round(r["seconds"], 3) for r in streams],
        "stream_child_wall_s": [r["wall_s"] for r in streams],
        "matmul_s": round(matmul_s, 3), "matmul_runs_s": [round(s, 3) for s in matmuls],
        "stream_over_matmul": round(stream_s / matmul_s, 3),
        "stream_gflops": round(flops / stream_s / 1e9, 1), "matmul_gflops": round(flops / matmul_s / 1e9, 1),
        "stream_rows_per_s": round(n / stream_s), "stream_file_gb_per_s": round(path.stat().st_size / stream_s / GB, 2),
        "in_memory_gvendi_s": round(in_memory_s, 3),
        "peak_rss_mb": peak_mb, "peak_rss_runs_mb": [r["peak_rss_mb"] for r in streams],
        "idle_child_rss_mb": idle["peak_rss_mb"], "peak_rss_above_idle_mb": round(peak_mb - idle["peak_rss_mb"], 1),
        "data_in_memory_mb": round(matrix.nbytes / 1e6, 1),
        "gvendi_stream": streamed, "gvendi_in_memory": in_memory, "gvendi_matmul_float32": one_shot,
        "relative_difference_in_memory": abs(streamed - in_memory) / in_memory,
        "relative_difference_matmul_float32": abs(streamed - one_shot) / one_shot,
        "targets_met": {"time": ratio >= 1, "memory": max_peak_mb * 1e6 < GB},
        "seconds": round(time.perf_counter() - started, 1),
    }
    plot = plot_rss(streams, idle["peak_rss_mb"], n, args.chunk_rows)
    details["plot"] = str(plot.relative_to(REPO)) if plot else None
    result = {"benchmark": "gvendi_stream", "ratio": ratio, "target": target, "details": details}
    command = " ".join(["python -m benchmarks.gvendi_stream", *sys.argv[1:]])
    f = details["file"]
    lines = [
        "# G-Vendi streamed from Parquet vs one in-memory XᵀX matmul", "",
        f"`{command}` — {n:,} × {DIM} unit float32 rows ({CLUSTERS} clusters, seed {SEED}), "
        f"{f['bytes'] / GB:.2f} GB file, {f['row_groups']} row groups of {ROW_GROUP} rows, {f['compression']}; "
        f"chunk_rows {args.chunk_rows}; {info['threads']} torch threads; fp32 peak {info['fp32_gflops']} GFLOP/s, "
        f"bf16 peak {info['bf16_gflops']} GFLOP/s; medians of {args.repeats} interleaved repeats.", "",
        "| | median s | runs s | GFLOP/s (2nd²) | peak RSS MB |", "|---|---|---|---|---|",
        f"| stream `gvendi_of_parquet` (child) | {stream_s:.2f} | {details['stream_runs_s']} | "
        f"{details['stream_gflops']} | {peak_mb} (idle child {idle['peak_rss_mb']}; "
        f"runs {details['peak_rss_runs_mb']}) |",
        f"| matmul `X.T @ X` (in memory) | {matmul_s:.2f} | {details['matmul_runs_s']} | {details['matmul_gflops']} | "
        f"— (data alone {details['data_in_memory_mb']}) |",
        f"| `gvendi()` in memory, one run | {in_memory_s:.2f} | | | |", "",
        f"Headline ratio 2 × matmul ÷ stream = **{ratio}** (target ≥ 1: "
        f"{'met' if details['targets_met']['time'] else 'not met'}); "
        f"stream ÷ matmul = {details['stream_over_matmul']}. "
        f"Peak RSS {max_peak_mb} MB at most (target < 1000 MB: "
        f"{'met' if details['targets_met']['memory'] else 'not met'}).", "",
        f"G-Vendi: streamed {streamed:.6f}, in-memory `gvendi()` {in_memory:.6f} (relative difference "
        f"{details['relative_difference_in_memory']:.1e}), plain float32 matmul product {one_shot:.6f} "
        f"({details['relative_difference_matmul_float32']:.1e}).", "",
        f"Data file {'reused from cache' if cached else 'written this run'}; whole run {details['seconds']} s.", "",
    ]
    if plot:
        lines += [f"![child RSS over time]({plot.name})", ""]
    emit(result, "\n".join(lines), args.json)


if __name__ == "__main__":
    main()
