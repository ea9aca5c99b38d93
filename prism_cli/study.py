"""`prism study`: does a training subset's diversity predict how much a student trained on it gains on held-out
sets? The command reads the pool and the sets, checks them, and hands them to `prismatic.student.study`
(docs/study.md). `--json` prints one JSON object on stdout; progress and the trainer's output go to stderr; a
user-fixable error is one line naming the file, line and field, before anything is written."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from prism_cli.defaults import default_of

Home = Annotated[Path | None, typer.Option("--home", help="Prism home (default $PRISM_HOME, else ./.prism).",
                                           show_default=False)]


def register(app: typer.Typer) -> None:
    """Add `study` to the `prism` app."""
    app.command("study")(study)


def study(pool: Annotated[str, typer.Argument(help="JSONL or Parquet rows with the `data` section's id, prompt and "
                                                   "response fields, or a round key (r003): the store's pool as of "
                                                   "that round.")],
          eval_sets: Annotated[list[str], typer.Option("--eval", help="An evaluation set, as `prism evaluate` reads "
                                                       "it (GSM8K, SVAMP, or a student.eval_sets entry by name or "
                                                       "path); repeat for more.", show_default=False)],
          size: Annotated[int | None, typer.Option("--size", show_default=False, help="Samples in every subset "
                                                   f"({default_of('study.size')}).")] = None,
          seeds: Annotated[int | None, typer.Option("--seeds", show_default=False, help="Training seeds per subset "
                                                    f"({default_of('study.seeds')}).")] = None,
          quick: Annotated[bool, typer.Option("--quick", help="A smoke run of minutes: the pool's first rows, a few "
                                              "small subsets, few problems per set (docs/study.md).")] = False,
          out: Annotated[Path | None, typer.Option("--out", help="Report folder holding the journal runs.jsonl; an "
                                                   "unfinished study there resumes (default: "
                                                   "<home>/studies/<fingerprint>).", show_default=False)] = None,
          store: Annotated[str | None, typer.Option("--store", help="Store URI for a round key (overrides prism.yaml "
                                                    "and $PRISM_STORE).")] = None,
          as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
          home: Home = None) -> None:
    """Train students on a ladder of equal-size subsets of POOL (K seeds each), evaluate them on each --eval set,
    and report the Spearman ρ of every diversity metric with the students' gain, with bootstrap intervals."""
    from prism_cli.student import eval_set_spec, section_options
    from prismatic.config_file import CONFIG_FILE, load_config
    from prismatic.models import resolve_model
    from prismatic.ray_connect import check_head
    from prismatic.student.ladder import duplicate_levels
    from prismatic.student.sets import load_eval_set
    from prismatic.student.study import (
        QUICK_POOL_ROWS,
        check_inputs,
        conduct_study,
        decontaminated_pool,
        fingerprint,
        quick_duplicates,
        quick_settings,
        settings_of,
    )

    config = quick_settings(load_config(home)) if quick else load_config(home)
    config = config.model_copy(update={"study": section_options(config.study, size=size, seeds=seeds)})
    frame, source = _read_pool(pool, config, store)
    if quick:
        frame = frame.head(QUICK_POOL_ROWS)
    sets = [load_eval_set(eval_set_spec(text, config.student.eval_sets), limit=config.student.eval_limit)
            for text in eval_sets]
    frame, removed = decontaminated_pool(frame, sets, config.synthesis.decontamination.ngram, source)
    check_inputs(frame, sets, config.study, source)
    if config.orchestration.executor == "ray":
        check_head(config.orchestration.ray, config.home / CONFIG_FILE)
    duplicates = quick_duplicates(config.study.size) if quick else duplicate_levels(config.study.size)
    folder = out or config.home / "studies" / fingerprint(settings_of(frame, sets, config, duplicates))
    with contextlib.redirect_stdout(sys.stderr):  # the trainer prints its log lines: stdout is for the result
        report = conduct_study(frame, sets, config, folder, duplicates=duplicates,
                               base_model=resolve_model(config.student.base, config.models_dir),
                               notes={"pool": {"source": source, "rows": frame.height,
                                               "removed_as_eval_problems": removed}})
    if as_json:
        print(json.dumps(report))
        return
    print(f"{report['subsets']} subsets, {report['runs']} runs; report: {Path(report['out']) / 'study.md'}")
    for name, metrics in report["sets"].items():
        print(f"{name}: " + ", ".join(f"{metric} {entry['rho']:+.2f}" for metric, entry in metrics.items()
                                      if entry["rho"] is not None))


def _read_pool(text: str, config, store: str | None):
    """(id, prompt, response rows, what to name in errors) of a data file, or of the store's pool as of round
    `text` when `text` is a round key and no such file exists."""
    from prismatic.data.samples import load_samples
    from prismatic.rounds import is_round

    if is_round(text) and not Path(text).exists():
        from prismatic.storage.deltas import read_as_of
        from prismatic.storage.factory import open_store

        opened = open_store(store or config.store_uri, s3=config.s3)
        return read_as_of(opened, "pool", text, ["id", "prompt", "response"]), f"{opened.uri} pool as of {text}"
    return load_samples(text, config.data).select("id", "prompt", "response"), text

