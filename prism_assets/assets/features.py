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

Under `orchestration.executor: ray` the graph is two ops in the run's process:

    feature_shards_on_ray ──(every shard's features and where it ran)──> merge_ray_feature_shards

the first runs every shard at once as a Ray actor on the cluster (`prismatic.gradients.ray_shards`) and
the second merges them as above and records each shard's node (`shard_nodes`) in the metadata.
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

from prism_assets import tables
from prism_assets.partitions import ONE_ROUND_PER_RUN, ROUND_POOL, rounds
from prism_assets.scaleout import shard_op_tags
from prismatic.config import PrismConfig
from prismatic.config_file import CONFIG_FILE
from prismatic.gradients.featureset import FeatureSet
from prismatic.gradients.ray_shards import RayShards, ray_feature_shards
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
        samples = tables.read(store, "verified_samples", context.partition_key)
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
        return merge_and_write(context, store, shards)

    @op(ins={"verified": In(Nothing)}, pool=ROUND_POOL,
        description="Every feature shard as a Ray actor on the cluster of `orchestration.ray` (one per shard).")
    def feature_shards_on_ray(context: OpExecutionContext, prism_home: PrismHome, store: StoreResource) -> RayShards:
        config = prism_home.config()
        samples = tables.read(store, "verified_samples", context.partition_key)
        result = ray_feature_shards(samples, config.features.shards, config.features, config.models_dir,
                                    config.orchestration.ray, config.home / CONFIG_FILE, log=context.log.info)
        context.add_output_metadata({"shard_nodes": result.nodes()})
        return result

    @op(out=Out(Nothing), pool=ROUND_POOL,
        description="Merge the Ray shards in the verified samples' order, write the round's table and where "
                    "each shard ran.")
    def merge_ray_feature_shards(context: OpExecutionContext, store: StoreResource, shards: RayShards):
        return merge_and_write(context, store, shards.shards, shard_nodes=shards.nodes())

    @graph_asset(partitions_def=rounds, backfill_policy=ONE_ROUND_PER_RUN,
                 ins={"verified_samples": AssetIn(dagster_type=Nothing)}, kinds={"torch", "polars"},
                 group_name="prismatic", owners=["team:prismatic"], code_version="2",
                 description="Per-sample gradients of the proxy (assistant-token loss), projected to `dim` and "
                             "L2-normalized (fast: factored per-layer projection; faithful: the paper's "
                             "method), computed in `features.shards` parallel steps and merged.")
    def gradient_features(verified_samples):
        if config.orchestration.executor == "ray":
            return merge_ray_feature_shards(feature_shards_on_ray(verified=verified_samples))
        shards = feature_shard_plan(verified=verified_samples).map(feature_shard)
        return merge_feature_shards(shards.collect())

    return gradient_features


def merge_and_write(context: OpExecutionContext, store: StoreResource, shards: list[FeatureSet],
                    shard_nodes: list[dict] | None = None) -> Output:
    """Write the round's `gradient_features` (`gradient_features_step`); `shard_nodes` (Ray: where each
    shard ran) go into the table's provenance and the asset's metadata."""
    output = gradient_features_step(tables.read(store, "verified_samples", context.partition_key), shards)
    if shard_nodes is not None:
        output.facts["shard_nodes"] = shard_nodes
        if "gradient_features" in output.provenance:
            output.provenance["gradient_features"]["shard_nodes"] = shard_nodes
    version, metadata = tables.write_step(context, store, output)
    return Output(None, data_version=version, metadata=metadata)

