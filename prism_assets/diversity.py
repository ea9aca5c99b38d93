"""Diversity scores of each round: G-Vendi of the pool and of the round's verified candidates."""

import json

import polars as pl
from dagster import AssetExecutionContext, MaterializeResult, asset

from prism_assets import io
from prism_assets.clustering import clusters, pool
from prism_assets.partitions import rounds
from prismatic.gvendi import gvendi
from prismatic.synthesis import SEED_ROUND, previous_round
from resources.store import StoreResource


@asset(partitions_def=rounds, deps=[pool, clusters], kinds={"polars", "duckdb"}, code_version="1",
       group_name="prismatic", owners=["team:prismatic"],
       description="One row per metric: `gvendi` of the pool after this round (exp entropy of the spectrum of "
                   "unit gradient features), `gvendi_candidates` of this round's verified samples.")
def diversity_scores(context: AssetExecutionContext, store: StoreResource) -> MaterializeResult:
    key = context.partition_key
    members = io.read(store, "pool", key)
    pool_x, projection = io.pool_features(store, members)
    candidates = io.read(store, "gradient_features", key)
    details = json.dumps({"proxy": projection.get("proxy"), "dim": pool_x.shape[1], "projection": projection})
    rows = [{"metric": "gvendi", "value": gvendi(pool_x), "n": len(members), "details": details}]
    if len(candidates):
        cand_x = candidates["feature"].to_numpy()
        rows.append({"metric": "gvendi_candidates", "value": gvendi(cand_x), "n": len(candidates), "details": details})
    frame = pl.DataFrame(rows, schema={"metric": pl.String, "value": pl.Float64, "n": pl.Int64, "details": pl.String})
    metadata = {"dagster/row_count": len(frame), "gvendi": rows[0]["value"], "pool_size": len(members)}
    if key != SEED_ROUND and store.store().exists("diversity_scores", previous_round(key)):
        before = io.read(store, "diversity_scores", previous_round(key)).filter(metric="gvendi")["value"][0]
        metadata["gvendi_gain"] = rows[0]["value"] - before
    version = io.write(context, store, "diversity_scores", frame)
    return MaterializeResult(data_version=version, metadata=metadata)
