"""Shared benchmark helpers: the machine's matmul peak, medians of repeats, JSON + markdown output."""

from __future__ import annotations

import json
import os
import platform
import re
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import polars as pl
import torch

from prismatic.metrics.vendi import normalize_rows, vendi_from_gram

RESULTS = Path(__file__).resolve().parent / "results"
GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "test.jsonl"


def gsm8k(n: int) -> pl.DataFrame | None:
    """The first n GSM8K test problems as (id, prompt, response) with the answer in \\boxed{}, the
    `<<…>>` calculator notes removed; None without the data (benchmarks then print a skipped JSON)."""
    if not GSM8K.exists():
        return None
    rows = []
    for i, line in enumerate(GSM8K.read_text().splitlines()[:n]):
        item = json.loads(line)
        body, _, final = item["answer"].rpartition("####")
        body = re.sub(r"<<[^>]*>>", "", body).strip()
        rows.append({"id": f"gsm8k-{i}", "prompt": item["question"], "response": f"{body}\n\\boxed{{{final.strip()}}}"})
    return pl.DataFrame(rows)


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    """(fn(), its wall seconds)."""
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


def median_seconds(fn: Callable[[], object], repeats: int = 3, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak(size: int = 2048, repeats: int = 5) -> dict[str, float]:
    """Measured GFLOP/s of a square matmul (2·size³ FLOPs) in fp32 and bf16 on this machine's CPU."""
    peaks = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(size, size, dtype=dtype)
        b = torch.randn(size, size, dtype=dtype)
        seconds = median_seconds(lambda a=a, b=b: a @ b, repeats=repeats)
        peaks[f"{name}_gflops"] = round(2 * size**3 / seconds / 1e9, 1)
    return peaks


def machine() -> dict:
    return {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, **matmul_peak()}


def rss_mb() -> float:
    """Peak RSS (MB) of this process's own address space: VmHWM. Not `ru_maxrss`, which Linux carries
    across fork and exec, so a child's would start at its parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6  # Linux: KiB


def peak_rss_gb() -> float:
    return rss_mb() / 1000


def cosines(features: torch.Tensor | np.ndarray) -> np.ndarray:
    """Cosine matrix (float64) of the rows of `features`."""
    unit = normalize_rows(torch.as_tensor(features, dtype=torch.float64)).numpy()
    return unit @ unit.T


def cosine_agreement(features: torch.Tensor | np.ndarray, reference: np.ndarray) -> dict:
    """How well the rows of `features` reproduce a reference cosine matrix (n × n, unit diagonal).

    pearson: Pearson r of the off-diagonal cosines; gvendi_rel: G-Vendi of the features ÷ G-Vendi of
    the reference − 1 (signed). G-Vendi in the primal form (n × n), since the reference may come from
    exact gradients (d ≫ n).
    """
    estimate = cosines(features)
    off = ~np.eye(len(estimate), dtype=bool)
    vendi, reference_vendi = vendi_from_gram(estimate), vendi_from_gram(reference)
    return {"pearson": round(float(np.corrcoef(estimate[off], reference[off])[0, 1]), 4), "gvendi": round(vendi, 3),
            "gvendi_reference": round(reference_vendi, 3), "gvendi_rel": round(vendi / reference_vendi - 1, 4)}


def emit(result: dict, markdown: str, as_json: bool) -> None:
    """Print the JSON object (stdout) and write the markdown report under benchmarks/results/."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{result['benchmark']}.md").write_text(markdown)
    (RESULTS / f"{result['benchmark']}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result) if as_json else json.dumps(result, indent=2))


def save_plot(fig, name: str) -> Path:
    """Write a matplotlib figure to `results/<name>` (tight layout, 110 dpi), close it, return the path."""
    import matplotlib.pyplot as plt

    RESULTS.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    path = RESULTS / name
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send file descriptor 1 to stderr (vLLM and its engine processes log to stdout), so that stdout
    carries only the JSON object."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
