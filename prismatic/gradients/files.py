"""Feature files, what `prism features` writes and `prism vendi` / `prism select` read: Parquet with `id`,
`feature` (fixed-size list of d float32, a unit row: the normalized projected gradient, see
docs/formulas.md), `proxy`, `mode`, `dim`, `n_tokens` (tokens of the rendered chat), `truncated`, and
the projection's identity in the file's key-value metadata.

Files are written atomically (temporary file in the same folder, then rename). Feature sets made
with different projections (seed, dims, proxy, mode) are never combined: `check_compatible` refuses.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from prismatic.errors import InputError
from prismatic.gradients.featureset import FeatureSet
from prismatic.storage.atomic import write_atomically

META_KEY = b"prismatic.gradients.files"
PARQUET_CHUNK_ROWS = 8192
"""Rows per batch that `feature_chunks` reads."""
PARQUET_READ_BUFFER = 1 << 20
"""Bytes of the buffered column reads (not pre-buffered: a large row group is never loaded whole)."""


def write_features(path: str | Path, features: FeatureSet, proxy: str) -> Path:
    path = Path(path)
    n, dim = features.features.shape
    values = pa.array(np.ascontiguousarray(features.features, dtype=np.float32).reshape(-1))
    table = pa.table({
        "id": pa.array(features.ids, pa.string()),
        "feature": pa.FixedSizeListArray.from_arrays(values, dim),
        "proxy": pa.array([proxy] * n, pa.string()),
        "mode": pa.array([features.meta["mode"]] * n, pa.string()),
        "dim": pa.array([dim] * n, pa.int32()),
        "n_tokens": pa.array(features.n_tokens, pa.int32()),
        "truncated": pa.array(features.truncated, pa.bool_()),
    })
    meta = dict(features.meta, proxy=proxy)
    table = table.replace_schema_metadata({META_KEY: json.dumps(meta).encode()})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return write_atomically(path, buffer.getvalue())


def read_features(path: str | Path) -> tuple[list[str], np.ndarray, dict]:
    """(ids, n × d float32 matrix, metadata) of a feature file, its `feature` column read and checked by
    `feature_chunks` (the one reader of feature files) and every row finite."""
    file = _open(path)
    try:
        dim = _feature_type(file, path).list_size
        if "id" not in file.schema_arrow.names:
            raise InputError(path, "missing column", field="id")
        raw = (file.schema_arrow.metadata or {}).get(META_KEY)
        ids = file.read(columns=["id"]).column("id").to_pylist()
    finally:
        file.close()
    chunks = [chunk for _, chunk in feature_chunks(path)]
    matrix = np.concatenate(chunks) if chunks else np.zeros((0, dim), dtype=np.float32)
    finite = np.isfinite(matrix).all(axis=1)
    if not finite.all():
        raise InputError(path, "non-finite value", line=int(np.flatnonzero(~finite)[0]) + 1, field="feature")
    return ids, matrix, json.loads(raw) if raw else {}


def feature_dim(path: str | Path) -> int:
    """d of a features Parquet file, from its schema (checked: a fixed-size list of floats)."""
    return _feature_type(_open(path), path).list_size


def feature_chunks(path: str | Path, chunk_rows: int = PARQUET_CHUNK_ROWS) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, chunk_rows × d float32 array) for each batch of the `feature` column, in order.

    Arrays are read-only zero-copy views of Arrow's buffers when the values are float32 without
    nulls (what `write_features` writes); other float widths are cast. No per-row Python objects.
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be positive, got {chunk_rows}")
    file = _open(path)
    dim = _feature_type(file, path).list_size
    start = 0
    try:
        for batch in file.iter_batches(batch_size=chunk_rows, columns=["feature"], use_threads=False):
            column = batch.column(0)
            if column.null_count:
                raise InputError(path, "null feature rows", line=start + _first_null(column) + 1,
                                 field="feature")
            values = column.flatten()  # respects the batch's offset into the row group
            if values.null_count:
                raise InputError(path, "null feature values", field="feature")
            if values.type != pa.float32():
                values = values.cast(pa.float32())
            yield start, values.to_numpy(zero_copy_only=True).reshape(len(column), dim)
            start += len(column)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(path, f"not a readable Parquet file ({exc})") from None
    finally:
        file.close()


def _open(path: str | Path) -> pq.ParquetFile:
    if not Path(path).exists():
        raise InputError(path, "file not found")
    try:
        return pq.ParquetFile(path, buffer_size=PARQUET_READ_BUFFER, pre_buffer=False)
    except Exception as exc:  # pyarrow raises several types for corrupt input
        raise InputError(path, f"not a readable Parquet file ({exc})") from None


def _feature_type(file: pq.ParquetFile, path: str | Path) -> pa.FixedSizeListType:
    schema = file.schema_arrow
    if "feature" not in schema.names:
        raise InputError(path, "missing column", field="feature")
    feature_type = schema.field("feature").type
    if not (pa.types.is_fixed_size_list(feature_type) and pa.types.is_floating(feature_type.value_type)):
        raise InputError(path, f"expected a fixed-size float list, got {feature_type}", field="feature")
    return feature_type


def _first_null(column: pa.Array) -> int:
    return int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])


PROJECTION_KEYS = ("mode", "dim", "proxy", "projection")


def check_compatible(metas: dict[str, dict]) -> None:
    """Refuse feature files whose projection or proxy differ (they live in different spaces)."""
    items = list(metas.items())
    first_path, first = items[0]
    for path, meta in items[1:]:
        for key in PROJECTION_KEYS:
            if meta.get(key) != first.get(key):
                raise InputError(path, f"made with a different {key} than {first_path} "
                                       f"({meta.get(key)!r} vs {first.get(key)!r}); features from "
                                       "different projections cannot be mixed", field=key)
