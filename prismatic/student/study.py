"""`prism study` without the CLI (docs/study.md): the plan of a study, its runs, their journal, and the runners
that execute them one after another or as Ray tasks.

    pool, eval sets, settings ─ fingerprint ─→ <out>/runs.jsonl (the journal: a plan line, then one line per run)
    plan       the ladder (`prismatic.student.ladder`) of the pool's gradient features and sentence embeddings,
               with every subset's diversity; written once, read back by a resumed study (which therefore
               needs neither the vectors nor the proxy again)
    runs       `base:<set>` (the base model's NLL on each set, once; also kept in `<home>/cache/base_nll.jsonl`
               by model and set content, so another study on the same set reuses it), then, subset after
               subset in plan order, `<subset>/seed<s>` for the K training seeds s = student.seed + k
    a run      train the student on the subset's rows (`train_student`), NLL of the student on every set
               (`evaluate_student`), the model removed; the result line is appended to the journal with
               flush + fsync as soon as the run ends, so a killed study resumes with the next unfinished run

The fingerprint is SHA-256 of what decides the subsets and their students: the pool's rows (ids, prompts,
responses, in order), each set's name and items, the `study` settings that shape the ladder, the student's
base, epochs, lr, batch size, seed, LoRA rank and max tokens, the `features` settings and the text metrics'
settings. It holds no path, so a journal moved to another machine resumes there. Lines of another
fingerprint in the same journal are kept and ignored.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from prismatic.config import PrismConfig, StudentConfig, StudyConfig
from prismatic.errors import InputError, PrismError
from prismatic.student.ladder import Subset, build_ladder, duplicate_levels, subset_diversity
from prismatic.student.sets import EvalSet

JOURNAL = "runs.jsonl"
BASE_CACHE = "base_nll.jsonl"

QUICK_POOL_ROWS = 100
QUICK_EVAL_ITEMS = 8
QUICK_STUDY = {"size": 8, "seeds": 2, "clusters": 4, "cluster_levels": [2], "random_draws": 1, "logdet_draws": 1,
               "min_distinct": 4}
QUICK_STUDENT = {"epochs": 2, "batch_size": 4}
"""`--quick`: the pool's first QUICK_POOL_ROWS rows, each set's first QUICK_EVAL_ITEMS problems, subsets of 8
(duplicates m = 1 and N, one 2-cluster rung per space, one random draw, one log-det draw per space: 7
subsets), 2 seeds each, 2 epochs of batches of 4 (4 optimizer steps), the partial view from 4 distinct problems;
explicit `--size`/`--seeds` win."""


@dataclass(frozen=True)
class RunSpec:
    """One run: `base:<set>` (subset None: the base model on `eval_set`) or `<subset>/seed<seed>`."""

    key: str
    subset: str | None = None
    seed: int | None = None
    rows: tuple[int, ...] = ()
    eval_set: str | None = None


@dataclass(frozen=True)
class StudyWork:
    """What every run reads: the pool's texts, the sets, the student's settings and its resolved base model."""

    prompts: tuple[str, ...]
    responses: tuple[str, ...]
    sets: tuple[EvalSet, ...]
    student: StudentConfig
    base_model: str


Runner = Callable[[Sequence[RunSpec], StudyWork, Callable[[RunSpec, dict], None]], None]
"""Executes the pending runs and calls `done(spec, result)` as each one finishes (in any order)."""


def quick_settings(config: PrismConfig) -> PrismConfig:
    """`config` with the `--quick` study and student settings (QUICK_STUDY, QUICK_STUDENT) and each set's first
    QUICK_EVAL_ITEMS problems."""
    return config.model_copy(update={
        "study": StudyConfig.model_validate(QUICK_STUDY),
        "student": config.student.model_copy(update=QUICK_STUDENT | {"eval_limit": QUICK_EVAL_ITEMS})})


def quick_duplicates(size: int) -> tuple[int, ...]:
    """The duplicate rungs of `--quick`: m = 1 (format-only) and m = N."""
    return tuple(dict.fromkeys((1, size)))


def set_digest(eval_set: EvalSet) -> str:
    """SHA-256 of a set's items (id, prompt, reference, answer, in order)."""
    items = [[item.id, item.prompt, item.reference, item.answer] for item in eval_set.items]
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()


def settings_of(pool: pl.DataFrame, sets: Sequence[EvalSet], config: PrismConfig,
                duplicates: Sequence[int]) -> dict:
    """What the fingerprint covers (module docstring)."""
    rows = json.dumps([pool["id"].to_list(), pool["prompt"].to_list(), pool["response"].to_list()])
    student = config.student.model_dump(include={"base", "epochs", "lr", "batch_size", "seed", "lora_rank",
                                                 "max_tokens"})
    return {"pool": {"rows": pool.height, "sha256": hashlib.sha256(rows.encode()).hexdigest()},
            "sets": [{"name": s.name, "items": len(s), "sha256": set_digest(s)} for s in sets],
            "study": config.study.model_dump(exclude={"min_distinct", "bootstrap", "num_cpus_per_run"})
            | {"duplicates": list(duplicates)},
            "student": student, "features": config.features.model_dump(mode="json", exclude={"device", "shards"}),
            "metrics": config.metrics.model_dump(include={"text", "max_n", "repetition_n", "embedding_model"})}


def fingerprint(settings: dict) -> str:
    """The first 16 hex digits of SHA-256 of the settings' canonical JSON."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def check_inputs(pool: pl.DataFrame, sets: Sequence[EvalSet], study: StudyConfig, source: str) -> None:
    """A one-line `PrismError` for what cannot make a study: an empty pool, a pool smaller than `size` or than the
    largest j of `cluster_levels` (named by `source`), no sets, or two sets of one name. Call it before anything
    is written."""
    if pool.is_empty():
        raise InputError(source, "the pool has no rows")
    if study.size > pool.height:
        raise InputError(source, f"option --size: {study.size} samples per subset, but the pool has {pool.height} "
                                 "rows")
    if study.cluster_levels and max(study.cluster_levels) > pool.height:
        raise InputError(source, f"study.cluster_levels: j = {max(study.cluster_levels)} clusters, but the pool has "
                                 f"{pool.height} rows")
    if not sets:
        raise PrismError("option --eval: at least one evaluation set is needed")
    repeated = sorted({s.name for s in sets if [t.name for t in sets].count(s.name) > 1})
    if repeated:
        raise PrismError(f"option --eval: sets named alike: {', '.join(repeated)} (a set's name is its file's "
                         "stem, or its student.eval_sets name)")


class Journal:
    """The study's runs.jsonl: JSON lines `{"fingerprint", "kind": "plan" | "run", ...}`."""

    def __init__(self, path: Path, fingerprint: str):
        self.path, self.fingerprint = Path(path), fingerprint

    def read(self) -> tuple[dict | None, dict[str, dict]]:
        """(this fingerprint's plan line or None, its run lines by run key). A last line cut short by a kill
        is skipped; a bad line before it is an `InputError` naming the line."""
        if not self.path.exists():
            return None, {}
        lines = self.path.read_text(encoding="utf-8").splitlines()
        plan, runs = None, {}
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                if number == len(lines):
                    break
                raise InputError(self.path, "not valid JSON: the study's journal is damaged", line=number) from None
            if entry.get("fingerprint") != self.fingerprint:
                continue
            if entry.get("kind") == "plan":
                plan = plan or entry
            elif entry.get("kind") == "run":
                runs.setdefault(entry["run"], entry)
        return plan, runs

    def append(self, entry: dict) -> dict:
        """Append `entry` with this fingerprint as one line, flushed and fsynced; returns the line's object. A last
        line cut short by a kill (no newline at the end of the file) is cut off first: it held no finished run."""
        line = {"fingerprint": self.fingerprint, **entry}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a+b") as handle:
            handle.seek(0)
            text = handle.read()
            if text and not text.endswith(b"\n"):
                handle.truncate(text.rfind(b"\n") + 1)
            handle.write((json.dumps(line) + "\n").encode())
            handle.flush()
            os.fsync(handle.fileno())
        return line


def plan_runs(subsets: Sequence[dict], set_names: Sequence[str], seeds: int, first_seed: int) -> list[RunSpec]:
    """`base:<set>` for each set, then every subset's `seeds` runs (seed first_seed + k), subset by subset."""
    runs = [RunSpec(f"base:{name}", eval_set=name) for name in set_names]
    for subset in subsets:
        runs += [RunSpec(f"{subset['name']}/seed{first_seed + k}", subset["name"], first_seed + k,
                         tuple(subset["rows"])) for k in range(seeds)]
    return runs


def _device() -> str:
    import torch

    return f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"


def execute_run(spec: RunSpec, work: StudyWork) -> dict:
    """One run (module docstring): `{"nll": {set: nats per token}, "train_s", "eval_s", "steps", "final_loss",
    "host", "device"}` (a base run has no training fields)."""
    from prismatic.data.chats import sample_chat
    from prismatic.student.evaluate import evaluate_student
    from prismatic.student.train import train_student

    where = {"host": socket.gethostname(), "device": _device()}
    if spec.subset is None:
        started = time.perf_counter()
        report = evaluate_student(work.base_model, [s for s in work.sets if s.name == spec.eval_set])
        return {"nll": {spec.eval_set: report["sets"][spec.eval_set]["nll"]},
                "eval_s": round(time.perf_counter() - started, 3)} | where
    chats = [sample_chat(work.prompts[i], work.responses[i]) for i in spec.rows]
    folder = Path(tempfile.mkdtemp(prefix="prism-study-"))
    try:
        trained = train_student(chats, folder, work.student.model_copy(update={"seed": spec.seed}),
                                base_model=work.base_model)
        started = time.perf_counter()
        report = evaluate_student(folder, work.sets)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {"nll": {name: row["nll"] for name, row in report["sets"].items()}, "train_s": trained.seconds,
            "eval_s": round(time.perf_counter() - started, 3), "steps": trained.steps,
            "final_loss": trained.losses[-1] if trained.losses else None} | where


def sequential_runner(execute: Callable[[RunSpec, StudyWork], dict] = execute_run) -> Runner:
    """Runs the pending runs one after another in this process."""
    def run(pending: Sequence[RunSpec], work: StudyWork, done: Callable[[RunSpec, dict], None]) -> None:
        for spec in pending:
            done(spec, execute(spec, work))

    return run


def ray_runner(config: PrismConfig, execute: Callable[[RunSpec, StudyWork], dict] = execute_run) -> Runner:
    """Runs each pending run as a Ray task on the cluster of `orchestration.ray` (`prismatic.ray_connect`), with
    `study.num_cpus_per_run` CPUs and one GPU where the cluster has GPUs; results are handed to `done` as the
    tasks finish, each with the name of the Ray node that ran it (`ray_node`). A failed run stops the study (the
    unfinished tasks are cancelled; the finished ones are journaled). Every node must reach the base model at the
    same path and import this package (the ray section's runtime_env)."""
    from prismatic.config_file import CONFIG_FILE

    def on_node(spec: RunSpec, work: StudyWork) -> dict:
        import ray

        return execute(spec, work) | {"ray_node": ray.get_runtime_context().get_node_id()}

    def run(pending: Sequence[RunSpec], work: StudyWork, done: Callable[[RunSpec, dict], None]) -> None:
        import ray

        from prismatic.ray_connect import connect

        if not pending:
            return
        joined = connect(config.orchestration.ray, config.home / CONFIG_FILE)
        try:
            gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
            task = ray.remote(on_node).options(num_cpus=config.study.num_cpus_per_run, num_gpus=gpus,
                                               max_retries=1, name="prism-study-run")
            names = {node["NodeID"]: node.get("NodeName") or node["NodeManagerAddress"] for node in ray.nodes()}
            shared = ray.put(work)
            waiting = {task.remote(spec, shared): spec for spec in pending}
            try:
                while waiting:
                    ready, _ = ray.wait(list(waiting), num_returns=1)
                    spec = waiting.pop(ready[0])
                    result = ray.get(ready[0])
                    done(spec, result | {"ray_node": names.get(result["ray_node"], result["ray_node"])})
            finally:
                for ref in waiting:
                    ray.cancel(ref, force=True)
        finally:
            if joined:
                ray.shutdown()

    return run


def runner_for(config: PrismConfig) -> Runner:
    """The Ray runner with `orchestration.executor: ray`, else the sequential one."""
    return ray_runner(config) if config.orchestration.executor == "ray" else sequential_runner()


def pool_vectors(pool: pl.DataFrame, texts: Sequence[str], config: PrismConfig, log: Callable[[str], None]
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(unit gradient features under `features`, unit sentence embeddings under `metrics.embedding_model`) of the
    pool's rows, cached in `<home>/cache/study-vectors-<sha256>.npz` by the pool's content and those settings."""
    from prismatic.gradients.proxy import compute_features
    from prismatic.metrics.embeddings import embed, load_encoder
    from prismatic.storage.atomic import write_atomically

    key = json.dumps([texts, pool["prompt"].to_list(), pool["response"].to_list(),
                      config.features.model_dump(mode="json", exclude={"device", "shards"}),
                      config.metrics.embedding_model])
    cache = config.home / "cache" / f"study-vectors-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
    if cache.exists():
        saved = np.load(cache)
        return saved["features"], saved["embeddings"]
    log(f"gradient features of the pool's {pool.height} rows ({config.features.proxy})")
    features = compute_features(pool, config.features, config.models_dir, progress=False)[0].features
    log(f"sentence embeddings of the pool's {pool.height} rows ({config.metrics.embedding_model})")
    embeddings = embed(load_encoder(config.metrics.embedding_model), texts, config.metrics.embedding_batch_size)
    cache.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, features=features, embeddings=embeddings)
    write_atomically(cache, buffer.getvalue())
    return features, embeddings


def build_plan(pool: pl.DataFrame, config: PrismConfig, duplicates: Sequence[int],
               vectors: Callable[[], tuple[np.ndarray, np.ndarray]]) -> list[dict]:
    """Every subset of the ladder with its rows and diversity (`prismatic.student.ladder`), as the plan line
    holds them: `{"name", "family", "level", "rows", "diversity"}`."""
    from prismatic.metrics.registry import sample_texts

    features, embeddings = vectors()
    prompts = pool["prompt"].to_list()
    texts = sample_texts(pool, config.metrics.text)
    study = config.study
    ladder: list[Subset] = build_ladder(prompts, features, embeddings, size=study.size, seed=study.seed,
                                        clusters=study.clusters, cluster_levels=study.cluster_levels,
                                        random_draws=study.random_draws, logdet_draws=study.logdet_draws,
                                        duplicates=duplicates)
    return [{"name": s.name, "family": s.family, "level": s.level, "rows": list(s.rows),
             "diversity": subset_diversity(s.rows, prompts, texts, features, embeddings, config.metrics)}
            for s in ladder]


def cached_base_nll(cache: Path, model: str, eval_set: EvalSet) -> float | None:
    """The base NLL of `model` (its `student.base` name) on a set with this set's items, from `cache`, or None."""
    if not cache.exists():
        return None
    digest = set_digest(eval_set)
    for line in cache.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
        if entry.get("model") == model and entry.get("set_sha256") == digest and "nll" in entry:
            return entry["nll"]
    return None


def run_study(pool: pl.DataFrame, sets: Sequence[EvalSet], config: PrismConfig, out: Path, *, base_model: str,
              duplicates: Sequence[int] | None = None, runner: Runner | None = None,
              vectors: Callable[[], tuple[np.ndarray, np.ndarray]] | None = None,
              log: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> dict:
    """Plan (or read back the plan of) the study of `pool` on `sets` in `out`, execute its unfinished runs with
    `runner` (None: `runner_for(config)`) and return `{"fingerprint", "settings", "subsets", "runs",
    "planned_runs"}`: the plan's subsets, every finished run's journal line by run key, and how many runs the
    plan has. `base_model`: `student.base` resolved to a path or hub id; `vectors`: the pool's (features,
    embeddings), needed only when no plan is journaled (None: `pool_vectors`)."""
    from prismatic.metrics.registry import sample_texts

    duplicates = tuple(duplicates or duplicate_levels(config.study.size))
    settings = settings_of(pool, sets, config, duplicates)
    journal = Journal(Path(out) / JOURNAL, fingerprint(settings))
    plan, finished = journal.read()
    if plan is None:
        texts = sample_texts(pool, config.metrics.text)
        subsets = build_plan(pool, config, duplicates, vectors or (lambda: pool_vectors(pool, texts, config, log)))
        plan = journal.append({"kind": "plan", "settings": settings, "subsets": subsets})
        log(f"planned {len(subsets)} subsets × {config.study.seeds} seeds in {journal.path}")
    specs = plan_runs(plan["subsets"], [s.name for s in sets], config.study.seeds, config.student.seed)

    by_name = {s.name: s for s in sets}
    cache = config.home / "cache" / BASE_CACHE

    def done(spec: RunSpec, result: dict) -> None:
        finished[spec.key] = journal.append({"kind": "run", "run": spec.key, "subset": spec.subset,
                                             "seed": spec.seed, "result": result})
        if spec.subset is None and not result.get("cached"):
            with cache.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"model": config.student.base, "set_sha256": set_digest(
                    by_name[spec.eval_set]), "nll": result["nll"][spec.eval_set]}) + "\n")
        position = [s.key for s in specs].index(spec.key) + 1
        timing = f"train {result['train_s']:.0f} s, " if "train_s" in result else ""
        log(f"[{position}/{len(specs)}] {spec.key}: {timing}eval {result['eval_s']:.0f} s")

    for spec in specs:
        if spec.subset is None and spec.key not in finished:
            nll = cached_base_nll(cache, config.student.base, by_name[spec.eval_set])
            if nll is not None:
                done(spec, {"nll": {spec.eval_set: nll}, "eval_s": 0.0, "cached": True})
    pending = [spec for spec in specs if spec.key not in finished]
    if pending:
        log(f"{len(specs) - len(pending)} of {len(specs)} runs finished; {len(pending)} to go")
        cache.parent.mkdir(parents=True, exist_ok=True)
        work = StudyWork(tuple(pool["prompt"].to_list()), tuple(pool["response"].to_list()), tuple(sets),
                         config.student, str(base_model))
        (runner or runner_for(config))(pending, work, done)
    return {"fingerprint": journal.fingerprint, "settings": settings, "subsets": plan["subsets"],
            "runs": {spec.key: finished[spec.key] for spec in specs if spec.key in finished},
            "planned_runs": len(specs)}


def decontaminated_pool(pool: pl.DataFrame, sets: Sequence[EvalSet], ngram: int, source: str
                        ) -> tuple[pl.DataFrame, int]:
    """(the pool without rows whose prompt holds an evaluation-set problem, how many were removed):
    `prismatic.student.step.decontaminate`, a shared word n-gram of length `ngram` or an equal normalized
    prompt. An `InputError` naming `source` when no row is left."""
    from prismatic.student.step import decontaminate

    kept, removed = decontaminate(pool, sets, ngram)
    if kept.is_empty() and not pool.is_empty():
        raise InputError(source, f"every one of the pool's {pool.height} rows holds a problem of an evaluation set")
    return kept, removed.height


def conduct_study(pool: pl.DataFrame, sets: Sequence[EvalSet], config: PrismConfig, out: Path, *, base_model: str,
                  duplicates: Sequence[int] | None = None, runner: Runner | None = None,
                  vectors: Callable[[], tuple[np.ndarray, np.ndarray]] | None = None, notes: dict | None = None,
                  log: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> dict:
    """`run_study`, then its report (`prismatic.student.study_analysis.analyze`) with `out` and the caller's
    `notes` added, written into `out` beside the journal (`prismatic.student.study_report.write_report`)."""
    from prismatic.student.study_analysis import analyze
    from prismatic.student.study_report import write_report

    done = run_study(pool, sets, config, out, base_model=base_model, duplicates=duplicates, runner=runner,
                     vectors=vectors, log=log)
    seeds = [config.student.seed + k for k in range(config.study.seeds)]
    report = analyze(done, [s.name for s in sets], config.study, seeds) | {"out": str(Path(out).absolute())}
    report |= notes or {}
    write_report(Path(out), report, [s.name for s in sets])
    return report
