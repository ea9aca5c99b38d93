"""Prismatic selection as a standalone tool on two datasets (`prism select`).

    pool, candidates (DATA files or feature files)
      → unit gradient features (computed with the configured proxy, or read)
      → spherical k-means of the pool (k = ratio × |pool|, `kmeans_iterations`, `kmeans_backend`,
        seed `synthesis.seed`)
      → a selection rule (prismatic.synthesis.selection) → the kept candidates, written as JSONL
      → G-Vendi of the pool before and after adding them.

An input is a feature file when it is Parquet with a `feature` column (written by `prism features`);
otherwise it is DATA (JSONL or Parquet with id, prompt, response). Pool and candidates may mix the
two as long as every feature set comes from the same projection (`check_compatible`). Every input
is validated before the proxy is loaded, and nothing is written unless selection succeeds; the
output file is replaced atomically. Kept DATA rows are written with the loaded columns (`id`,
`prompt`, `response` and the extra fields every row shares); kept rows of a feature file are
written as `{"id": …}`.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from prismatic.config import DataFields, PrismConfig
from prismatic.data.samples import load_samples
from prismatic.errors import InputError, PrismError
from prismatic.gradients.files import check_compatible, read_features
from prismatic.gradients.proxy import compute_features, load_proxy
from prismatic.metrics.vendi import gvendi
from prismatic.storage.atomic import write_atomically
from prismatic.synthesis.kmeans import num_clusters, spherical_kmeans
from prismatic.synthesis.selection import BUDGETED_RULES, POOL_FEATURE_RULES, RULES, paper_count, select


@dataclass
class _Input:
    path: Path
    rows: pl.DataFrame  # DATA rows, or just `id` for a feature file
    features: np.ndarray | None = None
    meta: dict | None = None


def is_feature_file(path: Path) -> bool:
    """Parquet whose schema has a `feature` column (what `prism features` writes)."""
    if path.suffix != ".parquet" or not path.is_file():
        return False
    try:
        return "feature" in pq.read_schema(path).names
    except Exception:  # not readable as Parquet: load_samples reports it with the file name
        return False


def _load(path: Path, fields: DataFields) -> _Input:
    if is_feature_file(path):
        ids, matrix, meta = read_features(path)
        if not ids:
            raise InputError(path, "no rows: the feature file is empty")
        if len(set(ids)) != len(ids):
            raise InputError(path, "repeated ids", field="id")
        return _Input(path, pl.DataFrame({"id": ids}, schema={"id": pl.String}), np.array(matrix), meta)
    return _Input(path, load_samples(path, fields))


def select_files(pool_path: str | Path, candidates_path: str | Path, out_path: str | Path, config: PrismConfig,
                 *, rule: str = "paper", count: int | None = None, ratio: float | None = None,
                 fields: DataFields | None = None) -> dict:
    """Run one selection; returns the report (`prism select --json` prints it).

    count: budget of `balanced`/`logdet` (None: what `paper` keeps), or `novelty`'s cap (None: none);
      refused for `paper`.
    ratio: k = ratio × |pool| (None: `synthesis.cluster_ratio`). Report keys: rule, pool, candidates,
    k, paper_kept, count, kept, gvendi_before, gvendi_after, gvendi_gain, out, proxy, mode, dim,
    seconds.
    """
    started = time.perf_counter()
    if rule not in RULES:
        raise PrismError(f"option --rule: unknown rule {rule!r}; expected one of {', '.join(RULES)}")
    if count is not None and rule not in BUDGETED_RULES:
        raise PrismError(f"option --count: the {rule} rule keeps what it keeps; a budget applies to "
                         f"{' and '.join(BUDGETED_RULES)}")
    if count is not None and count < 0:
        raise PrismError(f"option --count: must be ≥ 0, got {count}")
    ratio = config.synthesis.cluster_ratio if ratio is None else ratio
    if not 0 < ratio <= 1:
        raise PrismError(f"option --ratio: must be in (0, 1], got {ratio}")
    fields = fields or config.data
    pool, candidates = _load(Path(pool_path), fields), _load(Path(candidates_path), fields)
    _featurize([pool, candidates], config)
    check_compatible({str(item.path): item.meta for item in (pool, candidates)})

    clustering = spherical_kmeans(pool.features, num_clusters(len(pool.features), ratio),
                                  iterations=config.synthesis.kmeans_iterations, seed=config.synthesis.seed,
                                  backend=config.synthesis.kmeans_backend)
    ids = candidates.rows["id"].to_list()
    decisions = select(rule, ids, candidates.features, clustering, count=count,
                       pool_features=pool.features if rule in POOL_FEATURE_RULES else None,
                       epsilon=config.synthesis.logdet_epsilon)
    kept = decisions["kept"].to_numpy()
    before = gvendi(pool.features)
    after = gvendi(np.concatenate([pool.features, candidates.features[kept]]))
    _write_jsonl(Path(out_path), candidates.rows.filter(pl.Series(kept)))
    meta = pool.meta or {}
    paper_kept = int(kept.sum()) if rule == "paper" else paper_count(ids, candidates.features, clustering)
    return {"rule": rule, "pool": len(pool.features), "candidates": len(ids), "k": clustering.k,
            "paper_kept": paper_kept,
            "count": count if count is not None or rule in ("paper", "novelty") else paper_kept,
            "kept": int(kept.sum()), "gvendi_before": before, "gvendi_after": after, "gvendi_gain": after - before,
            "out": str(out_path), "proxy": meta.get("proxy"), "mode": meta.get("mode"),
            "dim": int(pool.features.shape[1]), "seconds": round(time.perf_counter() - started, 3)}


def _featurize(inputs: list[_Input], config: PrismConfig) -> None:
    """Compute features of the DATA inputs with one loaded proxy (files already validated)."""
    pending = [item for item in inputs if item.features is None]
    if not pending:
        return
    proxy = load_proxy(config.features, config.models_dir)
    for item in pending:
        print(f"features of {item.path} ({len(item.rows)} samples)", file=sys.stderr)
        result, name = compute_features(item.rows, config.features, config.models_dir, proxy=proxy)
        item.features, item.meta = result.features, dict(result.meta, proxy=name)


def _write_jsonl(path: Path, rows: pl.DataFrame) -> None:
    write_atomically(path, rows.write_ndjson().encode())
