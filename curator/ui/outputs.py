"""Named outputs of the app's multi-output handlers (the Curate panel, a run's set-up outputs).

Each is a ``NamedTuple``: its field order is the order of the components in the layout's wiring
*and* of the values a handler returns, the way diffusers' ``BaseOutput`` gives a model's outputs
names and a tuple order at once. The layout builds one instance holding the components
(``Panel(message=action_msg, ...)``) and wires ``list(panel)``; a handler returns an instance
holding the values (a tuple, which Gradio takes as it is). Adding a field adds it to both, so one
output more cannot shift the others silently (``tests/test_app_callbacks.py`` checks the wiring).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import gradio as gr


class Panel(NamedTuple):
    """The Curate tab: what one anomaly and its class look like."""

    message: Any  # the action bar's message line
    gallery: Any  # the class's synthetic set
    anomalies: Any  # the class's anomaly table
    anomaly_id: Any  # the anomaly in view (a number box)
    anomaly_text: Any  # its summary (markdown)
    original: Any  # the flagged image
    prototype: Any  # its prototype's preview
    cards: Any  # the candidate cards (HTML)
    candidate_table: Any  # the candidates' scores
    candidate_id: Any  # the selected candidate (a number box)
    picker: Any  # the class picker, with its counts
    queue: Any  # the action bar's queue position line

    @classmethod
    def skip(cls, **given: Any) -> Panel:
        """Every output left as it is (``gr.skip()``) except those ``given`` by name."""
        return cls(**{name: given.pop(name, gr.skip()) for name in cls._fields}, **given)


class RunOutputs(NamedTuple):
    """What Start, Reopen and a page load set: the open run, and every run-specific message and
    view cleared, so nothing of the previous run stays on screen."""

    message: Any  # the Set-up message line
    state: Any  # the session's {"run": path, "key": visitor}
    saved_run: Any  # the run remembered in the browser
    runs: Any  # the "Existing runs" dropdown
    picker: Any  # the class picker
    run_info: Any  # the header line naming the run
    run_message: Any  # Curate: the job's line
    umap_message: Any  # Embeddings: the message line
    class_plot: Any  # Embeddings: the class map
    run_plot: Any  # Embeddings: the whole-run map
    umap_info: Any  # Embeddings: the map's point counts
    export_message: Any  # Export: the message line
    download: Any  # Export: the download button
    preview: Any  # Export: provenance preview
    overview_message: Any  # Overview: the message line
    overview: Any  # Overview: the per-class table

    @classmethod
    def skip(cls, **given: Any) -> RunOutputs:
        return cls(**{name: given.pop(name, gr.skip()) for name in cls._fields}, **given)


PANEL_SIZE = len(Panel._fields)
RUN_SIZE = len(RunOutputs._fields)
