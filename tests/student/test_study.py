"""`prism study` (prismatic/student/study.py, ladder.py, study_analysis.py): the ladder's subsets have the diversity
they claim; ρ and its interval equal scipy's; gains and spreads equal a hand computation; a killed study resumes
without repeating a finished run; the command reads a round of the store, prints what its journal says, and
refuses bad input in one line with nothing written; a Ray run on a local 3-node cluster gives the sequential
study's runs. Students are a tiny random Qwen2 (`tiny_model_dir`), trained in about a second a run."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import polars as pl
import pytest
from scipy import stats
from student_store import fill_rounds, prism

from prismatic.config import PrismConfig
from prismatic.storage.factory import open_store
from prismatic.student.ladder import FAMILIES, FORMAT_ONLY, build_ladder, greedy_log_det, plan_order
from prismatic.student.sets import EvalItem, EvalSet
from prismatic.student.study import JOURNAL, Journal, run_study, sequential_runner
from prismatic.student.study_analysis import analyze, spearman_interval, subset_rows


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def planted(blobs: int, per_blob: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(unit rows, planted label of each row): `blobs` tight groups around orthogonal directions."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(blobs), per_blob)
    centers = np.eye(dim)[:blobs] * 10
    return unit(centers[labels] + rng.standard_normal((len(labels), dim))), labels


# ------------------------------------------------------------------------------------------------- the ladder


def test_each_rung_has_the_diversity_it_claims():
    """Gradient and embedding space hold different planted clusters (8 of 20 rows each; the embedding labels are a
    permutation of the rows), so a rung narrow in one space is broad in the other; prompts repeat in pairs."""
    n, size = 160, 16
    features, grad_labels = planted(8, 20, 16, seed=1)
    shuffle = np.random.default_rng(2).permutation(n)
    embeddings, emb_labels = planted(8, 20, 16, seed=3)
    embeddings, emb_labels = embeddings[shuffle], emb_labels[shuffle]
    prompts = [f"problem {i // 2}" for i in range(n)]  # every problem twice: distinct problems are prompts, not rows
    ladder = build_ladder(prompts, features, embeddings, size=size, seed=0, clusters=8, cluster_levels=[1, 2, 4, 8],
                          random_draws=2, logdet_draws=2)
    by_name = {s.name: s for s in ladder}
    assert [s.name for s in ladder if s.family == "duplicates"] == [f"duplicates-{m}" for m in (1, 16, 4, 2, 8)]
    for subset in ladder:
        assert len(subset.rows) == size, subset.name
        problems = Counter(prompts[r] for r in subset.rows)
        if subset.family == "duplicates":
            assert len(problems) == subset.level
            assert set(problems.values()) == {size // subset.level}
        elif subset.family in ("grad-clusters", "emb-clusters"):
            labels = grad_labels if subset.family == "grad-clusters" else emb_labels
            assert len({int(labels[r]) for r in subset.rows}) == subset.level, subset.name
            assert len(set(subset.rows)) == size  # 20 rows a cluster: no repeats needed
        else:
            assert len(set(subset.rows)) == size, subset.name
    # narrow in one space, broad in the other: the metrics can disagree
    assert len({int(emb_labels[r]) for r in by_name["grad-clusters-1"].rows}) >= 5
    assert len({int(grad_labels[r]) for r in by_name["emb-clusters-1"].rows}) >= 5
    # one half of the pool per draw, shared by both spaces; another draw, another half
    halves = [set(by_name[f"grad-logdet-{d}"].rows) | set(by_name[f"emb-logdet-{d}"].rows) for d in (0, 1)]
    assert all(len(half) <= n // 2 + size for half in halves) and halves[0] != halves[1]
    assert by_name["random-0"].rows != by_name["random-1"].rows


def test_the_same_settings_give_the_same_ladder_and_each_rung_its_own_draws():
    features, _ = planted(4, 10, 8, seed=5)
    embeddings, _ = planted(4, 10, 8, seed=6)
    prompts = [f"p{i}" for i in range(40)]
    settings = dict(size=8, seed=3, clusters=4, cluster_levels=[1, 2], logdet_draws=1)
    first = build_ladder(prompts, features, embeddings, random_draws=2, **settings)
    assert build_ladder(prompts, features, embeddings, random_draws=2, **settings) == first
    more = {s.name: s for s in build_ladder(prompts, features, embeddings, random_draws=3, **settings)}
    assert all(more[s.name] == s for s in first)  # a rung added leaves every other rung as it was
    other_seed = build_ladder(prompts, features, embeddings, random_draws=2, **(settings | {"seed": 4}))
    assert [s.rows for s in other_seed] != [s.rows for s in first]


def test_greedy_log_det_equals_a_brute_force_greedy():
    """Each step of the brute force adds the candidate with the largest log det(V_S V_Sᵀ) (numpy's slogdet); rows of
    unequal length, so that no step ties."""
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((14, 6)) * rng.uniform(0.5, 2.0, (14, 1))
    candidates = np.array([0, 2, 3, 5, 7, 8, 9, 11, 12, 13])
    chosen: list[int] = []
    for _ in range(5):
        scores = {int(c): np.linalg.slogdet(vectors[[*chosen, c]] @ vectors[[*chosen, c]].T)[1]
                  for c in candidates if c not in chosen}
        chosen.append(max(scores, key=scores.get))
    assert greedy_log_det(vectors, candidates, 5) == tuple(chosen)


def test_the_plan_starts_with_the_format_only_subset_and_interleaves_the_families():
    features, _ = planted(4, 10, 8, seed=5)
    prompts = [f"p{i}" for i in range(40)]
    ladder = build_ladder(prompts, features, features, size=8, seed=0, clusters=4, cluster_levels=[1, 2, 4],
                          random_draws=2, logdet_draws=1)
    assert ladder[0].name == FORMAT_ONLY
    assert [s.family for s in ladder[:len(FAMILIES)]] == list(FAMILIES)
    assert [s.name for s in ladder[:8]][6:] == ["duplicates-8", "grad-clusters-4"]  # extremes before the middle
    assert plan_order(list(reversed(ladder))) == ladder


# ------------------------------------------------------------------------------------------------- the analysis


X = [3.1, 0.4, 2.2, 5.0, 5.0, 1.7, 4.4, 0.9, 2.8, 3.9, 1.2, 4.8]
Y = [0.21, 0.05, 0.30, 0.41, 0.38, 0.02, 0.22, 0.11, 0.19, 0.44, 0.07, 0.35]


def test_rho_and_its_interval_equal_scipy():
    """ρ is scipy's spearmanr; the interval is the percentiles of scipy's spearmanr over the same resamples drawn in
    a plain loop, and agrees with scipy.stats.bootstrap (percentile method, its own resamples) within 0.03."""
    result = spearman_interval(X, Y, reps=2000, seed=7)
    assert result["rho"] == pytest.approx(stats.spearmanr(X, Y).statistic, abs=1e-12)
    draws = np.random.default_rng(7).integers(0, len(X), size=(2000, len(X)))
    xs, ys = np.array(X), np.array(Y)
    looped = [stats.spearmanr(xs[d], ys[d]).statistic for d in draws if np.ptp(xs[d]) > 0 and np.ptp(ys[d]) > 0]
    assert result["ci"] == pytest.approx(list(np.percentile(looped, [2.5, 97.5])), abs=1e-12)
    scipy_ci = stats.bootstrap((xs, ys), lambda a, b: stats.spearmanr(a, b).statistic, paired=True, vectorized=False,
                               n_resamples=2000, method="percentile", random_state=1).confidence_interval
    assert result["ci"] == pytest.approx([scipy_ci.low, scipy_ci.high], abs=0.03)
    assert spearman_interval([1, 1, 1], [1, 2, 3], reps=10, seed=0)["rho"] is None


def test_gains_spreads_and_the_format_only_baseline_equal_a_hand_computation():
    base = 2.0
    nll = {"duplicates-1": [1.00, 1.00], "random-0": [0.80, 0.90], "grad-logdet-0": [0.70, 0.74],
           "duplicates-4": [0.95, 0.85]}
    subsets = [{"name": name, "family": name.rsplit("-", 1)[0], "level": 0,
                "diversity": {"distinct_problems": 1 if name == "duplicates-1" else 4 if name == "duplicates-4" else 32,
                              "gvendi": g, "embedding_vendi": g, "distinct_n": g, "ngram_vendi": g,
                              "compression_ratio": -g, "self_repetition": -g}}
               for name, g in zip(nll, (1.0, 20.0, 30.0, 4.0))]
    subsets.append({**subsets[1], "name": "random-1"})  # one seed only: not analysed yet
    runs = {"base:s": {"result": {"nll": {"s": base}, "eval_s": 1.0}}}
    for name, values in nll.items():
        for seed, value in enumerate(values):
            runs[f"{name}/seed{seed}"] = {"result": {"nll": {"s": value}, "train_s": 10.0, "eval_s": 2.0,
                                                     "host": "h", "device": "cpu"}}
    runs["random-1/seed0"] = runs["random-0/seed0"]
    rows = {row["name"]: row for row in subset_rows(subsets, runs, ["s"], [0, 1])}
    assert list(rows) == list(nll)
    for name, values in nll.items():
        assert rows[name]["gain"]["s"] == pytest.approx(base - sum(values) / 2)
        assert rows[name]["gain_over_format"]["s"] == pytest.approx(1.0 - sum(values) / 2)
        assert rows[name]["gain_sd"]["s"] == pytest.approx(abs(values[0] - values[1]) / math.sqrt(2))
    config = PrismConfig.model_validate({"study": {"min_distinct": 16, "bootstrap": 200}})
    report = analyze({"fingerprint": "f", "settings": {}, "subsets": subsets, "runs": runs, "planned_runs": 11},
                     ["s"], config.study, [0, 1])
    gains = [base - sum(v) / 2 for v in nll.values()]
    sds = [abs(v[0] - v[1]) / math.sqrt(2) for v in nll.values()]
    assert (report["runs"], report["planned_runs"], report["subsets"]) == (9, 10, 4)
    assert report["spread"]["s"]["seed"] == pytest.approx(sum(sds[1:]) / 3)  # not the format-only subset's
    assert report["spread"]["s"]["seed_of_mean"] == pytest.approx(sum(sds[1:]) / 3 / math.sqrt(2))
    assert report["spread"]["s"]["subsets"] == pytest.approx(np.std(gains, ddof=1))
    assert report["spread"]["s"]["subsets_partial"] == pytest.approx(np.std(gains[1:3], ddof=1))
    assert report["format_only"]["s"] == pytest.approx({"base_nll": 2.0, "format_nll": 1.0, "format_gain": 1.0})
    assert report["sets"]["s"]["gvendi"]["rho"] == pytest.approx(stats.spearmanr([1, 20, 30, 4], gains).statistic)
    assert report["sets"]["s"]["compression_ratio"]["rho"] == report["sets"]["s"]["gvendi"]["rho"]  # sign flipped
    assert report["partial"]["subsets"] == 2 and report["partial"]["sets"]["s"]["gvendi"]["rho"] is None
    assert report["compute"]["train_s_median"] == 10.0 and report["compute"]["run_s_total"] == 9 * 12.0


# ------------------------------------------------------------------------------------------------- runs


POOL = pl.DataFrame([{"id": f"p{i}", "prompt": f"Sam has {i + 2} pens and buys {i % 5 + 1} more. How many pens?",
                      "response": f"{i + 2} + {i % 5 + 1} = {i + 2 + i % 5 + 1}. \\boxed{{{i + 2 + i % 5 + 1}}}"}
                     for i in range(24)])
SETS = [EvalSet(name, f"{name}.jsonl", tuple(EvalItem(str(k), f"Ann has {k} cats and {k + d} dogs. How many pets?",
                                                      f"{k} + {k + d} = {2 * k + d}. \\boxed{{{2 * k + d}}}",
                                                      str(2 * k + d)) for k in range(1, 5)))
        for name, d in (("near", 1), ("far", 7))]


def vectors():
    rng = np.random.default_rng(11)
    return unit(rng.standard_normal((24, 16))), unit(rng.standard_normal((24, 8)))


def study_config(tiny_model_dir, home, seeds: int = 2, ray_address: str | None = None) -> PrismConfig:
    config = PrismConfig.model_validate({
        "student": {"base": str(tiny_model_dir), "epochs": 1, "batch_size": 2, "lr": 1e-3},
        "study": {"size": 4, "seeds": seeds, "clusters": 3, "cluster_levels": [2], "random_draws": 1,
                  "logdet_draws": 1, "bootstrap": 200},
        **({"orchestration": {"executor": "ray", "ray": {"address": ray_address}}} if ray_address else {})})
    config.home = home
    return config


class Killed(Exception):
    """What the counting runner raises in place of the (k+1)-th run, as a kill would stop the study there."""


def counting(limit: int | None = None):
    """(an execute that runs `execute_run`, counting its runs, and raises Killed instead of run limit + 1; the keys
    it ran)."""
    from prismatic.student.study import execute_run

    ran: list[str] = []

    def execute(spec, work):
        if limit is not None and len(ran) == limit:
            raise Killed
        ran.append(spec.key)
        return execute_run(spec, work)

    return execute, ran


def test_a_killed_study_resumes_with_the_next_unfinished_run(tiny_model_dir, tmp_path):
    config = study_config(tiny_model_dir, tmp_path / "home", seeds=1)
    out = tmp_path / "study"
    execute, ran = counting(limit=5)
    with pytest.raises(Killed):
        run_study(POOL, SETS, config, out, base_model=str(tiny_model_dir), runner=sequential_runner(execute),
                  vectors=vectors)
    journal = (out / JOURNAL).read_bytes()
    assert len(journal.splitlines()) == 1 + 5  # the plan, then the five finished runs
    (out / JOURNAL).write_bytes(journal + b'{"fingerprint": "cut sh')  # a line a kill cut short
    calls = []
    execute, resumed = counting()
    done = run_study(POOL, SETS, config, out, base_model=str(tiny_model_dir), runner=sequential_runner(execute),
                     vectors=lambda: calls.append(1))
    plan = [*[f"base:{s.name}" for s in SETS], *[f"{s['name']}/seed0" for s in done["subsets"]]]
    assert ran == plan[:5] and resumed == plan[5:] and calls == []  # no run twice; the plan read back, not rebuilt
    assert list(done["runs"]) == plan
    assert (out / JOURNAL).read_bytes().startswith(journal)  # finished lines left as they were
    assert Journal(out / JOURNAL, done["fingerprint"]).read()[1].keys() == set(plan)
    execute, again = counting()
    run_study(POOL, SETS, config, out, base_model=str(tiny_model_dir), runner=sequential_runner(execute),
              vectors=vectors)
    assert again == []


def test_another_study_of_the_same_sets_reuses_the_base_models_nll(tiny_model_dir, tmp_path):
    """The base NLL is computed once per set and model: a second study (another ladder, another fingerprint) in the
    same home takes it from <home>/cache/base_nll.jsonl and evaluates the base model no more."""
    config = study_config(tiny_model_dir, tmp_path / "home", seeds=1)
    execute, first = counting(limit=2)
    with pytest.raises(Killed):
        run_study(POOL, SETS, config, tmp_path / "one", base_model=str(tiny_model_dir),
                  runner=sequential_runner(execute), vectors=vectors)
    assert first == ["base:near", "base:far"]
    other = config.model_copy(update={"study": config.study.model_copy(update={"random_draws": 2})})
    execute, second = counting(limit=0)
    with pytest.raises(Killed):
        run_study(POOL, SETS, other, tmp_path / "two", base_model=str(tiny_model_dir),
                  runner=sequential_runner(execute), vectors=vectors)
    assert second == []
    one, two = ([json.loads(line) for line in (tmp_path / name / JOURNAL).read_text().splitlines()]
                for name in ("one", "two"))
    assert one[0]["fingerprint"] != two[0]["fingerprint"] and len(two) == 1 + 2
    assert {line["run"]: line["result"]["nll"] for line in two[1:]} == {line["run"]: line["result"]["nll"]
                                                                          for line in one[1:]}
    assert all(line["result"]["cached"] for line in two[1:])


# ------------------------------------------------------------------------------------------------- the command


def cli_home(tmp_path, tiny_model_dir):
    home = tmp_path / "home"
    home.mkdir()
    (home / "prism.yaml").write_text(
        f"features: {{proxy: {tiny_model_dir}, dim: 16, batch_tokens: 1024}}\n"
        f"student: {{base: {tiny_model_dir}, epochs: 1, batch_size: 4, lr: 0.001}}\n"
        "study: {clusters: 3, cluster_levels: [1], random_draws: 1, logdet_draws: 0, bootstrap: 300}\n")
    return home


def test_the_command_studies_a_round_of_the_store_and_reports_its_journal(tmp_path, tiny_model_dir):
    """r001's pool (9 rows) against a GSM8K-shaped and a SVAMP-shaped set; ρ in the JSON is recomputed from the
    journal's lines with scipy; a second call finds every run done and runs none."""
    home = cli_home(tmp_path, tiny_model_dir)
    fill_rounds(open_store(home / "store"))
    gsm, svamp = tmp_path / "gsm.jsonl", tmp_path / "svamp.jsonl"
    gsm.write_text("".join(json.dumps({"question": f"Ann buys {k} boxes of {k + 1} eggs. How many eggs?",
                                       "answer": f"{k} * {k + 1} = {k * (k + 1)}\n#### {k * (k + 1)}"}) + "\n"
                           for k in range(2, 5)))
    svamp.write_text("".join(json.dumps({"body": f"There are {k} birds on a tree. {k + 3} more come",
                                         "question": "How many birds are there?", "equation": f"( {k} + {k + 3} )",
                                         "answer": 2 * k + 3}) + "\n" for k in range(2, 5)))
    out = tmp_path / "report"
    args = ("study", "r001", "--eval", gsm, "--eval", svamp, "--size", 4, "--seeds", 1, "--out", out, "--json")
    code, stdout, stderr = prism(*args, home=home)
    assert code == 0, stderr[-3000:]
    report = json.loads(stdout)
    assert report["pool"] == {"source": f"{home / 'store'} pool as of r001", "rows": 9, "removed_as_eval_problems": 0}
    assert report["runs"] == report["planned_runs"] == report["subsets"] == 6  # m = 1, 2, 4; 1 + 1 clusters; random
    lines = [json.loads(line) for line in (out / JOURNAL).read_text().splitlines()]
    plan, runs = lines[0], {line["run"]: line["result"] for line in lines[1:]}
    for name in ("gsm", "svamp"):
        gains = [runs[f"base:{name}"]["nll"][name] - runs[f"{s['name']}/seed0"]["nll"][name] for s in plan["subsets"]]
        gvendi = [s["diversity"]["gvendi"] for s in plan["subsets"]]
        assert report["sets"][name]["gvendi"]["rho"] == pytest.approx(stats.spearmanr(gvendi, gains).statistic)
        assert (out / f"scatter-{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "study.json").read_text())["sets"] == report["sets"]
    code, stdout, _ = prism(*args, home=home)
    assert code == 0 and json.loads(stdout)["sets"] == report["sets"]
    assert len((out / JOURNAL).read_text().splitlines()) == len(lines)


@pytest.mark.parametrize("pool, eval_set, size, expected", [
    ("", '{"question": "q?", "answer": "1\\n#### 1"}\n', 4, "pool.jsonl: no samples: the file is empty"),
    ('{"id": "a", "prompt": "p", "response": "r"}\n', '{"question": "q?", "answer": "1\\n#### 1"}\n{"question": "x"}\n',
     1, "set.jsonl:2: field 'answer': missing or empty"),
    ("".join(json.dumps({"id": str(i), "prompt": f"problem {i}", "response": "r"}) + "\n" for i in range(3)),
     '{"question": "q?", "answer": "1\\n#### 1"}\n', 4, "pool.jsonl: option --size: 4 samples per subset, but the "
                                                         "pool has 3 rows"),
])
def test_bad_input_is_one_line_and_nothing_is_written(tmp_path, pool, eval_set, size, expected):
    (tmp_path / "pool.jsonl").write_text(pool)
    (tmp_path / "set.jsonl").write_text(eval_set)
    home = tmp_path / "home"
    code, stdout, stderr = prism("study", tmp_path / "pool.jsonl", "--eval", tmp_path / "set.jsonl", "--size", size,
                                 "--out", tmp_path / "out", home=home)
    assert (code, stdout) == (2, "") and stderr.count("\n") == 1, stderr
    assert expected in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pool.jsonl", "set.jsonl"]


# ------------------------------------------------------------------------------------------------- Ray


@pytest.mark.scaleout
def test_a_ray_study_on_a_local_cluster_gives_the_sequential_studys_runs(tiny_model_dir, tmp_path):
    """Head + 2 worker nodes of 1 CPU (tests/ray_cluster.py): every run is a Ray task, two at a time, and both worker
    nodes run some. The plan (the subsets, row for row) and the runs are the sequential study's, and each run's NLL
    agrees within 1e-4 nats per token. Measured on this setup: Ray's NLLs equalled the sequential ones to the bit
    (twice; a worker trains with 1 torch thread, this process with its own), while the training noise, the sd of
    these students' gains over 3 seeds, is 6.3e-3 to 6.6e-3 nats per token (`analyze`'s seed spread); 1e-4 is
    under a sixtieth of that noise."""
    from ray_cluster import local_ray_cluster

    sequential = run_study(POOL, SETS, study_config(tiny_model_dir, tmp_path / "home-seq", seeds=1), tmp_path / "seq",
                           base_model=str(tiny_model_dir), runner=sequential_runner(), vectors=vectors)
    with local_ray_cluster(workers=2) as cluster:
        config = study_config(tiny_model_dir, tmp_path / "home-ray", seeds=1, ray_address=cluster.address)
        on_ray = run_study(POOL, SETS, config, tmp_path / "ray", base_model=str(tiny_model_dir), vectors=vectors)
    assert on_ray["fingerprint"] == sequential["fingerprint"] and on_ray["subsets"] == sequential["subsets"]
    assert list(on_ray["runs"]) == list(sequential["runs"]) and len(on_ray["runs"]) == 2 + 8
    nodes = Counter(line["result"]["ray_node"] for line in on_ray["runs"].values())
    assert set(nodes) == {"worker-1", "worker-2"}, nodes
    differences = [abs(line["result"]["nll"][name] - sequential["runs"][key]["result"]["nll"][name])
                   for key, line in on_ray["runs"].items() for name in line["result"]["nll"]]
    print(f"\nlargest NLL difference, Ray vs sequential: {max(differences):.2e} nats/token; runs per node {nodes}")
    assert max(differences) < 1e-4
