"""The curator's web app: ``python app.py`` (or ``make run``) serves it at http://127.0.0.1:7860.

It starts on the built-in data (mnist5k) and the shipped models with no set-up. The same file
runs as a Hugging Face Space (``sdk: gradio``, ``app_file: app.py``); there it binds to
0.0.0.0 as Spaces requires (``SYSTEM=spaces``), and ``curator.ui.jobs.run_job`` is the one
function decorated with ``spaces.GPU``. Environment: ``CURATOR_RUNS`` (runs folder, default
``runs/``), ``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT`` to bind elsewhere, ``CURATOR_WARM_UMAP=0``
to skip compiling UMAP in the background at start; ``CURATOR_MAX_UPLOAD_MB``,
``CURATOR_MAX_FILES``, ``CURATOR_MAX_UNCOMPRESSED_MB``, ``CURATOR_MAX_IMAGE_PIXELS``: upload limits
(README, *Hosting a public demo*).
"""

from __future__ import annotations

import logging
import os
import threading

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from curator.ui import AppSettings, build_demo, launch_kwargs  # noqa: E402


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = AppSettings()
    demo = build_demo(settings)
    on_spaces = os.environ.get("SYSTEM") == "spaces"
    host = os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0" if on_spaces else "127.0.0.1")
    port = int(os.environ.get("GRADIO_SERVER_PORT", "7860"))
    demo.queue(default_concurrency_limit=8).launch(
        server_name=host, server_port=port, prevent_thread_lock=True, **launch_kwargs(settings)
    )
    if os.environ.get("CURATOR_WARM_UMAP", "1") != "0":  # after the page answers: pay numba's compile time
        threading.Thread(target=_warm_umap, daemon=True).start()
    demo.block_thread()


def _warm_umap() -> None:
    from curator.embedding import warm_up

    try:  # Linux niceness is per thread: let generation win the CPU while this compiles
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 15)
    except (AttributeError, OSError):
        pass

    logging.getLogger("curator.ui").info("UMAP warmed up in %.1f s", warm_up())


if __name__ == "__main__":
    main()
