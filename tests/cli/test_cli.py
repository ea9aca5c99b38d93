"""The `prism` command run as a user runs it: a subprocess of the installed console script."""

import json

import numpy as np
import pytest
from conftest import run_prism

from prismatic.data.samples import bundled_seeds_path


@pytest.mark.parametrize("mode", ["fast", "faithful"])
def test_gvendi_on_bundled_seeds_with_tiny_model(tmp_path, tiny_model_dir, mode):
    result = run_prism("gvendi", bundled_seeds_path(), "--proxy", tiny_model_dir, "--dim", 256, "--mode", mode,
                       "--json", home=tmp_path)
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert set(payload) == {"gvendi", "n", "dim", "mode", "proxy", "seconds"}
    assert payload["n"] == sum(1 for _ in bundled_seeds_path().open()) and payload["dim"] == 256
    assert payload["mode"] == mode and payload["proxy"] == str(tiny_model_dir)
    assert 1.0 < payload["gvendi"] <= 256


def test_features_then_vendi_gives_the_same_score_as_gvendi(tmp_path, tiny_model_dir):
    data = tmp_path / "few.jsonl"
    data.write_text("".join(bundled_seeds_path().read_text().splitlines(keepends=True)[:12]))
    out = tmp_path / "f.parquet"
    made = run_prism("features", data, "--out", out, "--proxy", tiny_model_dir, "--dim", 128, "--json",
                     home=tmp_path)
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["n"] == 12
    scored = run_prism("vendi", out, "--json", home=tmp_path)
    direct = run_prism("gvendi", data, "--proxy", tiny_model_dir, "--dim", 128, "--json", home=tmp_path)
    assert json.loads(scored.stdout)["mode"] == "fast"
    assert json.loads(scored.stdout)["gvendi"] == pytest.approx(json.loads(direct.stdout)["gvendi"], rel=1e-5)

    import polars as pl

    frame = pl.read_parquet(out)
    assert frame.columns == ["id", "feature", "proxy", "mode", "dim", "n_tokens", "truncated"]
    assert frame.schema["feature"] == pl.Array(pl.Float32, 128)
    norms = np.linalg.norm(np.stack(frame["feature"].to_numpy()), axis=1)
    assert np.allclose(norms, 1.0, atol=1e-5)

    # Features from another projection seed are refused, not mixed.
    other = tmp_path / "g.parquet"
    assert run_prism("features", data, "--out", other, "--proxy", tiny_model_dir, "--dim", 128, "--seed", 1,
                     home=tmp_path).returncode == 0
    mixed = run_prism("vendi", out, other, home=tmp_path)
    assert mixed.returncode == 2
    assert "different projection" in mixed.stderr and "Traceback" not in mixed.stderr
    # So are features of the other mode.
    faithful = tmp_path / "h.parquet"
    assert run_prism("features", data, "--out", faithful, "--proxy", tiny_model_dir, "--dim", 128,
                     "--mode", "faithful", home=tmp_path).returncode == 0
    across = run_prism("vendi", out, faithful, home=tmp_path)
    assert across.returncode == 2 and "field 'mode'" in across.stderr


BAD_INPUTS = {
    "empty": (b"", None, "empty"),
    "malformed": (b'{"id": "a", "prompt": "p", "response": "r"}\n{"id": "b", "prompt": \n', 2, "invalid JSON"),
    "missing_field": (b'{"id": "a", "prompt": "p", "response": "r"}\n{"id": "b", "prompt": "p"}\n', 2,
                      "field 'response': missing required field"),
    "non_utf8": (b'{"id": "a", "prompt": "p", "response": "r"}\n{"id": "b", "prompt": "\xff\xfe"}\n', 2,
                 "not UTF-8"),
    "wrong_type": (b'{"id": "a", "prompt": 5, "response": "r"}\n', 1, "field 'prompt': expected a string"),
    "duplicate_id": (b'{"id": "a", "prompt": "p", "response": "r"}\n{"id": "a", "prompt": "q", "response": "s"}\n',
                     2, "duplicate id"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gives_one_line_naming_file_line_and_field(tmp_path, case):
    content, line, message = BAD_INPUTS[case]
    data = tmp_path / f"{case}.jsonl"
    data.write_bytes(content)
    home = tmp_path / "home"
    out = tmp_path / "out.parquet"
    result = run_prism("features", data, "--out", out, "--proxy", "unused-model", home=home)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    where = f"{data}:{line}:" if line else f"{data}:"
    assert lines[0].startswith(f"prism: error: {where}") and message in lines[0], lines[0]
    assert not out.exists() and not home.exists()


def test_bad_config_is_reported_with_line_and_field(tmp_path):
    (tmp_path / "prism.yaml").write_text("features:\n  dim: 1024\n  colour: blue\n")
    result = run_prism("gvendi", bundled_seeds_path(), home=tmp_path)
    assert result.returncode == 2
    assert f"{tmp_path / 'prism.yaml'}:3: field 'features.colour': Extra inputs are not permitted" in result.stderr


def test_missing_model_names_the_install_command(tmp_path):
    result = run_prism("gvendi", bundled_seeds_path(), home=tmp_path)
    assert result.returncode == 2 and "prism models install smollm2" in result.stderr


@pytest.mark.slow
def test_gvendi_with_smollm2_on_bundled_math_seeds(tmp_path, smollm2_dir):
    rows = [line for line in bundled_seeds_path().read_text().splitlines() if '"task": "math"' in line][:16]
    data = tmp_path / "math16.jsonl"
    data.write_text("\n".join(rows) + "\n")
    result = run_prism("gvendi", data, "--proxy", smollm2_dir, "--json", home=tmp_path)
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["n"] == 16 and payload["dim"] == 4096
    # 16 distinct problems: clearly more than one effective sample, at most 16.
    assert 2.0 < payload["gvendi"] <= 16.0


@pytest.mark.slow
def test_run_store_option_reaches_the_step_processes_of_the_multiprocess_executor(tmp_path, tiny_model_dir):
    """`--store` is a parameter of the run (its resource config), not an environment variable: the feature
    shards, each in its own process that builds the definitions again, write the store it names."""
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir()
    (home / "prism.yaml").write_text(f"features: {{proxy: {tiny_model_dir}, dim: 64, shards: 2}}\n"
                                     "orchestration: {executor: multiprocess, max_concurrent: 2}\n"
                                     "metrics: {names: [gvendi]}\n")
    result = run_prism("run", "--round", "r000", "--store", elsewhere, "--json", home=home)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout)["pool"] == 84
    assert not (home / "store").exists()
    assert (elsewhere / "gradient_features" / "round=r000").is_dir()
    assert (elsewhere / "diversity_scores" / "round=r000").is_dir()


def test_mode_option_meets_the_sparse_final_stage_with_one_clear_error(tmp_path):
    """`--mode faithful` with the default `final` is fine (faithful projects densely); with `final: sparse`
    written in prism.yaml it is one line naming the option."""
    (tmp_path / "prism.yaml").write_text("features:\n  final: sparse\n")
    result = run_prism("gvendi", bundled_seeds_path(), "--mode", "faithful", home=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == ("prism: error: option --mode: Value error, final: sparse is the fast path's "
                                     "last stage; use mode: fast, or final: dense")


def test_the_summary_names_drop_reasons_in_name_order_whatever_their_order_in_the_row():
    from prism_cli.runner import format_summary

    row = {"round": "r001", "problems": 13, "dropped": 4, "solved": 9, "verified": 11, "kept": 7, "pool": 91,
           "gvendi": 39.2, "gain": 4.7, "control_gain": 3.2, "tokens": 100, "cost_usd": None, "unparseable": 3,
           "dropped_by": {"too_few_words": 1, "low_alpha_words": 2, "proxy_nll_outlier": 1}}
    assert format_summary([row])[-1] == ("r001 dropped: low_alpha_words 2, proxy_nll_outlier 1, too_few_words 1, "
                                         "unparseable 3")
