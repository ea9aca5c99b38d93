"""What both gradient paths return, and how a data set's features are split into shards and put back.

A `FeatureSet` holds one unit row per sample: the sample's projected gradient g̃ = P g / √d divided
by its L2 norm, so ‖row‖₂ = 1 and the Gram matrix K = X Xᵀ holds cosines (what G-Vendi takes; see
docs/formulas.md). Beside the rows: the chat's token count, whether `max_tokens` cut it, the
projection's identity (`meta`) and the compute time in seconds.

Shards cut a data set's batch plan into contiguous runs of about equal work (`shard_units`); each
shard computes its batches exactly as the unsharded run would, so `merge_feature_sets` of all shards
equals the unsharded features bit for bit. `feature_table` turns a FeatureSet into the rows of the
store's `gradient_features` table (schema in prismatic/storage/schema.py, see docs/data-model.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from prismatic.errors import PrismError
from prismatic.storage.schema import schema


@dataclass
class FeatureSet:
    """Unit-row features beside their sample ids, with what produced them."""

    ids: list[str]
    features: np.ndarray  # n × d float32, unit rows
    n_tokens: list[int]
    truncated: list[bool]
    meta: dict = field(default_factory=dict)
    seconds: float = 0.0


Shard = tuple[int, int]
"""(index, count): the index-th of `count` parts of a data set's features (see `shard_units`)."""


def shard_units(weights: list[int], shard: Shard | None) -> range:
    """The units (batches) of one shard: a contiguous run of the data set's batch plan.

    The plan is cut where the cumulative weight (packed tokens, samples) first reaches k/count of
    the total, k = 1..count-1, so shards carry about equal work, every unit lands in exactly one
    shard, and each shard computes its batches exactly as the unsharded run would (same members,
    same packing), which is what makes merged features equal the unsharded ones. Shards beyond the
    number of units are empty.
    """
    if shard is None:
        return range(len(weights))
    index, count = shard
    if not 0 <= index < count:
        raise PrismError(f"shard {index} of {count}: expected 0 <= index < count")
    total, cuts, running = sum(weights), [0], 0
    for position, weight in enumerate(weights):
        running += weight
        while len(cuts) < count and running * count >= total * len(cuts):
            cuts.append(position + 1)
    cuts += [len(weights)] * (count + 1 - len(cuts))
    return range(cuts[index], cuts[index + 1])


def merge_feature_sets(parts: list[FeatureSet], ids: list[str]) -> FeatureSet:
    """The features of every shard of one data set, as one FeatureSet in the data set's order `ids`.

    Every id must come from exactly one shard, and every shard must share one projection (meta).
    `seconds` is the sum over shards (compute time, not wall time).
    """
    produced = [i for part in parts for i in part.ids]
    if sorted(produced) != sorted(ids) or len(set(produced)) != len(produced):
        raise PrismError(f"feature shards cover {len(produced)} rows ({len(set(produced))} distinct) for "
                         f"{len(ids)} samples: a shard is missing or overlaps another")
    metas = {repr(sorted(part.meta.items())) for part in parts if part.ids}
    if len(metas) > 1:
        raise PrismError("feature shards were computed with different settings; recompute every shard")
    where = {i: (k, row) for k, part in enumerate(parts) for row, i in enumerate(part.ids)}
    order = [where[i] for i in ids]
    dim = next((part.features.shape[1] for part in parts if part.ids), parts[0].features.shape[1] if parts else 0)
    features = np.stack([parts[k].features[row] for k, row in order]) if order else np.zeros((0, dim), np.float32)
    return FeatureSet(ids=list(ids), features=features, n_tokens=[parts[k].n_tokens[row] for k, row in order],
                      truncated=[parts[k].truncated[row] for k, row in order],
                      meta=next((part.meta for part in parts if part.ids), parts[0].meta if parts else {}),
                      seconds=sum(part.seconds for part in parts))


def feature_table(result: FeatureSet) -> tuple[pl.DataFrame, dict]:
    """The `gradient_features` rows of a non-empty FeatureSet whose meta names its proxy, and the
    projection recorded beside them (its meta's projection without the per-layer segments)."""
    n, dim = len(result.ids), result.features.shape[1]
    frame = pl.DataFrame({
        "id": result.ids, "feature": result.features,
        "proxy": [result.meta["proxy"]] * n, "mode": [result.meta["mode"]] * n, "dim": [dim] * n,
        "n_tokens": result.n_tokens, "truncated": result.truncated,
    }, schema=schema("gradient_features", dim=dim))
    return frame, {k: v for k, v in result.meta["projection"].items() if k != "segments"}
