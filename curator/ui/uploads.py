"""Unpack an uploaded ImageFolder zip without letting any entry escape the target folder.

Rejected with a ``DataError`` naming the problem: a file that is not a zip or is corrupt, an
entry with an absolute path or ``..`` (zip slip), a symbolic link, more than ``max_files``
entries, or more than ``max_bytes`` uncompressed (zip bombs). The ImageFolder root is the
extracted folder, or its single top-level folder when the zip wraps everything in one.
"""

from __future__ import annotations

import shutil
import stat
import uuid
import zipfile
from pathlib import Path, PurePosixPath

from curator.data import DataError


def _check_member(info: zipfile.ZipInfo, zip_name: str) -> None:
    name = info.filename.replace("\\", "/")
    parts = PurePosixPath(name).parts
    if name.startswith("/") or (parts and ":" in parts[0]) or ".." in parts:
        raise DataError(f"{zip_name}: entry {info.filename!r} would be written outside the upload folder; refused")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise DataError(f"{zip_name}: entry {info.filename!r} is a symbolic link; refused")


def extract_image_folder(
    zip_path: str | Path, dest_root: str | Path, max_bytes: int = 500 * 2**20, max_files: int = 200_000
) -> Path:
    """Extract ``zip_path`` into a new folder under ``dest_root``; return the ImageFolder root."""
    zip_path = Path(zip_path)
    name = zip_path.name
    if not zip_path.is_file():
        raise DataError(f"uploaded file {name} was not found on the server; upload it again")
    if not zipfile.is_zipfile(zip_path):
        raise DataError(f"{name} is not a zip file (or it is corrupt); upload a .zip of an ImageFolder")
    dest = Path(dest_root) / f"upload-{uuid.uuid4().hex[:10]}"
    try:
        with zipfile.ZipFile(zip_path) as zf:
            infos = zf.infolist()
            if len(infos) > max_files:
                raise DataError(f"{name} has {len(infos)} entries; the limit is {max_files}")
            total = 0
            for info in infos:
                _check_member(info, name)
                total += info.file_size
            if total > max_bytes:
                raise DataError(f"{name} unpacks to {total / 2**20:.0f} MB; the limit is {max_bytes / 2**20:.0f} MB")
            bad = zf.testzip()
            if bad is not None:
                raise DataError(f"{name} is corrupt: entry {bad!r} fails its CRC check")
            dest.mkdir(parents=True)
            for info in infos:
                target = (dest / info.filename).resolve()
                if dest.resolve() not in target.parents and target != dest.resolve():
                    raise DataError(f"{name}: entry {info.filename!r} would be written outside the upload folder")
                zf.extract(info, dest)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, NotImplementedError) as exc:
        shutil.rmtree(dest, ignore_errors=True)
        raise DataError(f"{name} is corrupt or unreadable as a zip: {exc}") from exc
    except DataError:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    root = dest
    while True:
        entries = [p for p in root.iterdir() if p.name not in ("__MACOSX",) and not p.name.startswith(".")]
        dirs = [p for p in entries if p.is_dir()]
        if len(dirs) == 1 and len(entries) == 1 and any(d.is_dir() for d in dirs[0].iterdir()):
            root = dirs[0]
        else:
            return root
