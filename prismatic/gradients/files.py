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
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from prismatic.errors import InputError
from prismatic.gradients.featureset import FeatureSet
from prismatic.storage.atomic import write_atomically

META_KEY = b"prismatic.gradients.files"


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
    """(ids, n × d float32 matrix, metadata) of a feature file."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for corrupt input
        raise InputError(path, f"not a readable Parquet file ({exc})") from None
    for column in ("id", "feature"):
        if column not in table.column_names:
            raise InputError(path, "missing column", field=column)
    feature_type = table.schema.field("feature").type
    if not pa.types.is_fixed_size_list(feature_type):
        raise InputError(path, f"expected a fixed-size float list, got {feature_type}", field="feature")
    raw = (table.schema.metadata or {}).get(META_KEY)
    meta = json.loads(raw) if raw else {}
    column = table.column("feature").combine_chunks()
    if column.null_count:
        raise InputError(path, "null feature rows", field="feature")
    matrix = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    matrix = matrix.reshape(len(table), feature_type.list_size)
    if not np.isfinite(matrix).all():
        row = int(np.nonzero(~np.isfinite(matrix).all(axis=1))[0][0]) + 1
        raise InputError(path, "non-finite value", line=row, field="feature")
    return table.column("id").to_pylist(), matrix, meta


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
