"""Gradient features of a round's verified samples under the proxy LM."""

import polars as pl
from dagster import AssetExecutionContext, MaterializeResult, asset

from prism_assets import io
from prism_assets.partitions import ONE_ROUND_PER_RUN, ROUND_POOL, rounds
from prism_assets.verification import verified_samples
from resources.proxy import ProxyResource
from resources.store import StoreResource


@asset(partitions_def=rounds, pool=ROUND_POOL, backfill_policy=ONE_ROUND_PER_RUN,
       deps=[verified_samples], kinds={"torch", "polars"}, code_version="1",
       group_name="prismatic", owners=["team:prismatic"],
       description="Per-sample gradients of the proxy (assistant-token loss), projected to `dim` and "
                   "L2-normalized (fast: factored per-layer projection; faithful: the paper's method).")
def gradient_features(context: AssetExecutionContext, store: StoreResource, proxy: ProxyResource) -> MaterializeResult:
    key = context.partition_key
    samples = io.read(store, "verified_samples", key)
    if samples.is_empty():
        frame = pl.DataFrame(schema={"id": pl.String, "feature": pl.Array(pl.Float32, 1), "proxy": pl.String,
                                     "mode": pl.String, "dim": pl.Int64, "n_tokens": pl.Int64,
                                     "truncated": pl.Boolean}).head(0)
        version = io.write(context, store, "gradient_features", frame)
        return MaterializeResult(data_version=version, metadata={"dagster/row_count": 0})
    result, proxy_name = proxy.featurize(samples)
    n, dim = result.features.shape
    frame = pl.DataFrame({
        "id": result.ids,
        "feature": pl.Series("feature", result.features, dtype=pl.Array(pl.Float32, dim)),
        "proxy": [proxy_name] * n, "mode": [result.meta["mode"]] * n, "dim": [dim] * n,
        "n_tokens": result.n_tokens, "truncated": result.truncated,
    })
    projection = {k: v for k, v in result.meta["projection"].items() if k != "segments"}
    version = io.write(context, store, "gradient_features", frame, projection=projection, proxy=proxy_name)
    return MaterializeResult(data_version=version, metadata={
        "dagster/row_count": n, "dim": dim, "mode": result.meta["mode"], "proxy": proxy_name,
        "seconds": round(result.seconds, 2), "samples_per_s": round(n / result.seconds, 2),
        "truncated": sum(result.truncated), "projection_seed": result.meta["projection"]["seed"],
    })
