"""Does the diversity of a training set predict how well a student trained on it does out of distribution?

The paper's claim (docs/study.md), as `prism study` tests it (`prismatic.student.study`), on this repository's
data: the pool is GSM8K test problems 0–999 with their reference solutions; the sets are GSM8K problems 1000+
(in distribution, the first `--eval-limit`) and SVAMP (out of distribution, the first `--eval-limit`). Every
other setting is the configuration model's default (`study`, `student`, `features`, `metrics`), so the
study's fingerprint does not depend on this machine's prism.yaml; only `orchestration` is read from it (with
`executor: ray`, the training runs are Ray tasks).

The journal and the report go to `benchmarks/results/study/` (`study_quick/` with `--quick`): rerunning the
command, here or on another machine with the repository's journal, resumes with the next unfinished run.

    python -m benchmarks.generalization [--quick] [--size 64] [--seeds 3] [--eval-limit 100] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl

from benchmarks.common import RESULTS, machine, stdout_to_stderr
from prismatic.config import PrismConfig
from prismatic.config_file import load_config
from prismatic.models import resolve_model
from prismatic.student.sets import EvalSet, load_eval_set
from prismatic.student.study import (
    QUICK_POOL_ROWS,
    check_inputs,
    conduct_study,
    decontaminated_pool,
    quick_duplicates,
    quick_settings,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
GSM8K, SVAMP = SHARED / "gsm8k" / "test.jsonl", SHARED / "svamp" / "svamp.jsonl"
POOL_SIZE = 1000


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="`prism study --quick`'s settings: minutes, not hours")
    parser.add_argument("--size", type=int, default=None, help="samples per subset (the study section's default)")
    parser.add_argument("--seeds", type=int, default=None, help="training seeds per subset (likewise)")
    parser.add_argument("--eval-limit", type=int, default=100, help="problems of each set (NLL)")
    parser.add_argument("--json", action="store_true")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if not (GSM8K.exists() and SVAMP.exists()):
        print(json.dumps({"benchmark": "generalization", "skipped": f"needs {GSM8K} and {SVAMP}"}))
        return
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    home = Path(os.environ.get("PRISM_HOME", Path(__file__).resolve().parents[1] / ".prism"))
    config = PrismConfig(orchestration=load_config(home).orchestration)
    config.home = home
    if args.quick:
        config = quick_settings(config)
    study = config.study.model_copy(update={key: value for key, value in (("size", args.size), ("seeds", args.seeds))
                                            if value is not None})
    config = config.model_copy(update={"study": study})
    limit = config.student.eval_limit if args.quick else args.eval_limit
    gsm8k = load_eval_set(GSM8K)
    items = gsm8k.items[:QUICK_POOL_ROWS if args.quick else POOL_SIZE]
    pool = pl.DataFrame({"id": [f"gsm8k-{i}" for i in range(len(items))], "prompt": [item.prompt for item in items],
                         "response": [item.reference for item in items]})
    sets = [EvalSet("gsm8k-1000+", GSM8K, gsm8k.items[POOL_SIZE:POOL_SIZE + limit]), load_eval_set(SVAMP, limit=limit)]
    pool, removed = decontaminated_pool(pool, sets, config.synthesis.decontamination.ngram, str(GSM8K))
    check_inputs(pool, sets, config.study, str(GSM8K))
    out = RESULTS / ("study_quick" if args.quick else "study")
    with stdout_to_stderr():  # the trainer prints its log lines: stdout is for the result
        base = resolve_model(config.student.base, config.models_dir)
        report = conduct_study(pool, sets, config, out, base_model=base,
                               duplicates=quick_duplicates(study.size) if args.quick else None,
                               notes={"benchmark": "generalization", "commit": commit(), "machine": machine(),
                                      "load_average": list(os.getloadavg()),
                                      "pool": {"source": f"{GSM8K} problems 0–{len(items) - 1}", "rows": pool.height,
                                               "removed_as_eval_problems": removed}})
    summary = {key: report[key] for key in ("benchmark", "out", "runs", "planned_runs", "subsets", "planned_subsets",
                                            "sets", "partial", "spread", "format_only", "compute")}
    print(json.dumps(summary) if args.json else json.dumps(summary, indent=1))
    print(f"report: {Path(report['out']) / 'study.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
