"""The atlas as one self-contained HTML file: plotly.js, the page's script and style, the figures and the
sample records all inside it, so it opens from `file://` with the network off.

Sample records. One record per map point (in the order of `Atlas.points`, so a trace's `customdata` is
the record's index) then one per listed rejection, as columnar JSON, gzip-compressed and base64-encoded
(the page inflates it with the browser's `DecompressionStream`). Texts (problem, solution, rejection
detail) are kept whole while the encoded records fit `TEXT_BUDGET` bytes. Otherwise the texts of the
samples before this round are cut at one length L, the largest that fits, while this round's
candidates and rejections stay whole (if those alone would take over 80% of the room, every text is
cut at one L), and the page says so. L is found from the raw text lengths, aiming at the budget times
the compression ratio measured on the full records, and halved again while the encoded records are
still over the budget.
"""

from __future__ import annotations

import base64
import gzip
import html
import json
from pathlib import Path
from string import Template

import numpy as np
import plotly.io as pio
import polars as pl

from prismatic.report.gather import REJECTED, STATUSES, Atlas

ASSETS = Path(__file__).with_name("assets")
TEXT_BUDGET = 14 * 2**20
"""Bytes of base64 the sample records may take in the page (the rest of a 25 MB page: plotly.js, about
4.8 MB, and the figures)."""
TEXT_COLUMNS = ("prompt", "response", "detail")
ELLIPSIS = "…"


def _records(atlas: Atlas) -> dict[str, list]:
    """Columnar records: the points, then the listed rejections (module docstring)."""
    points = atlas.points
    rejections = atlas.rejections
    statuses = [*STATUSES, REJECTED]
    status_index = {s: i for i, s in enumerate(statuses)}

    def col(frame: pl.DataFrame, name: str, default=None) -> list:
        return frame[name].to_list() if name in frame.columns else [default] * len(frame)

    gains = [None if g is None or not np.isfinite(g) else round(float(g), 5) for g in col(points, "gain")]
    return {
        "id": col(points, "id") + col(rejections, "id"),
        "status": [status_index[s] for s in col(points, "status")] + [status_index[REJECTED]] * len(rejections),
        "round": col(points, "round") + [atlas.round_key] * len(rejections),
        "task": col(points, "task") + [None] * len(rejections),
        "prompt": col(points, "prompt") + col(rejections, "text"),
        "response": col(points, "response") + [None] * len(rejections),
        "answer": col(points, "answer") + [None] * len(rejections),
        "votes": col(points, "votes") + [None] * len(rejections),
        "majority": col(points, "majority_size") + [None] * len(rejections),
        "cluster": col(points, "cluster") + [None] * len(rejections),
        "size": col(points, "cluster_size") + [None] * len(rejections),
        "sparse": col(points, "sparse") + [None] * len(rejections),
        "gain": gains + [None] * len(rejections),
        "gain_round": col(points, "gain_round") + [None] * len(rejections),
        "reason": [None] * len(points) + col(rejections, "reason"),
        "detail": [None] * len(points) + col(rejections, "detail"),
    }


def _encode(records: dict[str, list]) -> str:
    raw = json.dumps(records, ensure_ascii=False, separators=(",", ":")).encode()
    return base64.b64encode(gzip.compress(raw, compresslevel=6, mtime=0)).decode("ascii")


def _clip(records: dict[str, list], limit: int, rows: np.ndarray) -> dict[str, list]:
    """`records` with the texts of the records where `rows` is True cut at `limit` characters (+ `ELLIPSIS`)."""
    clipped = dict(records)
    for name in TEXT_COLUMNS:
        clipped[name] = [t if t is None or not cut or len(t) <= limit else t[:limit] + ELLIPSIS
                         for t, cut in zip(records[name], rows)]
    return clipped


def fit_records(records: dict[str, list], budget: int = TEXT_BUDGET, whole: np.ndarray | None = None
                ) -> tuple[str, int | None, bool]:
    """(the encoded records, L, only_others): texts are cut at L characters (None: nothing was cut). `whole`
    marks the records whose texts stay whole while the others' cut can make room (only_others True);
    otherwise every text is cut at one L."""
    encoded = _encode(records)
    if len(encoded) <= budget:
        return encoded, None, False
    n = len(records["id"])
    whole = np.zeros(n, dtype=bool) if whole is None else np.asarray(whole, dtype=bool)
    lengths = np.array([[len(t or "") for t in records[name]] for name in TEXT_COLUMNS], dtype=np.int64)
    raw_total = len(json.dumps(records, ensure_ascii=False, separators=(",", ":")).encode())
    ratio = raw_total / len(encoded)  # raw JSON bytes per encoded byte
    target = max(0.0, budget * ratio - (raw_total - int(lengths.sum()))) * 0.95  # raw text bytes that fit
    kept_whole = int(lengths[:, whole].sum())
    only_others = whole.any() and kept_whole <= 0.8 * target
    rows = ~whole if only_others else np.ones(n, dtype=bool)
    limit = _largest_limit(lengths[:, rows].ravel(), target - (kept_whole if only_others else 0))
    while True:
        encoded = _encode(_clip(records, limit, rows))
        if len(encoded) <= budget or limit <= 8:
            return encoded, limit, only_others
        limit //= 2


def _largest_limit(lengths: np.ndarray, total: float) -> int:
    """The largest L with Σ min(length, L) ≤ total (at least 8)."""
    low, high = 8, max(8, int(lengths.max()) if len(lengths) else 8)
    while low < high:
        middle = (low + high + 1) // 2
        if np.minimum(lengths, middle).sum() <= total:
            low = middle
        else:
            high = middle - 1
    return low


def _figure_json(figure) -> dict:
    return json.loads(pio.to_json(figure, validate=False, remove_uids=True))


def _script_json(value) -> str:
    """JSON safe inside a <script> element."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).replace("</", "<\\/")


def summary(atlas: Atlas) -> dict:
    """The page's headline numbers (also the CLI's and the asset's facts)."""
    counts = atlas.status_counts
    rounds = atlas.rounds.filter(round=atlas.round_key).to_dicts()
    row = rounds[0] if rounds else {}
    return {"round": atlas.round_key, "points": len(atlas.points), "total_points": atlas.total_points,
            "sampled": atlas.sampled, "pool": counts[STATUSES[0]] + counts[STATUSES[1]] + counts[STATUSES[2]],
            **{status.replace(" ", "_"): n for status, n in counts.items()},
            "rejected": sum(atlas.rejection_counts.values()), "gvendi": row.get("gvendi"),
            "gain": row.get("gain"), "control_gain": row.get("control_gain"),
            "clusters": len(atlas.clusters), "sparse_threshold": atlas.threshold,
            "projection": atlas.projection.get("method")}


def render(atlas: Atlas) -> str:
    """The page's HTML (module docstring)."""
    from plotly.offline import get_plotlyjs

    from prismatic.report.figures import all_figures, task_symbols

    current = atlas.points["status"].is_in(list(STATUSES[2:])).to_numpy()
    whole = np.concatenate([current, np.ones(len(atlas.rejections), dtype=bool)])
    encoded, clipped_at, only_earlier = fit_records(_records(atlas), whole=whole)
    notes = list(atlas.notes)
    if clipped_at is not None:
        which = f"Texts of the samples before {atlas.round_key}" if only_earlier else "Texts"
        tables = "pool" if only_earlier else "pool, or verified_samples for a candidate not kept"
        notes.append(f"{which} are cut at {clipped_at:,} characters to keep this file small; the store holds them "
                     f"whole (prism query \"select prompt, response from pool where id = '…'\": {tables}).")
    meta = {"summary": summary(atlas), "statuses": [*STATUSES, REJECTED], "threshold": atlas.threshold,
            "clustering_round": atlas.clustering_round, "store": atlas.store_uri, "notes": notes,
            "rejection_counts": atlas.rejection_counts, "clipped_at": clipped_at,
            "clipped_only_earlier": only_earlier, "task_symbols": task_symbols(atlas),
            "examples": _examples(atlas), "figures": {k: _figure_json(f) for k, f in all_figures(atlas).items()}}
    page = Template((ASSETS / "atlas.html").read_text())
    return page.substitute(
        title=html.escape(f"Prismatic atlas — {atlas.round_key}"), style=(ASSETS / "atlas.css").read_text(),
        plotly=get_plotlyjs(), script=(ASSETS / "atlas.js").read_text(), meta=_script_json(meta), records=encoded)


def _examples(atlas: Atlas, per_reason: int = 3) -> dict[str, list[dict]]:
    """Up to `per_reason` of this round's rejections per reason: id, text (first 400 characters), detail."""
    examples: dict[str, list[dict]] = {}
    for row in atlas.rejections.iter_rows(named=True):
        found = examples.setdefault(row["reason"], [])
        if len(found) < per_reason:
            found.append({"id": row["id"], "text": (row["text"] or "")[:400], "detail": (row["detail"] or "")[:400]})
    return examples


def write_report(atlas: Atlas, out: str | Path) -> Path:
    """Render the page and write it to `out` atomically (nothing is written when rendering fails)."""
    from prismatic.storage.atomic import write_atomically

    out = Path(out)
    write_atomically(out, render(atlas).encode())
    return out
