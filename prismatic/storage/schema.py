"""Every table of the store: its columns and dtypes (`TABLES`), its key (`KEYS`), and `conform`, the check
every write passes. The one place a table's shape is written down; see docs/data-model.md.

The hive partition column `round` lives only in a partition's directory name, never inside a file, so
DuckDB's `hive_partitioning` adds it.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from prismatic.errors import PrismError

PARTITION_COLUMN = "round"

ANY_WIDTH = 0
"""`pl.Array(pl.Float32, ANY_WIDTH)` in `TABLES` stands for a fixed-size float32 array of any width
(gradient features: the width is the projection dimension d). `schema(table, dim=d)` fills it in."""

_STR = pl.String()
_INT = pl.Int64()
_FLOAT = pl.Float64()
_BOOL = pl.Boolean()

TABLES: dict[str, dict[str, pl.DataType]] = {
    # The seed problems of round r000. level: difficulty level (weights few-shot sampling).
    "seeds": {
        "id": _STR, "prompt": _STR, "response": _STR, "answer": _STR, "task": _STR,
        "source": _STR, "level": _INT,
    },
    # Raw LLM outputs. kind: 'problem' | 'solution'; task: 'math' | 'nli'; parent_ids: the few-shot ids a
    # problem was made
    # from, or the problem id a solution answers; request_key: the deterministic request key;
    # sampling: the sampling parameters as JSON; prompt_tokens, completion_tokens, latency_s: what the
    # request cost (tokens; seconds), shared by the rows of one request, null when not known.
    "generations": {
        "id": _STR, "kind": _STR, "task": _STR, "parent_ids": pl.List(_STR), "text": _STR, "model": _STR,
        "request_key": _STR, "sampling": _STR, "prompt_tokens": _INT, "completion_tokens": _INT,
        "latency_s": _FLOAT,
    },
    # Solutions kept by the majority vote. votes: solutions whose answer equals this one;
    # majority_size: the size of the winning answer group of the problem.
    "verified_samples": {
        "id": _STR, "problem_id": _STR, "prompt": _STR, "response": _STR, "answer": _STR,
        "votes": _INT, "majority_size": _INT, "task": _STR,
    },
    # Projected per-sample gradients (docs/formulas.md#g-vendi). dim: the width of `feature`; n_tokens: tokens
    # the loss was taken over; truncated: whether max_tokens cut the chat.
    "gradient_features": {
        "id": _STR, "feature": pl.Array(pl.Float32, ANY_WIDTH), "proxy": _STR, "mode": _STR,
        "dim": _INT, "n_tokens": _INT, "truncated": _BOOL,
    },
    # Spherical k-means of the pool. distance: cosine distance to the cluster's centroid.
    "clusters": {"id": _STR, "cluster": _INT, "cluster_size": _INT, "distance": _FLOAT},
    # The centroids of that clustering (unit rows); the next round assigns its candidates to them.
    "centroids": {"cluster": _INT, "centroid": pl.Array(pl.Float32, ANY_WIDTH), "size": _INT},
    # One row per candidate: the nearest pool cluster, its size when the decision was made, the
    # log-det gain log(1 + xᵀA⁻¹x) in nats (logdet and novelty; null for paper and balanced), the
    # decision, and the rule that made it ('paper' | 'balanced' | 'logdet' | 'novelty' | 'seed').
    "selection": {
        "id": _STR, "cluster": _INT, "cluster_size_at_decision": _INT, "gain": _FLOAT, "kept": _BOOL,
        "rule": _STR,
    },
    # The pool as of this round. origin: 'seed' | 'generated'; round_added: e.g. 'r001'.
    "pool": {
        "id": _STR, "prompt": _STR, "response": _STR, "answer": _STR, "task": _STR,
        "origin": _STR, "round_added": _STR,
    },
    # One row per metric. n: samples scored; details: JSON (proxy, dim, raw counts, ...).
    "diversity_scores": {"metric": _STR, "value": _FLOAT, "n": _INT, "details": _STR},
    # Sentence embeddings of pool rows that embedding Vendi encoded in this round (the texts no earlier
    # round's partition holds for the same encoder and text setting): the cache that keeps a round's
    # encoding cost to what it adds. digest: SHA-256 (hex) of the encoded text, what the cache matches on;
    # encoder: metrics.embedding_model; text: metrics.text.
    "embeddings": {"id": _STR, "digest": _STR, "embedding": pl.Array(pl.Float32, ANY_WIDTH), "encoder": _STR,
                   "text": _STR},
    # Rows dropped on the way (dedup, decontamination, failed parse, ...). detail: free text.
    "rejections": {"id": _STR, "reason": _STR, "detail": _STR},
    # The opt-in student of a round (prismatic.student.step), one row per evaluation set: n problems, mean
    # assistant-token NLL of the references (nats/token) for the trained student and its base model,
    # accuracy (null when accuracy_n = 0) of greedy answers on the first accuracy_n problems, and the
    # training run: rows trained on, rows removed as eval-set contamination, steps, last loss, seconds.
    "student_eval": {
        "set": _STR, "n": _INT, "nll": _FLOAT, "base_nll": _FLOAT, "accuracy": _FLOAT, "accuracy_n": _INT,
        "train_on": _STR, "train_rows": _INT, "removed": _INT, "train_steps": _INT, "train_loss": _FLOAT,
        "train_seconds": _FLOAT, "eval_seconds": _FLOAT,
    },
}

KEYS: dict[str, tuple[str, ...]] = {
    "seeds": ("id",),
    "generations": ("id",),
    "verified_samples": ("id",),
    "gradient_features": ("id",),
    "clusters": ("id",),
    "centroids": ("cluster",),
    "selection": ("id",),
    "pool": ("id",),
    "diversity_scores": ("metric",),
    "embeddings": ("id",),
    "rejections": (),
    "student_eval": ("set",),
}
"""Columns that identify a row within one partition: never null, never repeated."""


ROUND_TABLES = ("generations", "verified_samples", "gradient_features", "selection", "pool", "clusters", "centroids",
                "diversity_scores")
"""Every table a finished round has in the store (a round also writes `rejections`, possibly empty)."""


def check_table(table: str) -> str:
    if table not in TABLES:
        raise PrismError(f"unknown table '{table}'; tables are: {', '.join(TABLES)}")
    return table


def schema(table: str, *, dim: int | None = None) -> pl.Schema:
    """The concrete polars schema of `table`; `dim` fixes the width of `gradient_features.feature`."""
    out = {}
    for name, dtype in TABLES[check_table(table)].items():
        if _is_any_width(dtype):
            if dim is None or dim <= 0:
                raise PrismError(f"table '{table}', column '{name}': give dim > 0 for the feature width")
            dtype = pl.Array(pl.Float32, dim)
        out[name] = dtype
    return pl.Schema(out)


def empty(table: str, *, dim: int | None = None) -> pl.DataFrame:
    """A frame of `table` with no rows (`dim`: the feature width of an array column; 1 when not given)."""
    return pl.DataFrame(schema=schema(table, dim=dim if dim is not None else 1))


def conform(table: str, frame: pl.DataFrame) -> pl.DataFrame:
    """`frame` with exactly the columns of `table`, in schema order and schema dtypes.

    Raises `PrismError` naming the table and the column for a missing or extra column, a dtype
    that cannot be cast without changing a value, or a null or repeated key.
    """
    spec = TABLES[check_table(table)]
    if not isinstance(frame, pl.DataFrame):
        raise PrismError(f"table '{table}': expected a polars DataFrame, got {type(frame).__name__}")
    missing = [c for c in spec if c not in frame.columns]
    if missing:
        raise PrismError(f"table '{table}': missing column(s) {', '.join(repr(c) for c in missing)}")
    extra = [c for c in frame.columns if c not in spec]
    if extra:
        note = (f" ('{PARTITION_COLUMN}' is the partition: it lives in the directory name, not in files)"
                if PARTITION_COLUMN in extra else "")
        raise PrismError(f"table '{table}': unexpected column(s) {', '.join(repr(c) for c in extra)}{note}")
    columns = [_conform_column(table, name, frame.get_column(name), dtype) for name, dtype in spec.items()]
    out = pl.DataFrame(columns)
    for key in KEYS[table]:
        column = out.get_column(key)
        if column.null_count():
            raise PrismError(f"table '{table}', column '{key}': {column.null_count()} null key(s)")
        if column.n_unique() != len(column):
            repeated = column.filter(column.is_duplicated()).unique(maintain_order=True).head(3).to_list()
            raise PrismError(f"table '{table}', column '{key}': repeated key(s) {repeated}")
    return out


def _is_any_width(dtype: pl.DataType) -> bool:
    return isinstance(dtype, pl.Array) and dtype.shape == (ANY_WIDTH,)


def _family(dtype: pl.DataType) -> Any:
    if dtype == pl.Null:
        return "null"
    if dtype.is_integer():
        return "int"
    if dtype.is_float():
        return "float"
    if dtype == pl.String or isinstance(dtype, (pl.Categorical, pl.Enum)):
        return "str"
    if dtype == pl.Boolean:
        return "bool"
    if isinstance(dtype, pl.List):
        return ("list", _family(dtype.inner))
    if isinstance(dtype, pl.Array):
        return ("array", dtype.shape, _family(dtype.inner))
    return str(dtype)


def _castable(source: Any, target: Any) -> bool:
    """Whether a value of family `source` may become `target` (the values are checked after)."""
    if source == target or source == "null":
        return True
    if source == "int" and target == "float":
        return True
    if isinstance(source, tuple) and isinstance(target, tuple) and source[0] == target[0]:
        if source[0] == "list":
            return _castable(source[1], target[1])
        return source[1] == target[1] and _castable(source[2], target[2])
    return False


def _conform_column(table: str, name: str, column: pl.Series, want: pl.DataType) -> pl.Series:
    have = column.dtype
    if _is_any_width(want):
        if not (isinstance(have, pl.Array) and len(have.shape) == 1 and have.shape[0] > 0):
            raise PrismError(f"table '{table}', column '{name}': expected a fixed-size float32 array "
                             f"pl.Array(pl.Float32, dim), got {have}")
        want = pl.Array(pl.Float32, have.shape[0])
    if have == want:
        return column
    if not _castable(_family(have), _family(want)):
        raise PrismError(f"table '{table}', column '{name}': expected {want}, got {have}")
    try:
        cast = column.cast(want, strict=True)
        # Strict casts refuse integer overflow; only a float target can lose a value silently.
        lossless = "float" not in str(_family(want)) or cast.cast(have).equals(column)
    except pl.exceptions.PolarsError:
        lossless = False
    if not lossless:
        raise PrismError(f"table '{table}', column '{name}': expected {want}, got {have} "
                         f"with values that do not fit {want}")
    return cast
