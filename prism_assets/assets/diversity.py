"""Diversity scores of each round: every configured metric of the pool, G-Vendi of the candidates."""

import base64

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue

from prism_assets import tables
from prism_assets.assets.clusters import clusters
from prism_assets.assets.pool import pool
from prism_assets.partitions import round_asset
from prismatic.metrics.plots import metric_plot_png
from prismatic.metrics.registry import METRICS
from prismatic.rounds import SEED_ROUND, previous_round
from prismatic.synthesis.steps import cached_embeddings, diversity_scores_step, pool_features, pool_gvendi
from resources.generator import GeneratorResource
from resources.home import PrismHome
from resources.proxy import ProxyResource
from resources.store import StoreResource


@round_asset(deps=[pool, clusters], kinds={"polars", "duckdb"}, code_version="4",
             description="One row per metric of the pool after this round: `gvendi` (exp entropy of the spectrum of "
                         "unit gradient features) and every metric in `metrics.names` of prism.yaml, each with its "
                         "details as JSON; `gvendi_candidates` of this round's verified samples; `gvendi_control`, the "
                         "pool G-Vendi had as many candidates been kept at random. Metadata: every value, the gain "
                         "beside the control's gain, and a plot of each metric across rounds. With `embedding_vendi`, "
                         "also writes `embeddings`: the sentence embeddings of the pool rows no earlier round encoded.")
def diversity_scores(context: AssetExecutionContext, prism_home: PrismHome, store: StoreResource,
                     proxy: ProxyResource, generator: GeneratorResource) -> MaterializeResult:
    key = context.partition_key
    # G-Vendi needs the pool's ids and rounds (its features); the other metrics (metrics.names) its texts.
    columns = None if prism_home.config().metrics.names else ["id", "round_added"]
    members = tables.read(store, "pool", key, columns=columns)
    pool_x, projection = pool_features(store.store(), members)
    candidates = tables.read(store, "gradient_features", key)["feature"].to_numpy()
    outcome = store.store().read_metadata("selection", key).get("outcome") if key != SEED_ROUND else None
    scored_before = key != SEED_ROUND and store.store().exists("diversity_scores", previous_round(key))
    output = diversity_scores_step(
        prism_home.config(), members, pool_x, projection, candidates, outcome=outcome,
        previous_gvendi=pool_gvendi(store.store(), previous_round(key)) if scored_before else None,
        proxy=proxy.load, judge=generator.judge, log=context.log.info,
        embeddings=cached_embeddings(store.store(), key, prism_home.config().metrics))
    frame = output.tables["diversity_scores"]
    plots = {}
    history = tables.history(store, "diversity_scores", key, frame, ["metric", "value"])
    for name in [metric for metric in frame["metric"] if metric in METRICS]:  # the pool's metrics
        series = history.filter(metric=name)
        direction = METRICS[name].more_diverse
        control = None
        if name == "gvendi":
            controls = dict(history.filter(metric="gvendi_control").select("round", "value").iter_rows())
            control = [controls.get(r) for r in series["round"].to_list()]
        png = metric_plot_png(name, series["round"].to_list(), series["value"].to_list(),
                              note=f"{direction} = more diverse" if direction else "not a diversity metric",
                              control=control)
        plots[f"{name} by round"] = MetadataValue.md(
            f"![{name} by round](data:image/png;base64,{base64.b64encode(png).decode()})")
    version, metadata = tables.write_step(context, store, output)
    return MaterializeResult(data_version=version, metadata={**metadata, **plots})
