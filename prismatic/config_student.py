"""The student's sections of the configuration model (`prismatic.config` holds the model and re-exports
these): the evaluation sets, the student trained on a round's data, and the study that relates a training
subset's diversity to its student's gain (`prism study`). Imports nothing of the project but `Section`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from prismatic.config_deploy import Section


class EvalSetConfig(Section):
    """A JSONL evaluation set of the student (`prismatic.student.sets`).

    path: relative paths are taken from the working directory.
    name: the set's name in reports (None: the file's stem).
    format: `auto` (GSM8K when rows have `question` and an `answer` ending in `#### n`; SVAMP when
      they have `body`, `question`, `equation` and `answer`), `gsm8k`, `svamp` or `fields` (the three
      fields below).
    prompt_field, response_field, answer_field: with `format: fields`, the problem, the reference
      solution and its final answer.
    """

    path: str
    name: str | None = None
    format: Literal["auto", "gsm8k", "svamp", "fields"] = "auto"
    prompt_field: str = "prompt"
    response_field: str = "response"
    answer_field: str = "answer"


class StudentConfig(Section):
    """The student model trained on a round's data and evaluated on held-out sets (`prismatic.student`,
    docs/formulas.md#student).

    enabled: add the opt-in `student_eval` asset to the round (it trains one model per round).
    base: the model fine-tuned: a folder under `$PRISM_HOME/models`, a path, or a Hugging Face id.
    train_on: `pool` (every row of the round's pool) or `new` (only the rows the round added).
    epochs, lr, batch_size, seed: AdamW on the mean assistant-token cross-entropy; the same seed and
      data give the same weights.
    lora_rank: 0 fine-tunes every weight; r > 0 trains rank-r LoRA adapters (PEFT) on every linear
      layer, with alpha = 2r.
    max_tokens: a training chat longer than this many tokens is cut to it.
    eval_sets: where the student is evaluated (in distribution and out of it).
    eval_limit: NLL on the first N problems of each set (None: all).
    accuracy_limit: exact-match accuracy (math-verify) of greedy vLLM answers on the first N problems
      of each set (0: not measured).
    """

    enabled: bool = False
    base: str = "smollm2-135m-instruct"
    train_on: Literal["pool", "new"] = "pool"
    epochs: int = Field(2, gt=0)
    lr: float = Field(5e-5, gt=0)
    batch_size: int = Field(8, gt=0)
    seed: int = Field(0, ge=0)
    lora_rank: int = Field(0, ge=0)
    max_tokens: int = Field(512, gt=0)
    eval_sets: list[EvalSetConfig] = Field(default_factory=list)
    eval_limit: int | None = Field(None, gt=0)
    accuracy_limit: int = Field(0, ge=0)


class StudyConfig(Section):
    """`prism study` (docs/study.md): does a training subset's diversity predict how much its student gains?
    A ladder of equal-size subsets of one pool, each trained with several seeds (`student` section's model,
    epochs, lr, batch size) and evaluated on held-out sets.

    size: samples in every subset (N); the pool must hold at least this many rows.
    seeds: training runs per subset (K), with seeds `student.seed` + 0 … K − 1; a subset's gain is their mean.
    clusters: k of the spherical k-means of the pool, once in gradient space and once in embedding space;
      the cluster rungs draw from the j clusters nearest an anchor cluster.
    cluster_levels: the j of the cluster rungs (each at most `clusters`), in each of the two spaces.
    random_draws: subsets drawn uniformly from the pool, without repeats.
    logdet_draws: greedy log-det subsets per space (gradient, embedding), each from its own random half
      of the pool (the whole pool when half of it is smaller than `size`).
    min_distinct: the partial view correlates only the subsets with at least this many distinct problems
      (distinct prompts).
    bootstrap: resamples of the subsets (with replacement) behind each 95% interval of ρ.
    seed: seeds every draw of the ladder (anchors, problems, halves) and the bootstrap: the same pool,
      features and settings give the same subsets and intervals.
    num_cpus_per_run: with `orchestration.executor: ray`, the CPUs each training run's Ray task asks for
      (it also asks for one GPU where the cluster has GPUs).
    """

    size: int = Field(64, gt=0)
    seeds: int = Field(3, gt=0)
    clusters: int = Field(16, gt=0)
    cluster_levels: list[int] = Field(default_factory=lambda: [1, 2, 4, 8])
    random_draws: int = Field(3, ge=0)
    logdet_draws: int = Field(1, ge=0)
    min_distinct: int = Field(16, gt=0)
    bootstrap: int = Field(2000, gt=0)
    seed: int = Field(0, ge=0)
    num_cpus_per_run: float = Field(1.0, gt=0)

    @field_validator("cluster_levels")
    @classmethod
    def _levels_within_clusters(cls, levels: list[int], info: ValidationInfo) -> list[int]:
        clusters = info.data.get("clusters")
        bad = [j for j in levels if j < 1 or (clusters is not None and j > clusters)]
        if bad:
            raise ValueError(f"each j must be between 1 and clusters ({clusters}), got {bad[0]}")
        return sorted(set(levels))
