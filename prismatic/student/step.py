"""The `student_eval` step of a round: decontaminate the round's training rows against the evaluation
sets, train the student on the rest, evaluate it and its base model (docs/formulas.md#student).

    train rows   the round's pool (`student.train_on: pool`) or only the rows it added (`new`)
    removed      a train row whose prompt shares a word n-gram (n = `synthesis.decontamination.ngram`,
                 10 by default; `prismatic.data.quality.ngrams`) with a problem of any evaluation set,
                 or whose normalized prompt equals one (so a short planted problem is caught too);
                 each becomes a `rejections` row (reason `eval_set_contamination`)
    chats        the rest, as `prism export` writes them (`prismatic.data.export.with_messages`)
    student      `train_student` on those chats (`prismatic.student.train`)
    evaluation   `evaluate_student` of the student on each set (NLL on its first `eval_limit`
                 problems, accuracy on its first `accuracy_limit`), and the NLL of the base model
                 on the same problems (`base_nll`), so a row says what the round's data changed

Decontamination uses every problem of a set, not only the evaluated ones. Like the other steps it
knows nothing of Dagster: `prism_assets.assets.student` reads the pool, calls `student_eval_step` and
writes what it returns. Table columns: `prismatic.storage.schema` (docs/data-model.md).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from prismatic.config import StudentConfig
from prismatic.data.export import with_messages
from prismatic.data.quality import BenchmarkIndex, exact_key
from prismatic.errors import PrismError
from prismatic.storage.schema import empty, schema
from prismatic.student.sets import EvalSet
from prismatic.synthesis.steps import StepOutput

REASON = "eval_set_contamination"
"""The `rejections` reason of a train row removed because it holds an evaluation-set problem."""


@dataclasses.dataclass(frozen=True)
class Contamination:
    """Where a train row's prompt occurs in an evaluation set: the set, its file, the item and the shared
    n-gram (None for an exact match of the normalized prompt)."""

    set: str
    path: str
    item: str
    ngram: str | None

    def detail(self) -> str:
        return json.dumps({"set": self.set, "file": self.path, "item": self.item, "ngram": self.ngram})


class EvalSetIndex:
    """Every word n-gram and every normalized prompt of the evaluation sets' problems."""

    def __init__(self, sets: Sequence[EvalSet], ngram: int):
        self.grams = BenchmarkIndex(ngram)
        self.exact: dict[str, Contamination] = {}
        self.sets = {f"{s.name}:{s.path}": s for s in sets}  # the index's "path" of each set → the set
        for label, eval_set in self.sets.items():
            self.grams.add_texts(label, [(i, item.prompt) for i, item in enumerate(eval_set.items)])
            for item in eval_set.items:
                self.exact.setdefault(exact_key(item.prompt), Contamination(eval_set.name, str(eval_set.path),
                                                                            item.id, None))

    def match(self, prompt: str) -> Contamination | None:
        """Where `prompt` occurs in a set: its normalized text first, else its first shared n-gram."""
        found = self.exact.get(exact_key(prompt))
        if found is not None:
            return found
        hit = self.grams.match(prompt)
        if hit is None:
            return None
        gram, source = hit
        eval_set = self.sets[source.path]
        return Contamination(eval_set.name, str(eval_set.path), eval_set.items[source.line].id, gram)


def decontaminate(rows: pl.DataFrame, sets: Sequence[EvalSet], ngram: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(rows without evaluation-set problems, their `rejections` rows), in the order of `rows`."""
    index = EvalSetIndex(sets, ngram)
    removed = []
    for row_id, prompt in zip(rows["id"].to_list(), rows["prompt"].to_list(), strict=True):
        found = index.match(prompt)
        if found is not None:
            removed.append({"id": row_id, "reason": REASON, "detail": found.detail()})
    rejections = pl.DataFrame(removed, schema=schema("rejections"))
    return rows.filter(~pl.col("id").is_in(rejections["id"].implode())), rejections


def train_rows(key: str, pool: pl.DataFrame, train_on: str) -> pl.DataFrame:
    """The rows a round's student trains on: its whole `pool`, or (`new`) the rows it added."""
    return pool if train_on == "pool" else pool.filter(pl.col("round_added") == key)


def student_eval_step(key: str, pool: pl.DataFrame, config: StudentConfig, eval_sets: Sequence[EvalSet], *,
                      base_model: str | Path, model_dir: Path, ngram: int,
                      rejections: pl.DataFrame | None = None, progress: bool = False) -> StepOutput:
    """Round `key`'s `student_eval` (one row per set) and `rejections` (module docstring).

    eval_sets: the whole sets (decontamination); each is evaluated on its first `config.eval_limit`
      problems. base_model: the resolved base (`prismatic.models.resolve_model`); the student is saved to `model_dir`.
    rejections: the round's stored rejections; its earlier `eval_set_contamination` rows are replaced.
    Provenance of student_eval: the train report, the sets (name, path, problems). Facts: train_rows,
    removed, model_dir, train_seconds, train_loss (first and last step), and per set nll, base_nll,
    accuracy.
    """
    from prismatic.student.evaluate import evaluate_student
    from prismatic.student.train import train_student

    if not eval_sets:
        raise PrismError("student.eval_sets is empty: the student_eval asset needs at least one evaluation set")
    rows, removed = decontaminate(train_rows(key, pool, config.train_on), eval_sets, ngram)
    if rows.is_empty():
        raise PrismError(f"round {key}: no {config.train_on} rows left to train the student on "
                         f"({removed.height} removed as evaluation-set problems)")
    chats = with_messages(rows)["messages"].to_list()
    report = train_student(chats, model_dir, config, base_model=base_model, progress=progress)
    evaluated = [dataclasses.replace(s, items=s.items[:config.eval_limit]) for s in eval_sets]
    student = evaluate_student(model_dir, evaluated, accuracy_limit=config.accuracy_limit, progress=progress)
    base = evaluate_student(Path(base_model), evaluated, accuracy_limit=0, progress=progress)
    eval_seconds = sum(student["seconds"].values()) + sum(base["seconds"].values())
    last_loss = report.losses[-1] if report.losses else None
    frame = pl.DataFrame([{
        "set": name, "n": result["n"], "nll": result["nll"], "base_nll": base["sets"][name]["nll"],
        "accuracy": result["accuracy"], "accuracy_n": result["accuracy_n"], "train_on": config.train_on,
        "train_rows": rows.height, "removed": removed.height, "train_steps": report.steps, "train_loss": last_loss,
        "train_seconds": report.seconds, "eval_seconds": round(eval_seconds, 3),
    } for name, result in student["sets"].items()], schema=schema("student_eval"))
    earlier = rejections.filter(pl.col("reason") != REASON) if rejections is not None else empty("rejections")
    sets_about = [{"name": s.name, "path": str(s.path), "problems": len(s.items), "evaluated": len(e.items)}
                  for s, e in zip(eval_sets, evaluated, strict=True)]
    facts = {"train_rows": rows.height, "removed": removed.height, "model_dir": str(model_dir),
             "train_seconds": report.seconds, "train_steps": report.steps,
             "train_loss_first": report.losses[0] if report.losses else None, "train_loss_last": last_loss}
    for row in frame.iter_rows(named=True):
        facts |= {f"nll/{row['set']}": row["nll"], f"base_nll/{row['set']}": row["base_nll"],
                  f"accuracy/{row['set']}": row["accuracy"]}
    return StepOutput({"student_eval": frame, "rejections": pl.concat([earlier, removed])},
                      provenance={"student_eval": {"train": report.to_dict(), "sets": sets_about,
                                                   "config": config.model_dump(mode="json")}},
                      facts=facts)
