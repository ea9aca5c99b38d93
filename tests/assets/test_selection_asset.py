"""The `selection` asset reads its rule, count and ε from prism.yaml and stores what the rule selects."""

import numpy as np
import polars as pl

from prismatic.synthesis.kmeans import spherical_kmeans
from prismatic.synthesis.selection import select_logdet

D = 8


def _unit(a):
    a = np.asarray(a, dtype=np.float64)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def test_selection_asset_takes_rule_count_and_epsilon_from_config(tmp_path):
    from dagster import DagsterInstance, materialize

    from prism_assets.assets.selection import selection
    from prismatic.storage.factory import open_store
    from prismatic.storage.schema import TABLES, schema
    from resources.home import PrismHome
    from resources.store import StoreResource

    rng = np.random.default_rng(8)
    pool_rows, cands = _unit(rng.normal(size=(20, D))), _unit(rng.normal(size=(12, D)))
    clustering = spherical_kmeans(pool_rows, 4, seed=0)
    store = open_store(tmp_path / "store")
    pool_ids, cand_ids = [f"p{i:02d}" for i in range(20)], [f"c{i:02d}" for i in range(12)]

    def features_frame(ids, rows):
        n = len(ids)
        return pl.DataFrame({"id": ids, "feature": pl.Series(rows.astype(np.float32), dtype=pl.Array(pl.Float32, D)),
                             "proxy": ["m"] * n, "mode": ["fast"] * n, "dim": [D] * n, "n_tokens": [1] * n,
                             "truncated": [False] * n})

    provenance = {"proxy": "m", "projection": {"seed": 0}}
    store.write("gradient_features", "r000", features_frame(pool_ids, pool_rows), metadata=provenance)
    store.write("gradient_features", "r001", features_frame(cand_ids, cands), metadata=provenance)
    store.write("pool", "r000", pl.DataFrame({"id": pool_ids, "prompt": "q", "response": "r", "answer": "1",
                                              "task": "math", "origin": "seed", "round_added": "r000"}))
    store.write("centroids", "r000", pl.DataFrame({
        "cluster": np.arange(clustering.k),
        "centroid": pl.Series(clustering.centroids, dtype=pl.Array(pl.Float32, D)), "size": clustering.sizes}))
    for table in TABLES:  # every other table of r000 exists (empty), as after a finished round
        if table != "seeds" and not store.exists(table, "r000"):
            store.write(table, "r000", pl.DataFrame(schema=schema(table, dim=D)))
    (tmp_path / "prism.yaml").write_text("synthesis:\n  selection_rule: logdet\n  selection_count: 4\n"
                                         "  logdet_epsilon: 0.5\n")
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("rounds", ["r000", "r001"])
    home = str(tmp_path)
    result = materialize([selection], partition_key="r001", instance=instance,
                         resources={"prism_home": PrismHome(home=home),
                                    "store": StoreResource(prism_home=PrismHome(home=home))})
    assert result.success
    stored = store.read("selection", "r001")
    expected = select_logdet(cand_ids, cands.astype(np.float32), pool_rows.astype(np.float32), 4,
                             clustering=clustering, epsilon=0.5)  # as stored: float32
    assert stored.sort("id").equals(expected.sort("id"))
    assert result.asset_materializations_for_node("selection")[0].metadata["rule"].value == "logdet"
