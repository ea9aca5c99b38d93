"""Round rN's generations: few-shot problems from pool r(N-1), then N solutions per problem."""

from dagster import AssetExecutionContext, MaterializeResult

from prism_assets import tables
from prism_assets.assets.seeds import seeds
from prism_assets.automation.guard import require_previous_round
from prism_assets.metadata import previous_round_links
from prism_assets.partitions import round_asset
from prismatic.generation.journal import Journal
from prismatic.generation.usage import Budget
from prismatic.rounds import SEED_ROUND, previous_round
from prismatic.synthesis.generate import problem_nll
from prismatic.synthesis.steps import generations_step
from resources.generator import GeneratorResource, endpoint_counts
from resources.home import PrismHome
from resources.proxy import ProxyResource
from resources.store import StoreResource


@round_asset(deps=[seeds], kinds={"vllm", "polars"}, code_version="3",
             description="Problems written from 5 few-shot pool examples (weighted by level), then solutions. "
                         "Reads the previous round's pool through the store (the one undeclared edge). "
                         "Before any is solved, problems are screened: text quality filters (words, symbols, long "
                         "tokens, repetition, must ask something), the proxy-perplexity outlier rule, exact and near "
                         "duplicates of the pool or the round, and 10-gram overlap with configured benchmarks "
                         "(a `rejections` row each, counts per reason in the metadata). "
                         "Finished requests are journaled with their tokens and latency, so a retry sends only the "
                         "missing ones; the metadata shows the round's tokens (and cost, with generator.prices). "
                         "With generator.budget_tokens or budget_usd, the round stops sending once its spending "
                         "reaches the budget and fails; a rerun with a larger budget resumes from the journal.")
def generations(context: AssetExecutionContext, prism_home: PrismHome, store: StoreResource,
                generator: GeneratorResource, proxy: ProxyResource) -> MaterializeResult:
    key = context.partition_key
    require_previous_round(context, store)
    config = prism_home.config()
    if key == SEED_ROUND:
        output = generations_step(key, config.synthesis)
        version, metadata = tables.write_step(context, store, output)
        return MaterializeResult(data_version=version, metadata=metadata)
    pool, used = tables.read_previous(store, "pool", previous_round(key))
    engine = generator.engine()
    endpoints_before = endpoint_counts(engine)

    def nll(texts: list[str], tasks: list[str]) -> list[float]:  # the proxy loads on the NLL rule's first call, if any
        loaded = proxy.load()
        return problem_nll(loaded.model, loaded.tokenizer, texts, tasks)

    # The local journal file, and with an S3 store its segments in the store (a retry in another pod finds them).
    with Journal(config.home / "journal" / f"{key}.jsonl", segments=store.store().journal_segments(key, "generations"),
                 flush_responses=config.generator.journal_flush_responses,
                 flush_s=config.generator.journal_flush_s) as journal:
        output = generations_step(
            key, config.synthesis, pool=pool, seeds=tables.read(store, "seeds", SEED_ROUND), engine=engine,
            journal=journal, model=generator.model_name(),
            nll=nll,
            budget=Budget.from_config(config.generator, journal.usage()), prices=config.generator.prices)
    version, metadata = tables.write_step(context, store, output, previous_pool=used)
    endpoints = endpoint_counts(engine, since=endpoints_before)
    return MaterializeResult(data_version=version, metadata={
        **metadata, **previous_round_links("pool", used), "model": generator.model_name(),
        **({"endpoints": endpoints} if endpoints else {}),
    })
