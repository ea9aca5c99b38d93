"""G-Vendi's two forms: the n × n Gram form (n < d) and the d × d moment form give the same score."""

import numpy as np
import pytest
import scipy.linalg
import torch

from prismatic.metrics.vendi import SecondMoment, gram_form, gvendi, gvendi_of_parquet


def _vendi_score_reference(features: np.ndarray) -> float:
    """The Vendi Score as the `vendi-score` package defines it (score_K with q = 1), written out here:
    K = cosine similarities of the rows, w = scipy eigvalsh(K / n), exp(−Σ_{w>0} w log w)."""
    x = np.asarray(features, dtype=np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    w = scipy.linalg.eigvalsh(x @ x.T / len(x))
    w = w[w > 0]
    return float(np.exp(-np.sum(w * np.log(w))))


def _rows(n: int, d: int, seed: int, dtype=np.float64) -> np.ndarray:
    """n random directions in d dimensions, with a few near-copies so the spectrum is far from flat."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    x[n // 2:] = x[: n - n // 2] + 0.3 * rng.normal(size=(n - n // 2, d))
    return x.astype(dtype)


@pytest.mark.parametrize(("n", "d"), [(40, 96), (95, 96), (96, 96), (300, 64)])
def test_the_n_by_n_and_d_by_d_forms_agree(n, d):
    x = _rows(n, d, seed=n + d)
    reference = _vendi_score_reference(x)
    gram, moment, auto = (gvendi(x, form=form) for form in ("gram", "moment", "auto"))
    assert gram == pytest.approx(moment, rel=1e-9)
    assert gram == pytest.approx(reference, rel=1e-9) and moment == pytest.approx(reference, rel=1e-9)
    assert auto == (gram if n < d else moment)  # auto is exactly the form it picks
    assert 1.0 < reference < min(n, d)


def test_gram_form_is_chosen_by_rows_against_dimension():
    assert gram_form(99, 100) and not gram_form(100, 100) and not gram_form(10**6, 100)
    assert gram_form(10**6, 100, "gram") and not gram_form(3, 100, "moment")
    with pytest.raises(ValueError, match="unknown form 'dual'"):
        gram_form(3, 100, "dual")


def test_streaming_keeps_rows_until_d_then_switches_to_the_same_moment():
    d = 64
    x = torch.as_tensor(_rows(150, d, seed=1))
    auto, moment = SecondMoment(d), SecondMoment(d, "moment")
    for start, stop in ((0, 20), (20, 50), (50, 63), (63, 90), (90, 150)):
        auto.update(x[start:stop])
        moment.update(x[start:stop])
        assert auto.n == stop and auto.in_gram_form == (stop < d) and not moment.in_gram_form
        if stop < d:  # n eigenvalues of K/n, the non-zero ones of S/n
            top = np.sort(moment.eigenvalues())[-stop:]
            assert np.allclose(np.sort(auto.eigenvalues()), top, atol=1e-12)
    # After the switch the moment is summed chunk by chunk as the moment form summed it: bit for bit.
    assert np.array_equal(auto.eigenvalues(), moment.eigenvalues())
    assert auto.score() == moment.score() == pytest.approx(_vendi_score_reference(x.numpy()), rel=1e-9)


def test_gram_form_does_not_depend_on_chunking_or_dtype_mixing():
    x = _rows(70, 128, seed=2)
    one_pass = gvendi(x)
    assert gvendi(x, chunk_rows=3) == pytest.approx(one_pass, rel=1e-12)
    mixed = SecondMoment(128)  # a float64 chunk, then float32 ones: cross products in float64
    mixed.update(x[:30])
    mixed.update(x[30:].astype(np.float32))
    assert mixed.in_gram_form and mixed.score() == pytest.approx(one_pass, rel=1e-6)
    # float32 products: the score moves by round-off only.
    assert gvendi(x.astype(np.float32)) == pytest.approx(one_pass, rel=1e-5)


def test_copy_is_independent_of_the_original():
    d = 48
    pool, extra = _rows(30, d, seed=3), _rows(30, d, seed=4)
    for form in ("auto", "gram", "moment"):
        base = SecondMoment(d, form)
        base.update(pool)
        before = base.score()
        grown = base.copy()
        grown.update(extra)  # 60 rows ≥ d: auto leaves the Gram form in the copy only
        assert base.score() == before and base.n == 30
        assert grown.n == 60 and grown.in_gram_form == (form == "gram")
        assert grown.score() == pytest.approx(_vendi_score_reference(np.concatenate([pool, extra])), rel=1e-9)
        assert base.in_gram_form == (form != "moment")
        more = _rows(5, d, seed=6)
        base.update(more[:2])  # the original goes on from its own rows
        base.update(more[2:])
        assert base.score() == pytest.approx(_vendi_score_reference(np.concatenate([pool, more])), rel=1e-9)


def test_non_finite_and_zero_rows_are_refused_in_the_gram_form(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from prismatic.errors import InputError

    moment = SecondMoment(8)
    with pytest.raises(ValueError, match="feature row 1 is not finite"):
        moment.update(np.array([[1.0] + [0] * 7, [np.inf] + [0] * 7]))
    assert moment.n == 0  # nothing of a refused chunk is kept

    def write(name, rows):
        values = pa.array(np.asarray(rows, dtype=np.float32).reshape(-1))
        table = pa.table({"id": [f"s{i}" for i in range(len(rows))],
                          "feature": pa.FixedSizeListArray.from_arrays(values, 8)})
        pq.write_table(table, tmp_path / name)
        return tmp_path / name

    good = _rows(5, 8, seed=5).astype(np.float32)
    assert gvendi_of_parquet(write("good.parquet", good), chunk_rows=2) == pytest.approx(
        _vendi_score_reference(good), rel=1e-5)
    bad = good.copy()
    bad[3, 4] = np.nan
    with pytest.raises(InputError, match=r"bad\.parquet:4: field 'feature': non-finite value"):
        gvendi_of_parquet(write("bad.parquet", bad), chunk_rows=2)
    bad[3] = 0.0
    with pytest.raises(InputError, match=r"zero\.parquet:4: field 'feature': all-zero row"):
        gvendi_of_parquet(write("zero.parquet", bad), chunk_rows=2)
