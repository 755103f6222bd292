"""What the web server may hand out: only the images a page shows and the export zip.

Gradio serves a file at ``/gradio_api/file=<path>`` when the path is inside a static or allowed
folder (``gr.set_static_paths``, ``launch(allowed_paths=...)``) and not inside ``blocked_paths``.
A run folder holds more than images (``run.sqlite`` and its ``-wal``/``-shm``, ``writer.lock``,
prototypes' ``.npy``, the UMAP cache), so the run folders are not served. Instead each image a
page shows is hard-linked (copied where links are not possible) into
``RUNS/_served/<key>/<run>/...``, and only ``RUNS/_served`` and ``RUNS/_exports`` are static;
``RUNS/_uploads`` is blocked outright. Only PNG files under a run's ``images/`` and
``prototypes/`` are ever linked.

``<key>`` is the owner key of the visitor the page is for (``curator.ui.visitors.owner_key``;
``local`` in private mode). Exports go to ``RUNS/_exports/<key>/<run>/``. In public mode
``visitors.VisitorMiddleware`` serves a file under either folder only to the visitor whose key
names its first folder.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from curator.ui.resources import AppSettings

SERVED_PARTS = ("images", "prototypes")
LOCAL = "local"  # the owner key of private mode
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def check_name(value: str, what: str) -> str:
    """``value`` if it is a plain folder name (letters, digits, ``_ . -``; not ``.``/``..``), else ValueError."""
    if not isinstance(value, str) or not _NAME.fullmatch(value) or ".." in value:
        raise ValueError(f"{what} {value!r} is not a plain folder name")
    return value


def served_path(settings: AppSettings, path: str | Path | None, key: str = LOCAL) -> str | None:
    """The served copy, for the visitor with owner key ``key``, of an image file of a run under
    ``settings.runs_dir`` (made on first use): ``RUNS/_served/<key>/<run>/images|prototypes/...``."""
    if path is None:
        return None
    check_name(key, "owner key")
    src = Path(path).resolve()
    runs = settings.runs_dir
    try:
        rel = PurePosixPath(src.relative_to(runs).as_posix())
    except ValueError:
        raise ValueError(f"{path} is not inside the runs folder {runs}; not served") from None
    parts = rel.parts
    if len(parts) < 3 or parts[0].startswith("_") or parts[1] not in SERVED_PARTS or src.suffix.lower() != ".png":
        raise ValueError(f"{path} is not a run image; not served")
    dst = settings.served_dir / key / rel
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


def export_dir(settings: AppSettings, key: str, run_id: str) -> Path:
    """Where the visitor with owner key ``key`` exports run ``run_id``: ``RUNS/_exports/<key>/<run_id>``
    (not created here)."""
    return settings.exports_dir / check_name(key, "owner key") / check_name(run_id, "run id")


def file_url(path: str | Path) -> str:
    """The relative URL at which Gradio serves ``path`` (for an HTML ``<img src=...>``):
    ``gradio_api/file=`` + the absolute path, percent-encoded."""
    return "gradio_api/file=" + quote(str(Path(path).resolve()), safe="/")


def static_paths(settings: AppSettings) -> list[str]:
    return [str(settings.served_dir), str(settings.exports_dir)]


def blocked_paths(settings: AppSettings) -> list[str]:
    return [str(settings.uploads_dir)]
