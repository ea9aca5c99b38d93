"""Gradient features of a round's verified samples under the proxy LM, in `features.shards` parallel steps.

`gradient_features` is a graph of three ops:

    feature_shard_plan ──(one dynamic output per shard)──> feature_shard ×S ──(collect)──> merge_feature_shards

Each `feature_shard` step reads the round's verified samples, plans the whole batch schedule and
computes only its own contiguous part of it (`prismatic.gradients.featureset.shard_units`), so the merged
features are the unsharded ones exactly. The shards' features travel to the merge step through the
IO manager (files under the Dagster instance; S3 under the k8s executor); the merge step writes the
table once. The in-process executor runs the shards one after another; the multiprocess executor
side by side, one process each; the k8s executor one pod each, with the GPU request of
`orchestration.k8s.shard_gpus`.
"""

import os
import warnings

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
from prismatic.gradients.featureset import FeatureSet
from prismatic.synthesis.steps import feature_shard_step, gradient_features_step
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
        result = feature_shard_step(samples, (index, count), proxy.featurize)
        if not samples.is_empty():
            context.log.info(f"shard {index} of {count}: {len(result.ids)} of {samples.height} samples in "
                             f"{result.seconds:.1f} s")
        return result

    @op(out=Out(Nothing), pool=ROUND_POOL,
        description="Merge the shards in the verified samples' order and write the round's table.")
    def merge_feature_shards(context: OpExecutionContext, store: StoreResource, shards: list[FeatureSet]):
        output = gradient_features_step(io.read(store, "verified_samples", context.partition_key), shards)
        version, metadata = io.write_step(context, store, output)
        return Output(None, data_version=version, metadata=metadata)

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

