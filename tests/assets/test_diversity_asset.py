"""The `diversity_scores` asset: every configured metric of the pool per round, with details, metadata
values and a plot of each metric across rounds (the store is filled by hand, no generation)."""

import base64
import json
import re

import numpy as np
import polars as pl
import pytest
from dagster import DagsterInstance, materialize

from prism_assets.assets.diversity import diversity_scores
from prismatic.data.samples import bundled_seeds_path, load_samples
from prismatic.metrics.baselines import distinct_n, self_repetition
from prismatic.metrics.vendi import gvendi
from prismatic.storage.base import Store
from prismatic.storage.factory import open_store
from prismatic.synthesis.control import selection_outcome
from resources.generator import GeneratorResource
from resources.home import PrismHome
from resources.proxy import ProxyResource
from resources.store import StoreResource

DIM = 8


def fill_store(store: Store, seeds: pl.DataFrame) -> dict[str, np.ndarray]:
    """r000: a pool of 6 seeds; r001: 3 more. Random unit features for each round's new rows."""
    rng = np.random.default_rng(0)
    features = {}
    for key, rows in (("r000", seeds.slice(0, 6)), ("r001", seeds.slice(6, 3))):
        x = rng.standard_normal((rows.height, DIM)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        features[key] = x
        store.write("gradient_features", key, pl.DataFrame({
            "id": rows["id"], "feature": pl.Series(x, dtype=pl.Array(pl.Float32, DIM)), "proxy": ["p"] * rows.height,
            "mode": ["fast"] * rows.height, "dim": [DIM] * rows.height, "n_tokens": [10] * rows.height,
            "truncated": [False] * rows.height}), metadata={"proxy": "p", "projection": {"seed": 0, "dim": DIM}})
    for key, n in (("r000", 6), ("r001", 9)):
        pool = seeds.head(n).select("id", "prompt", "response", "answer", "task").with_columns(
            origin=pl.lit("seed"), round_added=pl.Series(["r000"] * 6 + ["r001"] * (n - 6)))
        store.write("pool", key, pool)
    # r001 kept all 3 of its candidates; its selection records the chance control of keeping 3 at random.
    kept = np.ones(3, dtype=bool)
    store.write("selection", "r001", pl.DataFrame({
        "id": seeds["id"].slice(6, 3), "cluster": [0] * 3, "cluster_size_at_decision": [1] * 3, "gain": [0.1] * 3,
        "kept": kept, "rule": ["novelty"] * 3}), metadata={
        "outcome": selection_outcome(features["r000"], features["r001"], kept, draws=2, seed=0)})
    return features


def test_every_configured_metric_per_round_with_plots(tmp_path, tiny_model_dir):
    (tmp_path / "prism.yaml").write_text(
        f"features: {{proxy: {tiny_model_dir}, model_dtype: float32, device: cpu}}\n"
        "metrics:\n  names: [distinct_n, self_repetition, proxy_nll]\n")
    seeds = load_samples(bundled_seeds_path())
    store = open_store(tmp_path / "store")
    features = fill_store(store, seeds)
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("rounds", ["r000", "r001"])
    prism_home = PrismHome(home=str(tmp_path))
    resources = {"prism_home": prism_home, "store": StoreResource(prism_home=prism_home),
                 "proxy": ProxyResource(prism_home=prism_home), "generator": GeneratorResource(prism_home=prism_home)}
    metadata = {}
    for key in ("r000", "r001"):
        result = materialize([diversity_scores], partition_key=key, instance=instance, resources=resources)
        assert result.success
        metadata[key] = result.asset_materializations_for_node("diversity_scores")[0].metadata

    scores = store.read("diversity_scores", "r001")
    assert scores["metric"].to_list() == ["gvendi", "distinct_n", "self_repetition", "proxy_nll",
                                          "gvendi_candidates", "gvendi_control"]
    value = dict(zip(scores["metric"], scores["value"]))
    pool = seeds.head(9)
    texts = [f"{p}\n\n{r}" for p, r in zip(pool["prompt"], pool["response"])]
    assert value["gvendi"] == pytest.approx(gvendi(np.concatenate([features["r000"], features["r001"]])))
    assert value["gvendi_candidates"] == pytest.approx(gvendi(features["r001"]))
    assert value["distinct_n"] == distinct_n(texts) and value["self_repetition"] == self_repetition(texts)
    assert value["proxy_nll"] > 0 and set(scores["n"].to_list()) == {9, 3}
    details = {m: json.loads(d) for m, d in zip(scores["metric"], scores["details"])}
    assert details["proxy_nll"]["proxy"] == str(tiny_model_dir) and details["distinct_n"]["max_n"] == 4
    assert all("seconds" in details[m] for m in ("gvendi", "distinct_n", "self_repetition", "proxy_nll"))

    shown = metadata["r001"]
    assert shown["distinct_n"].value == value["distinct_n"] and shown["pool_size"].value == 9
    before = dict(zip(*store.read("diversity_scores", "r000").select("metric", "value")))
    assert shown["gvendi_gain"].value == value["gvendi"] - before["gvendi"]
    # Keeping every candidate, each random draw of 3 of 3 is the whole pool: the control equals G-Vendi.
    assert value["gvendi_control"] == pytest.approx(value["gvendi"], rel=1e-5)
    assert shown["gvendi_control_gain"].value == pytest.approx(value["gvendi_control"] - before["gvendi"])
    for metric in ("gvendi", "distinct_n", "self_repetition", "proxy_nll"):
        image = re.fullmatch(r"!\[.*\]\(data:image/png;base64,(.+)\)", shown[f"{metric} by round"].value)
        assert image and base64.b64decode(image.group(1)).startswith(b"\x89PNG")
