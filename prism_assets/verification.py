"""Verified samples: solutions whose final answer is the problem's majority answer."""

from dagster import AssetExecutionContext, MaterializeResult, asset

from prism_assets import io
from prism_assets.generations import generations
from prism_assets.partitions import ONE_ROUND_PER_RUN, ROUND_POOL, rounds
from prismatic.rounds import SEED_ROUND
from prismatic.synthesis.steps import verified_samples_step
from resources.home import PrismHome
from resources.store import StoreResource


@asset(partitions_def=rounds, pool=ROUND_POOL, backfill_policy=ONE_ROUND_PER_RUN,
       deps=[generations], kinds={"polars"}, code_version="2", group_name="prismatic",
       owners=["team:prismatic"],
       description="Majority vote over each problem's solutions (math: \\boxed{} answers compared with "
                   "math-verify both ways; NLI: labels). Round r000: the seeds, verified by reference.")
def verified_samples(context: AssetExecutionContext, prism_home: PrismHome, store: StoreResource) -> MaterializeResult:
    key = context.partition_key
    if key == SEED_ROUND:
        inputs = {"seeds": io.read(store, "seeds", SEED_ROUND)}
    else:
        inputs = {"generations": io.read(store, "generations", key), "rejections": io.read(store, "rejections", key)}
    output = verified_samples_step(key, prism_home.config().synthesis.min_agree, **inputs)
    version, metadata = io.write_step(context, store, output)
    return MaterializeResult(data_version=version, metadata=metadata)
