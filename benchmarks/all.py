"""Run a set of benchmarks one after another and gather them into one report (`make bench`).

    python -m benchmarks.all [--quick] [--only NAME ...] --json

Each benchmark runs as its own `python -m benchmarks.NAME ... --json` child (the arguments below),
one at a time so they never share the CPU; its JSON line is collected and its markdown report
(benchmarks/results/NAME.md, plots beside it) is appended to benchmarks/results/REPORT.md under a
summary table: headline ratio, target, whether it was met, wall time and the exact command. The
latest run of each benchmark is kept in benchmarks/results/all_runs.json, so `--only NAME` refreshes
one benchmark's row and section and keeps the others'. Prints
one JSON object: `benchmark` "all", `ratio` = the number of benchmarks whose targets were all met ÷
the number run, `target` 1.0, `details` = each benchmark's JSON and wall time.

At the default sizes the four took 19 minutes on the 2-core development machine (the sum of their
latest runs); `--full` runs kmeans at the issue's size (100K × 1024, k = 10K; 20 minutes here instead
of 5, almost all of it in the paper method).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from benchmarks.common import RESULTS

PLAN = {
    "gvendi_stream": [],
    "generation": [],
    "round": [],
    "kmeans": ["--rows", "50000", "--k", "5000", "--methods", "paper,project,sklearn", "--sklearn-iterations", "4"],
}
"""Benchmark → arguments of the default (`make bench`) run."""
FULL = {"kmeans": ["--methods", "paper,project,sklearn", "--sklearn-iterations", "2"]}
"""Arguments that replace PLAN's under --full."""


def run_one(name: str, args: list[str]) -> dict:
    command = [sys.executable, "-m", f"benchmarks.{name}", *args, "--json"]
    shown = "python -m " + " ".join([f"benchmarks.{name}", *args, "--json"])
    print(f"[all] {shown}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
    seconds = time.perf_counter() - started
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    result = json.loads(lines[-1]) if done.returncode == 0 and lines else None
    return {"command": shown, "seconds": round(seconds, 1), "exit": done.returncode, "result": result}


def targets_met(result: dict | None) -> bool | None:
    """Whether a benchmark met its targets (its `targets_met` or `meets_target`); None if skipped or none stated."""
    if result is None or result.get("ratio") is None:
        return None
    details = result["details"]
    met = details.get("targets_met", details.get("meets_target"))
    if isinstance(met, dict):
        return all(met.values())
    return met if isinstance(met, bool) else None


def report(runs: dict[str, dict]) -> str:
    """REPORT.md: a summary row per benchmark in `runs` (this invocation's and earlier ones'), then
    each benchmark's own markdown report."""
    rows = []
    for name, run in runs.items():
        result = run["result"] or {}
        met = targets_met(run["result"])
        target = result.get("target", f"failed: exit {run['exit']}")
        rows.append(f"| {name} | {result.get('ratio', '—')} | {target} | "
                    f"{'—' if met is None else ('yes' if met else 'no')} | {run['seconds']:.0f} | {run['finished']} | "
                    f"`{run['command']}` |")
    total = sum(run["seconds"] for run in runs.values())
    parts = ["# Benchmark report", "",
             f"The latest run of each benchmark through `python -m benchmarks.all` (`make bench`): "
             f"{total / 60:.1f} min of benchmarks in all.", "",
             "| benchmark | ratio | target | met | wall s | finished (UTC) | command |",
             "|---|---|---|---|---|---|---|", *rows, ""]
    for name in runs:
        section = RESULTS / f"{name}.md"
        if section.exists():
            parts += [section.read_text().replace("\n# ", "\n## ", 1).replace("# ", "## ", 1), ""]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="every benchmark's --quick size")
    parser.add_argument("--full", action="store_true", help="kmeans at the issue's full size (about an hour)")
    parser.add_argument("--only", nargs="+", choices=list(PLAN), help="run only these")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    runs = {}
    for name in args.only or PLAN:
        extra = ["--quick"] if args.quick else (FULL.get(name, PLAN[name]) if args.full else PLAN[name])
        runs[name] = run_one(name, extra)
        runs[name]["finished"] = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    seconds = time.perf_counter() - started
    RESULTS.mkdir(parents=True, exist_ok=True)
    latest_path = RESULTS / "all_runs.json"
    latest = json.loads(latest_path.read_text()) if latest_path.exists() else {}
    latest.update(runs)
    latest_path.write_text(json.dumps(latest, indent=2) + "\n")
    (RESULTS / "REPORT.md").write_text(report({name: latest[name] for name in PLAN if name in latest}))
    met = [targets_met(run["result"]) for run in runs.values()]
    summary = {"benchmark": "all", "ratio": round(sum(m is True for m in met) / len(met), 3), "target": 1.0,
               "details": {"seconds": round(seconds, 1), "runs": runs}}
    print(json.dumps(summary) if args.json else json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
