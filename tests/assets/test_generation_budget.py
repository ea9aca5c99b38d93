"""A round run by Dagster (`run_round`) against the deterministic HTTP server of tests/fake_llm.py, which
reports each request's tokens: over its budget the round fails with one line and writes no generations;
rerun with a larger budget it sends only what was not answered, and its tokens and cost reach the
asset's metadata, the round table of `prism run`/`prism demo` and the dataset card of `prism export`."""

import json
import os

import pytest
from dagster import AssetKey, DagsterInstance
from fake_llm import ROUND_CONFIG, DeterministicServer

from prismatic.errors import PrismError
from prismatic.storage.factory import open_store

PRICES = "  prices: {input_usd_per_million: 3.0, output_usd_per_million: 15.0}\n"


@pytest.mark.slow
def test_a_round_over_budget_fails_in_one_line_and_a_larger_budget_finishes_it(tmp_path, tiny_model_dir, monkeypatch):
    from prism_cli.runner import format_summary, round_summary, run_round
    from prismatic.data.export import export_dataset

    monkeypatch.delenv("PRISM_STORE", raising=False)
    monkeypatch.setenv("PRISM_HOME", os.environ.get("PRISM_HOME", ".prism"))  # run_round sets it
    monkeypatch.setenv("PRISM_TEST_API_KEY", "sk-test")
    server = DeterministicServer()
    home = tmp_path / "home"
    home.mkdir()
    # One request in flight at a time, so "the request that reached the budget" is the last one sent: with two,
    # both can be sent before either is answered (a bounded overshoot the product allows).
    config = ROUND_CONFIG.format(proxy=tiny_model_dir, url=server.url)
    config = config.replace("max_concurrency: 2", "max_concurrency: 1")

    def budget(tokens: int) -> None:
        (home / "prism.yaml").write_text(config.replace("  timeout_s: 30\n",
                                                        f"  timeout_s: 30\n  budget_tokens: {tokens}\n{PRICES}"))

    try:
        instance = DagsterInstance.ephemeral()
        budget(150)
        run_round(home, "r000", instance)
        with pytest.raises(PrismError) as info:
            run_round(home, "r001", instance)
        message = str(info.value)
        print(f"\nthe round's error: {message}")
        assert "\n" not in message and "generator.budget_tokens = 150 reached: spent " in message
        assert "a rerun with a larger budget resumes from the journal" in message
        assert not open_store(home / "store").exists("generations", "r001")
        first = list(server.answered)
        assert first and sum(sum(server.tokens[seed]) for seed in first[:-1]) < 150  # the last one reached it

        budget(10**7)
        run_round(home, "r001", instance)
    finally:
        server.close()
    assert len(server.answered) == len(set(server.answered)) > len(first)  # nothing answered was sent again
    prompt = sum(server.tokens[seed][0] for seed in server.answered)
    completion = sum(server.tokens[seed][1] for seed in server.answered)
    cost = (3.0 * prompt + 15.0 * completion) / 1e6

    metadata = instance.get_latest_materialization_event(AssetKey("generations")).asset_materialization.metadata
    assert (metadata["prompt_tokens"].value, metadata["completion_tokens"].value) == (prompt, completion)
    assert metadata["total_tokens"].value == prompt + completion
    assert metadata["cost_usd"].value == pytest.approx(cost, abs=1e-6)

    rows = round_summary(home, ["r000", "r001"])
    assert rows[0]["tokens"] is None and rows[1]["tokens"] == prompt + completion
    assert rows[1]["cost_usd"] == pytest.approx(cost, abs=1e-6)
    table = format_summary(rows)
    assert table[0].split()[-2:] == ["tokens", "cost_usd"]
    assert table[2].split()[-2:] == [str(prompt + completion), f"{rows[1]['cost_usd']:.4f}"]

    card = export_dataset(open_store(home / "store"), tmp_path / "export", table="verified_samples", fmt="chat-jsonl")
    assert card["per_round"]["r001"]["usage"]["total_tokens"] == prompt + completion
    assert json.loads((tmp_path / "export" / "dataset_card.json").read_text())["per_round"]["r001"]["usage"][
        "cost_usd"] == pytest.approx(cost, abs=1e-6)
    assert f"| {prompt + completion} ({prompt} + {completion}) | {rows[1]['cost_usd']:.4f} |" in \
        (tmp_path / "export" / "README.md").read_text()
