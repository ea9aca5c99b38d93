"""Verified samples: solutions whose final answer is the problem's majority answer."""

from dagster import AssetExecutionContext, MaterializeResult

from prism_assets import tables
from prism_assets.assets.generations import generations
from prism_assets.partitions import round_asset
from prismatic.rounds import SEED_ROUND
from prismatic.synthesis.steps import verified_samples_step
from resources.home import PrismHome
from resources.store import StoreResource


@round_asset(deps=[generations], kinds={"polars"}, code_version="2",
             description="Majority vote over each problem's solutions (math: \\boxed{} answers compared with "
                         "math-verify both ways; NLI: labels). Round r000: the seeds, verified by reference.")
def verified_samples(context: AssetExecutionContext, prism_home: PrismHome, store: StoreResource) -> MaterializeResult:
    key = context.partition_key
    if key == SEED_ROUND:
        inputs = {"seeds": tables.read(store, "seeds", SEED_ROUND)}
    else:
        inputs = {"generations": tables.read(store, "generations", key),
                  "rejections": tables.read(store, "rejections", key)}
    output = verified_samples_step(key, prism_home.config().synthesis.min_agree, **inputs)
    version, metadata = tables.write_step(context, store, output)
    return MaterializeResult(data_version=version, metadata=metadata)
