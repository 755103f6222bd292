"""Unpack an uploaded ImageFolder zip without letting any entry escape the target folder.

Rejected with a one-line ``DataError`` naming the problem, before anything is written: a file
that is not a zip or is corrupt, an entry with an absolute path or ``..`` (zip slip), a symbolic
link, and anything over a limit (``UploadLimits``, set on ``AppSettings`` or by environment
variables): the zip's own size, its number of entries, the sum of its entries' declared sizes,
and the pixel count of any image in it (read from the image's header). Sizes are also counted
while extracting, so a zip whose headers understate its contents stops at the limit (and Python's
CRC check rejects it). The ImageFolder root is the extracted folder, or its single top-level
folder when the zip wraps everything in one.

One upload is extracted once: the folder is named by the zip's content hash, and a second Start
with the same file reuses it. Extraction goes to a temporary folder renamed into place when
complete, so a failed extraction leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image, UnidentifiedImageError

from curator.data import DataError

MB = 2**20
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


@dataclass(frozen=True)
class UploadLimits:
    """Limits on an uploaded zip; each names the environment variable that sets it in the app."""

    max_upload_mb: int = 200  # the zip file itself (CURATOR_MAX_UPLOAD_MB)
    max_uncompressed_mb: int = 1024  # all entries together, unpacked (CURATOR_MAX_UNCOMPRESSED_MB)
    max_files: int = 100_000  # entries in the zip, folders included (CURATOR_MAX_FILES)
    max_image_pixels: int = 4096 * 4096  # width x height of any one image (CURATOR_MAX_IMAGE_PIXELS)


def _check_member(info: zipfile.ZipInfo, zip_name: str) -> None:
    name = info.filename.replace("\\", "/")
    parts = PurePosixPath(name).parts
    if name.startswith("/") or (parts and ":" in parts[0]) or ".." in parts:
        raise DataError(f"{zip_name}: entry {info.filename!r} would be written outside the upload folder; refused")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise DataError(f"{zip_name}: entry {info.filename!r} is a symbolic link; refused")


def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(MB), b""):
            h.update(chunk)
    return h.hexdigest()[:20]


def _check_limits(zf: zipfile.ZipFile, name: str, limits: UploadLimits) -> list[zipfile.ZipInfo]:
    infos = zf.infolist()
    if not any(not info.is_dir() for info in infos):
        raise DataError(f"{name} is empty: it holds no files; zip a folder of class folders (root/<class>/<image>)")
    if len(infos) > limits.max_files:
        raise DataError(f"{name} has {len(infos)} entries; the limit is {limits.max_files} (CURATOR_MAX_FILES)")
    total = 0
    for info in infos:
        _check_member(info, name)
        total += info.file_size
    if total > limits.max_uncompressed_mb * MB:
        raise DataError(
            f"{name} unpacks to {total / MB:.0f} MB; the limit is {limits.max_uncompressed_mb} MB "
            "(CURATOR_MAX_UNCOMPRESSED_MB)"
        )
    for info in infos:  # image sizes from their headers, before anything is decoded or written
        if info.is_dir() or PurePosixPath(info.filename).suffix.lower() not in IMAGE_SUFFIXES:
            continue
        try:
            with zf.open(info) as f, Image.open(f) as img:
                w, h = img.size
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            continue  # unreadable images are skipped (and counted) by the data loader
        if w * h > limits.max_image_pixels:
            raise DataError(
                f"{name}: {info.filename} is {w}x{h} = {w * h} pixels; the limit is {limits.max_image_pixels} "
                "pixels (CURATOR_MAX_IMAGE_PIXELS)"
            )
    return infos


def _extract(zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo], dest: Path, name: str, limits: UploadLimits) -> None:
    budget = limits.max_uncompressed_mb * MB
    written = 0
    root = dest.resolve()
    for info in infos:
        target = (dest / info.filename).resolve()
        if root not in target.parents and target != root:
            raise DataError(f"{name}: entry {info.filename!r} would be written outside the upload folder; refused")
        if info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(info) as src, open(target, "wb") as out:
            for chunk in iter(lambda: src.read(MB), b""):
                written += len(chunk)
                if written > budget:
                    raise DataError(
                        f"{name} unpacks to more than its entries declare, over {limits.max_uncompressed_mb} MB; "
                        f"the limit is {limits.max_uncompressed_mb} MB (CURATOR_MAX_UNCOMPRESSED_MB)"
                    )
                out.write(chunk)


def _image_folder_root(dest: Path) -> Path:
    root = dest
    while True:
        entries = [p for p in root.iterdir() if p.name not in ("__MACOSX",) and not p.name.startswith(".")]
        dirs = [p for p in entries if p.is_dir()]
        if len(dirs) == 1 and len(entries) == 1 and any(d.is_dir() for d in dirs[0].iterdir()):
            root = dirs[0]
        else:
            return root


def extract_image_folder(
    zip_path: str | Path, dest_root: str | Path, limits: UploadLimits | None = None
) -> tuple[Path, bool]:
    """Extract ``zip_path`` under ``dest_root`` (once per content); return (ImageFolder root, newly extracted)."""
    limits = limits or UploadLimits()
    zip_path = Path(zip_path)
    name = zip_path.name
    if not zip_path.is_file():
        raise DataError(f"uploaded file {name} was not found on the server; upload it again")
    size = zip_path.stat().st_size
    if size > limits.max_upload_mb * MB:  # before reading it at all
        raise DataError(f"{name} is {size / MB:.0f} MB; the limit is {limits.max_upload_mb} MB (CURATOR_MAX_UPLOAD_MB)")
    if not zipfile.is_zipfile(zip_path):
        raise DataError(f"{name} is not a zip file (or it is corrupt); upload a .zip of an ImageFolder")
    dest = Path(dest_root) / f"upload-{_file_hash(zip_path)}"
    if dest.is_dir():
        return _image_folder_root(dest), False
    tmp = Path(dest_root) / f".partial-{uuid.uuid4().hex[:10]}"
    try:
        with zipfile.ZipFile(zip_path) as zf:
            infos = _check_limits(zf, name, limits)
            tmp.mkdir(parents=True)
            _extract(zf, infos, tmp, name, limits)
        try:
            os.rename(tmp, dest)
        except OSError:
            if not dest.is_dir():  # not a concurrent extraction of the same file that won the rename
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            return _image_folder_root(dest), False
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, NotImplementedError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"{name} is corrupt or unreadable as a zip: {exc}") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _image_folder_root(dest), True
