"""`prism select` on files outside a store (prism_cli/select_files.py): feature files or data files."""

import json

import numpy as np
import polars as pl
import pytest

from prismatic.metrics.vendi import gvendi
from prismatic.synthesis.kmeans import spherical_kmeans
from prismatic.synthesis.selection import select_logdet, select_paper


def _feature_file(path, ids, features):
    from prismatic.gradients.featureset import FeatureSet
    from prismatic.gradients.files import write_features

    meta = {"mode": "fast", "dim": features.shape[1], "projection": {"kind": "test", "seed": 0}}
    return write_features(path, FeatureSet(list(ids), features.astype(np.float32), [1] * len(ids),
                                           [False] * len(ids), meta), "test-proxy")


def test_select_files_on_feature_files_matches_the_rules_applied_directly(tmp_path):
    from prism_cli.select_files import select_files
    from prismatic.config import PrismConfig
    from prismatic.synthesis.kmeans import num_clusters

    rng = np.random.default_rng(7)
    pool_rows = rng.normal(size=(40, 12))
    pool_rows[:20, 0] += 4  # one dense region, so the clusters differ in size
    cands = rng.normal(size=(30, 12))
    pool_ids, cand_ids = [f"p{i}" for i in range(40)], [f"c{i:02d}" for i in range(30)]
    pool_path = _feature_file(tmp_path / "pool.parquet", pool_ids, pool_rows)
    cand_path = _feature_file(tmp_path / "cands.parquet", cand_ids, cands)
    clustering = spherical_kmeans(pool_rows, num_clusters(40, 0.2), iterations=20, seed=0)
    paper = select_paper(cand_ids, cands, clustering)
    assert 0 < paper["kept"].sum() < 30
    config = PrismConfig()
    for rule in ("paper", "logdet"):
        out = tmp_path / f"{rule}.jsonl"
        report = select_files(pool_path, cand_path, out, config, rule=rule, ratio=0.2)
        expected = paper if rule == "paper" else select_logdet(cand_ids, cands, pool_rows,
                                                               int(paper["kept"].sum()), epsilon=1.0)
        kept_ids = expected.filter(pl.col("kept"))["id"].to_list()
        assert [row["id"] for row in map(json.loads, out.read_text().splitlines())] == kept_ids
        assert report["kept"] == report["paper_kept"] == len(kept_ids) and report["k"] == clustering.k
        kept_rows = cands[[cand_ids.index(i) for i in kept_ids]]
        assert report["gvendi_before"] == pytest.approx(gvendi(pool_rows), rel=1e-6)
        assert report["gvendi_after"] == pytest.approx(gvendi(np.concatenate([pool_rows, kept_rows])), rel=1e-6)
        assert report["pool"] == 40 and report["candidates"] == 30 and report["proxy"] == "test-proxy"
    counted = select_files(pool_path, cand_path, tmp_path / "b.jsonl", config, rule="balanced", count=7, ratio=0.2)
    assert counted["kept"] == counted["count"] == 7 and len((tmp_path / "b.jsonl").read_text().splitlines()) == 7


def test_select_files_refuses_bad_input_and_writes_nothing(tmp_path):
    from prism_cli.select_files import select_files
    from prismatic.config import PrismConfig
    from prismatic.errors import InputError, PrismError

    pool_path = _feature_file(tmp_path / "pool.parquet", ["a", "b"], np.eye(3)[:2])
    bad = tmp_path / "cands.jsonl"
    bad.write_text('{"id": "x", "prompt": "p", "response": "r"}\n{"id": "y", "prompt": "p"}\n')
    out = tmp_path / "kept.jsonl"
    with pytest.raises(InputError, match=r"cands.jsonl:2: field 'response': missing required field"):
        select_files(pool_path, bad, out, PrismConfig())
    with pytest.raises(PrismError, match="option --count"):
        select_files(pool_path, pool_path, out, PrismConfig(), rule="paper", count=3)
    with pytest.raises(PrismError, match="option --rule"):
        select_files(pool_path, pool_path, out, PrismConfig(), rule="greedy")
    other = _feature_file(tmp_path / "other.parquet", ["c"], np.eye(4)[:1])
    with pytest.raises(InputError, match="different dim"):
        select_files(pool_path, other, out, PrismConfig())
    assert not out.exists()


def test_prism_select_command_on_data_files_with_a_tiny_model(tmp_path, tiny_model_dir, monkeypatch):
    from typer.testing import CliRunner

    from prism_cli.main import app
    from prismatic.data.samples import bundled_seeds_path

    lines = bundled_seeds_path().read_text().splitlines(keepends=True)
    (tmp_path / "pool.jsonl").write_text("".join(lines[:12]))
    (tmp_path / "cands.jsonl").write_text("".join(lines[12:20]))
    monkeypatch.setenv("PRISM_HOME", str(tmp_path))
    result = CliRunner().invoke(app, [
        "select", "--pool", str(tmp_path / "pool.jsonl"), "--candidates", str(tmp_path / "cands.jsonl"),
        "--rule", "logdet", "--count", "3", "--ratio", "0.25", "--proxy", str(tiny_model_dir), "--dim", "64",
        "--out", str(tmp_path / "kept.jsonl"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"rule", "pool", "candidates", "k", "paper_kept", "count", "kept", "gvendi_before", "gvendi_after",
            "gvendi_gain", "out", "proxy", "mode", "dim", "seconds"} == set(report)
    assert (report["rule"], report["pool"], report["candidates"], report["k"], report["count"], report["kept"],
            report["dim"]) == ("logdet", 12, 8, 3, 3, 3, 64)
    assert report["gvendi_gain"] == pytest.approx(report["gvendi_after"] - report["gvendi_before"])
    kept = [json.loads(line) for line in (tmp_path / "kept.jsonl").read_text().splitlines()]
    originals = {row["id"]: row for row in map(json.loads, lines[12:20])}
    assert len(kept) == 3 and all(row["prompt"] == originals[row["id"]]["prompt"] for row in kept)
