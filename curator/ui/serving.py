"""What the web server may hand out: only the images a page shows and the export zip.

Gradio serves a file at ``/gradio_api/file=<path>`` when the path is inside a static or allowed
folder (``gr.set_static_paths``, ``launch(allowed_paths=...)``) and not inside ``blocked_paths``.
A run folder holds more than images (``run.sqlite`` and its ``-wal``/``-shm``, ``writer.lock``,
prototypes' ``.npy``, the UMAP cache), so the run folders are not served. Instead each image a
page shows is hard-linked (copied where links are not possible) into ``RUNS/_served/<run>/...``,
and only that folder and ``RUNS/_exports`` are static; ``RUNS/_uploads`` is blocked outright.
Only PNG files under a run's ``images/`` and ``prototypes/`` are ever linked.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path, PurePosixPath

from curator.ui.resources import AppSettings

SERVED_PARTS = ("images", "prototypes")


def served_path(settings: AppSettings, path: str | Path | None) -> str | None:
    """The served copy of an image file of a run under ``settings.runs_dir`` (made on first use)."""
    if path is None:
        return None
    src = Path(path).resolve()
    runs = settings.runs_dir
    try:
        rel = PurePosixPath(src.relative_to(runs).as_posix())
    except ValueError:
        raise ValueError(f"{path} is not inside the runs folder {runs}; not served") from None
    parts = rel.parts
    if len(parts) < 3 or parts[0].startswith("_") or parts[1] not in SERVED_PARTS or src.suffix.lower() != ".png":
        raise ValueError(f"{path} is not a run image; not served")
    dst = settings.served_dir / rel
    if dst.is_file():
        try:
            if os.path.samefile(src, dst) or dst.stat().st_size == src.stat().st_size:
                return str(dst)
        except OSError:
            pass
        dst.unlink(missing_ok=True)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    return str(dst)


def served_gallery(settings: AppSettings, items: list) -> list:
    """``[(path, caption), ...]`` with every path replaced by its served copy."""
    return [(served_path(settings, p), c) for p, c in items]


def static_paths(settings: AppSettings) -> list[str]:
    return [str(settings.served_dir), str(settings.exports_dir)]


def blocked_paths(settings: AppSettings) -> list[str]:
    return [str(settings.uploads_dir)]
