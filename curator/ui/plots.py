"""The UMAP scatter: plotly WebGL (``Scattergl``), colour by class or by status, symbol by kind."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

SYMBOLS = {
    "real": "circle",
    "prototype": "diamond",
    "synthetic": "square",
    "anomaly": "x",
    "candidate": "circle-open",
    "pick": "star",
}
SIZES = {"real": 5, "prototype": 11, "synthetic": 9, "anomaly": 11, "candidate": 6, "pick": 13}
STATUS_COLORS = {
    "real": "#c7c7c7",
    "prototype": "#7f7f7f",
    "passed": "#1f77b4",
    "candidate": "#bcbd22",
    "picked": "#2ca02c",
    "resolved (auto)": "#ff7f0e",
    "overridden": "#9467bd",
    "unresolved": "#d62728",
}
PALETTE = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
]
COLOR_BY = ("class", "status")


def umap_figure(frame: pd.DataFrame, color_by: str = "class", title: str = "") -> go.Figure:
    """One WebGL trace per colour group (class or status), marker symbol per point by kind."""
    if color_by not in COLOR_BY:
        raise ValueError(f"colour by must be one of {COLOR_BY}, got {color_by!r}")
    fig = go.Figure()
    if color_by == "class":
        groups = [(name, sub) for _, (name, sub) in enumerate(frame.groupby("class_name", sort=False))]
        groups.sort(key=lambda g: int(g[1]["label"].iloc[0]))
        colors = {name: PALETTE[int(sub["label"].iloc[0]) % len(PALETTE)] for name, sub in groups}
    else:
        groups = [(s, frame[frame["status"] == s]) for s in STATUS_COLORS if (frame["status"] == s).any()]
        colors = STATUS_COLORS
    for name, sub in groups:
        ids = [f"#{int(i)}" if i == i and i is not None else "–" for i in sub["image_id"]]
        custom = np.column_stack(
            [
                ids,
                sub["kind"],
                sub["class_name"],
                sub["status"],
                sub["confidence"].map(lambda v: "–" if v != v or v is None else f"{v:.3f}"),
                sub["uniqueness"].map(lambda v: "–" if v != v or v is None else f"{v:.3f}"),
                sub["score"].map(lambda v: "–" if v != v or v is None else f"{v:.3f}"),
            ]
        )
        fig.add_trace(
            go.Scattergl(
                x=sub["x"],
                y=sub["y"],
                mode="markers",
                name=f"{'class ' if color_by == 'class' else ''}{name}",
                marker=dict(
                    color=colors.get(name, "#333"),
                    symbol=[SYMBOLS.get(k, "circle") for k in sub["kind"]],
                    size=[SIZES.get(k, 6) for k in sub["kind"]],
                    line=dict(width=0.5, color="#222"),
                    opacity=0.85,
                ),
                customdata=custom,
                hovertemplate=(
                    "%{customdata[1]} %{customdata[0]}<br>class %{customdata[2]} · %{customdata[3]}<br>"
                    "conf %{customdata[4]} · uniq %{customdata[5]} · score %{customdata[6]}<extra></extra>"
                ),
            )
        )
    for kind, symbol in SYMBOLS.items():  # a legend for the symbols
        if (frame["kind"] == kind).any():
            fig.add_trace(
                go.Scattergl(
                    x=[None],
                    y=[None],
                    mode="markers",
                    name=f"kind: {kind}",
                    marker=dict(symbol=symbol, size=10, color="#555"),
                    legendgroup="kinds",
                    legendgrouptitle_text="symbol = kind",
                    hoverinfo="skip",
                )
            )
    fig.update_layout(
        title=title,
        height=620,
        margin=dict(l=10, r=10, t=40, b=10),
        xaxis=dict(title="UMAP 1", zeroline=False),
        yaxis=dict(title="UMAP 2", zeroline=False),
        legend=dict(itemsizing="constant"),
        template="plotly_white",
    )
    return fig
