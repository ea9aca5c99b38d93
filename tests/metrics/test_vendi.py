import numpy as np
import pytest
import torch

from prismatic.metrics.vendi import SecondMoment, gvendi, normalize_rows, vendi_from_eigenvalues, vendi_from_gram


def test_orthogonal_rows_score_n():
    assert gvendi(np.eye(7, 16)) == pytest.approx(7.0, rel=1e-9)
    assert vendi_from_gram(np.eye(7)) == pytest.approx(7.0, rel=1e-9)


def test_identical_rows_score_one():
    row = np.random.default_rng(0).normal(size=(1, 32))
    assert gvendi(np.repeat(row, 50, axis=0)) == pytest.approx(1.0, abs=1e-6)
    assert vendi_from_gram(np.ones((50, 50))) == pytest.approx(1.0, abs=1e-9)


def test_block_structure_matches_closed_form():
    # 3 copies of e1, 1 copy of e2: eigenvalues of K/n are 3/4 and 1/4.
    x = np.array([[1.0, 0, 0], [1, 0, 0], [1, 0, 0], [0, 1, 0]])
    expected = np.exp(-(0.75 * np.log(0.75) + 0.25 * np.log(0.25)))
    assert gvendi(x) == pytest.approx(expected, rel=1e-9)


def test_scale_of_rows_does_not_matter():
    x = np.random.default_rng(1).normal(size=(40, 24))
    scaled = x * np.random.default_rng(2).uniform(0.1, 10, size=(40, 1))
    assert gvendi(scaled) == pytest.approx(gvendi(x), rel=1e-6)


def test_duplicated_dataset_has_the_same_score():
    x = np.random.default_rng(3).normal(size=(30, 64))
    assert gvendi(np.concatenate([x, x])) == pytest.approx(gvendi(x), rel=1e-6)


def test_dual_form_equals_primal_form():
    x = np.random.default_rng(4).normal(size=(60, 20))
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert gvendi(x) == pytest.approx(vendi_from_gram(unit @ unit.T), rel=1e-6)


def test_equals_singular_values_of_the_feature_matrix():
    # Independent route: eigenvalues of XXᵀ/n are the squared singular values of X/√n.
    x = np.random.default_rng(5).normal(size=(25, 50))
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    s = np.linalg.svd(unit / np.sqrt(25), compute_uv=False) ** 2
    assert gvendi(x) == pytest.approx(float(np.exp(-np.sum(s * np.log(s)))), rel=1e-6)


def test_chunked_accumulation_equals_one_pass():
    x = torch.randn(1000, 32, generator=torch.Generator().manual_seed(6))
    assert gvendi(x, chunk_rows=37) == pytest.approx(gvendi(x, chunk_rows=10_000), rel=1e-9)
    moment = SecondMoment(32)
    moment.update(x[:500])
    moment.update(x[500:])
    assert moment.n == 1000
    assert moment.eigenvalues().sum() == pytest.approx(1.0, abs=1e-6)  # float32 rows


def test_float32_features_agree_with_float64():
    x = np.random.default_rng(8).normal(size=(300, 64))
    assert gvendi(x.astype(np.float32)) == pytest.approx(gvendi(x), rel=1e-4)
    assert gvendi(np.repeat(x[:1], 50, axis=0).astype(np.float32)) == pytest.approx(1.0, abs=1e-4)


def test_range_is_one_to_min_n_d():
    x = np.random.default_rng(7).normal(size=(500, 8))
    assert 1.0 <= gvendi(x) <= 8.0 + 1e-9


def test_zero_row_is_refused():
    with pytest.raises(ValueError, match="row 1 is all zeros"):
        normalize_rows(np.array([[1.0, 0.0], [0.0, 0.0]]))


def test_eigenvalue_round_off_is_ignored():
    assert vendi_from_eigenvalues(np.array([0.5, 0.5, -1e-17])) == pytest.approx(2.0)


def _write_feature_table(path, feature_column, row_group_size):
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = pa.array([f"s{i}" for i in range(len(feature_column))], pa.string())
    pq.write_table(pa.table({"id": ids, "feature": feature_column}), path, row_group_size=row_group_size)
    return path


def test_gvendi_of_parquet_streams_row_groups_in_uneven_chunks(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from prismatic.gradients.files import feature_chunks
    from prismatic.metrics.vendi import gvendi_of_parquet

    x = np.random.default_rng(9).normal(size=(3000, 48)).astype(np.float32)  # not unit: normalized on read
    column = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 48)
    path = _write_feature_table(tmp_path / "f.parquet", column, row_group_size=1000)
    assert pq.ParquetFile(path).metadata.num_row_groups == 3
    # 384 rows a chunk: smaller than a row group and not dividing it.
    starts, chunks = zip(*feature_chunks(path, chunk_rows=384))
    assert max(len(c) for c in chunks) == 384 and list(starts) == list(np.cumsum([0] + [len(c) for c in chunks[:-1]]))
    assert np.array_equal(np.concatenate(chunks), x)
    assert gvendi_of_parquet(path, chunk_rows=384) == pytest.approx(gvendi(x), rel=1e-9)


def test_gvendi_of_parquet_refuses_bad_feature_columns(tmp_path):
    import pyarrow as pa

    from prismatic.errors import InputError, PrismError
    from prismatic.metrics.vendi import gvendi_of_parquet

    def write(name, column):
        return _write_feature_table(tmp_path / name, column, row_group_size=10)

    def fixed(rows):
        return pa.FixedSizeListArray.from_arrays(pa.array(np.asarray(rows, dtype=np.float32).reshape(-1)), 2)

    ragged = write("ragged.parquet", pa.array([[1.0, 0.0], [0.0, 1.0]], pa.list_(pa.float32())))
    with pytest.raises(PrismError, match=r"ragged\.parquet: field 'feature': expected a fixed-size float list"):
        gvendi_of_parquet(ragged)
    text = write("text.parquet", pa.array(["a", "b"]))
    with pytest.raises(InputError, match=r"text\.parquet: field 'feature': expected a fixed-size float list, got"):
        gvendi_of_parquet(text)
    nan = write("nan.parquet", fixed([[1, 0], [0, 1], [np.nan, 1], [1, 1]]))
    with pytest.raises(InputError, match=r"nan\.parquet:3: field 'feature': non-finite value"):
        gvendi_of_parquet(nan, chunk_rows=2)
    zero = write("zero.parquet", fixed([[1, 0], [0, 1], [0, 0]]))
    with pytest.raises(InputError, match=r"zero\.parquet:3: field 'feature': all-zero row"):
        gvendi_of_parquet(zero, chunk_rows=2)
    with pytest.raises(InputError, match=r"missing\.parquet: file not found"):
        gvendi_of_parquet(tmp_path / "missing.parquet")
