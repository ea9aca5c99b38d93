"""Jobs: `prism_round` materializes one round (one partition of every round asset) in order."""

from dagster import AssetSelection, define_asset_job

from prism_assets.partitions import rounds

ROUND_ASSETS = ["generations", "verified_samples", "gradient_features", "selection", "pool", "clusters",
                "diversity_scores"]

prism_round = define_asset_job(
    "prism_round", selection=AssetSelection.assets(*ROUND_ASSETS), partitions_def=rounds,
    description="One Prismatic Synthesis round: generate, verify, featurize, select, pool, cluster, score.",
    tags={"dagster/concurrency_key": "prism_round"})

seed_job = define_asset_job("seed_job", selection=AssetSelection.assets("seeds"),
                            description="Load and validate the seed set.")
