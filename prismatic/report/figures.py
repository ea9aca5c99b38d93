"""The atlas's Plotly figures, built from an `Atlas` (`prismatic.report.gather`).

map        one WebGL scatter trace (`scattergl`) per status; a point's `customdata` is its index in the
           page's sample records; its shape is its task. Points in sparse clusters (s_j < m) are larger and
           outlined.
clusters   per cluster of the clustering the round was judged against, smallest first: its pool size
           s_j, and stacked on it the candidates of this round kept and not kept in it; a line at m.
gvendi     the pool's G-Vendi per round, and the control: G-Vendi had as many candidates been kept at
           random (per round, drawn from the previous round's value).
gains      per round, the selection's G-Vendi gain beside the control's (G-Vendi units).
counts     per round: candidates kept, candidates not kept, problems and requests rejected.
tokens     per round, each generation token column summed (only when `generations` records tokens).
reasons    this round's rejection counts by reason.
A figure with nothing to draw (gains and reasons in r000) says so in its middle.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import polars as pl

from prismatic.report.gather import STATUSES, Atlas

COLOURS = {"seed": "#8a8a8a", "kept earlier": "#4e79a7", "kept this round": "#2ca02c",
           "not kept this round": "#e15759"}
DRAW_ORDER = ("seed", "kept earlier", "not kept this round", "kept this round")
SIZES = {"seed": (5, 9), "kept earlier": (5, 9), "kept this round": (8, 12), "not kept this round": (7, 11)}
"""Marker size (px) of each status's points: (in a cluster at or above m, in a sparse cluster)."""


def marker_sizes(status: str, sparse: np.ndarray) -> np.ndarray:
    """Marker sizes of `status`'s points, larger in sparse clusters (`SIZES`)."""
    dense, sparse_size = SIZES[status]
    return np.where(sparse, sparse_size, dense).astype(np.int8)
TEMPLATE = "plotly_white"
SYMBOLS = ("circle", "diamond", "square", "triangle-up", "cross", "x", "star", "hexagon")
"""Marker symbols of the tasks, in sorted task order (the page's help line says which is which)."""


def task_symbols(atlas: Atlas) -> dict[str, str]:
    """Each task of the map's points → its marker symbol (`SYMBOLS`, cycled)."""
    tasks = sorted(t for t in atlas.points["task"].unique().to_list() if t is not None)
    return {task: SYMBOLS[i % len(SYMBOLS)] for i, task in enumerate(tasks)}


def _layout(title: str, **more) -> dict:
    return {"template": TEMPLATE, "title": {"text": title, "x": 0.01, "font": {"size": 15}},
            "margin": {"l": 55, "r": 15, "t": 45, "b": 45}, "legend": {"orientation": "h", "y": -0.15}, **more}


def map_figure(atlas: Atlas) -> go.Figure:
    """The 2-D map (module docstring); axis titles say which projection (PCA: each axis's variance share)."""
    figure = go.Figure()
    points = atlas.points.with_row_index("record")
    symbols = task_symbols(atlas)
    for status in DRAW_ORDER:
        part = points.filter(status=status)
        sparse = part["sparse"].fill_null(False).to_numpy()
        figure.add_trace(go.Scattergl(
            x=part["x"].to_numpy(), y=part["y"].to_numpy(), mode="markers", name=f"{status} ({len(part):,})",
            customdata=part["record"].to_numpy().astype(np.int32), hoverinfo="none",
            marker={"color": COLOURS[status], "size": marker_sizes(status, sparse),
                    "symbol": [symbols.get(task, SYMBOLS[0]) for task in part["task"].to_list()],
                    "opacity": 0.7 if status in ("seed", "kept earlier") else 0.9,
                    "line": {"color": "#222", "width": np.where(sparse, 1.0, 0.0).astype(np.float32)}}))
    about = atlas.projection
    if about.get("method") == "pca":
        share = about.get("explained", [0, 0])
        axes = [f"PC{i + 1} ({100 * share[i]:.1f}% of the pool's variance)" for i in range(2)]
    else:
        axes = ["UMAP 1", "UMAP 2"]
    figure.update_layout(**_layout(
        f"Gradient space of {atlas.round_key}: {len(atlas.points):,} points", height=620,
        xaxis={"title": {"text": axes[0]}, "zeroline": False}, yaxis={"title": {"text": axes[1]}, "zeroline": False},
        legend={"orientation": "h", "y": 1.0, "yanchor": "bottom", "x": 0.0, "itemsizing": "constant"},
        dragmode="zoom", hovermode="closest"))
    figure.update_layout(title={"y": 0.985, "yanchor": "top"}, margin={"t": 70})
    return figure


def clusters_figure(atlas: Atlas) -> go.Figure:
    """Cluster sizes sorted, the threshold m, and where this round's candidates went."""
    frame = atlas.clusters
    rank = np.arange(len(frame))
    labels = [f"cluster {c}" for c in frame["cluster"].to_list()]
    figure = go.Figure([
        go.Bar(x=rank, y=frame["size"].to_numpy(), name=f"pool size in {atlas.clustering_round}",
               marker_color="#bab0ac", customdata=labels,
               hovertemplate="%{customdata}: %{y} pool samples<extra></extra>"),
        go.Bar(x=rank, y=frame["kept"].to_numpy(), name=f"kept in {atlas.round_key}", marker_color=COLOURS[STATUSES[2]],
               customdata=labels, hovertemplate="%{customdata}: %{y} kept<extra></extra>"),
        go.Bar(x=rank, y=frame["not_kept"].to_numpy(), name=f"not kept in {atlas.round_key}",
               marker_color=COLOURS[STATUSES[3]], customdata=labels,
               hovertemplate="%{customdata}: %{y} not kept<extra></extra>"),
    ])
    figure.add_hline(y=atlas.threshold, line_dash="dash", line_color="#222",
                     annotation_text=f"sparse below m = {atlas.threshold:g}", annotation_position="top left")
    figure.update_layout(**_layout(
        f"Clusters of {atlas.clustering_round} (k = {len(frame)}), smallest first", barmode="stack", height=380,
        bargap=0.1, xaxis={"title": {"text": "clusters by pool size"}, "showticklabels": False},
        yaxis={"title": {"text": "samples"}}))
    return figure


def _series(frame: pl.DataFrame, column: str) -> list:
    return frame[column].to_list() if column in frame.columns else [None] * len(frame)


def gvendi_figure(atlas: Atlas) -> go.Figure:
    rounds = atlas.rounds["round"].to_list()
    values, control = _series(atlas.rounds, "gvendi"), _series(atlas.rounds, "gvendi_control")
    figure = go.Figure([go.Scatter(x=rounds, y=values, mode="lines+markers+text", name="pool G-Vendi",
                                   text=[f"{v:.2f}" if v is not None else "" for v in values],
                                   textposition="top center", line={"color": COLOURS["kept earlier"]})])
    for i in range(1, len(rounds)):
        if control[i] is not None and values[i - 1] is not None:
            figure.add_trace(go.Scatter(x=rounds[i - 1:i + 1], y=[values[i - 1], control[i]], mode="lines+markers",
                                        line={"dash": "dash", "color": "#888"}, marker={"symbol": "x"},
                                        name="random choice of as many", showlegend=i == 1))
    figure.update_layout(**_layout("G-Vendi of the pool per round", height=340,
                                   yaxis={"title": {"text": "G-Vendi"}}))
    return figure


def gains_figure(atlas: Atlas) -> go.Figure:
    frame = atlas.rounds.filter(pl.col("round") != atlas.rounds["round"][0]) if "gain" in atlas.rounds.columns \
        else atlas.rounds.head(0)
    rounds = frame["round"].to_list()
    figure = go.Figure([
        go.Bar(x=rounds, y=_series(frame, "gain"), name="selection", marker_color=COLOURS[STATUSES[2]],
               hovertemplate="%{x}: selection gain %{y:.3f}<extra></extra>"),
        go.Bar(x=rounds, y=_series(frame, "control_gain"), name="random choice of as many", marker_color="#888",
               hovertemplate="%{x}: random gain %{y:.3f}<extra></extra>"),
    ])
    figure.update_layout(**_layout("G-Vendi gain: selection vs chance", barmode="group", height=340,
                                   yaxis={"title": {"text": "G-Vendi gain"}}))
    return _note_if_empty(figure, not rounds, f"no selection yet: {atlas.round_key} is the seed round")


def _note_if_empty(figure: go.Figure, empty: bool, note: str) -> go.Figure:
    """`figure` with `note` in its middle and no axes when it has nothing to draw."""
    if empty:
        figure.update_layout(xaxis={"visible": False}, yaxis={"visible": False}, annotations=[{
            "text": note, "xref": "paper", "yref": "paper", "x": 0.5, "y": 0.5, "showarrow": False,
            "font": {"size": 13, "color": "#6a737d"}}])
    return figure


def counts_figure(atlas: Atlas) -> go.Figure:
    frame = atlas.rounds
    kept, candidates = _series(frame, "kept"), _series(frame, "candidates")
    not_kept = [None if c is None or k is None else c - k for k, c in zip(kept, candidates)]
    rounds = frame["round"].to_list()
    figure = go.Figure([
        go.Bar(x=rounds, y=kept, name="kept", marker_color=COLOURS[STATUSES[2]]),
        go.Bar(x=rounds, y=not_kept, name="verified, not kept", marker_color=COLOURS[STATUSES[3]]),
        go.Bar(x=rounds, y=_series(frame, "rejected"), name="rejected", marker_color="#b07aa1"),
    ])
    figure.update_layout(**_layout("Candidates and rejections per round", barmode="stack", height=340,
                                   yaxis={"title": {"text": "rows"}}))
    return figure


def tokens_figure(atlas: Atlas) -> go.Figure | None:
    """Generation tokens per round, or None when no round recorded any."""
    columns = [c for c in atlas.rounds.columns if c.startswith("tokens_")]
    if not columns:
        return None
    rounds = atlas.rounds["round"].to_list()
    figure = go.Figure([go.Bar(x=rounds, y=atlas.rounds[c].to_list(), name=c.removeprefix("tokens_"))
                        for c in columns])
    figure.update_layout(**_layout("Generation tokens per round", barmode="group", height=340,
                                   yaxis={"title": {"text": "tokens"}}))
    return figure


def reasons_figure(atlas: Atlas) -> go.Figure:
    reasons = list(atlas.rejection_counts)
    figure = go.Figure([go.Bar(x=[atlas.rejection_counts[r] for r in reasons], y=reasons, orientation="h",
                               marker_color="#b07aa1", hovertemplate="%{y}: %{x}<extra></extra>")])
    figure.update_layout(**_layout(f"Rejections of {atlas.round_key} by reason",
                                   height=max(220, 60 + 28 * len(reasons)), yaxis={"autorange": "reversed"},
                                   xaxis={"title": {"text": "rows"}},
                                   margin={"l": 190, "r": 15, "t": 45, "b": 45}))
    return _note_if_empty(figure, not reasons, f"no rejections in {atlas.round_key}")


def all_figures(atlas: Atlas) -> dict[str, go.Figure]:
    """Every figure of the page by its element id (tokens only when recorded)."""
    figures = {"map": map_figure(atlas), "clusters": clusters_figure(atlas), "gvendi": gvendi_figure(atlas),
               "gains": gains_figure(atlas), "counts": counts_figure(atlas), "reasons": reasons_figure(atlas)}
    tokens = tokens_figure(atlas)
    if tokens is not None:
        figures["tokens"] = tokens
    return figures
