"""PNG line plots of one metric across rounds (for Dagster metadata; no display needed)."""

from __future__ import annotations

import io
from collections.abc import Sequence


def metric_plot_png(metric: str, rounds: Sequence[str], values: Sequence[float], note: str = "",
                    control: Sequence[float | None] | None = None) -> bytes:
    """A small PNG (about 5 × 3 in at 80 dpi): `values` against `rounds`, points marked and labelled.

    control: per round, where a chance choice would have taken the metric (None where there is none);
    drawn as a dashed grey step from the previous round's value, beside the real step.
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 3), dpi=80)
    axes = figure.add_subplot()
    rounds, values = list(rounds), list(values)
    axes.plot(rounds, values, marker="o", color="tab:blue", label=metric)
    for x, y in zip(rounds, values):
        axes.annotate(f"{y:.4g}", (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    steps = [(i, c) for i, c in enumerate(control or []) if c is not None and i > 0]
    for n, (i, c) in enumerate(steps):
        axes.plot([rounds[i - 1], rounds[i]], [values[i - 1], c], linestyle="--", marker="x", color="grey",
                  label="random choice of as many" if n == 0 else None)
    if steps:
        axes.legend(fontsize=7, loc="best")
    axes.set_title(f"{metric}{f' ({note})' if note else ''}", fontsize=10)
    axes.set_xlabel("round")
    axes.grid(alpha=0.3)
    axes.margins(y=0.2)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
