"""One partition per synthesis round: keys r000 (the seed round), r001, r002, …

Rounds run one at a time and in key order, however they are launched:
- every round asset is in the concurrency pool `ROUND_POOL`; the instance settings
  (`prism_assets.automation.instance`) give that pool one slot at run granularity, so a queued round run waits
  until no other round run is in progress;
- `ONE_ROUND_PER_RUN` makes a backfill over several rounds submit one run per round, in partition
  order (the order keys were added: r000, r001, …); the queue starts runs first in, first out;
- a round whose previous round is missing, failed or still running refuses to start
  (`prism_assets.automation.guard`).
"""

import warnings

from dagster import BackfillPolicy, BetaWarning, DynamicPartitionsDefinition, asset

# Backfill policies are a Dagster beta feature (dagster is pinned exactly); silence only that warning.
warnings.filterwarnings("ignore", message="Parameter `backfill_policy` of function `asset`", category=BetaWarning)

rounds = DynamicPartitionsDefinition(name="rounds")

ROUND_POOL = "prism_rounds"
"""Concurrency pool of every round asset: one round run in progress at a time."""

ONE_ROUND_PER_RUN = BackfillPolicy.multi_run(max_partitions_per_run=1)
"""Backfill policy of every round asset: one run per round, submitted in partition order."""


def round_asset(*, deps, kinds: set[str], code_version: str, description: str, group_name: str = "prismatic"):
    """The `@asset` decorator of a round asset: partitioned by `rounds`, in `ROUND_POOL`, backfilled
    `ONE_ROUND_PER_RUN`, owned by the Prismatic team; `deps` are the assets of the same round it reads."""
    return asset(partitions_def=rounds, pool=ROUND_POOL, backfill_policy=ONE_ROUND_PER_RUN, deps=deps, kinds=kinds,
                 code_version=code_version, group_name=group_name, owners=["team:prismatic"], description=description)
