"""The round's assets and jobs: `prism_round` materializes one round (one partition of every round asset)
in order; `round_checks` and `round_provenance_checks` re-run a round's checks without materializing
anything (launch them with the tag `dagster/partition=<round>`).

`ROUND_ASSET_TABLES` is the one list of round assets; the guard, the checks, the sensors, the runner,
`benchmarks/round.py` and the tests read it (or `ROUND_ASSETS`, `WRITER`, `READS_PREVIOUS`) from here.
"""

from dagster import AssetCheckKey, AssetKey, AssetSelection, define_asset_job

from prism_assets.partitions import rounds

ROUND_ASSET_TABLES: dict[str, tuple[str, ...]] = {
    "generations": ("generations",),
    "verified_samples": ("verified_samples", "rejections"),
    "gradient_features": ("gradient_features",),
    "selection": ("selection",),
    "pool": ("pool",),
    "clusters": ("clusters", "centroids"),
    "diversity_scores": ("diversity_scores",),
}
"""Every round asset, in the order of a round, and the tables it writes last in a round (generations
writes `rejections` first, verified_samples adds its own to them): the tables whose schema it checks."""

ROUND_ASSETS = list(ROUND_ASSET_TABLES)

STUDENT_GROUP = "student"
STUDENT_ASSETS = ("student_eval",)
"""The opt-in assets of a round (`prism_assets.assets.student`, in the asset group `STUDENT_GROUP`): in the
definitions only with `student.enabled`; `prism_round` selects the group, which is empty without them."""

REPORT_GROUP = "report"
REPORT_ASSETS = ("round_report",)
"""The round's report (`prism_assets.assets.report`, asset group `REPORT_GROUP`): the atlas page, after
`diversity_scores`. It writes no table; `prism_round` selects its group."""

WRITER = {table: asset for asset, tables in ROUND_ASSET_TABLES.items() for table in tables}
"""The round asset that writes each table last (`pool` → pool, `centroids` → clusters, ...)."""

READS_PREVIOUS = {"generations": ("pool", "previous_pool"), "selection": ("centroids", "previous_centroids"),
                  "pool": ("pool", "previous_pool")}
"""Assets that read the previous round: (table read, provenance key in the file they write)."""

PROVENANCE_CHECK = "built_on_latest_previous_round"
"""The name of the check, on each asset of `READS_PREVIOUS`, that what it read is still the latest."""

prism_round = define_asset_job(
    "prism_round",
    selection=AssetSelection.assets(*ROUND_ASSETS) | AssetSelection.groups(STUDENT_GROUP, REPORT_GROUP),
    partitions_def=rounds,
    description="One Prismatic Synthesis round: generate, verify, featurize, select, pool, cluster, score, and "
                "the round's asset checks, then write the round's atlas (with student.enabled, also train and "
                "evaluate the student). Rounds run one at a time (pool `prism_rounds`).")

seed_job = define_asset_job("seed_job", selection=AssetSelection.assets("seeds"),
                            description="Load and validate the seed set.")

round_checks = define_asset_job(
    "round_checks", selection=AssetSelection.checks_for_assets(*ROUND_ASSETS),
    description="Every asset check of one round, on the stored tables.")

round_provenance_checks = define_asset_job(
    "round_provenance_checks",
    selection=AssetSelection.checks(*(AssetCheckKey(AssetKey(asset), PROVENANCE_CHECK) for asset in READS_PREVIOUS)),
    description="The `built_on_latest_previous_round` checks of one round (launched by `provenance_sensor`).")
