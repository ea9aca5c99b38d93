"""Jobs: `prism_round` materializes one round (one partition of every round asset) in order;
`round_checks` and `round_provenance_checks` re-run a round's checks without materializing anything
(launch them with the tag `dagster/partition=<round>`)."""

from dagster import AssetSelection, define_asset_job

from prism_assets.checks import PROVENANCE_CHECKS
from prism_assets.partitions import rounds

ROUND_ASSETS = ["generations", "verified_samples", "gradient_features", "selection", "pool", "clusters",
                "diversity_scores"]

prism_round = define_asset_job(
    "prism_round", selection=AssetSelection.assets(*ROUND_ASSETS), partitions_def=rounds,
    description="One Prismatic Synthesis round: generate, verify, featurize, select, pool, cluster, score, and "
                "the round's asset checks. Rounds run one at a time (pool `prism_rounds`).")

seed_job = define_asset_job("seed_job", selection=AssetSelection.assets("seeds"),
                            description="Load and validate the seed set.")

round_checks = define_asset_job(
    "round_checks", selection=AssetSelection.checks_for_assets(*ROUND_ASSETS),
    description="Every asset check of one round, on the stored tables.")

round_provenance_checks = define_asset_job(
    "round_provenance_checks", selection=AssetSelection.checks(*(check.check_key for check in PROVENANCE_CHECKS)),
    description="The `built_on_latest_previous_round` checks of one round (launched by `provenance_sensor`).")
