"""The opt-in `student_eval` asset: a student trained on each round's pool and measured on held-out sets.

It is in the definitions only when prism.yaml has `student.enabled: true` (`prism_assets.definitions`);
`prism_round` selects its group, `STUDENT_GROUP`, so the job runs it after `pool` exactly then. The step
(`prismatic.student.step`) removes the evaluation sets' problems from the training rows (as `rejections`
rows), trains the student, and evaluates it and its base model. Metadata: NLL and accuracy per set, and
plots of both across rounds.
"""

import base64
import io as bytes_io

import polars as pl
from dagster import AssetExecutionContext, MaterializeResult, MetadataValue

from prism_assets import tables
from prism_assets.assets.pool import pool
from prism_assets.automation.jobs import STUDENT_GROUP
from prism_assets.partitions import round_asset
from prismatic.models import resolve_model
from prismatic.storage.schema import empty
from prismatic.student.sets import load_eval_set
from prismatic.student.step import student_eval_step
from resources.home import PrismHome
from resources.store import StoreResource

MODELS_SUBDIR = "students"
"""Each round's student is saved to `<home>/students/<round>` (a plain transformers folder)."""


@round_asset(deps=[pool], kinds={"polars", "pytorch"}, code_version="1", group_name=STUDENT_GROUP,
             description="The round's student (opt-in: student.enabled): the pool (or its new rows, student.train_on) "
                         "without the problems of student.eval_sets (each a `rejections` row, eval_set_contamination), "
                         "fine-tuned from student.base on the assistant tokens, then one row per evaluation set: mean "
                         "assistant-token NLL of the references for the student and its base, and exact-match accuracy "
                         "of greedy answers. Metadata: every value and plots of NLL and accuracy across rounds.")
def student_eval(context: AssetExecutionContext, prism_home: PrismHome, store: StoreResource) -> MaterializeResult:
    key = context.partition_key
    config = prism_home.config()
    stored = store.store()
    sets = [load_eval_set(spec) for spec in config.student.eval_sets]
    output = student_eval_step(
        key, tables.read(store, "pool", key), config.student, sets,
        base_model=resolve_model(config.student.base, config.models_dir),
        model_dir=config.home / MODELS_SUBDIR / key, ngram=config.synthesis.decontamination.ngram,
        rejections=tables.read(store, "rejections", key) if stored.exists("rejections", key) else empty("rejections"))
    history = tables.history(store, "student_eval", key, output.tables["student_eval"],
                             ["set", "nll", "base_nll", "accuracy"])
    plots = {f"{metric} by round": MetadataValue.md(
        f"![{metric} by round](data:image/png;base64,{base64.b64encode(student_plot_png(history, metric)).decode()})")
        for metric in ("nll", "accuracy") if history[metric].drop_nulls().len()}
    version, metadata = tables.write_step(context, store, output)
    return MaterializeResult(data_version=version, metadata={**metadata, **plots})


def student_plot_png(history: pl.DataFrame, metric: str) -> bytes:
    """A small PNG (5 × 3 in at 80 dpi): `metric` (nll or accuracy) of each set against the round; for
    nll, each set's base model as a dashed line of the same colour."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 3), dpi=80)
    axes = figure.add_subplot()
    for i, name in enumerate(sorted(history["set"].unique().to_list())):
        rows = history.filter(set=name).with_columns(pl.col(metric, "base_nll").fill_null(float("nan")))
        colour = f"C{i % 10}"
        axes.plot(rows["round"].to_list(), rows[metric].to_list(), marker="o", color=colour, label=name)
        if metric == "nll":
            axes.plot(rows["round"].to_list(), rows["base_nll"].to_list(), linestyle="--", color=colour,
                      label=f"{name} (base)")
    axes.set_title("student NLL of the references (nats/token; lower is better)" if metric == "nll" else
                   "student exact-match accuracy (higher is better)", fontsize=9)
    axes.set_xlabel("round")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="best")
    figure.tight_layout()
    buffer = bytes_io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
