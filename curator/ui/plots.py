"""The UMAP scatters: the run view (plotly WebGL ``Scattergl``, colour by class or by status,
symbol by kind) and the class view (``class_figure``: SVG, colour by meaning, thumbnails on hover
and click-to-open through ``PLOT_JS``)."""

from __future__ import annotations

from collections.abc import Callable

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
STATUS_COLORS = {  # anomalies by review.decision_state
    "real": "#c7c7c7",
    "prototype": "#7f7f7f",
    "passed": "#1f77b4",
    "candidate": "#bcbd22",
    "picked": "#2ca02c",
    "auto": "#ff7f0e",
    "accepted": "#0f766e",
    "overridden": "#9467bd",
    "kept original": "#6b7280",
    "dropped": "#111827",
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
MAX_CLASS_TRACES = 30  # colour by class above this many classes: one trace, colours by class number
MAX_THUMB_POINTS = 5000  # hover thumbnails in the run view up to this many points (each is a served file)
DENSE_POINTS = 5000  # above this many points the run view's markers shrink and lose their outline
DENSE_SCALE = 0.55  # marker size factor of a dense run view (so 5,000 picks do not hide the rest)


def _num(v) -> str:
    return "–" if v is None or v != v else f"{v:.3f}"


def _id(v) -> str:
    """An id column's value (int, float or None/NaN) as text: "12", or "" when absent."""
    return "" if v is None or v != v else str(int(v))


def umap_figure(
    frame: pd.DataFrame, color_by: str = "class", title: str = "", thumb_url: Callable[[str], str | None] | None = None
) -> go.Figure:
    """WebGL traces per colour group (class or status) and kind (one marker symbol and size each, so
    plotly checks no per-point list: a 50,000-point map builds in a second). Above
    ``MAX_CLASS_TRACES`` classes, colour by class is one group coloured by class number. customdata
    is ``CLASS_CUSTOMDATA`` then the class name, so ``PLOT_JS`` gives this view the class view's
    hover thumbnails (``thumb_url``, as there) and click-to-open too."""
    if color_by not in COLOR_BY:
        raise ValueError(f"colour by must be one of {COLOR_BY}, got {color_by!r}")
    fig = go.Figure()
    frame = frame.reset_index(drop=True)
    n_classes = frame["label"].nunique()
    if color_by == "class" and n_classes > MAX_CLASS_TRACES:  # 1,000 traces and legend rows would not draw
        groups = [(f"{n_classes} classes (colour by class number; hover names the class)", frame, None)]
    elif color_by == "class":
        named = [(f"class {name}", sub) for name, sub in frame.groupby("class_name", sort=False)]
        named.sort(key=lambda g: int(g[1]["label"].iloc[0]))
        groups = [(name, sub, PALETTE[int(sub["label"].iloc[0]) % len(PALETTE)]) for name, sub in named]
    else:
        groups = [
            (s, frame[frame["status"] == s], STATUS_COLORS[s]) for s in STATUS_COLORS if (frame["status"] == s).any()
        ]
    files = frame["file"] if "file" in frame else pd.Series("", index=frame.index)
    owners = frame["anomaly_id"] if "anomaly_id" in frame else pd.Series(np.nan, index=frame.index)
    custom = np.column_stack(
        [
            [f"#{_id(i)}" if _id(i) else "" for i in frame["image_id"]],
            frame["kind"].astype(str),
            frame["status"].astype(str),
            [_score_text(c, u, s) for c, u, s in zip(frame["confidence"], frame["uniqueness"], frame["score"])],
            [(thumb_url(f) if thumb_url and f else None) or "" for f in files],
            [_id(i) for i in owners],
            frame["class_name"].astype(str),
        ]
    )
    by_number = dict(  # colour by class number: a numeric array and a stepped scale, fast to check
        colorscale=[[(i + edge) / len(PALETTE), c] for i, c in enumerate(PALETTE) for edge in (0, 1)],
        cmin=-0.5, cmax=len(PALETTE) - 0.5,
    )  # fmt: skip
    dense = len(frame) > DENSE_POINTS
    for name, sub, color in groups:
        shown = False
        for kind in [*SYMBOLS, *sorted(set(sub["kind"]) - set(SYMBOLS))]:
            rows = sub.index[sub["kind"] == kind].to_numpy()
            if not len(rows):
                continue
            colour = (
                dict(color=color)
                if color is not None
                else dict(color=sub.loc[rows, "label"].to_numpy() % len(PALETTE), **by_number)
            )
            fig.add_trace(
                go.Scattergl(
                    x=frame["x"].to_numpy()[rows],
                    y=frame["y"].to_numpy()[rows],
                    mode="markers",
                    name=name,
                    legendgroup=name,
                    showlegend=not shown,
                    marker=dict(
                        symbol=SYMBOLS.get(kind, "circle"),
                        size=SIZES.get(kind, 6) * (DENSE_SCALE if dense else 1.0),
                        line=dict(width=0 if dense else 0.5, color="#222"),
                        opacity=0.85,
                        **colour,
                    ),
                    customdata=custom[rows],
                    hovertemplate=(
                        "%{customdata[1]} %{customdata[0]}<br>class %{customdata[6]} · %{customdata[2]}<br>"
                        "%{customdata[3]}<extra></extra>"
                    ),
                )
            )
            shown = True
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


# --- the class view -----------------------------------------------------------------------------
# (category, legend name, colour), in drawing order: real images at the back, picks on top.
CLASS_STYLE = [
    ("real", "real images", "#d4d4d4"),
    ("prototype", "prototypes", "#4a4a4a"),
    ("passed", "passed", "#7b8ea3"),
    ("candidate", "candidates", "#c2a25e"),
    ("anomaly auto", "anomaly · auto pick", "#d9958c"),
    ("anomaly accepted", "anomaly · accepted", "#5fa8a0"),
    ("anomaly overridden", "anomaly · overridden", "#9484b8"),
    ("anomaly kept original", "anomaly · kept original", "#8b8f98"),
    ("anomaly dropped", "anomaly · dropped", "#333b47"),
    ("anomaly unresolved", "anomaly · unresolved", "#d62728"),
    ("pick", "picks", "#2ca02c"),
]
CLASS_SIZES = {"real": 6, "prototype": 11, "synthetic": 9, "anomaly": 12, "candidate": 8, "pick": 16}
CLASS_CUSTOMDATA = ("image_id", "kind", "status", "scores", "thumb_url", "anomaly_id")  # customdata[0..5]


def _category(kind: str, status: str) -> str:
    if kind == "anomaly":
        return f"anomaly {status}"
    return {"synthetic": "passed"}.get(kind, kind)


def _score_text(confidence, uniqueness, score) -> str:
    parts = (("conf", confidence), ("uniq", uniqueness), ("score", score))
    return " · ".join(f"{n} {_num(v)}" for n, v in parts if v is not None and v == v)


def _scores(row) -> str:
    return _score_text(row["confidence"], row["uniqueness"], row["score"])


def _header(row, image_id: str, anomaly_id: str) -> str:
    kind = row["kind"]
    if kind == "real":
        return f"real image · train #{str(row['key']).rsplit(':', 1)[-1]}"
    if kind == "prototype":
        return f"prototype #{str(row['key']).split(':', 1)[-1]}"
    if kind == "synthetic":
        return f"passed #{image_id}"
    if kind == "anomaly":
        return f"anomaly #{image_id} · {row['status']}"
    return f"{kind} #{image_id} of anomaly #{anomaly_id}"


def _outline(kind: str) -> dict:
    """Marker outline: none for the real cloud, the stroke of an open circle for candidates."""
    if kind == "real":
        return dict(width=0)
    return dict(width=1.5 if kind == "candidate" else 0.6, color="#1e5e1e" if kind == "pick" else "#333")


def _padded(values: pd.Series, pad: float = 0.06) -> list[float]:
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    d = (hi - lo) * pad or 0.5
    return [lo - d, hi + d]


def class_figure(frame: pd.DataFrame, title: str, thumb_url: Callable[[str], str | None]) -> go.Figure:
    """The class view (``embedding.class_embedding``'s frame): one SVG trace per meaning (real,
    prototype, passed, candidate, anomaly by decision state, pick), symbol by kind, zoomed to the
    data. ``thumb_url`` maps a run-relative image file to a URL (None: no thumbnail).

    Each point's customdata is ``CLASS_CUSTOMDATA``: image id ("" when none), kind, status, the
    confidence/uniqueness/score text, the thumbnail URL ("" when none) and the anomaly id ("" when
    none); ``PLOT_JS`` reads the last two for the hover thumbnail and click-to-open."""
    fig = go.Figure()
    categories = [_category(k, s) for k, s in zip(frame["kind"], frame["status"])]
    for category, name, color in CLASS_STYLE:
        sub = frame[[c == category for c in categories]]
        if sub.empty:
            continue
        kind = sub["kind"].iloc[0]
        rows = []
        for _, row in sub.iterrows():
            image_id, anomaly_id = _id(row["image_id"]), _id(row["anomaly_id"])
            url = (thumb_url(row["file"]) if row["file"] else None) or ""
            rows.append((image_id, kind, row["status"], _scores(row), url, anomaly_id))
        custom = np.array(rows, dtype=object)
        text = []
        for (_, row), r in zip(sub.iterrows(), rows):
            lines = [_header(row, r[0], r[5]), r[3]]
            if r[5]:
                selected = " with it selected" if r[1] in ("candidate", "pick") else ""
                lines.append(f"<i>click to open anomaly #{r[5]}{selected}</i>")
            text.append("<br>".join(line for line in lines if line))
        fig.add_trace(
            go.Scatter(
                x=sub["x"],
                y=sub["y"],
                mode="markers",
                name=name,
                marker=dict(
                    color=color,
                    symbol=SYMBOLS.get(kind, "circle"),
                    size=CLASS_SIZES.get(kind, 8),
                    line=_outline(kind),
                    opacity=0.95 if kind != "real" else 0.8,
                ),
                text=text,
                customdata=custom,
                hovertemplate="%{text}<extra></extra>",
            )
        )
    method = str(frame.attrs.get("method", "umap")).upper()
    axis = dict(zeroline=False, showticklabels=False, gridcolor="#eeeeee")
    if len(frame):
        fig.update_xaxes(range=_padded(frame["x"]), autorange=False)
        fig.update_yaxes(range=_padded(frame["y"]), autorange=False)
    fig.update_layout(
        title=title,
        height=560,
        margin=dict(l=10, r=10, t=40, b=10),
        xaxis=dict(title=f"{method} 1", **axis),
        yaxis=dict(title=f"{method} 2", **axis),
        legend=dict(itemsizing="constant"),
        hovermode="closest",
        template="plotly_white",
    )
    return fig


# For the page head (inside a <script>): hover thumbnails and click-to-open on the class view.
# Plotly graph divs inside #class-umap get handlers once (marked data-curator-umap; attached again
# when plotly re-initialises the div and so drops them). Hovering a point whose customdata[4] is a
# URL shows that image at the mouse; clicking a point whose customdata[5] is an anomaly id writes
# it (with ":<image id>" for a candidate or a pick) into the textbox inside #umap-click (an
# "input" event lets Gradio see it) and clicks #umap-open-btn. Missing elements are skipped silently.
PLOT_JS = """
(() => {
  if (window.__curatorUmap) return;
  window.__curatorUmap = true;
  let tip = null;
  const tooltip = () => {
    if (!tip) {
      tip = document.createElement('img');
      tip.id = 'umap-thumb-tip';
      tip.alt = '';
      Object.assign(tip.style, {position: 'fixed', width: '96px', height: '96px', imageRendering: 'pixelated',
        pointerEvents: 'none', zIndex: '10000', display: 'none', background: '#fff',
        border: '1px solid #999', borderRadius: '4px', boxShadow: '0 2px 6px rgba(0,0,0,.25)'});
      document.body.appendChild(tip);
    }
    return tip;
  };
  const hide = () => { if (tip) tip.style.display = 'none'; };
  const data = (ev) => (ev && ev.points && ev.points[0] && ev.points[0].customdata) || [];
  const attach = (gd) => {
    if (typeof gd.on !== 'function' || gd.__curatorOn === gd.on) return;
    gd.__curatorOn = gd.on;
    gd.dataset.curatorUmap = '1';
    gd.on('plotly_hover', (ev) => {
      const url = data(ev)[4];
      if (!url) { hide(); return; }
      const t = tooltip(), e = ev.event || {}, x = e.clientX || 0, y = e.clientY || 0;
      if (t.getAttribute('src') !== url) t.src = url;
      // left of the pointer (plotly's hover label opens to its right), below it where there is room
      t.style.left = (x - 112 < 0 ? x + 14 : x - 112) + 'px';
      t.style.top = (y + 112 > window.innerHeight ? y - 110 : y + 14) + 'px';
      t.style.display = 'block';
    });
    gd.on('plotly_unhover', hide);
    gd.on('plotly_click', (ev) => {
      const id = data(ev)[5];
      if (!id) return;
      const box = document.getElementById('umap-click');
      const input = box && (box.matches('input, textarea') ? box : box.querySelector('textarea, input'));
      const el = document.getElementById('umap-open-btn');
      const btn = el && (el.tagName === 'BUTTON' ? el : el.querySelector('button') || el);
      if (!input || !btn) return;
      hide();
      const d = data(ev), kind = d[1];
      // a candidate or a pick opens its anomaly with that candidate selected
      const own = String(d[0] || '').replace('#', '');  // the run map writes "#12", the class map "12"
      input.value = (kind === 'candidate' || kind === 'pick') && own ? `${id}:${own}` : String(id);
      input.dispatchEvent(new Event('input', {bubbles: true}));
      btn.click();
    });
  };
  const scan = () => {
    for (const id of ['class-umap', 'umap-plot']) {
      const root = document.getElementById(id);
      if (root) root.querySelectorAll('.js-plotly-plot').forEach(attach);
    }
  };
  const start = () => {
    scan();
    new MutationObserver(scan).observe(document.body, {childList: true, subtree: true});
  };
  if (document.body) start(); else document.addEventListener('DOMContentLoaded', start);
})();
"""
