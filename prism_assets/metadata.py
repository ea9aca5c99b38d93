"""Metadata that the UI renders: cluster-size tables and plots, links from a round to the previous one."""

from __future__ import annotations

import base64
import io

import numpy as np
from dagster import AssetKey, MetadataValue, TableColumn, TableRecord, TableSchema

from prism_assets.automation.jobs import WRITER

MAX_TABLE_ROWS = 100


def previous_round_links(table: str, used: dict[str, str] | None) -> dict[str, MetadataValue]:
    """What this round read from the previous one (`tables.read_previous`'s `used`; None in the seed round:
    nothing): `previous_<table>` (round, run id, data version), links to the asset that wrote `table`
    and to the run that wrote the partition read."""
    if used is None:
        return {}
    links = {f"previous_{table}": MetadataValue.json(used), "previous_round": MetadataValue.text(used["round"]),
             f"previous_{table}_asset": MetadataValue.asset(AssetKey(WRITER[table]))}
    if used.get("run_id"):
        links[f"previous_{table}_run"] = MetadataValue.dagster_run(used["run_id"])
    return links


def cluster_size_metadata(sizes: np.ndarray) -> dict[str, MetadataValue]:
    """`cluster_sizes`: a table (cluster, size, share of the pool), smallest first (the sparse clusters
    that take new samples), at most `MAX_TABLE_ROWS` rows; `cluster_size_histogram`: a PNG histogram."""
    sizes = np.asarray(sizes, dtype=np.int64)
    total = int(sizes.sum())
    order = np.argsort(sizes, kind="stable")[:MAX_TABLE_ROWS]
    records = [TableRecord({"cluster": int(c), "size": int(sizes[c]),
                            "share": round(float(sizes[c]) / total, 4) if total else 0.0}) for c in order]
    shown = "" if len(sizes) <= MAX_TABLE_ROWS else f" ({MAX_TABLE_ROWS} smallest of {len(sizes)})"
    schema = TableSchema(columns=[
        TableColumn("cluster", "int", description=f"cluster id{shown}"),
        TableColumn("size", "int", description="pool samples in the cluster"),
        TableColumn("share", "float", description="size / pool size"),
    ])
    png = base64.b64encode(histogram_png(sizes)).decode()
    return {"cluster_sizes": MetadataValue.table(records, schema=schema),
            "cluster_size_histogram": MetadataValue.md(f"![cluster sizes](data:image/png;base64,{png})")}


def histogram_png(sizes: np.ndarray) -> bytes:
    """A small PNG (5 × 3 in at 80 dpi): how many clusters have each size."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 3), dpi=80)
    axes = figure.add_subplot()
    values, counts = np.unique(np.asarray(sizes, dtype=np.int64), return_counts=True)
    axes.bar(values, counts, width=0.8, color="tab:blue")
    axes.set_title(f"cluster sizes (k={len(sizes)}, median {np.median(sizes):g})", fontsize=10)
    axes.set_xlabel("samples in cluster")
    axes.set_ylabel("clusters")
    axes.grid(alpha=0.3, axis="y")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
