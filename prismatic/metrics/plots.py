"""PNG line plots of one metric across rounds (for Dagster metadata; no display needed)."""

from __future__ import annotations

import io
from collections.abc import Sequence


def metric_plot_png(metric: str, rounds: Sequence[str], values: Sequence[float], note: str = "") -> bytes:
    """A small PNG (about 5 × 3 in at 80 dpi): `values` against `rounds`, points marked and labelled."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 3), dpi=80)
    axes = figure.add_subplot()
    axes.plot(list(rounds), list(values), marker="o", color="tab:blue")
    for x, y in zip(rounds, values):
        axes.annotate(f"{y:.4g}", (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    axes.set_title(f"{metric}{f' ({note})' if note else ''}", fontsize=10)
    axes.set_xlabel("round")
    axes.grid(alpha=0.3)
    axes.margins(y=0.2)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
