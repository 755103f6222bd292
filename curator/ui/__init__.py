"""The Gradio web app: set-up, per-class runs, anomaly review, overview, UMAP and export.

``build_demo(settings)`` returns the ``gr.Blocks``; ``app.py`` launches it. The library never
imports this package. Modules, one job each:

* ``resources``: app settings, cached models and data, the device in use;
* ``uploads``: safe extraction of an uploaded ImageFolder zip;
* ``serving``: what the server may hand out (the images a page shows, exports), nothing else;
* ``jobs``: the one GPU function (decorated with ``spaces.GPU`` on Hugging Face Spaces) and cancel flags;
* ``views``: pure builders of what the class view, overview and export preview show, from a run store;
* ``plots``: the plotly WebGL UMAP figure;
* ``callbacks``: the event handlers (plain functions, unit-tested without a server);
* ``layout``: the Blocks layout, event wiring, keyboard shortcuts.
"""

from curator.ui.layout import build_demo, launch_kwargs
from curator.ui.resources import AppSettings

__all__ = ["AppSettings", "build_demo", "launch_kwargs"]
