"""The LLM cluster-agent diversity metric (docs/formulas.md#cluster-agent-score).

1. Criteria: `m` times, show `j` random samples and ask for 3–5 metadata attributes and 3–5 scoring
   metrics (JSON). Proposals are merged by name (case, spaces, `_`/`-` ignored); the `max_criteria`
   most proposed of each kind are kept (ties: first proposed first).
2. Clustering: `n` trials; each shows `k` random samples (drawn without replacement) and the criteria
   and asks for clusters of sample numbers with a reason (JSON).
3. Self-verification: the trial's clusters of two or more samples are shown back; each is marked
   valid or invalid, and an invalid cluster is split into singletons.

With C_t the number of clusters of trial t after verification and mean size S̄_t = k / C_t,

    D = (1/N) Σ_t C_t / S̄_t = (1/N) Σ_t C_t² / k,

over the N trials that produced a usable partition: from 1/k (one cluster) to k (all singletons).

Every call is constrained to a JSON schema (`prompts`), yet a reply is checked as if it were free
text (a server may not enforce the schema, and a cut reply is not JSON):
- a reply that is not JSON of the expected shape is asked again with a new seed, up to `max_retries`
  times; a trial still without one is left out of D (`failed_trials`); a verification still without
  one keeps its clusters (`unverified_trials`);
- the clusters are repaired into a partition of 1..k, each repair counted: an entry without an index
  list is dropped (`invalid_cluster`), as are indices that are not integers (`invalid_index`), lie
  outside 1..k (`out_of_range`), repeat within a cluster (`duplicate`) or were already placed in an
  earlier cluster (`overlap`); clusters left empty are dropped (`empty_cluster`); an index placed
  nowhere becomes a cluster of its own (`missing`).
The raw numbers of every trial (sample ids, cluster sizes before and after verification, repairs)
are kept in the details so that other readings of the same calls can be recomputed.

Sample draws and request seeds come from `seed`: the same seed, data and judge give the same D.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from prismatic.config import ClusterAgentConfig
from prismatic.errors import PrismError
from prismatic.generation.engines.base import Engine
from prismatic.generation.requests import GenerationRequest, Sampling
from prismatic.metrics import prompts

REPAIRS = ("invalid_json", "invalid_cluster", "invalid_index", "out_of_range", "duplicate", "overlap",
           "empty_cluster", "missing", "invalid_verification")
"""Every repair the metric counts (all are reported, zeros included)."""

Criteria = dict[str, list[tuple[str, str]]]


def parse_json(text: str) -> Any | None:
    """The JSON value of a reply, or None. Raw control characters inside strings are accepted
    (grammar-constrained decoding can emit them)."""
    try:
        return json.loads(text, strict=False)
    except ValueError:
        return None


def parse_criteria(text: str) -> Criteria | None:
    """`{"metadata": [{"name", "description"}…], "metrics": […]}` as lists of (name, description);
    None unless both lists hold at least one named item."""
    value = parse_json(text)
    if not isinstance(value, dict):
        return None
    parsed: Criteria = {}
    for kind in ("metadata", "metrics"):
        items = value.get(kind)
        if not isinstance(items, list):
            return None
        parsed[kind] = [(str(item["name"]).strip(), str(item.get("description", "")).strip())
                        for item in items if isinstance(item, dict) and str(item.get("name", "")).strip()]
        if not parsed[kind]:
            return None
    return parsed


def _criterion_key(name: str) -> str:
    return " ".join(re.sub(r"[\W_]+", " ", name.lower()).split())


def merge_criteria(proposals: Sequence[Criteria], limit: int) -> Criteria:
    """For each kind, the `limit` names proposed most often (ties: first proposed first), each with
    the first description given for it."""
    merged: Criteria = {}
    for kind in ("metadata", "metrics"):
        counts: Counter[str] = Counter()
        first: dict[str, tuple[str, str]] = {}
        for proposal in proposals:
            for name, about in proposal[kind]:
                key = _criterion_key(name)
                if key:
                    counts[key] += 1
                    first.setdefault(key, (name, about))
        ranked = sorted(first, key=lambda key: -counts[key])  # stable: ties keep first-proposed order
        merged[kind] = [first[key] for key in ranked[:limit]]
    return merged


def repair_partition(text: str, k: int) -> tuple[list[list[int]], Counter[str]] | None:
    """The clusters of a reply repaired into a partition of 1..k (see the module docstring), with the
    repairs made; None when the reply is not a JSON object with a `clusters` list."""
    value = parse_json(text)
    if not isinstance(value, dict) or not isinstance(value.get("clusters"), list):
        return None
    repairs: Counter[str] = Counter()
    placed: set[int] = set()
    clusters: list[list[int]] = []
    for entry in value["clusters"]:
        indices = entry.get("indices") if isinstance(entry, dict) else None
        if not isinstance(indices, list):
            repairs["invalid_cluster"] += 1
            continue
        members: list[int] = []
        for index in indices:
            if not isinstance(index, int) or isinstance(index, bool):
                repairs["invalid_index"] += 1
            elif not 1 <= index <= k:
                repairs["out_of_range"] += 1
            elif index in members:
                repairs["duplicate"] += 1
            elif index in placed:
                repairs["overlap"] += 1
            else:
                members.append(index)
        if members:
            clusters.append(members)
            placed.update(members)
        else:
            repairs["empty_cluster"] += 1
    for index in range(1, k + 1):
        if index not in placed:
            clusters.append([index])
            repairs["missing"] += 1
    return clusters, repairs


def parse_verdicts(text: str, n_clusters: int) -> list[bool] | None:
    """`{"valid": [bool × n_clusters]}` as a list, or None."""
    value = parse_json(text)
    verdicts = value.get("valid") if isinstance(value, dict) else None
    if not isinstance(verdicts, list) or len(verdicts) != n_clusters or \
            not all(isinstance(v, bool) for v in verdicts):
        return None
    return verdicts


def ask(engine: Engine, build: Callable[[int, int], GenerationRequest], slots: Sequence[int],
        parse: Callable[[int, str], Any], max_retries: int) -> tuple[dict[int, Any], int]:
    """Send one request per slot (`build(slot, attempt)`), batched; resend those whose reply `parse`
    refuses (None), up to `max_retries` times. Returns ({slot: parsed or None}, replies refused)."""
    results: dict[int, Any] = dict.fromkeys(slots)
    pending = list(slots)
    refused = 0
    for attempt in range(max_retries + 1):
        if not pending:
            break
        texts = engine.generate([build(slot, attempt) for slot in pending])
        still = []
        for slot, text in zip(pending, texts):
            parsed = parse(slot, text)
            if parsed is None:
                refused += 1
                still.append(slot)
            else:
                results[slot] = parsed
        pending = still
    return results, refused


def cluster_agent(texts: Sequence[str], ids: Sequence[str], engine: Engine, model: str,
                  config: ClusterAgentConfig) -> tuple[float, dict]:
    """D = mean over trials of C²/k (module docstring), and the details of every call."""
    if len(texts) != len(ids):
        raise PrismError("cluster_agent needs one id per text")
    if len(texts) < 2:
        raise PrismError("cluster_agent needs at least 2 samples")
    k = min(config.k, len(texts))
    sampling = Sampling.from_config(config, seed=config.seed)
    chars = config.sample_chars
    repairs: Counter[str] = Counter()
    calls = Counter()

    def request(messages: list[dict], index: int, schema: dict, stage: str) -> GenerationRequest:
        calls[stage] += 1
        return GenerationRequest.build(model, messages, sampling, index, json_schema=schema)

    # 1. criteria
    criteria_rng = random.Random(f"{config.seed}:criteria")
    shown = [criteria_rng.sample(range(len(texts)), min(config.j, len(texts))) for _ in range(config.m)]
    proposals, refused = ask(
        engine, lambda s, a: request(prompts.criteria_messages([texts[i] for i in shown[s]], chars),
                                     a * config.m + s, prompts.CRITERIA_SCHEMA, "criteria"),
        range(config.m), lambda s, text: parse_criteria(text), config.max_retries)
    usable = [p for p in proposals.values() if p is not None]
    repairs["invalid_json"] += refused
    criteria = merge_criteria(usable, config.max_criteria) if usable else prompts.FALLBACK_CRITERIA

    # 2. clustering
    trial_rng = random.Random(f"{config.seed}:trials")
    draws = [trial_rng.sample(range(len(texts)), k) for _ in range(config.n)]
    schema = prompts.clusters_schema(k)
    partitions, refused = ask(
        engine, lambda t, a: request(prompts.clustering_messages([texts[i] for i in draws[t]], criteria, chars),
                                     a * config.n + t, schema, "clustering"),
        range(config.n), lambda t, text: repair_partition(text, k), config.max_retries)
    repairs["invalid_json"] += refused

    # 3. self-verification of the clusters with two or more samples
    multi = {t: [c for c in result[0] if len(c) > 1] for t, result in partitions.items() if result is not None}
    to_verify = [t for t, clusters in multi.items() if clusters]
    verdicts, refused = ask(
        engine, lambda t, a: request(prompts.verification_messages([texts[i] for i in draws[t]], multi[t],
                                                                   criteria, chars),
                                     a * config.n + t, prompts.verification_schema(len(multi[t])),
                                     "verification"),
        to_verify, lambda t, text: parse_verdicts(text, len(multi[t])), config.max_retries)
    repairs["invalid_verification"] += refused

    trials, scores = [], []
    for t in range(config.n):
        record: dict[str, Any] = {"ids": [ids[i] for i in draws[t]]}
        if partitions[t] is None:
            trials.append(record | {"failed": True})
            continue
        clusters, trial_repairs = partitions[t]
        repairs.update(trial_repairs)
        trial_verdicts = verdicts.get(t) or []  # aligned with the multi-sample clusters, in order
        remaining = iter(trial_verdicts)
        final_sizes = []
        for members in clusters:
            valid = len(members) == 1 or next(remaining, True)
            final_sizes += [len(members)] if valid else [1] * len(members)
        score = len(final_sizes) ** 2 / k
        scores.append(score)
        trials.append(record | {"proposed_sizes": [len(c) for c in clusters],
                                "invalid_clusters": trial_verdicts.count(False),
                                "verified": t not in to_verify or verdicts[t] is not None,
                                "sizes": final_sizes, "clusters": len(final_sizes), "score": score,
                                "repairs": {name: trial_repairs[name] for name in REPAIRS if trial_repairs[name]}})
    if not scores:
        raise PrismError(f"cluster_agent: none of the {config.n} clustering trials got a usable reply from "
                         f"{model} (after {config.max_retries} retries each)")
    details = {
        "judge": model, "k": k, "j": config.j, "m": config.m, "n": config.n, "seed": config.seed,
        "sample_chars": chars, "temperature": config.temperature, "top_p": config.top_p,
        "criteria": {kind: [name for name, _ in items] for kind, items in criteria.items()},
        "criteria_source": "judge" if usable else "fallback",
        "calls": dict(calls), "repairs": {name: repairs[name] for name in REPAIRS},
        "scored_trials": len(scores), "failed_trials": config.n - len(scores),
        "unverified_trials": sum(1 for t in to_verify if verdicts[t] is None),
        "trials": trials,
    }
    return sum(scores) / len(scores), details
