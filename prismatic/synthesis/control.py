"""The chance control of a round's selection, and what the selection bought over it, in pool G-Vendi.

`random_control` is the baseline every round records: the pool G-Vendi after adding as many candidates
as the selection kept, drawn uniformly at random, averaged over seeded draws; `selection_outcome` sets
the selection's own gain beside it. Both score the pool with a few rows added many times over, so the
pool's `SecondMoment` (`prismatic.metrics.vendi`) is built once, in the n × n Gram form while rows are
fewer than d and the d × d moment form otherwise, and each score adds its rows to a copy.
"""

from __future__ import annotations

import numpy as np

from prismatic.metrics.vendi import SecondMoment

_CHUNK_ROWS = 65536  # pool rows normalized and multiplied at a time


def random_control(pool_features: np.ndarray, candidate_features: np.ndarray, count: int,
                   draws: int = 5, seed: int = 0, *, form: str = "auto") -> dict:
    """The chance baseline of a selection that kept `count` candidates:

        control = (1/D) Σ_{s<D} G-Vendi(pool ∪ S_s),   S_s = `count` candidates drawn uniformly
                  without replacement with numpy's default_rng(seed + s)

    Returns {"count", "draws", "seed", "gvendi" (the mean), "gvendi_sd" (sample sd; 0 for one draw),
    "gvendi_draws"}. With count = 0 every draw is the pool itself. The pool's `SecondMoment` is built
    once (`form` as in `prismatic.metrics.vendi.gram_form`) and each draw adds its rows to a copy:
    O(n²d) once and O(count · (n + count) d + (n + count)³) a draw while n + count < d, else
    O(nd²) once and O(count · d² + d³) a draw.
    """
    candidates = np.asarray(candidate_features, dtype=np.float32)
    pool = np.asarray(pool_features, dtype=np.float32)
    return _control(_moment(pool, form), candidates, count, draws, seed)


def _control(base: SecondMoment, candidates: np.ndarray, count: int, draws: int, seed: int) -> dict:
    """`random_control` against the pool's moment `base`."""
    if not 0 <= count <= len(candidates):
        raise ValueError(f"count must be in [0, {len(candidates)}], got {count}")
    if draws < 1:
        raise ValueError(f"draws must be ≥ 1, got {draws}")
    values = []
    for s in range(draws):
        chosen = np.random.default_rng(seed + s).choice(len(candidates), size=count, replace=False)
        values.append(_gvendi_with(base, candidates[np.sort(chosen)]))
    mean = float(np.mean(values))
    return {"count": int(count), "draws": draws, "seed": seed, "gvendi": mean,
            "gvendi_sd": float(np.std(values, ddof=1)) if draws > 1 else 0.0, "gvendi_draws": values}


def _moment(rows: np.ndarray, form: str) -> SecondMoment:
    """The `SecondMoment` of feature rows (n × d), fed in chunks of `_CHUNK_ROWS` (as `gvendi` does)."""
    moment = SecondMoment(rows.shape[1], form)
    for start in range(0, len(rows), _CHUNK_ROWS):
        moment.update(rows[start:start + _CHUNK_ROWS])
    return moment


def _gvendi_with(base: SecondMoment, rows: np.ndarray) -> float:
    """G-Vendi of base's rows plus `rows`, leaving `base` as it was."""
    if not len(rows):
        return base.score()
    moment = base.copy()
    moment.update(rows)
    return moment.score()


def selection_outcome(pool_features: np.ndarray, candidate_features: np.ndarray | None, kept: np.ndarray,
                      draws: int = 5, seed: int = 0, *, form: str = "auto") -> dict:
    """What a round's selection bought over chance, in G-Vendi of the pool:

        gain = G-Vendi(pool ∪ kept) − G-Vendi(pool),
        control_gain = control − G-Vendi(pool)     (`random_control` with the same count).

    Returns {"kept", "candidates", "gvendi_before", "gvendi_after", "gain", "control_gain",
    "control"}; without candidates both gains are 0. The pool's moment is built once for all
    2 + draws scores (costs as in `random_control`).
    """
    pool = np.asarray(pool_features, dtype=np.float32)
    base = _moment(pool, form)
    before = base.score()
    kept = np.asarray(kept, dtype=bool)
    n = 0 if candidate_features is None else len(candidate_features)
    count = int(kept.sum())
    if n:
        candidates = np.asarray(candidate_features, dtype=np.float32)
        after = _gvendi_with(base, candidates[kept])
        control = _control(base, candidates, count, draws, seed)
    else:
        after = before
        control = {"count": 0, "draws": 0, "seed": seed, "gvendi": before, "gvendi_sd": 0.0, "gvendi_draws": []}
    return {"kept": count, "candidates": n, "gvendi_before": before, "gvendi_after": after, "gain": after - before,
            "control_gain": control["gvendi"] - before, "control": control}
