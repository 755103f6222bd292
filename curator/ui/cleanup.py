"""Public mode's housekeeping: old runs, uploads and exports are deleted, and disk use is capped.

``sweep(settings)`` deletes, in public mode only (private mode deletes nothing):

* every run folder (a folder of the runs folder holding ``run.sqlite``) whose last activity (the
  newest modification time of ``run.sqlite``, ``run.sqlite-wal`` and the folder) is older than
  ``settings.max_age_hours``, with its served images (``_served/*/<run>``) and exports
  (``_exports/*/<run>``);
* uploads (``_uploads/*``) and exports (``_exports/*/*``) older than that; an upload a remaining
  run reads its data from counts as active as that run;
* served images of runs that no longer exist;
* then, while everything together (runs, uploads, exports, served; hard links counted once) is
  over ``settings.disk_cap_mb``, the least recently active of those, oldest first, except what was
  active in the last ``GRACE_S`` seconds.

A run whose writer lock (``RUN/writer.lock``, see ``RunStore.lock_for_writing``) is held by a job
is never deleted: the sweep takes that lock itself, without waiting, and holds it while it deletes,
so a job cannot start on a run that is going away. Nothing outside the runs folder, and not
``RUNS/_secret``, is ever touched. ``start_sweeper(settings)`` runs the sweep in a daemon thread
every ``settings.sweep_interval_s`` and logs what it removed.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from curator.errors import StoreError
from curator.store import read_config, writer_lock_if_free
from curator.ui.resources import AppSettings

log = logging.getLogger("curator.ui.cleanup")

GRACE_S = 300.0  # the disk cap spares what was active this recently
RUN_FILES = ("run.sqlite", "run.sqlite-wal")


@dataclass
class SweepReport:
    """What one sweep did: the paths removed, the bytes that freed, the runs kept because a job holds them."""

    removed: list[Path] = field(default_factory=list)
    bytes_freed: int = 0
    kept_busy: list[Path] = field(default_factory=list)


@dataclass
class _Unit:
    """Something deleted as a whole: a run with its served images and exports, an upload, an export."""

    paths: list[Path]
    activity: float
    run: Path | None = None  # a run: deleted under its writer lock
    stamp: float = 0.0  # a run: the newest mtime of its database files when listed


# --- sizes and times -------------------------------------------------------------------------------


def _mtime(path: Path) -> float | None:
    try:
        return path.lstat().st_mtime
    except OSError:
        return None


def _newest(paths) -> float:
    times = [t for t in map(_mtime, paths) if t is not None]
    return max(times, default=0.0)


def run_activity(run: Path) -> float:
    """When a run was last active: the newest mtime of ``run.sqlite``, ``run.sqlite-wal`` and its folder."""
    return _newest([run, *(run / f for f in RUN_FILES)])


def _entry_activity(path: Path) -> float:
    """An upload's or export's last change: the newest mtime of it and what lies directly in it."""
    paths = [path]
    if path.is_dir() and not path.is_symlink():
        try:
            paths += list(path.iterdir())
        except OSError:
            pass
    return _newest(paths)


def _stats(path: Path) -> list[os.stat_result]:
    """The lstat of every file (not folder) under ``path``, links not followed."""
    try:
        st = path.lstat()
    except OSError:
        return []
    if not stat.S_ISDIR(st.st_mode):
        return [st]
    out = []
    for root, dirs, files in os.walk(path):
        for name in files + dirs:
            try:
                s = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if not stat.S_ISDIR(s.st_mode):
                out.append(s)
    return out


def _inodes(path: Path) -> dict[tuple[int, int], int]:
    """(device, inode) -> size of every file under ``path``: hard links counted once."""
    return {(s.st_dev, s.st_ino): s.st_size for s in _stats(path)}


def _freed(path: Path) -> int:
    """Bytes deleting ``path`` frees: files whose every hard link lies under it."""
    seen: dict[tuple[int, int], list] = {}
    for s in _stats(path):
        entry = seen.setdefault((s.st_dev, s.st_ino), [s.st_size, s.st_nlink, 0])
        entry[2] += 1
    return sum(size for size, nlink, count in seen.values() if count >= nlink)


# --- what is there -------------------------------------------------------------------------------


def _children(folder: Path, hidden: bool = False) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if hidden or not p.name.startswith("."))
    except OSError:
        return []


def _runs(settings: AppSettings) -> list[Path]:
    return [
        p
        for p in _children(settings.runs_dir)
        if not p.name.startswith("_") and not p.is_symlink() and (p / "run.sqlite").is_file()
    ]


def _per_key(folder: Path) -> list[Path]:
    """``folder/<key>/<run>`` entries (served images, exports)."""
    return [e for key in _children(folder) if key.is_dir() and not key.is_symlink() for e in _children(key)]


def _upload_of_run(run: Path, settings: AppSettings) -> str | None:
    """The ``_uploads`` entry a run reads its data from, or None (built-in data, a server folder).
    Raises StoreError/OSError/ValueError when the run's config cannot be read (``store.read_config``:
    no lock, no file made, no mtime changed)."""
    data = read_config(run).data or ""
    if data == "mnist5k":
        return None
    try:
        rel = Path(data).resolve().relative_to(settings.uploads_dir)
    except ValueError:
        return None
    return rel.parts[0] if rel.parts else None


# --- deleting --------------------------------------------------------------------------------------


def _inside_runs(path: Path, settings: AppSettings) -> bool:
    parent = path.parent.resolve()
    return parent == settings.runs_dir or settings.runs_dir in parent.parents


def _remove(path: Path, settings: AppSettings, report: SweepReport) -> None:
    if not _inside_runs(path, settings) or path.resolve() == settings.secret_file.resolve():
        raise RuntimeError(f"refusing to delete {path}: not inside the runs folder {settings.runs_dir}")
    size = _freed(path)
    try:
        if path.is_symlink() or not path.is_dir():
            path.unlink()
        else:
            shutil.rmtree(path)
    except FileNotFoundError:
        return
    report.removed.append(path)
    report.bytes_freed += size


def _delete(unit: _Unit, settings: AppSettings, report: SweepReport) -> bool:
    """Delete a unit (a run only under its writer lock); False when a job holds the run."""
    if unit.run is None:
        for p in unit.paths:
            _remove(p, settings, report)
        return True
    with writer_lock_if_free(unit.run) as free:
        if not free or _newest(unit.run / f for f in RUN_FILES) > unit.stamp:  # a job holds it, or wrote meanwhile
            report.kept_busy.append(unit.run)
            return False
        for p in unit.paths:
            _remove(p, settings, report)
    return True


def _prune_empty(folder: Path, cutoff: float, settings: AppSettings, report: SweepReport) -> None:
    """Remove empty ``<key>`` folders under ``folder`` that have not changed since ``cutoff``."""
    for key in _children(folder):
        if key.is_dir() and not key.is_symlink() and (_mtime(key) or 0) < cutoff and not any(key.iterdir()):
            try:
                key.rmdir()
            except OSError:
                continue
            report.removed.append(key)


# --- the sweep -------------------------------------------------------------------------------------


def sweep(settings: AppSettings, now: float | None = None) -> SweepReport:
    """Delete old runs, uploads and exports, then the least recently active beyond the disk cap
    (public mode only; private mode returns an empty report and deletes nothing)."""
    report = SweepReport()
    if not settings.public:
        return report
    now = time.time() if now is None else now
    cutoff = now - settings.max_age_hours * 3600
    served, exports = _per_key(settings.served_dir), _per_key(settings.exports_dir)

    runs: dict[str, _Unit] = {}
    for run in _runs(settings):
        extras = [p for p in served + exports if p.name == run.name]
        runs[run.name] = _Unit([run, *extras], run_activity(run), run, _newest(run / f for f in RUN_FILES))
    uploads = {p.name: _Unit([p], _entry_activity(p)) for p in _children(settings.uploads_dir, hidden=True)}

    # 1. runs past the age limit, with their served images and exports
    for name, unit in list(runs.items()):
        if unit.activity < cutoff:
            if _delete(unit, settings, report):
                del runs[name]
            else:
                unit.activity = now  # busy: counts as active now
    # 2. an upload is as active as the newest run that reads it; unreadable configs keep every upload
    used: dict[str, float] = {}
    unknown = False
    for unit in runs.values():
        try:
            entry = _upload_of_run(unit.run, settings)
        except (OSError, StoreError, ValueError, AttributeError):
            unknown = True
            continue
        if entry is not None:
            used[entry] = max(used.get(entry, 0.0), unit.activity)
    for name, unit in uploads.items():
        unit.activity = max(unit.activity, used.get(name, 0.0), now if unknown else 0.0)
    for name, unit in list(uploads.items()):
        if unit.activity < cutoff:
            _delete(unit, settings, report)
            del uploads[name]
    # 3. exports past the age limit (of runs that remain; the others went with their run), and
    #    served images of runs that no longer exist
    loose: list[_Unit] = []
    for p in exports:
        if p.name in runs or not p.exists():
            continue
        unit = _Unit([p], _entry_activity(p))
        if unit.activity < cutoff:
            _delete(unit, settings, report)
        else:
            loose.append(unit)
    for p in exports:
        if p.name in runs and p.exists() and _entry_activity(p) < cutoff:
            _delete(_Unit([p], 0.0), settings, report)
            runs[p.name].paths.remove(p)
    for p in served:
        if p.name not in runs and p.exists():
            _delete(_Unit([p], 0.0), settings, report)
    _prune_empty(settings.served_dir, cutoff, settings, report)
    _prune_empty(settings.exports_dir, cutoff, settings, report)

    # 4. the disk cap: least recently active first
    cap = settings.disk_cap_mb * 2**20
    units = [*runs.values(), *uploads.values(), *loose]
    sizes = {id(u): _unit_inodes(u) for u in units}
    everything: dict[tuple[int, int], int] = {}
    for folder in (settings.served_dir, settings.exports_dir, settings.uploads_dir):
        everything.update(_inodes(folder))
    for u in runs.values():
        everything.update(_inodes(u.run))
    total = sum(everything.values())
    if total > cap:
        for unit in sorted(units, key=lambda u: u.activity):
            if total <= cap:
                break
            if unit.activity > now - GRACE_S:
                continue
            if _delete(unit, settings, report):
                total -= sum(sizes[id(unit)].values())
        if total > cap:
            log.warning("runs folder holds %.0f MB, over the cap of %d MB: the rest is in use", total / 2**20,
                        settings.disk_cap_mb)  # fmt: skip
    return report


def _unit_inodes(unit: _Unit) -> dict[tuple[int, int], int]:
    out: dict[tuple[int, int], int] = {}
    for p in unit.paths:
        out.update(_inodes(p))
    return out


def start_sweeper(settings: AppSettings) -> threading.Thread | None:
    """A daemon thread sweeping now and then every ``settings.sweep_interval_s``; None in private mode.
    ``thread.stop()`` ends it."""
    if not settings.public:
        return None
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                report = sweep(settings)
                for path in report.removed:
                    log.info("removed %s", path)
                if report.removed:
                    log.info("sweep freed %.1f MB (%d paths)", report.bytes_freed / 2**20, len(report.removed))
                for path in report.kept_busy:
                    log.info("kept %s: a job is writing it", path)
            except Exception:  # noqa: BLE001 - the sweeper keeps going
                log.exception("sweep of %s failed", settings.runs_dir)
            stop.wait(settings.sweep_interval_s)

    thread = threading.Thread(target=loop, name="curator-sweeper", daemon=True)
    thread.stop = stop.set  # type: ignore[attr-defined]
    thread.start()
    return thread
