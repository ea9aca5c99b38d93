"""Round rN's generations: few-shot problems from pool r(N-1), then N solutions per problem."""

import time

import polars as pl
from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from prism_assets import io
from prism_assets.guard import require_previous_round
from prism_assets.metadata import previous_round_links
from prism_assets.partitions import ONE_ROUND_PER_RUN, ROUND_POOL, rounds
from prism_assets.seeds import seeds
from prismatic.data.filters import filter_counts
from prismatic.data.quality import build_filter, removal_counts
from prismatic.generation.engines import Journal
from prismatic.rounds import SEED_ROUND, previous_round
from prismatic.synthesis.steps import generate_round, problem_nll
from resources.generator import GeneratorResource, endpoint_counts
from resources.home import PrismHome
from resources.proxy import ProxyResource
from resources.store import StoreResource


@asset(partitions_def=rounds, pool=ROUND_POOL, backfill_policy=ONE_ROUND_PER_RUN,
       deps=[seeds], kinds={"vllm", "polars"}, code_version="2", group_name="prismatic",
       owners=["team:prismatic"],
       description="Problems written from 5 few-shot pool examples (weighted by level), then solutions. "
                   "Reads the previous round's pool through the store (the one undeclared edge). "
                   "Before any is solved, problems are screened: text quality filters (words, symbols, long "
                   "tokens, repetition, must ask something), the proxy-perplexity outlier rule, exact and near "
                   "duplicates of the pool or the round, and 10-gram overlap with configured benchmarks "
                   "(a `rejections` row each, counts per reason in the metadata). "
                   "Finished requests are journaled, so a retry sends only the missing ones.")
def generations(context: AssetExecutionContext, prism_home: PrismHome, store: StoreResource,
                generator: GeneratorResource, proxy: ProxyResource) -> MaterializeResult:
    key = context.partition_key
    require_previous_round(context, store)
    config = prism_home.config()
    if key == SEED_ROUND:
        frame = pl.DataFrame(schema={"id": pl.String, "kind": pl.String, "task": pl.String,
                                     "parent_ids": pl.List(pl.String), "text": pl.String, "model": pl.String,
                                     "request_key": pl.String, "sampling": pl.String})
        version = io.write(context, store, "generations", frame)
        io.write(context, store, "rejections",
                 pl.DataFrame(schema={"id": pl.String, "reason": pl.String, "detail": pl.String}))
        return MaterializeResult(data_version=version, metadata={"dagster/row_count": 0,
                                                                 "note": "seed round: nothing generated"})
    previous = previous_round(key)
    pool, used = io.read_previous(store, "pool", previous)
    levels = io.read(store, "seeds", SEED_ROUND).select("id", "level")
    pool = pool.join(levels, on="id", how="left")
    problem_filter = build_filter(pool.select("id", "prompt"), config.synthesis.dedup,
                                  config.synthesis.decontamination)  # reads the benchmark files: fails early
    journal = Journal(config.home / "journal" / f"{key}.jsonl")
    engine = generator.engine()
    tokens_before = engine.output_tokens
    endpoints_before = endpoint_counts(engine)
    journaled_before = len(journal)
    started = time.perf_counter()
    frame, problems, rejections, about = generate_round(  # the proxy loads on the NLL rule's first call, if any
        engine, journal, pool, config.synthesis, generator.model_name(), key, problem_filter=problem_filter,
        nll=lambda texts, tasks: problem_nll(*proxy.model()[:2], texts, tasks))
    seconds = time.perf_counter() - started
    version = io.write(context, store, "generations", frame, previous_pool=used, screening=about)
    io.write(context, store, "rejections", rejections)
    tokens = engine.output_tokens - tokens_before
    removed = {**filter_counts(rejections), **removal_counts(rejections)}
    endpoints = endpoint_counts(engine, since=endpoints_before)
    return MaterializeResult(data_version=version, metadata={
        "dagster/row_count": len(frame),
        "problems_parsed": frame.filter(kind="problem").height,
        "problems": len(problems),
        "solutions": frame.filter(kind="solution").height,
        "unparseable_answers": rejections.filter(reason="unparseable_problems").height,
        "problems_removed": sum(removed.values()),
        **{f"removed_{reason}": count for reason, count in removed.items()},
        "nll_thresholds": MetadataValue.json(about["nll_thresholds"]),
        "output_tokens": tokens,
        "responses_from_journal": journaled_before,
        "responses_generated": len(journal) - journaled_before,
        "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 and tokens else 0.0,
        "previous_pool": MetadataValue.json(used),
        **previous_round_links("pool", used),
        "model": generator.model_name(),
        **({"endpoints": MetadataValue.json(endpoints)} if endpoints else {}),
    })
