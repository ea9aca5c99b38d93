"""What a study's runs say (docs/study.md): gains, their spread between seeds and between subsets, and the Spearman
ρ of every diversity metric with the gain, with a bootstrap interval, on all subsets and on the partial view.

For subset S trained with seeds s = 1 … K and evaluated on set E (NLL in nats per assistant token):

    gain(S, E)            = NLL_base(E) − (1/K) Σ_s NLL_{S,s}(E)
    gain_over_format(S, E) = (1/K) Σ_s [NLL_{F,s}(E) − NLL_{S,s}(E)],   F = the format-only subset (one problem N times)
    seed spread(E)        = mean over S ≠ F of sd_s(gain_s(S, E))       (sample sd, ddof = 1)
    subset spread(E)      = sd over S of gain(S, E)

The format-only subset F is left out of the seed spread: its N rows are one problem, so every seed trains on the
same batches and its sd is 0 by construction. gain_over_format differs from gain by the same constant for every
subset (the format-only student's gain), so it reads how far a subset gets beyond learning the format; it leaves
every ρ unchanged. A subset enters the analysis
once all K of its runs have finished.

ρ(metric, E) is Spearman's ρ (the Pearson correlation of average ranks, `scipy.stats.spearmanr`) of the
metric's value (its sign flipped where lower means more diverse: compression ratio, self-repetition) with
gain(S, E) over the subsets. Its 95% interval is the 2.5th and 97.5th percentile of ρ over B = `study.bootstrap`
resamples of the subsets with replacement: draws = default_rng(study.seed).integers(0, M, size=(B, M)) for M
subsets, one row per resample; a resample in which either side is constant has no ρ and is left out. The partial
view does the same over the subsets with at least `study.min_distinct` distinct problems.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import median

import numpy as np

from prismatic.config import StudyConfig
from prismatic.student.ladder import FORMAT_ONLY, METRICS, MORE_DIVERSE_IS_LOWER


def spearman_interval(x: Sequence[float], y: Sequence[float], *, reps: int, seed: int) -> dict:
    """`{"rho", "ci": [low, high], "n"}` of (x, y) (module docstring); None values when n < 3 or a side is
    constant."""
    from scipy.stats import rankdata, spearmanr

    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n = len(xs)
    if n < 3 or np.ptp(xs) == 0 or np.ptp(ys) == 0:
        return {"rho": None, "ci": [None, None], "n": n}
    rho = float(spearmanr(xs, ys).statistic)
    draws = np.random.default_rng(seed).integers(0, n, size=(reps, n))
    rank_x, rank_y = rankdata(xs[draws], axis=1), rankdata(ys[draws], axis=1)
    rank_x -= rank_x.mean(axis=1, keepdims=True)
    rank_y -= rank_y.mean(axis=1, keepdims=True)
    scale = np.sqrt((rank_x ** 2).sum(axis=1) * (rank_y ** 2).sum(axis=1))
    kept = scale > 0
    rhos = (rank_x * rank_y).sum(axis=1)[kept] / scale[kept]
    low, high = np.percentile(rhos, [2.5, 97.5]) if len(rhos) else (math.nan, math.nan)
    return {"rho": rho, "ci": [float(low), float(high)], "n": n}


def _sd(values: Sequence[float]) -> float | None:
    return float(np.std(values, ddof=1)) if len(values) > 1 else None


def subset_rows(subsets: Sequence[dict], runs: dict[str, dict], set_names: Sequence[str], seeds: Sequence[int]
                ) -> list[dict]:
    """One row per subset whose runs under every seed have finished, in plan order: its diversity, the NLL per
    set and seed, gain and gain_over_format (module docstring), the gain's sd over seeds, and the mean seconds of
    its training and evaluation."""
    base = {name: runs[f"base:{name}"]["result"]["nll"][name] for name in set_names if f"base:{name}" in runs}
    if len(base) < len(set_names):
        return []
    rows = []
    for subset in subsets:
        lines = [runs.get(f"{subset['name']}/seed{seed}") for seed in seeds]
        if any(line is None for line in lines):
            continue
        nll = {name: [line["result"]["nll"][name] for line in lines] for name in set_names}
        rows.append({"name": subset["name"], "family": subset["family"], "level": subset["level"],
                     "diversity": subset["diversity"], "nll": nll,
                     "gain": {name: base[name] - float(np.mean(nll[name])) for name in set_names},
                     "gain_sd": {name: _sd([base[name] - value for value in nll[name]]) for name in set_names},
                     "train_s": float(np.mean([line["result"]["train_s"] for line in lines])),
                     "eval_s": float(np.mean([line["result"]["eval_s"] for line in lines]))})
    format_only = next((row for row in rows if row["name"] == FORMAT_ONLY), None)
    for row in rows:
        row["gain_over_format"] = None if format_only is None else {
            name: float(np.mean(np.subtract(format_only["nll"][name], row["nll"][name]))) for name in set_names}
    return rows


def correlations(rows: Sequence[dict], set_names: Sequence[str], study: StudyConfig) -> dict:
    """`{set: {metric: spearman_interval(signed metric, gain)}}` over `rows`."""
    result = {}
    for name in set_names:
        gains = [row["gain"][name] for row in rows]
        result[name] = {metric: spearman_interval(
            [(-1 if metric in MORE_DIVERSE_IS_LOWER else 1) * row["diversity"][metric] for row in rows], gains,
            reps=study.bootstrap, seed=study.seed) for metric in METRICS}
    return result


def analyze(study_run: dict, set_names: Sequence[str], study: StudyConfig, seeds: Sequence[int]) -> dict:
    """The study's report (docs/study.md#the-report) from what `run_study` returned."""
    runs = study_run["runs"]
    rows = subset_rows(study_run["subsets"], runs, set_names, seeds)
    wide = [row for row in rows if row["diversity"]["distinct_problems"] >= study.min_distinct]
    trained = [line["result"] for key, line in runs.items() if not key.startswith("base:")]
    spread = {}
    for name in set_names:
        seed_sds = [row["gain_sd"][name] for row in rows
                    if row["gain_sd"][name] is not None and row["name"] != FORMAT_ONLY]
        seed_spread = float(np.mean(seed_sds)) if seed_sds else None
        spread[name] = {"seed": seed_spread,
                        "seed_of_mean": None if seed_spread is None else seed_spread / math.sqrt(len(seeds)),
                        "subsets": _sd([row["gain"][name] for row in rows]),
                        "subsets_partial": _sd([row["gain"][name] for row in wide])}
    format_row = next((row for row in rows if row["name"] == FORMAT_ONLY), None)
    base = {name: runs[f"base:{name}"]["result"]["nll"][name] for name in set_names if f"base:{name}" in runs}
    format_only = {name: {"base_nll": base.get(name),
                          "format_nll": None if format_row is None else float(np.mean(format_row["nll"][name])),
                          "format_gain": None if format_row is None else format_row["gain"][name]}
                   for name in set_names}
    families = {name: {family: float(np.mean([row["gain"][name] for row in rows if row["family"] == family]))
                       for family in dict.fromkeys(row["family"] for row in rows)} for name in set_names}
    return {
        "fingerprint": study_run["fingerprint"], "settings": study_run["settings"],
        "runs": len(trained), "planned_runs": study_run["planned_runs"] - len(set_names), "subsets": len(rows),
        "planned_subsets": len(study_run["subsets"]), "seeds": len(seeds),
        "sets": correlations(rows, set_names, study),
        "partial": {"min_distinct": study.min_distinct, "subsets": len(wide),
                    "sets": correlations(wide, set_names, study)},
        "spread": spread, "format_only": format_only, "families": families,
        "compute": {"train_s_median": median(r["train_s"] for r in trained) if trained else None,
                    "eval_s_median": median(r["eval_s"] for r in trained) if trained else None,
                    "run_s_total": round(sum(r["train_s"] + r["eval_s"] for r in trained), 1),
                    "base_eval_s": {name: runs[f"base:{name}"]["result"]["eval_s"] for name in base},
                    "devices": sorted({f"{r['host']}: {r['device']}" for r in trained})},
        "rows": rows,
    }
