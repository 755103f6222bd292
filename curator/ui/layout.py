"""The Blocks layout and its event wiring; keyboard shortcuts; what ``launch()`` needs.

Generation (run a class, run all, regenerate) shares one queue, ``concurrency_id="device"``
with a limit of 1, so users take turns on the device; UMAP fitting has its own queue of 1.
Everything else (views, decisions, export) runs concurrently: each handler opens its own store.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from curator.config import RunConfig
from curator.ui import resources, serving
from curator.ui.callbacks import CENTRES, DATA_SOURCES, MODEL_SOURCES, RUN_SIZE, Callbacks
from curator.ui.plots import COLOR_BY
from curator.ui.resources import AppSettings
from curator.ui.views import OVERVIEW_COLUMNS, OVERVIEW_FILTERS

SHORTCUTS = """
**Keyboard** (outside text fields): **A** accept the automatic pick and go to the next anomaly ·
**N** / **→** next anomaly · **P** / **←** previous anomaly · **U** undo the last decision
"""

HEAD = """
<script>
document.addEventListener("keydown", (e) => {
  const t = e.target;
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  if (t && (t.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(t.tagName))) return;
  const map = {a: "accept-btn", n: "next-btn", ArrowRight: "next-btn", p: "prev-btn", ArrowLeft: "prev-btn",
               u: "undo-btn"};
  const id = map[e.key] || map[(e.key || "").toLowerCase()];
  if (!id) return;
  const el = document.getElementById(id);
  if (el && el.offsetParent !== null) { e.preventDefault(); el.click(); }
});
</script>
"""

CSS = """
#candidates .thumbnail-item.selected, #class-gallery .thumbnail-item.selected { outline: 4px solid #ff7f0e; }
#status { min-height: 2.2em; font-size: 1.05em; }
#class-gallery img, #candidates img, #original img, #prototype img { image-rendering: pixelated; }
#original img, #prototype img { width: 100%; height: 100%; object-fit: contain; }
"""


def launch_kwargs(settings: AppSettings) -> dict:
    """Arguments for ``demo.launch``: head/css (Gradio 6 takes them here) and the served paths
    (nothing beyond the static folders of ``serving``; the uploads folder blocked) and the upload size limit."""
    return dict(
        head=HEAD,
        css=CSS,
        allowed_paths=[],
        blocked_paths=serving.blocked_paths(settings),
        max_file_size=f"{settings.max_upload_mb}mb",  # Gradio refuses larger uploads outright
    )


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
        gr.Markdown(
            "# The curator\nDetector-guided dataset distillation (arXiv 2507.13074): synthesise a small set per "
            "class, let a detector flag anomalies, pick among 20 candidates each, review, export."
        )
        with gr.Row():
            status = gr.Markdown("", elem_id="status")
        run_info = gr.Markdown("No run open.", elem_id="run-info")

        with gr.Tabs(selected="setup") as tabs:
            with gr.Tab("Set-up", id="setup"):
                gr.Markdown(f"**Device in use:** {resources.device_text()}")
                with gr.Row():
                    with gr.Column():
                        data_source = gr.Radio(DATA_SOURCES, value=DATA_SOURCES[0], label="Dataset")
                        folder = gr.Textbox(label="ImageFolder path on the server", placeholder="/data/my_images")
                        upload = gr.File(label="…or a zip of an ImageFolder", file_types=[".zip"], type="filepath")
                    with gr.Column():
                        model_source = gr.Radio(
                            MODEL_SOURCES, value=MODEL_SOURCES[0], label="Models",
                            info="The early generator is a 100-step checkpoint where refinement has work to do "
                            "(a testbed; assets/generator-early/README.md), not for real distillation.",
                        )  # fmt: skip
                        gen_path = gr.Textbox(label="Generator folder", placeholder=d.generator)
                        det_path = gr.Textbox(label="Detector folder", placeholder=d.detector)
                with gr.Row():
                    ipc = gr.Number(d.ipc, label="IPC (images per class)", precision=0, minimum=1)
                    k = gr.Number(d.k, label="K (candidates per anomaly)", precision=0, minimum=1)
                    tau = gr.Slider(0, 1, d.tau, step=0.01, label="tau (confidence threshold)")
                    lam = gr.Slider(0, 2, d.lam, step=0.05, label="lambda (uniqueness weight)")
                    centre = gr.Radio(
                        CENTRES, value=d.uniqueness_centre, label="uniqueness centre",
                        info="features centred on the class's own mean real feature, or on all classes' mean",
                    )  # fmt: skip
                with gr.Row():
                    steps = gr.Number(d.steps, label="DDIM steps", precision=0, minimum=1)
                    strength = gr.Slider(0.05, 1, d.strength, step=0.05, label="strength (SDEdit noise)")
                    guidance = gr.Slider(0, 10, d.guidance, step=0.5, label="guidance scale")
                    seed = gr.Number(d.seed, label="seed", precision=0)
                start_btn = gr.Button("Start a new run", variant="primary", elem_id="start-btn")
                with gr.Row():
                    # choices change per session; custom values let API clients pass them (the handlers validate)
                    runs = gr.Dropdown(choices=[], label="Existing runs", scale=4, allow_custom_value=True)
                    refresh_btn = gr.Button("↻", scale=0, min_width=50)
                    open_btn = gr.Button("Reopen run", scale=1, elem_id="open-btn")

            with gr.Tab("Curate", id="curate"):
                with gr.Row():
                    label = gr.Dropdown(choices=[], label="Class", scale=2, elem_id="class-dd", allow_custom_value=True)
                    run_btn = gr.Button("Run this class", variant="primary", elem_id="run-class-btn")
                    run_all_btn = gr.Button("Run all classes", elem_id="run-all-btn")
                    cancel_btn = gr.Button("Cancel", variant="stop", elem_id="cancel-btn")
                class_gallery = gr.Gallery(
                    label="Synthetic set", columns=10, height=260, allow_preview=False, elem_id="class-gallery"
                )
                anomaly_table = gr.Dataframe(
                    label="Anomalies (select a row)", interactive=False, max_height=220, elem_id="anomaly-table"
                )
                gr.Markdown(SHORTCUTS)
                with gr.Row():
                    prev_btn = gr.Button("◀ Previous (P)", elem_id="prev-btn", scale=0, min_width=130)
                    anomaly_id = gr.Number(
                        label="Anomaly id", precision=0, elem_id="anomaly-id", scale=0, min_width=120
                    )
                    show_btn = gr.Button("Show", scale=0, min_width=70, elem_id="show-btn")
                    next_btn = gr.Button("Next (N) ▶", elem_id="next-btn", scale=0, min_width=130)
                    anomaly_md = gr.Markdown("", elem_id="anomaly-md")
                with gr.Row():
                    original = gr.Image(
                        label="Original", type="filepath", height=200, interactive=False, elem_id="original"
                    )
                    prototype = gr.Image(
                        label="Prototype", type="filepath", height=200, interactive=False, elem_id="prototype"
                    )
                    with gr.Column(scale=2):
                        accept_btn = gr.Button("Accept automatic pick (A)", variant="primary", elem_id="accept-btn")
                        with gr.Row():
                            candidate_id = gr.Number(label="Selected candidate", precision=0, elem_id="candidate-id")
                            choose_btn = gr.Button("Use selected candidate", elem_id="choose-btn")
                        with gr.Row():
                            original_btn = gr.Button("Keep original", elem_id="original-btn")
                            drop_btn = gr.Button("Drop image", variant="stop", elem_id="drop-btn")
                        with gr.Row():
                            regen_btn = gr.Button("Regenerate K more", elem_id="regen-btn")
                            undo_btn = gr.Button("Undo last decision (U)", elem_id="undo-btn")
                candidates = gr.Gallery(
                    label="Candidates (★ = automatic pick; click one to select it)",
                    columns=10,
                    height=330,
                    allow_preview=False,
                    elem_id="candidates",
                )
                candidate_table = gr.Dataframe(label="Candidate scores", interactive=False, max_height=300)

            with gr.Tab("Overview", id="overview"):
                with gr.Row():
                    ov_filter = gr.Dropdown(OVERVIEW_FILTERS, value=OVERVIEW_FILTERS[0], label="Show")
                    ov_sort = gr.Dropdown(OVERVIEW_COLUMNS, value="label", label="Sort by")
                    ov_desc = gr.Checkbox(False, label="descending")
                    ov_btn = gr.Button("Refresh", elem_id="overview-btn")
                ov_table = gr.Dataframe(label="Per class (select a row to open the class)", interactive=False)

            with gr.Tab("Embeddings", id="embeddings"):
                with gr.Row():
                    color_by = gr.Radio(list(COLOR_BY), value="class", label="Colour by")
                    umap_btn = gr.Button("Draw UMAP", variant="primary", elem_id="umap-btn")
                umap_info = gr.Markdown("")
                umap_plot = gr.Plot(label="UMAP", elem_id="umap-plot")

            with gr.Tab("Export", id="export"):
                export_btn = gr.Button("Export curated set", variant="primary", elem_id="export-btn")
                download = gr.DownloadButton("Download zip", visible=False, elem_id="download-btn")
                preview = gr.Dataframe(label="provenance.csv (first 50 rows)", interactive=False)

        run_outputs = [status, state, saved_run, runs, label, run_info]
        assert len(run_outputs) == RUN_SIZE
        panel = [
            status,
            class_gallery,
            anomaly_table,
            anomaly_id,
            anomaly_md,
            original,
            prototype,
            candidates,
            candidate_table,
            candidate_id,
        ]

        setup_inputs = [data_source, folder, upload, model_source, gen_path, det_path]
        setup_inputs += [ipc, k, tau, lam, steps, strength, guidance, seed, state, centre]
        start_btn.click(cb.start_run, setup_inputs, run_outputs, api_name="start_run").then(
            cb.show_class, [state, label], panel, api_name="show_after_start", api_visibility="private"
        )
        open_btn.click(cb.open_run, [runs, state], run_outputs, api_name="open_run").then(
            cb.show_class, [state, label], panel, api_name="show_after_open", api_visibility="private"
        )
        refresh_btn.click(cb.refresh_runs, None, runs, api_visibility="private")
        demo.load(cb.restore, [saved_run, state], run_outputs, api_visibility="private").then(
            cb.show_class, [state, label], panel, api_name="show_after_load", api_visibility="private"
        )

        gen_kw = dict(concurrency_id="device", concurrency_limit=1)
        run_btn.click(cb.run_class, [state, label], panel + [label], api_name="run_class", **gen_kw)
        run_all_btn.click(cb.run_all, [state, label], panel + [label], api_name="run_all", **gen_kw)
        cancel_btn.click(cb.cancel, [state], status, api_name="cancel", queue=False)
        regen_btn.click(cb.regenerate, [state, label, anomaly_id], panel, api_name="regenerate", **gen_kw)

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
        candidates.select(cb.select_candidate, [state, anomaly_id], [status, candidate_id], api_visibility="private")
        for btn, action, name in (
            (accept_btn, "accept", "accept_pick"),
            (choose_btn, "candidate", "choose_candidate"),
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

        ov_inputs = [state, ov_filter, ov_sort, ov_desc]
        ov_btn.click(cb.overview, ov_inputs, [status, ov_table], api_name="overview")
        for trigger in (ov_filter.input, ov_sort.input, ov_desc.input):
            trigger(cb.overview, ov_inputs, [status, ov_table], api_visibility="private")
        ov_table.select(cb.jump_to_class, [state, ov_table], [status, label, tabs], api_visibility="private").then(
            cb.show_class, [state, label], panel, api_name="show_after_jump", api_visibility="private"
        )

        umap_kw = dict(concurrency_id="umap", concurrency_limit=1)  # one UMAP fit at a time
        umap_io = ([state, color_by], [status, umap_plot, umap_info])
        umap_btn.click(cb.embedding, *umap_io, api_name="embedding", **umap_kw)
        color_by.input(cb.embedding, *umap_io, api_visibility="private", **umap_kw)

        export_btn.click(cb.export, [state], [status, download, preview], api_name="export")
    return demo
