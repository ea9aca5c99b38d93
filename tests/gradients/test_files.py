"""files.py: the feature Parquet files of `prism features` / `prism vendi`, written atomically and refused when
their projections differ."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prismatic.errors import InputError
from prismatic.gradients.featureset import FeatureSet
from prismatic.gradients.files import check_compatible, read_features, write_features
from prismatic.metrics.vendi import gvendi, gvendi_of_parquet, normalize_rows

PROJECTION = {"kind": "rademacher-pcg64-v1", "seed": 0, "in_dim": 10, "out_dim": 8, "chunk": 4096}


def test_gvendi_of_parquet_equals_gvendi_of_a_written_features_file(tmp_path):
    x = normalize_rows(np.random.default_rng(10).normal(size=(2500, 32))).numpy()
    path = write_features(tmp_path / "f.parquet", FeatureSet([f"s{i}" for i in range(2500)], x, [1] * 2500,
                                                             [False] * 2500, {"mode": "fast"}), proxy="p")
    assert gvendi_of_parquet(path, chunk_rows=999) == pytest.approx(gvendi(read_features(path)[1]), rel=1e-9)


def test_written_features_read_back_with_their_projection(tmp_path):
    x = normalize_rows(np.random.default_rng(11).normal(size=(3, 8))).numpy().astype(np.float32)
    meta = {"mode": "faithful", "dim": 8, "projection": PROJECTION}
    path = write_features(tmp_path / "out" / "f.parquet", FeatureSet(["a", "b", "c"], x, [5, 6, 7],
                                                                     [False, True, False], meta), proxy="tiny")
    assert [p.name for p in path.parent.iterdir()] == ["f.parquet"]  # no temporary file left behind
    ids, matrix, read_meta = read_features(path)
    assert ids == ["a", "b", "c"] and np.array_equal(matrix, x)
    assert read_meta == dict(meta, proxy="tiny")
    table = pq.read_table(path)
    assert table.column("n_tokens").to_pylist() == [5, 6, 7]
    assert table.column("truncated").to_pylist() == [False, True, False]
    assert set(table.column("proxy").to_pylist()) == {"tiny"} and set(table.column("dim").to_pylist()) == {8}


def test_unreadable_feature_files_are_refused_with_file_line_and_field(tmp_path):
    with pytest.raises(InputError, match=r"missing\.parquet: file not found"):
        read_features(tmp_path / "missing.parquet")
    no_feature = tmp_path / "no_feature.parquet"
    pq.write_table(pa.table({"id": ["a"]}), no_feature)
    with pytest.raises(InputError, match=r"no_feature\.parquet: field 'feature': missing column"):
        read_features(no_feature)
    nan = tmp_path / "nan.parquet"
    values = pa.array(np.array([1, 0, np.nan, 1], dtype=np.float32))
    pq.write_table(pa.table({"id": ["a", "b"], "feature": pa.FixedSizeListArray.from_arrays(values, 2)}), nan)
    with pytest.raises(InputError, match=r"nan\.parquet:2: field 'feature': non-finite value"):
        read_features(nan)


def test_features_of_different_projections_are_never_mixed():
    first = {"mode": "fast", "dim": 8, "proxy": "tiny", "projection": PROJECTION}
    check_compatible({"a.parquet": first, "b.parquet": dict(first)})
    with pytest.raises(InputError, match=r"b\.parquet: field 'projection': made with a different projection"):
        check_compatible({"a.parquet": first, "b.parquet": dict(first, projection=dict(PROJECTION, seed=1))})
    with pytest.raises(InputError, match=r"c\.parquet: field 'proxy': made with a different proxy"):
        check_compatible({"a.parquet": first, "c.parquet": dict(first, proxy="other")})
