"""The curator's web app: ``python app.py`` (or ``make run``) serves it at http://127.0.0.1:7860.

It starts on the built-in data (mnist5k) and the shipped models with no set-up. The same file
runs as a Hugging Face Space (``sdk: gradio``, ``app_file: app.py``); there it binds to
0.0.0.0 as Spaces requires (``SYSTEM=spaces``), runs in public mode (``SPACE_ID``), and
``curator.ui.jobs.run_class_job`` / ``regenerate_job`` are the functions decorated with
``spaces.GPU`` (one call per class or regeneration). ``--public`` or ``CURATOR_PUBLIC=1``: public
mode elsewhere (each visitor sees only their own runs; old runs are swept). Environment:
``CURATOR_RUNS`` (runs folder, default ``runs/``), ``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT``
to bind elsewhere, ``CURATOR_WARM_UMAP=0`` to skip compiling UMAP in the background at start; the
upload limits, cleanup and server folders of public mode: README, *Hosting a public demo*.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from curator.ui import AppSettings, build_demo, cleanup, launch_kwargs  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The curator's web app.")
    parser.add_argument(
        "--public", action="store_true",
        help="public mode (also on by itself on a Hugging Face Space, or with CURATOR_PUBLIC=1): each visitor "
        "sees only their own runs; old runs, uploads and exports are deleted (README, Hosting a public demo)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = AppSettings(public=True) if args.public else AppSettings()
    logging.getLogger("curator.ui").info(
        "%s mode; runs in %s", "public" if settings.public else "private", settings.runs_dir
    )
    demo = build_demo(settings)
    on_spaces = os.environ.get("SYSTEM") == "spaces"
    host = os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0" if on_spaces else "127.0.0.1")
    port = int(os.environ.get("GRADIO_SERVER_PORT", "7860"))
    demo.queue(default_concurrency_limit=8).launch(
        server_name=host, server_port=port, prevent_thread_lock=True, **launch_kwargs(settings)
    )
    cleanup.start_sweeper(settings)  # public mode only: deletes old runs, uploads and exports
    if os.environ.get("CURATOR_WARM_UMAP", "1") != "0":  # after the page answers: pay numba's compile time
        threading.Thread(target=_warm_umap, daemon=True).start()
    try:
        demo.block_thread()
    finally:  # Ctrl+C or a closed server: the pooled engine's workers go too (also done at exit)
        from curator.ui.jobs import close_engines

        close_engines()


def _warm_umap() -> None:
    from curator.embedding import warm_up

    try:  # Linux niceness is per thread: let generation win the CPU while this compiles
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 15)
    except (AttributeError, OSError):
        pass

    logging.getLogger("curator.ui").info("UMAP warmed up in %.1f s", warm_up())


if __name__ == "__main__":
    main()
