"""The Evaluate tab's charts (plotly): top-1 of each set as bars with mean ± std and each seed as a
dot, and the confusion matrix of a set's students. They draw stored records; every number comes
from ``curator.evaluation`` (``confusion_percent``) or the records' own properties."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from curator.evalsets import SET_TITLES
from curator.evaluation import confusion_percent, is_current
from curator.store import EvaluationRecord

# the person's set stands out; the baselines are quieter
SET_COLORS = {"curated": "#4f46e5", "automatic": "#0d9488", "unrefined": "#d97706", "random_real": "#94a3b8"}


def _empty(text: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=text, showarrow=False, font=dict(size=14, color="#64748b"), x=0.5, y=0.5,
                       xref="paper", yref="paper")  # fmt: skip
    fig.update_layout(xaxis=dict(visible=False), yaxis=dict(visible=False), height=340,
                      margin=dict(l=10, r=10, t=30, b=10), template="plotly_white")  # fmt: skip
    return fig


def accuracy_bars(
    records: Sequence[EvaluationRecord], title: str = "", current: dict[str, str] | None = None
) -> go.Figure:
    """Top-1 % of each set: a bar at the mean with a ± std whisker, each seed a dot, the value written
    on the bar; a partial evaluation (seeds missing) says so under its name."""
    shown = [r for r in records if r.students]
    if not shown:
        return _empty("No student has finished yet" if records else "No results yet: choose sets and press Start")
    fig = go.Figure()
    names = []
    for r in shown:
        name = SET_TITLES.get(r.set_name, r.set_name).replace(" (", "<br>(")
        notes = []
        if r.status == "partial":
            notes.append(f"partial: {len(r.students)} of {len(r.seeds)} seeds")
        if not is_current(r, current):
            notes.append("earlier version of the set")
        names.append(name + "".join(f"<br><i>{n}</i>" for n in notes))
    means = [100 * r.mean for r in shown]
    stds = [100 * r.std for r in shown]
    fig.add_bar(
        x=names, y=means, error_y=dict(type="data", array=stds, visible=True, color="#334155", thickness=1.5),
        marker_color=[SET_COLORS.get(r.set_name, "#64748b") for r in shown],
        text=[f"{m:.1f} ± {s:.1f}" for m, s in zip(means, stds)], textposition="inside", insidetextanchor="end",
        textfont=dict(color="white", size=13), name="mean ± std", width=0.6,
        hovertemplate="%{x}<br>top-1 %{y:.1f} %<extra></extra>",
    )  # fmt: skip
    xs = [n for n, r in zip(names, shown) for _ in r.students]
    ys = [100 * s.accuracy for r in shown for s in r.students]
    seeds = [s.seed for r in shown for s in r.students]
    fig.add_scatter(
        x=xs, y=ys, mode="markers", name="one student (seed)", customdata=seeds,
        marker=dict(color="#0f172a", size=7, symbol="circle-open", line=dict(width=1.5)),
        hovertemplate="seed %{customdata}: %{y:.1f} %<extra></extra>",
    )  # fmt: skip
    fig.update_layout(
        title=dict(text=title, font=dict(size=14)), template="plotly_white", height=360, showlegend=True,
        legend=dict(orientation="h", y=-0.28, x=0), margin=dict(l=55, r=10, t=40, b=10),
        yaxis=dict(title="top-1 on the real test split (%)", range=[0, 104]),
    )  # fmt: skip
    return fig


def confusion_figure(record: EvaluationRecord | None) -> go.Figure:
    """The confusion matrix of ``record``'s students, summed over seeds, as % of each true class."""
    if record is None or not record.students:
        return _empty("The curated set's confusion matrix shows here once it is evaluated")
    pct = confusion_percent(record)
    names = [str(n) for n in record.class_names]
    text = [["" if v != v else f"{v:.0f}" for v in row] for row in pct]
    fig = go.Figure(
        go.Heatmap(
            z=np.nan_to_num(pct), x=names, y=names, colorscale="Blues", zmin=0, zmax=100, text=text,
            texttemplate="%{text}", textfont=dict(size=11), colorbar=dict(title="%", thickness=10),
            hovertemplate="true %{y}, predicted %{x}: %{z:.1f} %<extra></extra>",
        )
    )  # fmt: skip
    n = len(record.students)
    fig.update_layout(
        title=dict(text=f"{SET_TITLES.get(record.set_name, record.set_name)}: confusion, {n} student(s)",
                   font=dict(size=14)),
        template="plotly_white", height=360, margin=dict(l=55, r=10, t=40, b=10),
        xaxis=dict(title="predicted class", type="category", side="bottom"),
        yaxis=dict(title="true class", type="category", autorange="reversed"),
    )  # fmt: skip
    return fig
