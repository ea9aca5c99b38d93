"""Verified samples: solutions whose final answer is the problem's majority answer."""

import polars as pl
from dagster import AssetExecutionContext, MaterializeResult, asset

from prism_assets import io
from prism_assets.generations import generations
from prism_assets.partitions import ONE_ROUND_PER_RUN, ROUND_POOL, rounds
from prismatic.rounds import SEED_ROUND
from prismatic.synthesis.steps import seeds_as_verified, verify_round
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
        frame = seeds_as_verified(io.read(store, "seeds", SEED_ROUND))
        version = io.write(context, store, "verified_samples", frame)
        return MaterializeResult(data_version=version, metadata={"dagster/row_count": len(frame),
                                                                 "source": "seeds"})
    gens = io.read(store, "generations", key)
    frame, rejected = verify_round(gens, prism_home.config().synthesis.min_agree)
    version = io.write(context, store, "verified_samples", frame)
    earlier = io.read(store, "rejections", key).filter(pl.col("reason") != "no_majority")
    io.write(context, store, "rejections", pl.concat([earlier, rejected]))
    problems = gens.filter(kind="problem").height
    solutions = gens.filter(kind="solution").height
    verified_problems = frame["problem_id"].n_unique()
    return MaterializeResult(data_version=version, metadata={
        "dagster/row_count": len(frame),
        "problems": problems,
        "problems_verified": verified_problems,
        "problem_pass_rate": round(verified_problems / problems, 4) if problems else 0.0,
        "solution_pass_rate": round(len(frame) / solutions, 4) if solutions else 0.0,
    })
