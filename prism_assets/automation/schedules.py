"""`round_schedule`: launch the next round on a cron (`rounds.schedule_cron`), off until turned on.

At each tick it looks at the latest round key: none yet → r000; the latest round has not finished
(no diversity_scores in the store) → skip; otherwise the stop rules of `next_round_sensor` apply
(`rounds.max_rounds`, `rounds.min_gain`) and the next round is added and launched (run key
`prism_round:<round>`, so a tick evaluated twice launches it once). Schedules cannot return
partition requests, so it adds the key to the instance itself before returning the run request.
"""

from dagster import (
    DefaultScheduleStatus,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SkipReason,
    schedule,
)

from prism_assets.automation.jobs import prism_round
from prism_assets.automation.sensors import gvendi_gain, stop_reason
from prism_assets.partitions import rounds
from prismatic.rounds import SEED_ROUND, round_key, round_number, round_sort_key
from resources.home import PrismHome
from resources.store import StoreResource


def build_round_schedule(cron: str, timezone: str) -> ScheduleDefinition:
    """The schedule, on `cron` in `timezone` (prism.yaml's `rounds.schedule_cron`, `rounds.schedule_timezone`)."""

    @schedule(name="round_schedule", cron_schedule=cron, execution_timezone=timezone, job=prism_round,
              default_status=DefaultScheduleStatus.STOPPED,
              description=f"Launch the next round ({cron}, {timezone}) once the latest one finished, until "
                          "rounds.max_rounds or a G-Vendi gain below rounds.min_gain. Off until turned on.")
    def round_schedule(context: ScheduleEvaluationContext, prism_home: PrismHome,
                       store: StoreResource) -> RunRequest | SkipReason:
        keys = sorted(context.instance.get_dynamic_partitions(rounds.name), key=round_sort_key)
        if not keys:
            following = SEED_ROUND
        else:
            latest, tables = keys[-1], store.store()
            if not tables.exists("diversity_scores", latest):
                return SkipReason(f"round {latest} has not finished (no diversity_scores yet)")
            reason = stop_reason(latest, gvendi_gain(tables, latest), prism_home.config().rounds)
            if reason:
                return SkipReason(reason)
            following = round_key(round_number(latest) + 1)
        context.instance.add_dynamic_partitions(rounds.name, [following])
        return RunRequest(run_key=f"prism_round:{following}", partition_key=following,
                          tags={"prism/trigger": "round_schedule"})

    return round_schedule
