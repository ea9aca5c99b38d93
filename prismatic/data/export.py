"""Training-ready exports of the store's samples, and the reader the student trains from.

`export_dataset(store, out, table=..., rounds=..., fmt=...)` writes the rows of one table over a range
of rounds into the folder `out`:

    chat-jsonl   train.jsonl: one {"id", "round", "task", "answer", "messages"} object per line
    openai       train.jsonl: one {"messages": [...]} object per line (the OpenAI fine-tuning format)
    parquet      train.parquet: id, round, task, prompt, response, answer, messages
    hf           a Hugging Face `datasets` folder (`save_to_disk`; `datasets.load_from_disk(out)` opens
                 it) with the parquet columns

`messages` is the chat [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
(`prismatic.data.chats.sample_chat`), the same chat the student is trained on: `read_training_chats`
reads any of the four back as exactly these chats, and `prism train` trains on them. Every export
also carries its dataset card: `dataset_card.json` (machine-readable) and `README.md` (a Hugging
Face dataset card), with the rows and the G-Vendi per round, the configuration, the store and the
partitions read (data version, run), and the commit of the code.

Which rows (`round` below is the partition a row is read from; `rounds` = first..last, inclusive):

    pool              the pool as of `last`, only the rows whose `round_added` is in the range: what each
                      round of the range added (`prismatic.storage.deltas.added_rows`); a row's round is
                      its `round_added`
    verified_samples  every round's verified samples in the range
    selection         every round's kept candidates in the range (their verified samples)

Rows are in round order, and in stored order within a round. Reading goes through the `Store`
contract, so a local and an S3 store export the same files. The folder is built beside `out` and
renamed into place at the end, so a failed export leaves nothing; an existing `out` is replaced
only when it is empty or an earlier export (it holds `dataset_card.json`). Tables and columns:
docs/data-model.md.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from prismatic.data.chats import sample_chat, turns_of
from prismatic.data.samples import jsonl_records
from prismatic.errors import InputError, PrismError
from prismatic.rounds import check_round, round_number, sort_rounds
from prismatic.storage.base import Store
from prismatic.storage.deltas import added_rows

FORMATS = ("chat-jsonl", "openai", "hf", "parquet")
TABLES = ("pool", "verified_samples", "selection")
DATA_FILE = {"chat-jsonl": "train.jsonl", "openai": "train.jsonl", "parquet": "train.parquet", "hf": None}
"""The data file of each format inside the export folder (hf: the `datasets` files)."""
CARD_FILE = "dataset_card.json"
README_FILE = "README.md"
HF_STATE = "state.json"
"""The file `save_to_disk` writes into a `datasets` folder (how `read_training_chats` recognises one)."""

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
COLUMNS = pa.schema([("id", pa.string()), ("round", pa.string()), ("task", pa.string()), ("prompt", pa.string()),
                     ("response", pa.string()), ("answer", pa.string()), ("messages", pa.list_(MESSAGE))])
"""The columns of the parquet and hf exports (plain string and list types, as most readers expect)."""


def parse_rounds(text: str | None) -> tuple[str | None, str | None]:
    """`r001:r003` → (r001, r003); `r002` → (r002, r002); `r001:` and `:r003` leave one end open;
    None → (None, None), every round."""
    if text is None or not text.strip():
        return None, None
    first, sep, last = text.strip().partition(":")
    ends = (first or None, (last or None) if sep else (first or None))
    try:
        for end in ends:
            if end is not None:
                check_round(end)
    except PrismError:
        raise PrismError(f"option --rounds: expected FIRST:LAST round keys like r001:r003, got {text!r}") from None
    if all(ends) and round_number(ends[0]) > round_number(ends[1]):
        raise PrismError(f"option --rounds: {ends[0]} comes after {ends[1]}")
    return ends


def rounds_in(store: Store, table: str, span: tuple[str | None, str | None]) -> list[str]:
    """The rounds of `table` in the store within `span` (inclusive; None: open), in round order."""
    first, last = span
    return [key for key in sort_rounds(store.rounds(table))
            if (first is None or round_number(key) >= round_number(first))
            and (last is None or round_number(key) <= round_number(last))]


def export_rows(store: Store, table: str, span: tuple[str | None, str | None] = (None, None)
                ) -> tuple[pl.DataFrame, list[str]]:
    """(rows, partitions read as 'table/round'): id, round, task, prompt, response, answer of `table`
    over `span` (module docstring). No round of `table` in the span is a `PrismError`."""
    if table not in TABLES:
        raise PrismError(f"option --table: expected one of {', '.join(TABLES)}, got {table!r}")
    rounds = rounds_in(store, table, span)
    if not rounds:
        have = sort_rounds(store.rounds(table))
        raise PrismError(f"table '{table}' has no round in {_span_text(span)} in the store at {store.uri} "
                         f"(it has: {', '.join(have) if have else 'none'})")
    columns = ["id", "round", "task", "prompt", "response", "answer"]
    if table == "pool":
        parts = [added_rows(store, "pool", key).rename({"round_added": "round"}).select(columns) for key in rounds]
        return pl.concat(parts), [f"pool/{key}" for key in rounds]
    parts, read = [], []
    for key in rounds:
        verified = store.read("verified_samples", key)
        read.append(f"verified_samples/{key}")
        if table == "selection":
            kept = store.read("selection", key).filter("kept")["id"]
            verified = verified.filter(pl.col("id").is_in(kept.implode()))
            read.append(f"selection/{key}")
        parts.append(verified.with_columns(round=pl.lit(key)).select(columns))
    return pl.concat(parts), read


def _span_text(span: tuple[str | None, str | None]) -> str:
    return f"{span[0] or 'the first round'}..{span[1] or 'the last round'}"


def with_messages(rows: pl.DataFrame) -> pl.DataFrame:
    """`rows` (prompt, response, ...) with their `messages` chat (`sample_chat`)."""
    chats = [sample_chat(p, r) for p, r in zip(rows["prompt"].to_list(), rows["response"].to_list(), strict=True)]
    return rows.with_columns(messages=pl.Series("messages", chats, dtype=pl.List(pl.Struct(
        {"role": pl.String, "content": pl.String}))))


# ------------------------------------------------------------------------------------ writing


def export_dataset(store: Store, out: str | Path, *, table: str = "pool", rounds: str | None = None,
                   fmt: str = "chat-jsonl", config: dict | None = None) -> dict[str, Any]:
    """Write the export of `table` over `rounds` (`parse_rounds`) in format `fmt` to the folder `out`
    (module docstring); returns its dataset card. `config`: the configuration recorded in the card
    (`PrismConfig.model_dump(mode="json")`)."""
    if fmt not in FORMATS:
        raise PrismError(f"option --format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    span = parse_rounds(rounds)
    out = Path(out).expanduser().absolute()
    _check_out(out)
    rows, read = export_rows(store, table, span)
    if rows.is_empty():
        raise PrismError(f"nothing to export: table '{table}' has no rows in {_span_text(span)}")
    rows = with_messages(rows)
    card = dataset_card(store, rows, read, table=table, span=span, fmt=fmt, config=config)
    out.parent.mkdir(parents=True, exist_ok=True)
    building = out.with_name(f".{out.name}.{os.getpid()}.{time.time_ns()}.tmp")
    building.mkdir()
    try:
        _write_data(building, rows, fmt)
        (building / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
        (building / README_FILE).write_text(card_markdown(card))
        _replace(building, out)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return card


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise PrismError(f"option --out: {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / CARD_FILE).exists():
        raise PrismError(f"option --out: {out} is a folder that holds other files and no earlier export; "
                         "choose a new or empty folder")


def _replace(building: Path, out: Path) -> None:
    """Move the finished folder into place; an earlier export there is removed only after."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.{time.time_ns()}.old")
        out.rename(old)
    building.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _arrow(rows: pl.DataFrame) -> pa.Table:
    return rows.select(COLUMNS.names).to_arrow().cast(COLUMNS)


def _write_data(folder: Path, rows: pl.DataFrame, fmt: str) -> None:
    if fmt == "hf":
        import datasets
        from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

        was_disabled = are_progress_bars_disabled()
        disable_progress_bars()  # one shard of a few rows: no bar on the console
        try:
            datasets.Dataset(_arrow(rows)).save_to_disk(str(folder))
        finally:
            if not was_disabled:
                enable_progress_bars()
    elif fmt == "parquet":
        pq.write_table(_arrow(rows), folder / DATA_FILE[fmt])
    else:
        keep = ["messages"] if fmt == "openai" else ["id", "round", "task", "answer", "messages"]
        with (folder / DATA_FILE[fmt]).open("w", encoding="utf-8") as handle:
            for row in rows.select(keep).iter_rows(named=True):
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")


# ------------------------------------------------------------------------------------ the dataset card


def dataset_card(store: Store, rows: pl.DataFrame, read: Sequence[str], *, table: str,
                 span: tuple[str | None, str | None], fmt: str, config: dict | None) -> dict[str, Any]:
    """The card of an export: format, table, rounds, rows; per round of the rows, their count, the
    round's `diversity_scores` (`pool_gvendi`: the pool's G-Vendi after that round; `candidates_gvendi`:
    G-Vendi of that round's verified samples; null when not scored) and what its generation cost
    (`usage`, as its generations file records it: prompt, completion and total tokens, cost_usd under
    `generator.prices`; null for the seed round and rounds written without it); `gvendi`: the G-Vendi of exactly
    the exported rows from their stored gradient features (null when some row has none, or the rounds
    used different projections); the store, each partition read (data version, run), the
    configuration and the code's commit (`git_commit`)."""
    counts = dict(rows.group_by("round", maintain_order=True).len().iter_rows())
    per_round = {}
    for key in sort_rounds(counts):
        scores = (dict(store.read("diversity_scores", key).select("metric", "value").iter_rows())
                  if store.exists("diversity_scores", key) else {})
        usage = (store.read_metadata("generations", key).get("usage")
                 if store.exists("generations", key) else None)
        per_round[key] = {"rows": counts[key], "pool_gvendi": scores.get("gvendi"),
                          "candidates_gvendi": scores.get("gvendi_candidates"),
                          "usage": {name: usage.get(name) for name in _USAGE} if usage else None}
    sources = {}
    for name in read:
        part, key = name.split("/")
        sources[name] = {"data_version": store.data_version(part, key),
                         "run_id": store.read_metadata(part, key).get("run_id")}
    return {
        "format": fmt, "file": DATA_FILE[fmt], "table": table,
        "rounds": {"first": span[0], "last": span[1], "present": sort_rounds(counts)},
        "rows": rows.height, "per_round": per_round, "gvendi": rows_gvendi(store, rows),
        "store": store.uri, "sources": sources, "config": config, "commit": git_commit(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def rows_gvendi(store: Store, rows: pl.DataFrame) -> float | None:
    """G-Vendi (docs/formulas.md#g-vendi) of the rows' unit gradient features, each read from the
    `gradient_features` of the row's round; None when a row has none or two rounds' projections differ."""
    if rows.is_empty():
        return None
    parts, identity = [], None
    for key in sort_rounds(rows["round"].unique().to_list()):
        if not store.exists("gradient_features", key):
            return None
        meta = store.read_metadata("gradient_features", key)
        this = {"proxy": meta.get("proxy"), **(meta.get("projection") or {})}
        if identity is not None and this != identity:
            return None
        identity = this
        parts.append(store.read("gradient_features", key, columns=["id", "feature"]).with_columns(round=pl.lit(key)))
    features = rows.select("id", "round").join(pl.concat(parts, how="vertical_relaxed"), on=["id", "round"],
                                               how="left", maintain_order="left")
    if features["feature"].null_count():
        return None
    import numpy as np

    from prismatic.metrics.vendi import gvendi

    return gvendi(np.asarray(features["feature"].to_list(), dtype=np.float32))


def git_commit() -> dict[str, Any] | None:
    """{"sha", "dirty"} of the checkout holding this code (dirty: tracked files changed); None outside git."""
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"sha": sha, "dirty": bool(status.strip())}


def card_markdown(card: dict[str, Any]) -> str:
    """The card as a Hugging Face dataset card (README.md: YAML header, then the facts)."""
    lines = ["---", "pretty_name: Prismatic synthetic reasoning data", "task_categories:", "- text-generation",
             "tags:", "- synthetic", "- prismatic", "---", "", "# Prismatic export", "",
             f"{card['rows']} rows of `{card['table']}` ({', '.join(card['rounds']['present'])}), "
             f"format `{card['format']}`. G-Vendi of these rows: {_number(card['gvendi'])}.", "",
             "| round | rows | pool G-Vendi | candidates G-Vendi | tokens (prompt + completion) | cost (USD) |",
             "|---|---|---|---|---|---|"]
    for key, v in card["per_round"].items():
        usage = v.get("usage") or {}
        tokens = (f"{usage['total_tokens']} ({usage['prompt_tokens']} + {usage['completion_tokens']})"
                  if usage.get("total_tokens") is not None else "—")
        cost = f"{usage['cost_usd']:.4f}" if usage.get("cost_usd") is not None else "—"
        lines.append(f"| {key} | {v['rows']} | {_number(v['pool_gvendi'])} | {_number(v['candidates_gvendi'])} | "
                     f"{tokens} | {cost} |")
    commit = card["commit"] or {}
    lines += ["", f"Store: `{card['store']}`. Commit: `{commit.get('sha', 'unknown')}`"
                  f"{' (with uncommitted changes)' if commit.get('dirty') else ''}. Created {card['created']}.",
              "", "Configuration (prism.yaml, resolved):", "", "```json", json.dumps(card["config"], indent=2),
              "```", ""]
    return "\n".join(lines)


_USAGE = ("prompt_tokens", "completion_tokens", "total_tokens", "cost_usd")
"""What the card shows of a round's `usage` (`prismatic.generation.usage.Usage.summary`)."""


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


# ------------------------------------------------------------------------------------ reading back


def read_training_chats(path: str | Path) -> list[list[dict[str, str]]]:
    """The chats of an export (any of the four formats: the folder, or its data file), or of any JSONL
    or Parquet file whose rows hold `messages` (a list of {"role", "content"} with string values) or
    `prompt` and `response` strings (then `sample_chat(prompt, response)`); a chat is one user turn, then
    one assistant turn (`prismatic.data.chats.turns_of`). A bad row is an `InputError`
    naming the file, the line (Parquet and hf: the row, 1-based) and the field; no chat is one too."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "not found")
    if path.is_dir():
        path = _data_path(path)
    if path.is_dir():
        import datasets

        rows = enumerate(datasets.load_from_disk(str(path)), start=1)
    elif path.suffix == ".parquet":
        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as exc:
            raise InputError(path, f"not a readable Parquet file ({exc})") from None
        rows = enumerate(table.to_pylist(), start=1)
    else:
        rows = jsonl_records(path)
    chats = [_chat(path, line, row) for line, row in rows]
    if not chats:
        raise InputError(path, "no rows: nothing to train on")
    return chats


def _data_path(folder: Path) -> Path:
    if (folder / HF_STATE).exists():
        return folder
    card = folder / CARD_FILE
    if card.exists():
        try:
            name = json.loads(card.read_text())["file"]
        except (ValueError, KeyError, TypeError):
            raise InputError(card, "not a dataset card of `prism export` (no 'file')", field="file") from None
        if name:
            return folder / name
    for name in ("train.jsonl", "train.parquet"):
        if (folder / name).exists():
            return folder / name
    raise InputError(folder, "a folder without an export (no dataset_card.json, state.json, train.jsonl or "
                             "train.parquet)")


def _chat(path: Path, line: int, row: Any) -> list[dict[str, str]]:
    if not isinstance(row, dict):
        raise InputError(path, f"expected an object, got {type(row).__name__}", line=line)
    if "messages" not in row:
        for field in ("prompt", "response"):
            if not isinstance(row.get(field), str):
                got = "missing" if field not in row else f"expected a string, got {type(row[field]).__name__}"
                raise InputError(path, f"{got} (a row needs `messages`, or `prompt` and `response`)",
                                 line=line, field="messages" if field not in row else field)
        return sample_chat(row["prompt"], row["response"])
    messages = row["messages"]
    if not isinstance(messages, list) or not messages:
        raise InputError(path, "expected a non-empty list of {role, content} messages", line=line, field="messages")
    for i, message in enumerate(messages):
        if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)):
            raise InputError(path, f"message {i}: expected {{\"role\": str, \"content\": str}}", line=line,
                             field="messages")
    try:
        return sample_chat(*turns_of(messages))
    except PrismError as exc:
        raise InputError(path, str(exc), line=line, field="messages") from None
