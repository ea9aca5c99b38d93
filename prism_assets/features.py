"""Gradient features of a round's verified samples under the proxy LM, in `features.shards` parallel steps.

`gradient_features` is a graph of three ops:

    feature_shard_plan ──(one dynamic output per shard)──> feature_shard ×S ──(collect)──> merge_feature_shards

Each `feature_shard` step reads the round's verified samples, plans the whole batch schedule and
computes only its own contiguous part of it (`prismatic.gradients.faithful.shard_units`), so the merged
features are the unsharded ones exactly. The shards' features travel to the merge step through the
IO manager (files under the Dagster instance; S3 under the k8s executor); the merge step writes the
table once. The in-process executor runs the shards one after another; the multiprocess executor
side by side, one process each; the k8s executor one pod each, with the GPU request of
`orchestration.k8s.shard_gpus`.
"""

import os
import warnings

import numpy as np
import polars as pl
import torch
from dagster import (
    AssetIn,
    AssetsDefinition,
    BetaWarning,
    DynamicOut,
    DynamicOutput,
    In,
    Nothing,
    OpExecutionContext,
    Out,
    Output,
    graph_asset,
    op,
)

from prism_assets import io
from prism_assets.partitions import ONE_ROUND_PER_RUN, ROUND_POOL, rounds
from prism_assets.scaleout import shard_op_tags
from prismatic.config import PrismConfig
from prismatic.gradients.faithful import FeatureSet, feature_table, merge_feature_sets
from resources.home import PrismHome
from resources.proxy import ProxyResource
from resources.store import StoreResource

# A data version on an op's Output is a Dagster beta feature (dagster is pinned exactly): silence only that.
warnings.filterwarnings("ignore", message="Parameter `data_version` of initializer `Output.__init__`",
                        category=BetaWarning)


def build_gradient_features(config: PrismConfig) -> AssetsDefinition:
    """The `gradient_features` asset; `config` gives the shard steps their executor tags (GPU requests)."""

    @op(ins={"verified": In(Nothing)}, out=DynamicOut(int), pool=ROUND_POOL,
        description="One dynamic output per feature shard (`features.shards` of prism.yaml).")
    def feature_shard_plan(context: OpExecutionContext, prism_home: PrismHome):
        count = prism_home.config().features.shards
        for index in range(count):
            yield DynamicOutput(index, mapping_key=f"shard_{index:03d}")

    @op(pool=ROUND_POOL, tags=shard_op_tags(config),
        description="Features of one shard of the round's verified samples (its part of the batch plan).")
    def feature_shard(context: OpExecutionContext, prism_home: PrismHome, store: StoreResource,
                      proxy: ProxyResource, index: int) -> FeatureSet:
        config = prism_home.config()
        samples = io.read(store, "verified_samples", context.partition_key)
        count = config.features.shards
        if config.orchestration.executor == "multiprocess":  # shards side by side share the machine's cores
            side_by_side = min(count, config.orchestration.max_concurrent or os.cpu_count() or 1)
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // side_by_side))
        if samples.is_empty():
            return FeatureSet(ids=[], features=np.zeros((0, 1), dtype=np.float32), n_tokens=[], truncated=[])
        result, proxy_name = proxy.featurize(samples, shard=(index, count))
        result.meta = {**result.meta, "proxy": proxy_name}
        context.log.info(f"shard {index} of {count}: {len(result.ids)} of {samples.height} samples in "
                         f"{result.seconds:.1f} s")
        return result

    @op(out=Out(Nothing), pool=ROUND_POOL,
        description="Merge the shards in the verified samples' order and write the round's table.")
    def merge_feature_shards(context: OpExecutionContext, store: StoreResource, shards: list[FeatureSet]):
        key = context.partition_key
        samples = io.read(store, "verified_samples", key)
        result = merge_feature_sets(shards, samples["id"].to_list())
        n = len(result.ids)
        if not n:
            version = io.write(context, store, "gradient_features", _empty_features())
            return Output(None, data_version=version, metadata={"dagster/row_count": 0})
        proxy_name, dim = result.meta["proxy"], result.features.shape[1]
        frame, projection = feature_table(result)
        version = io.write(context, store, "gradient_features", frame, projection=projection, proxy=proxy_name,
                           shards=len(shards))
        return Output(None, data_version=version, metadata={
            "dagster/row_count": n, "dim": dim, "mode": result.meta["mode"], "proxy": proxy_name,
            "shards": len(shards), "seconds": round(result.seconds, 2),
            "samples_per_s": round(n / result.seconds, 2) if result.seconds else None,
            "truncated": sum(result.truncated), "projection_seed": result.meta["projection"]["seed"],
        })

    @graph_asset(partitions_def=rounds, backfill_policy=ONE_ROUND_PER_RUN,
                 ins={"verified_samples": AssetIn(dagster_type=Nothing)}, kinds={"torch", "polars"},
                 group_name="prismatic", owners=["team:prismatic"], code_version="2",
                 description="Per-sample gradients of the proxy (assistant-token loss), projected to `dim` and "
                             "L2-normalized (fast: factored per-layer projection; faithful: the paper's "
                             "method), computed in `features.shards` parallel steps and merged.")
    def gradient_features(verified_samples):
        shards = feature_shard_plan(verified=verified_samples).map(feature_shard)
        return merge_feature_shards(shards.collect())

    return gradient_features


def _empty_features() -> pl.DataFrame:
    return pl.DataFrame(schema={"id": pl.String, "feature": pl.Array(pl.Float32, 1), "proxy": pl.String,
                                "mode": pl.String, "dim": pl.Int64, "n_tokens": pl.Int64,
                                "truncated": pl.Boolean})

