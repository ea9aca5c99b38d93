"""Greedy log-det selection, novelty and the chance control in the n × n Gram form and the d × d moment
form: the same kept ids, gains and control, checked against direct d × d and Sylvester computations."""

import numpy as np
import pytest
import scipy.linalg

from prismatic.synthesis.control import random_control, selection_outcome
from prismatic.synthesis.kmeans import spherical_kmeans
from prismatic.synthesis.selection import GreedyLogDet, novelty_threshold, select_logdet, select_novelty

FORMS = ("gram", "moment", "auto")


def _unit(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _data(n_pool: int, n_candidates: int, d: int, seed: int):
    """Unit pool rows around a few directions, and candidates half near the pool, half anywhere."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(4, d))
    pool = _unit(centers[rng.integers(0, 4, n_pool)] + 0.5 * rng.normal(size=(n_pool, d)))
    near = centers[rng.integers(0, 4, n_candidates // 2)] + 0.5 * rng.normal(size=(n_candidates // 2, d))
    anywhere = rng.normal(size=(n_candidates - n_candidates // 2, d))
    return pool, _unit(np.concatenate([near, anywhere]))


def _logdet_sylvester(rows: np.ndarray, epsilon: float, d: int) -> float:
    """log det(εI_d + RᵀR) = (d − r) log ε + log det(εI_r + RRᵀ), computed in the r × r form."""
    r = len(rows)
    return (d - r) * np.log(epsilon) + np.linalg.slogdet(epsilon * np.eye(r) + rows @ rows.T)[1]


def _vendi_score_reference(features: np.ndarray) -> float:
    """exp entropy of scipy eigvalsh(K / n), K the cosine Gram matrix (the `vendi-score` definition)."""
    x = _unit(features)
    w = scipy.linalg.eigvalsh(x @ x.T / len(x))
    w = w[w > 0]
    return float(np.exp(-np.sum(w * np.log(w))))


@pytest.mark.parametrize(("n_pool", "d"), [(12, 40), (60, 24)])
@pytest.mark.parametrize("epsilon", [0.1, 1.0])
def test_logdet_keeps_the_same_candidates_with_the_same_gains_in_both_forms(n_pool, d, epsilon):
    pool, cands = _data(n_pool, 45, d, seed=n_pool + d)
    ids = [f"c{i:02d}" for i in range(45)]
    count = 35  # n = 12, d = 40: auto leaves the Gram form after 28 kept
    frames = {form: select_logdet(ids, cands, pool, count, epsilon=epsilon, form=form) for form in FORMS}
    kept = frames["moment"].filter("kept")["id"].to_list()
    assert len(kept) == count
    for form in ("gram", "auto"):
        assert frames[form]["kept"].to_list() == frames["moment"]["kept"].to_list(), form
        assert np.allclose(frames[form]["gain"].to_numpy(), frames["moment"]["gain"].to_numpy(), rtol=1e-6, atol=0)
    # The kept gains add up to the log det they raised, computed independently in the (n + kept) form.
    gains = frames["gram"].filter("kept")["gain"].to_numpy()
    chosen = cands[[ids.index(i) for i in kept]]
    total = _logdet_sylvester(np.concatenate([pool, chosen]), epsilon, d) - _logdet_sylvester(pool, epsilon, d)
    assert gains.sum() == pytest.approx(total, rel=1e-9)


@pytest.mark.parametrize("form", FORMS)
def test_greedy_inverse_and_leverages_equal_a_direct_recomputation_in_every_form(form):
    rng = np.random.default_rng(7)
    pool, cands = _unit(rng.normal(size=(6, 15))), _unit(rng.normal(size=(25, 15)))
    eps = 0.05
    greedy = GreedyLogDet(pool, cands, eps, form)
    assert greedy.in_gram_form == (form != "moment")
    gram = eps * np.eye(15) + pool.T @ pool
    direct = np.linalg.inv(gram)
    assert np.allclose(greedy.pool_leverages(), np.einsum("ij,jk,ik->i", pool, direct, pool), rtol=1e-9)
    for step in range(14):  # auto: 6 + 9 = 15 = d rows after the 9th keep, then the moment form
        greedy.keep(greedy.best())
        gram = gram + np.outer(cands[greedy.kept[-1]], cands[greedy.kept[-1]])
        direct = np.linalg.inv(gram)
        assert np.abs(greedy.inverse - direct).max() <= 1e-8 * np.abs(direct).max(), step
        assert np.allclose(greedy.leverage, np.einsum("ij,jk,ik->i", cands, direct, cands), rtol=1e-8, atol=0)
    assert greedy.in_gram_form == (form == "gram")  # auto has switched to the moment form


def test_greedy_without_a_pool_in_the_gram_form():
    cands = _unit(np.random.default_rng(8).normal(size=(9, 30)))
    greedy = GreedyLogDet(None, cands, 0.5)
    assert greedy.in_gram_form and np.allclose(greedy.leverage, 2.0)  # ℓ = ‖x‖²/ε before anything is kept
    assert greedy.pool_leverages().shape == (0,)
    moment = GreedyLogDet(None, cands, 0.5, "moment")
    assert greedy.run(5) == moment.run(5)
    assert np.allclose(greedy.leverage, moment.leverage, rtol=1e-9)


@pytest.mark.parametrize(("n_pool", "d"), [(30, 64), (90, 16)])
def test_novelty_keeps_the_same_candidates_in_both_forms(n_pool, d):
    pool, cands = _data(n_pool, 40, d, seed=d)
    cands[5] = pool[3]  # a copy: never kept, in either form
    ids = [f"c{i:02d}" for i in range(40)]
    clustering = spherical_kmeans(pool, 4, seed=0)
    frames = {form: select_novelty(ids, cands, pool, clustering=clustering, form=form) for form in FORMS}
    for form in ("gram", "auto"):
        assert frames[form].drop("gain").equals(frames["moment"].drop("gain")), form
        assert np.allclose(frames[form]["gain"].to_numpy(), frames["moment"]["gain"].to_numpy(), rtol=1e-6, atol=0)
    assert 0 < frames["moment"]["kept"].sum() < 40 and not frames["gram"]["kept"][5]
    thresholds = [novelty_threshold(GreedyLogDet(pool, cands, 1.0, form).pool_leverages()) for form in FORMS]
    assert thresholds == pytest.approx([thresholds[1]] * 3, rel=1e-9)


@pytest.mark.parametrize(("n_pool", "d"), [(25, 64), (80, 32)])
def test_random_control_and_outcome_are_the_same_in_both_forms(n_pool, d):
    pool, cands = (part.astype(np.float32) for part in _data(n_pool, 20, d, seed=3 * d))
    controls = {form: random_control(pool, cands, 6, draws=4, seed=5, form=form) for form in FORMS}
    expected = []
    for s in range(4):
        chosen = np.sort(np.random.default_rng(5 + s).choice(20, size=6, replace=False))
        expected.append(_vendi_score_reference(np.concatenate([pool, cands[chosen]])))
    for form, control in controls.items():
        assert control["gvendi_draws"] == pytest.approx(expected, rel=1e-5), form
        assert control["gvendi_draws"] == pytest.approx(controls["moment"]["gvendi_draws"], rel=1e-5), form
    kept = np.zeros(20, dtype=bool)
    kept[[1, 4, 9, 16, 17, 19]] = True
    outcomes = {form: selection_outcome(pool, cands, kept, draws=4, seed=5, form=form) for form in FORMS}
    for form, outcome in outcomes.items():
        assert outcome["gvendi_before"] == pytest.approx(_vendi_score_reference(pool), rel=1e-5)
        assert outcome["gvendi_after"] == pytest.approx(
            _vendi_score_reference(np.concatenate([pool, cands[kept]])), rel=1e-5)
        assert outcome["control"]["gvendi"] == pytest.approx(np.mean(expected), rel=1e-5), form
    empty = selection_outcome(pool, None, np.zeros(0, dtype=bool), form="gram")
    assert empty["gain"] == 0 and empty["gvendi_before"] == pytest.approx(_vendi_score_reference(pool), rel=1e-5)
