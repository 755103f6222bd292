"""The Blocks layout and its event wiring; keyboard shortcuts; what ``launch()`` needs.

Generation (run a class, run all, regenerate) shares one queue, ``concurrency_id="device"``
with a limit of 1, so users take turns on the device; UMAP fitting has its own queue of 1.
Everything else (views, decisions, export) runs concurrently: each handler opens its own store.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import pandas as pd

from curator.config import RunConfig, rule
from curator.export import COLUMNS as EXPORT_COLUMNS
from curator.ui import evaluate_tab, resources, serving, visitors
from curator.ui.callbacks import (
    ANY,
    CENTRES,
    DATA_SOURCES,
    MODEL_SOURCES,
    QUEUE_ORDER_CHOICES,
    REASON_CHOICES,
    STATE_CHOICES,
    Callbacks,
)
from curator.ui.outputs import Panel, RunOutputs
from curator.ui.plots import COLOR_BY, PLOT_JS
from curator.ui.resources import AppSettings
from curator.ui.views import ANOMALY_COLUMNS, CANDIDATE_COLUMNS, OVERVIEW_COLUMNS, OVERVIEW_FILTERS

SHORTCUTS = (
    "**Keyboard** (outside text fields): **A** accept the automatic pick ★ and go to the next anomaly to review · "
    "**N** / **→** next anomaly · **P** / **←** previous · **J** next to review · **U** undo the last decision · "
    "**Tab** / **Enter** on a candidate card selects it"
)

HEAD = """
<script>
{plot_js}
</script>
<script>
document.addEventListener("keydown", (e) => {
  const t = e.target;
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  if (t && (t.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(t.tagName))) return;
  if (t && t.closest && t.closest(".card") && (e.key === "Enter" || e.key === " ")) {
    e.preventDefault(); t.click(); return;
  }
  const map = {a: "accept-btn", n: "next-btn", ArrowRight: "next-btn", p: "prev-btn", ArrowLeft: "prev-btn",
               u: "undo-btn", j: "todo-btn"};
  const id = map[e.key] || map[(e.key || "").toLowerCase()];
  if (!id) return;
  const el = document.getElementById(id);
  if (el && el.offsetParent !== null) { e.preventDefault(); el.click(); }
});
</script>
"""
# A click on a tab button writes "<tab id>:<time>" into #tab-click (its "change" reaches the server),
# so the place kept with the run follows the tabs a person opens.
TAB_JS = """
<script>
document.addEventListener("click", (e) => {
  const b = e.target && e.target.closest && e.target.closest('button[role="tab"]');
  if (!b) return;
  const id = b.dataset.tabId;  // the gr.Tab's id
  const root = document.getElementById("tab-click");
  const box = root && (root.matches("input, textarea") ? root : root.querySelector("textarea, input"));
  if (!id || !box) return;
  box.value = `${id}:${Date.now()}`;
  box.dispatchEvent(new Event("input", {bubbles: true}));
}, true);
</script>
"""
HEAD = HEAD.replace("{plot_js}", PLOT_JS) + TAB_JS  # hover thumbnails and click-to-open on the class map

# Selecting a card: mark it at once in the page, and tell the server (which fills "Selected candidate").
CARDS_JS = """
element.addEventListener('click', (e) => {
  const card = e.target.closest('[data-cid]');
  if (!card) return;
  element.querySelectorAll('.card.selected').forEach(c => {
    c.classList.remove('selected'); c.setAttribute('aria-selected', 'false');
  });
  card.classList.add('selected'); card.setAttribute('aria-selected', 'true');
  trigger('click', {cid: Number(card.dataset.cid)});
});
"""

# Colour is kept for meaning: pass (green), below tau (amber), other class (red), the pick (gold ★).
CSS = """
/* "clip", not Gradio's "hidden": a hidden overflow makes a scroll box, and the action bar could not stick */
.gradio-container { max-width: 1400px !important; overflow: clip !important; }
#title h1 { font-size: 1.35em; margin: 0; } #title p { margin: 0; color: var(--body-text-color-subdued); }
#run-info { font-size: 0.92em; }
#action-bar { position: sticky; top: 0; z-index: 30; background: var(--background-fill-primary);
  border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 6px 8px; box-shadow: 0 2px 6px #0001; }
#action-bar button { white-space: nowrap; align-self: center; }
.msg textarea, .msg input { border: none !important; box-shadow: none !important; background: transparent !important;
  font-weight: 500; padding-left: 0 !important; }
#run-row button, #overview-row button, #umap-row button, #export-row button, #id-row button {
  align-self: center; }
#run-row .msg, #umap-row .msg, #export-row .msg { align-self: center; }
#overview-table { font-size: 12px; }
#queue-md { align-self: center; font-weight: 600; text-align: right; min-width: 220px; }
#bulk-row { align-items: center; } #bulk-row button { align-self: center; } #bulk-help { align-self: center; }
#class-gallery img, #original img, #prototype img { image-rendering: pixelated; }
#original img, #prototype img { width: 100%; height: 100%; object-fit: contain; }
#anomaly-md { font-size: 0.92em; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(80px, 1fr)); gap: 5px; }
.cards-empty { color: var(--body-text-color-subdued); padding: 12px; }
.card { position: relative; border: 1px solid var(--border-color-primary); border-radius: 6px; padding: 4px;
  cursor: pointer; font-size: 11.5px; line-height: 1.3; background: var(--background-fill-primary); }
.card:hover { border-color: #64748b; } .card:focus { outline: 2px solid #6366f1; }
.card img { width: 100%; max-width: 72px; aspect-ratio: 1; object-fit: contain; image-rendering: pixelated;
  display: block; margin: 0 auto 2px; background: #0f172a; border-radius: 3px; }
.card-head { display: flex; justify-content: space-between; font-weight: 600; }
.card .star { color: #d97706; font-size: 14px; } .card .tick { color: #15803d; font-size: 13px; }
.card-nums b { font-variant-numeric: tabular-nums; }
.card .badge { margin-top: 2px; border-radius: 3px; padding: 0 3px; font-size: 10.5px; text-align: center;
  white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.mark-pass .badge { background: #dcfce7; color: #166534; }
.mark-below .badge { background: #fef3c7; color: #92400e; }
.mark-other .badge { background: #fee2e2; color: #991b1b; }
.card.pick { border-color: #d97706; box-shadow: inset 0 0 0 1px #d97706; }
.card.chosen { border-color: #15803d; box-shadow: inset 0 0 0 2px #15803d; }
.card.selected { outline: 3px solid #6366f1; outline-offset: 1px; }
details.round { margin: 0 0 4px; } details.round > .cards { margin-top: 3px; }
details.round > summary { cursor: pointer; font-weight: 600; font-size: 12px; color: var(--body-text-color-subdued); }
#overview-table th, #anomaly-table th, #candidate-table th, #export-preview th { white-space: normal; }
#overview-table td, #overview-table th { padding: 3px 4px !important; }
#overview-table table, #overview-table td *, #overview-table th * { font-size: 11.5px !important; }
#overview-table th, #overview-table th * { word-break: normal !important; overflow-wrap: normal !important; }
"""

THEME = gr.themes.Soft(
    primary_hue="indigo",
    secondary_hue="slate",
    neutral_hue="slate",
    radius_size="sm",
    spacing_size="sm",
    text_size="sm",
    font=["system-ui", "Segoe UI", "Roboto", "sans-serif"],
    font_mono=["ui-monospace", "monospace"],
)  # fmt: skip  (system fonts: the page loads nothing from the internet)


def launch_kwargs(settings: AppSettings) -> dict:
    """Arguments for ``demo.launch``: theme/head/css (Gradio 6 takes them here), the served paths
    (nothing beyond the static folders of ``serving``; the uploads folder blocked) and the upload size limit."""
    return dict(
        theme=THEME,
        head=HEAD,
        css=CSS + evaluate_tab.CSS,
        allowed_paths=[],
        blocked_paths=serving.blocked_paths(settings),
        max_file_size=f"{settings.max_upload_mb}mb",  # Gradio refuses larger uploads outright
        app_kwargs=visitors.app_kwargs(settings),  # public mode: per-visitor cookie and file gate
    )


def _msg(elem_id: str, scale: int = 4) -> gr.Textbox:
    """A message line (plain text: ``<`` and ``>`` show as they are) that stays until the next message."""
    return gr.Textbox(
        "", show_label=False, interactive=False, container=False, elem_id=elem_id, elem_classes="msg", scale=scale,
        lines=1, max_lines=2,
    )  # fmt: skip


def build_demo(settings: AppSettings | None = None) -> gr.Blocks:
    """The app. Only the images pages show (linked into ``settings.served_dir``) and the exports are
    served, as static files (no copies); see ``curator.ui.serving``."""
    settings = settings or AppSettings()
    for folder in serving.static_paths(settings):
        Path(folder).mkdir(parents=True, exist_ok=True)
    gr.set_static_paths(serving.static_paths(settings))
    cb = Callbacks(settings)
    d = RunConfig()
    with gr.Blocks(title="The curator") as demo:
        state = gr.State({"run": None})
        saved_run = gr.BrowserState(None, storage_key="curator-run")
        # the tab, class and anomaly in view, kept with the run: a reload reopens there
        saved_place = gr.BrowserState(None, storage_key="curator-place")
        pending = gr.State(None)  # an off-class candidate awaiting its second "Use selected"
        tab_click = gr.Textbox(visible="hidden", elem_id="tab-click")  # TAB_JS writes the tab a person opened
        gr.Markdown(
            "# The curator\nDetector-guided dataset distillation: synthesise a few images per class, let a "
            "detector flag the wrong ones, pick among K candidates each, review, export.",
            elem_id="title",
        )
        run_info = gr.Markdown("No run open: start one in Set-up, or reopen one.", elem_id="run-info")

        with gr.Tabs(selected="setup") as tabs:
            with gr.Tab("Set-up", id="setup") as setup_tab:
                gr.Markdown(f"**Device in use:** {resources.device_text()}")
                with gr.Row():
                    with gr.Column():
                        data_source = gr.Radio(cb.data_sources(), value=DATA_SOURCES[0], label="Dataset")
                        # only what the chosen source needs is shown (data_source.change below)
                        folder = gr.Textbox(
                            label="ImageFolder path on the server", placeholder="/data/my_images", visible=False
                        )
                        upload = gr.File(
                            label="Zip of an ImageFolder (root/<class>/<image>)", file_types=[".zip"],
                            type="filepath", visible=False,
                        )  # fmt: skip
                    with gr.Column():
                        model_source = gr.Radio(
                            cb.model_sources(), value=MODEL_SOURCES[0], label="Models",
                            info="The early generator is a 100-step checkpoint where refinement has work to do "
                            "(a testbed; assets/generator-early/README.md), not for real distillation.",
                        )  # fmt: skip
                        gen_path = gr.Textbox(
                            label="Generator folder", placeholder=d.generator, visible=False,
                            info="Stable Diffusion and DiT folders fill in their own steps, strength and guidance",
                        )  # fmt: skip
                        det_path = gr.Textbox(label="Detector folder", placeholder=d.detector, visible=False)
                with gr.Row():
                    # plain numbers, checked on Start: an out-of-range value is refused with its range
                    ipc = gr.Number(d.ipc, label="IPC (images per class)", precision=0, info=rule("ipc"))
                    k = gr.Number(d.k, label="K (candidates per anomaly)", precision=0, info=rule("k"))
                    tau = gr.Number(d.tau, label="tau (confidence threshold)", info=rule("tau"))
                    lam = gr.Number(d.lam, label="lambda (uniqueness weight)", info=rule("lam"))
                    centre = gr.Radio(
                        CENTRES, value=d.uniqueness_centre, label="uniqueness centre",
                        info="features centred on the class's own mean real feature, or on all classes' mean",
                    )  # fmt: skip
                with gr.Row():
                    steps = gr.Number(d.steps, label="DDIM steps", precision=0, info=rule("steps"))
                    strength = gr.Number(d.strength, label="strength (SDEdit noise)", info=rule("strength"))
                    guidance = gr.Number(d.guidance, label="guidance scale", info=rule("guidance"))
                    seed = gr.Number(d.seed, label="seed", precision=0)
                with gr.Row(equal_height=True):
                    start_btn = gr.Button("Start a new run", variant="primary", elem_id="start-btn", scale=1)
                    setup_msg = _msg("setup-msg")
                with gr.Row(equal_height=True):
                    # choices change per session; custom values let API clients pass them (the handlers validate)
                    runs = gr.Dropdown(choices=[], label="Existing runs", scale=4, allow_custom_value=True,
                                       elem_id="runs-dd")  # fmt: skip
                    refresh_btn = gr.Button("↻", scale=0, min_width=50)
                    open_btn = gr.Button("Reopen run", scale=1, elem_id="open-btn")

            with gr.Tab("Curate", id="curate"):
                with gr.Row(elem_id="run-row"):
                    label = gr.Dropdown(
                        choices=[], label="Class (anomalies, still to review)", scale=3, elem_id="class-dd",
                        allow_custom_value=True,
                    )  # fmt: skip
                    run_btn = gr.Button("Run this class", variant="primary", elem_id="run-class-btn", scale=0,
                                        min_width=130, size="sm")  # fmt: skip
                    run_all_btn = gr.Button("Run all classes", elem_id="run-all-btn", scale=0, min_width=130, size="sm")
                    cancel_btn = gr.Button("Cancel", elem_id="cancel-btn", scale=0, min_width=80, size="sm")
                    run_msg = _msg("run-msg", scale=4)
                with gr.Column(elem_id="action-bar"):
                    with gr.Row(equal_height=True):
                        sm = dict(size="sm", scale=0)
                        prev_btn = gr.Button("◀ P", elem_id="prev-btn", min_width=50, **sm)
                        next_btn = gr.Button("N ▶", elem_id="next-btn", min_width=50, **sm)
                        todo_btn = gr.Button("Next to review (J)", elem_id="todo-btn", min_width=140, **sm)
                        accept_btn = gr.Button("★ Accept pick (A)", variant="primary", elem_id="accept-btn",
                                               min_width=140, **sm)  # fmt: skip
                        choose_btn = gr.Button("Use selected", elem_id="choose-btn", min_width=100, **sm)
                        original_btn = gr.Button("Keep original", elem_id="original-btn", min_width=100, **sm)
                        drop_btn = gr.Button("Drop", elem_id="drop-btn", min_width=60, **sm)
                        regen_btn = gr.Button("Regenerate K more", elem_id="regen-btn", min_width=140, **sm)
                        undo_btn = gr.Button("Undo (U)", elem_id="undo-btn", min_width=80, **sm)
                        queue_md = gr.Markdown("", elem_id="queue-md")
                    action_msg = _msg("status", scale=3)
                # the review queue: its order and filters (N / P / J / A follow them), and bulk accept
                with gr.Row(elem_id="queue-row"):
                    q_order = gr.Radio(QUEUE_ORDER_CHOICES, value="class", label="Review queue order", scale=3,
                                       elem_id="queue-order")  # fmt: skip
                    q_reason = gr.Dropdown(REASON_CHOICES, value=ANY, label="Reason", scale=1, filterable=False,
                                           elem_id="queue-reason", min_width=140)  # fmt: skip
                    q_state = gr.Dropdown(STATE_CHOICES, value=ANY, label="Decision state", scale=1, filterable=False,
                                          elem_id="queue-state", min_width=140)  # fmt: skip
                    q_class = gr.Checkbox(False, label="this class only", scale=1, min_width=140, elem_id="queue-class")
                with gr.Row(elem_id="bulk-row", equal_height=True):
                    gr.Markdown("**Bulk accept** every automatic pick ★ in this queue that no person has decided, "
                                "when its", elem_id="bulk-help")  # fmt: skip
                    bulk_conf = gr.Number(0.9, label="confidence ≥", scale=0, min_width=110, elem_id="bulk-conf")
                    bulk_margin = gr.Number(0.02, label="and lead over the runner-up ≥", scale=0, min_width=200,
                                            elem_id="bulk-margin")  # fmt: skip
                    bulk_btn = gr.Button("Count them…", scale=0, min_width=120, size="sm", elem_id="bulk-btn")
                    bulk_ok = gr.Button("Confirm bulk accept", variant="primary", scale=0, min_width=160, size="sm",
                                        visible=False, elem_id="bulk-confirm-btn")  # fmt: skip
                    bulk_no = gr.Button("Cancel", scale=0, min_width=70, size="sm", visible=False,
                                        elem_id="bulk-cancel-btn")  # fmt: skip
                bulk_pending = gr.State(None)  # the anomalies a previewed bulk accept would accept
                with gr.Row():
                    with gr.Column(scale=1, min_width=300):
                        with gr.Row():
                            original = gr.Image(
                                label="Flagged image", type="filepath", height=130, interactive=False,
                                elem_id="original", buttons=[], min_width=120,
                            )  # fmt: skip
                            prototype = gr.Image(
                                label="Prototype", type="filepath", height=130, interactive=False,
                                elem_id="prototype", buttons=[], min_width=120,
                            )  # fmt: skip
                        anomaly_md = gr.Markdown("", elem_id="anomaly-md")
                        with gr.Row(elem_id="id-row"):
                            anomaly_id = gr.Number(label="Anomaly", precision=0, elem_id="anomaly-id", min_width=80)
                            show_btn = gr.Button("Show", scale=0, min_width=60, elem_id="show-btn", size="sm")
                            candidate_id = gr.Number(
                                label="Selected", precision=0, elem_id="candidate-id", min_width=80
                            )
                    with gr.Column(scale=4):
                        cards = gr.HTML(
                            "", js_on_load=CARDS_JS, elem_id="candidates", label="Candidates",
                            min_height=120,
                        )  # fmt: skip
                class_gallery = gr.Gallery(
                    label="Synthetic set", columns=10, height=190, allow_preview=False, elem_id="class-gallery"
                )
                # tables start with their headers (never an empty grid headed "1 2 3"); each takes the
                # full width, so every column shows at 1400 px
                anomaly_table = gr.Dataframe(
                    pd.DataFrame(columns=ANOMALY_COLUMNS), label="Anomalies of this class (select a row)",
                    interactive=False, max_height=260, elem_id="anomaly-table", wrap=True,
                )  # fmt: skip
                candidate_table = gr.Dataframe(
                    pd.DataFrame(columns=CANDIDATE_COLUMNS), label="Candidate scores of the anomaly in view",
                    interactive=False, max_height=260, elem_id="candidate-table", wrap=True,
                )  # fmt: skip
                gr.Markdown(SHORTCUTS)

            with gr.Tab("Overview", id="overview") as overview_tab:
                with gr.Row(elem_id="overview-row"):
                    ov_filter = gr.Dropdown(OVERVIEW_FILTERS, value=OVERVIEW_FILTERS[0], label="Show")
                    ov_sort = gr.Dropdown(OVERVIEW_COLUMNS, value="label", label="Sort by")
                    ov_desc = gr.Checkbox(False, label="descending")
                    ov_page = gr.Number(1, label="page (50 classes)", precision=0, minimum=1, elem_id="overview-page",
                                        scale=0, min_width=130)  # fmt: skip
                    ov_btn = gr.Button("Refresh", elem_id="overview-btn", scale=0, size="sm")
                ov_msg = _msg("overview-msg")
                ov_table = gr.Dataframe(
                    pd.DataFrame(columns=OVERVIEW_COLUMNS),
                    label="Per class (select a row to open the class; the last row sums the rows shown)",
                    interactive=False, elem_id="overview-table", wrap=True,
                )  # fmt: skip

            with gr.Tab("Embeddings", id="embeddings") as embeddings_tab:
                with gr.Row(elem_id="umap-row"):
                    class_map_btn = gr.Button("Map of the class in Curate", variant="primary", elem_id="class-umap-btn",
                                              scale=0, min_width=220, size="sm")  # fmt: skip
                    umap_btn = gr.Button("Map of the whole run", elem_id="umap-btn", scale=0, min_width=180, size="sm")
                    color_by = gr.Radio(list(COLOR_BY), value="class", label="Whole run colours", scale=1)
                    umap_msg = _msg("umap-msg")
                gr.Markdown(
                    "Hover a point to see its image; click an anomaly to open it in Curate, or a candidate or pick "
                    "to open its anomaly with that candidate selected. "
                    "Symbols: ● real · ◆ prototype · ■ passed · ✕ anomaly · ○ candidate · ★ pick.",
                    elem_id="umap-help",
                )
                class_plot = gr.Plot(label="Class map", elem_id="class-umap")
                umap_plot = gr.Plot(label="Whole run", elem_id="umap-plot", visible=False)
                umap_info = gr.Markdown("", visible=False)
                umap_click = gr.Textbox(visible="hidden", elem_id="umap-click")
                umap_open = gr.Button("open", visible="hidden", elem_id="umap-open-btn")

            with gr.Tab("Export", id="export"):
                with gr.Row(elem_id="export-row"):
                    export_btn = gr.Button("Export curated set", variant="primary", elem_id="export-btn", scale=0,
                                           min_width=200, size="sm")  # fmt: skip
                    download = gr.DownloadButton(
                        "Download zip", visible=False, elem_id="download-btn", scale=0, min_width=140, size="sm"
                    )
                    export_msg = _msg("export-msg")
                preview = gr.Dataframe(
                    pd.DataFrame(columns=EXPORT_COLUMNS), label="provenance.csv (first 50 rows)", interactive=False,
                    elem_id="export-preview", wrap=True,
                )  # fmt: skip

            with gr.Tab("Evaluate", id="evaluate"):
                eval_tab = evaluate_tab.build()  # curator/ui/evaluate_tab.py

        # named outputs: the field order of Panel / RunOutputs is the order of these lists (curator.ui.outputs)
        run_outputs = list(
            RunOutputs(
                message=setup_msg,
                state=state,
                saved_run=saved_run,
                runs=runs,
                picker=label,
                run_info=run_info,
                run_message=run_msg,
                umap_message=umap_msg,
                class_plot=class_plot,
                run_plot=umap_plot,
                umap_info=umap_info,
                export_message=export_msg,
                download=download,
                preview=preview,
                overview_message=ov_msg,
                overview=ov_table,
            )
        )
        panel = list(
            Panel(
                message=action_msg,
                gallery=class_gallery,
                anomalies=anomaly_table,
                anomaly_id=anomaly_id,
                anomaly_text=anomaly_md,
                original=original,
                prototype=prototype,
                cards=cards,
                candidate_table=candidate_table,
                candidate_id=candidate_id,
                picker=label,
                queue=queue_md,
            )
        )
        demo.curator_outputs = {"run": run_outputs, "panel": panel}  # for the wiring test

        setup_inputs = [data_source, folder, upload, model_source, gen_path, det_path]
        setup_inputs += [ipc, k, tau, lam, steps, strength, guidance, seed, state, centre]
        start_btn.click(cb.start_run, setup_inputs, run_outputs, api_name="start_run").then(
            cb.open_first, [state, label], panel, api_name="show_after_start", api_visibility="private"
        )
        open_btn.click(cb.open_run, [runs, state], run_outputs, api_name="open_run").then(
            cb.open_first, [state, label], panel, api_name="show_after_open", api_visibility="private"
        )
        refresh_btn.click(cb.refresh_runs, None, runs, api_visibility="private")
        setup_tab.select(cb.refresh_runs, None, runs, api_visibility="private", show_progress="hidden")  # progress now
        demo.load(cb.restore, [saved_run, state], run_outputs, api_visibility="private").then(
            cb.open_place, [state, label, saved_place], panel, api_name="show_after_load", api_visibility="private"
        ).then(cb.place_tab, [state, saved_place], tabs, api_visibility="private")

        # Set-up shows what applies to the chosen sources, and a model's own defaults when it is chosen
        data_source.change(
            lambda src: (gr.update(visible=src == DATA_SOURCES[1]), gr.update(visible=src == DATA_SOURCES[2])),
            data_source, [folder, upload], api_visibility="private", queue=False,
        )  # fmt: skip
        model_source.change(
            lambda src: (gr.update(visible=src == MODEL_SOURCES[1]),) * 2, model_source, [gen_path, det_path],
            api_visibility="private", queue=False,
        )  # fmt: skip
        form_defaults = [setup_msg, steps, strength, guidance]
        quiet = dict(api_visibility="private", show_progress="hidden")  # no spinner over the form for a lookup
        model_source.change(cb.model_defaults, [model_source, gen_path], form_defaults, **quiet)
        for trigger in (gen_path.blur, gen_path.submit):
            trigger(cb.model_defaults, [model_source, gen_path], form_defaults, **quiet)

        # where this browser is (tab, class, anomaly), kept with its run
        anomaly_id.change(
            lambda s, p, lab, a: cb.remember_place(s, p, lab, a), [state, saved_place, label, anomaly_id],
            saved_place, api_visibility="private", queue=False,
        )  # fmt: skip
        # a person's click on a tab (TAB_JS; Gradio also fires a tab's "select" when the page mounts,
        # which would overwrite the kept tab before a reload could reopen it)
        tab_click.change(lambda s, p, t: cb.remember_place(s, p, tab=t), [state, saved_place, tab_click], saved_place,
                        api_visibility="private", queue=False)  # fmt: skip

        # one device queue: users take turns on the accelerator; progress shows on the job's own line
        gen_kw = dict(concurrency_id="device", concurrency_limit=1)
        run_btn.click(cb.run_class, [state, label], [run_msg] + panel, api_name="run_class",
                      show_progress_on=[run_msg], **gen_kw).then(
            cb.refresh_runs, None, runs, api_visibility="private"
        )  # fmt: skip
        run_all_btn.click(cb.run_all, [state, label, anomaly_id], [run_msg] + panel, api_name="run_all",
                          show_progress_on=[run_msg], **gen_kw).then(
            cb.queue_position, [state, anomaly_id], queue_md, api_visibility="private"
        ).then(cb.refresh_runs, None, runs, api_visibility="private")  # fmt: skip
        cancel_btn.click(cb.cancel, [state], run_msg, api_name="cancel", queue=False)
        regen_btn.click(cb.regenerate, [state, label, anomaly_id], [run_msg] + panel, api_name="regenerate",
                        show_progress_on=[run_msg], **gen_kw)  # fmt: skip

        label.input(cb.show_class, [state, label], panel, api_name="show_class")
        show_btn.click(cb.show_anomaly, [state, label, anomaly_id], panel, api_name="show_anomaly")
        class_gallery.select(cb.select_class_image, [state, label], panel, api_visibility="private")
        anomaly_table.select(cb.select_anomaly_row, [state, label, anomaly_table], panel, api_visibility="private")
        prev_btn.click(
            lambda s, lab, a: cb.step_anomaly(s, lab, a, -1),
            [state, label, anomaly_id],
            panel,
            api_name="previous_anomaly",
        )
        next_btn.click(
            lambda s, lab, a: cb.step_anomaly(s, lab, a, 1), [state, label, anomaly_id], panel, api_name="next_anomaly"
        )
        todo_btn.click(cb.next_unreviewed, [state, label, anomaly_id], panel, api_name="next_unreviewed")
        cards.click(cb.select_candidate, [state, anomaly_id], [action_msg, candidate_id, pending],
                    api_visibility="private")  # fmt: skip
        # a candidate of another class is kept on a second press only (the first one says so)
        choose_btn.click(cb.choose_candidate, [state, label, anomaly_id, candidate_id, pending], panel + [pending],
                         api_name="choose_candidate")  # fmt: skip
        for btn, action, name in (
            (accept_btn, "accept", "accept_pick"),
            (original_btn, "original", "keep_original"),
            (drop_btn, "drop", "drop_image"),
        ):
            btn.click(
                lambda s, lab, a, c, action=action: cb.decide(s, lab, a, c, action),
                [state, label, anomaly_id, candidate_id],
                panel,
                api_name=name,
            )
        undo_btn.click(cb.undo, [state, label, anomaly_id], panel, api_name="undo")
        q_inputs = [state, label, anomaly_id, q_order, q_reason, q_state, q_class]
        q_order.input(cb.set_queue_view, q_inputs, [state] + panel, api_name="set_queue_view")
        for trigger in (q_reason.input, q_state.input, q_class.input):
            trigger(cb.set_queue_view, q_inputs, [state] + panel, api_visibility="private")
        bulk_io = [action_msg, bulk_ok, bulk_no, bulk_pending]
        bulk_btn.click(cb.bulk_preview, [state, label, bulk_conf, bulk_margin], bulk_io, api_name="bulk_preview")
        bulk_ok.click(cb.bulk_confirm, [state, label, anomaly_id, bulk_pending], panel + bulk_io[1:],
                      api_name="bulk_confirm")  # fmt: skip
        bulk_no.click(cb.bulk_cancel, None, bulk_io, api_visibility="private")

        ov_inputs = [state, ov_filter, ov_sort, ov_desc, ov_page]
        ov_outputs = [ov_msg, ov_table, ov_page]
        ov_btn.click(cb.overview, ov_inputs, ov_outputs, api_name="overview")
        overview_tab.select(cb.overview, ov_inputs, ov_outputs, api_visibility="private")
        for trigger in (ov_filter.input, ov_sort.input, ov_desc.input, ov_page.submit):
            trigger(cb.overview, ov_inputs, ov_outputs, api_visibility="private")
        # a tab opened by the app (not by a click on it) is remembered too
        to_curate = dict(fn=lambda s, p: cb.remember_place(s, p, tab="curate"), inputs=[state, saved_place],
                         outputs=saved_place, api_visibility="private", queue=False)  # fmt: skip
        ov_table.select(cb.jump_to_class, [state, ov_table], [ov_msg, label, tabs], api_visibility="private").then(
            cb.show_class, [state, label], panel, api_name="show_after_jump", api_visibility="private"
        ).then(**to_curate)

        umap_kw = dict(concurrency_id="umap", concurrency_limit=1)  # one UMAP fit at a time
        show_class_map = dict(fn=lambda: (gr.update(visible=True), gr.update(visible=False), gr.update(visible=False)),
                              outputs=[class_plot, umap_plot, umap_info], api_visibility="private")  # fmt: skip
        show_run_map = dict(fn=lambda: (gr.update(visible=False), gr.update(visible=True), gr.update(visible=True)),
                            outputs=[class_plot, umap_plot, umap_info], api_visibility="private")  # fmt: skip
        class_io = ([state, label], [umap_msg, class_plot, umap_info])
        class_map_btn.click(**show_class_map).then(cb.class_embedding, *class_io, api_name="class_embedding", **umap_kw)
        embeddings_tab.select(**show_class_map).then(cb.class_embedding, *class_io, api_visibility="private",
                                                     **umap_kw)  # fmt: skip
        umap_io = ([state, color_by], [umap_msg, umap_plot, umap_info])
        umap_btn.click(**show_run_map).then(cb.embedding, *umap_io, api_name="embedding", **umap_kw)
        color_by.input(**show_run_map).then(cb.embedding, *umap_io, api_visibility="private", **umap_kw)
        umap_open.click(cb.open_from_map, [state, label, umap_click], panel, api_visibility="private").then(
            lambda: gr.Tabs(selected="curate"), None, tabs, api_visibility="private"
        ).then(**to_curate)

        export_btn.click(cb.export, [state], [export_msg, download, preview], api_name="export")
        evaluate_tab.wire(eval_tab, cb, state, tab_click, gen_kw)  # students take the device queue too
    return demo
