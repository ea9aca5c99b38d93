"""`prism export`, `prism train`, `prism evaluate`: training data out of the store, a student trained on
it, the student measured on held-out sets (docs/formulas.md#student, docs/student.md).

`prism_cli.main` registers these functions as commands (`register`). Like every command, `--json`
prints one JSON object on stdout (progress bars and logs go to stderr), and a user-fixable error is
one line naming the file, line and field, written before anything is.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from prism_cli.defaults import default_of
from prismatic.errors import PrismError

Home = Annotated[Path | None, typer.Option("--home", help="Prism home (default $PRISM_HOME, else ./.prism).",
                                           show_default=False)]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]


def register(app: typer.Typer) -> None:
    """Add `export`, `train` and `evaluate` to the `prism` app."""
    app.command("export")(export)
    app.command("train")(train)
    app.command("evaluate")(evaluate)


def export(out: Annotated[Path, typer.Option("--out", help="Folder to write (new, empty, or an earlier export).")],
           fmt: Annotated[str, typer.Option("--format", help="chat-jsonl | openai | hf | parquet.")] = "chat-jsonl",
           table: Annotated[str, typer.Option("--table", help="pool | verified_samples | selection (kept "
                                                             "candidates).")] = "pool",
           rounds: Annotated[str | None, typer.Option("--rounds", help="FIRST:LAST, e.g. r001:r003, or one round "
                                                      "(default: every round).", show_default=False)] = None,
           store: Annotated[str | None, typer.Option("--store", help="Store URI (overrides prism.yaml and "
                                                     "$PRISM_STORE).")] = None,
           as_json: Json = False, home: Home = None) -> None:
    """Write training-ready data from the store (chat messages, OpenAI JSONL, a `datasets` folder or
    Parquet) with its dataset card: rows and G-Vendi per round, the config, the commit."""
    from prismatic.config_file import load_config
    from prismatic.data.export import export_dataset
    from prismatic.storage.factory import open_store

    config = load_config(home)
    card = export_dataset(open_store(store or config.store_uri, s3=config.s3), out, table=table, rounds=rounds,
                          fmt=fmt, config=config.model_dump(mode="json"))
    summary = {"out": str(Path(out).expanduser().absolute()), "format": card["format"], "table": card["table"],
               "rows": card["rows"], "rounds": {key: value["rows"] for key, value in card["per_round"].items()},
               "gvendi": card["gvendi"]}
    _emit(summary, as_json)


def train(data: Annotated[Path, typer.Argument(help="What `prism export` wrote (its folder or data file), or "
                                                    "JSONL/Parquet rows with `messages` or `prompt`/`response`.")],
          out: Annotated[Path, typer.Option("--out", help="Folder for the trained model.")],
          base: Annotated[str | None, typer.Option("--base", help="Model to fine-tune: folder under <home>/models, "
                                                   f"a path or a Hugging Face id ({default_of('student.base')}).",
                                                   show_default=False)] = None,
          epochs: Annotated[int | None, typer.Option("--epochs", show_default=False, help="Passes over DATA "
                                                     f"({default_of('student.epochs')}).")] = None,
          lr: Annotated[float | None, typer.Option("--lr", show_default=False,
                                                   help=f"AdamW learning rate ({default_of('student.lr')}).")] = None,
          lora_rank: Annotated[int | None, typer.Option("--lora-rank", show_default=False,
                                                        help="0: every weight; r > 0: rank-r LoRA, merged "
                                                             f"({default_of('student.lora_rank')}).")] = None,
          seed: Annotated[int | None, typer.Option("--seed", show_default=False, help="Same seed and data, same "
                                                   f"weights ({default_of('student.seed')}).")] = None,
          batch_size: Annotated[int | None, typer.Option("--batch-size", show_default=False, help="Chats per optimizer "
                                                         f"step ({default_of('student.batch_size')}).")] = None,
          as_json: Json = False, home: Home = None) -> None:
    """Fine-tune the student on DATA's assistant tokens only; prints the training report."""
    from prismatic.config_file import load_config
    from prismatic.data.export import read_training_chats
    from prismatic.models import resolve_model
    from prismatic.student.train import train_student

    config = load_config(home)
    student = section_options(config.student, base=base, epochs=epochs, lr=lr, lora_rank=lora_rank, seed=seed,
                              batch_size=batch_size)
    chats = read_training_chats(data)  # bad data is reported before the model loads and before anything is written
    with contextlib.redirect_stdout(sys.stderr):  # the trainer prints its log lines: stdout is for the result
        report = train_student(chats, out, student, base_model=resolve_model(student.base, config.models_dir),
                               progress=True)
    payload = report.to_dict()
    if not as_json:
        losses = payload.pop("losses")
        payload["loss"] = f"{losses[0]:.4f} → {losses[-1]:.4f}" if losses else None
    _emit(payload, as_json)


def evaluate(model: Annotated[str, typer.Argument(help="Model folder (`prism train --out`), a folder under "
                                                       "<home>/models or a Hugging Face id.")],
             sets: Annotated[list[str], typer.Argument(help="JSONL sets (GSM8K, SVAMP, or the fields of a "
                                                            "student.eval_sets entry of prism.yaml, by path or "
                                                            "name).")],
             limit: Annotated[int | None, typer.Option("--limit", show_default=False,
                                                       help="Accuracy of greedy vLLM answers on the first N "
                                                            "problems of each set (0: NLL only; "
                                                            f"{default_of('student.accuracy_limit')}).")] = None,
             as_json: Json = False, home: Home = None) -> None:
    """Mean assistant-token NLL of the reference solutions, and exact-match accuracy (math-verify) of
    greedy answers, per SET: {"sets": {name: {"n", "nll", "accuracy", "accuracy_n"}}}."""
    from prismatic.config_file import load_config
    from prismatic.models import resolve_model
    from prismatic.student.evaluate import evaluate_student
    from prismatic.student.sets import load_eval_set

    if limit is not None and limit < 0:
        raise PrismError(f"option --limit: expected 0 or more problems, got {limit}")
    config = load_config(home)
    loaded = [load_eval_set(eval_set_spec(text, config.student.eval_sets), limit=config.student.eval_limit)
              for text in sets]
    repeated = sorted({s.name for s in loaded if [t.name for t in loaded].count(s.name) > 1})
    if repeated:
        raise PrismError(f"sets named alike: {', '.join(repeated)} (a set's name is its file's stem, or its "
                         "student.eval_sets name)")
    with contextlib.redirect_stdout(sys.stderr):
        result = evaluate_student(resolve_model(model, config.models_dir), loaded,
                                  accuracy_limit=config.student.accuracy_limit if limit is None else limit,
                                  progress=True)
    if as_json:
        print(json.dumps(result))
        return
    print("set\tn\tnll\taccuracy\taccuracy_n")
    for name, row in result["sets"].items():
        accuracy = "—" if row["accuracy"] is None else f"{row['accuracy']:.4f}"
        print(f"{name}\t{row['n']}\t{row['nll']:.4f}\t{accuracy}\t{row['accuracy_n']}")


def eval_set_spec(text: str, configured):
    """The `student.eval_sets` entry named `text` or with the path `text` (its format and fields), else
    `text` as a path (format auto)."""
    for spec in configured:
        if text == spec.name or Path(text).expanduser().absolute() == Path(spec.path).expanduser().absolute():
            return spec
    return text


def section_options(section, **options):
    """`section` (a section of prism.yaml: `student`, `study`) with the command's options over it, validated
    like the file; an invalid option is named (`option --lora-rank: ...`)."""
    from pydantic import ValidationError

    updates = {name: value for name, value in options.items() if value is not None}
    try:
        return type(section).model_validate(section.model_dump(exclude_unset=True) | updates)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = f"--{str(err['loc'][0]).replace('_', '-')}" if err["loc"] else "options"
        raise PrismError(f"option {name}: {err['msg']}") from None


def _emit(payload: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(payload, default=str))
    else:
        for key, value in payload.items():
            print(f"{key}: {value}")
