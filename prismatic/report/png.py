"""A small PNG of the atlas's map (for the Dagster UI's metadata; no display needed)."""

from __future__ import annotations

import io

import numpy as np

from prismatic.report.figures import COLOURS, DRAW_ORDER, marker_sizes, task_symbols
from prismatic.report.gather import Atlas

MARKERS = {"circle": "o", "diamond": "D", "square": "s", "triangle-up": "^", "cross": "P", "x": "X", "star": "*",
           "hexagon": "h"}
"""matplotlib's marker for each of the page's task symbols."""
GLYPHS = {"circle": "●", "diamond": "◆", "square": "■", "triangle-up": "▲", "cross": "✚", "x": "✖", "star": "★",
          "hexagon": "⬢"}
"""The character the title shows for each task symbol."""


def map_png(atlas: Atlas, *, width_in: float = 6.0, height_in: float = 4.2, dpi: int = 80) -> bytes:
    """The map as a PNG (`width_in` × `height_in` inches at `dpi`): the page's colours, draw order and
    task shapes, and larger outlined markers for points in sparse clusters; the legend counts each status's
    points shown."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width_in, height_in), dpi=dpi)
    axes = figure.add_subplot()
    points = atlas.points
    symbols = task_symbols(atlas)
    for status in DRAW_ORDER:
        part = points.filter(status=status)
        if part.is_empty():
            continue
        labelled = False
        for task, symbol in symbols.items():
            group = part.filter(task=task)
            if group.is_empty():
                continue
            sparse = group["sparse"].fill_null(False).to_numpy()
            area = marker_sizes(status, sparse).astype(float) ** 2 / 2.5
            axes.scatter(group["x"].to_numpy(), group["y"].to_numpy(), s=area, c=COLOURS[status],
                         marker=MARKERS.get(symbol, "o"), edgecolors=np.where(sparse, "#222222", "none"),
                         linewidths=0.5, alpha=0.6 if status in ("seed", "kept earlier") else 0.9,
                         label=None if labelled else f"{status} ({len(part):,})")
            labelled = True
    shapes = "  ".join(f"{GLYPHS.get(symbol, '')} {task}" for task, symbol in symbols.items())
    axes.set_title(f"{atlas.round_key}: {len(points):,} points"
                   f"{f' of {atlas.total_points:,}' if atlas.sampled else ''} ({atlas.projection.get('method', '')})"
                   f"   {shapes}", fontsize=10)
    axes.set_xticks([])
    axes.set_yticks([])
    axes.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.02), ncols=2, markerscale=1.2, frameon=False)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
