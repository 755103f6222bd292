"""The run store: one folder per run, SQLite (WAL) for rows and PNG files for images.

Layout::

    RUN/run.sqlite            rows: run parameters, classes, prototypes, images, decisions, log
    RUN/images/c<label>/*.png every synthetic image and candidate
    RUN/prototypes/*.npy      prototypes in the generator's init space (for exact regeneration)

Every write goes through ``RunStore.transaction`` and is committed before the call returns, so a
killed process loses nothing already written. Images are written (to a temporary name, then
renamed) before the row that names them is committed, so a committed row always has its file.
One process at a time may write a run (``lock_for_writing``, an OS lock that dies with the process).

Fault injection: with ``CURATOR_CRASH_AFTER_COMMITS=N`` in its environment, a process SIGKILLs
itself right after its N-th commit (tests/test_crash.py kills a real run after every commit).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sqlite3
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from curator.config import RunConfig
from curator.errors import StoreError
from curator.scoring import GLOBAL_CENTRE  # the ``centres`` row of the mean over all classes' real features

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no OS lock
    fcntl = None

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS classes (
    label INTEGER PRIMARY KEY, name TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'pending',
    wall_seconds REAL);
CREATE TABLE IF NOT EXISTS prototypes (
    id INTEGER PRIMARY KEY, label INTEGER NOT NULL, idx INTEGER NOT NULL, file TEXT NOT NULL,
    preview TEXT NOT NULL, n_members INTEGER, UNIQUE(label, idx));
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY, label INTEGER NOT NULL, prototype_id INTEGER NOT NULL REFERENCES prototypes(id),
    kind TEXT NOT NULL CHECK (kind IN ('synthetic', 'candidate')),
    parent_id INTEGER REFERENCES images(id), round INTEGER NOT NULL, position INTEGER NOT NULL,
    seed INTEGER NOT NULL, file TEXT NOT NULL, confidence REAL, predicted INTEGER, reason TEXT,
    uniqueness REAL, score REAL, feature BLOB, created REAL NOT NULL,
    UNIQUE(kind, label, prototype_id, parent_id, round, position));
CREATE TABLE IF NOT EXISTS decisions (
    anomaly_id INTEGER PRIMARY KEY REFERENCES images(id),
    choice TEXT NOT NULL CHECK (choice IN ('candidate', 'original', 'drop', 'unresolved')),
    candidate_id INTEGER REFERENCES images(id), source TEXT NOT NULL CHECK (source IN ('auto', 'user')),
    decided REAL NOT NULL);
CREATE TABLE IF NOT EXISTS decision_log (
    id INTEGER PRIMARY KEY, anomaly_id INTEGER NOT NULL, before TEXT, after TEXT NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS real_features (
    id INTEGER PRIMARY KEY, label INTEGER NOT NULL, train_index INTEGER NOT NULL, feature BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS centres (label INTEGER PRIMARY KEY, feature BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS auto_picks (
    anomaly_id INTEGER PRIMARY KEY REFERENCES images(id), candidate_id INTEGER REFERENCES images(id));
CREATE INDEX IF NOT EXISTS images_by_label ON images(label, kind);
CREATE INDEX IF NOT EXISTS images_by_parent ON images(parent_id);
CREATE UNIQUE INDEX IF NOT EXISTS one_synthetic_per_prototype ON images(prototype_id, position)
    WHERE kind = 'synthetic';
"""

_CRASH_AFTER = int(os.environ.get("CURATOR_CRASH_AFTER_COMMITS") or 0)
_commits = 0


def _after_commit() -> None:
    """Fault injection for crash tests: SIGKILL this process right after its N-th commit."""
    global _commits
    if _CRASH_AFTER:
        _commits += 1
        if _commits >= _CRASH_AFTER:
            os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class Decision:
    anomaly_id: int
    choice: str  # candidate | original | drop | unresolved
    candidate_id: int | None
    source: str  # auto | user

    @classmethod
    def automatic(cls, anomaly_id: int, pick: int | None) -> Decision:
        """The pipeline's decision for its pick: keep candidate ``pick``, or unresolved when None."""
        return cls(anomaly_id, "candidate" if pick is not None else "unresolved", pick, "auto")

    def as_json(self) -> str:
        return json.dumps({"choice": self.choice, "candidate_id": self.candidate_id, "source": self.source})


# --- typed records: what the store returns (never sqlite3.Row) ---------------------------------
@dataclass(frozen=True)
class ClassRecord:
    label: int
    name: str
    status: str  # pending | running | done
    wall_seconds: float | None


@dataclass(frozen=True)
class PrototypeRecord:
    id: int
    label: int
    idx: int  # position in the class, 0 = the largest k-means cluster
    file: str  # latent .npy, relative to the run folder
    preview: str  # decoded PNG, relative to the run folder
    n_members: int | None


@dataclass(frozen=True)
class ImageRecord:
    """A synthetic image (``parent_id`` None) or a candidate of the anomaly ``parent_id``."""

    id: int
    label: int
    prototype_id: int
    kind: str  # synthetic | candidate
    parent_id: int | None
    round: int  # 0 for synthetic images, 1.. for candidate rounds
    position: int
    seed: int
    file: str  # PNG, relative to the run folder
    confidence: float  # detector probability of ``label``, in [0, 1]
    predicted: int
    reason: str | None  # label_mismatch | low_confidence | None (passed); synthetic images only
    uniqueness: float | None  # candidates, once scored
    score: float | None
    feature: np.ndarray | None  # raw detector feature [D] (float32)

    @property
    def is_anomaly(self) -> bool:
        return self.kind == "synthetic" and self.reason is not None


@dataclass(frozen=True)
class NewImage:
    """An image to store (``RunStore.add_images``): pixels [C, H, W] in [0, 1] and its inspection."""

    label: int
    prototype_id: int
    kind: str
    parent_id: int | None
    round: int
    position: int
    seed: int
    image: torch.Tensor
    confidence: float
    predicted: int
    reason: str | None
    feature: np.ndarray


@dataclass(frozen=True)
class Undone:
    """What ``undo_last`` reverted: the anomaly, the decision now in force (None = none) and the
    decision that was undone (``was``; None for logs written before it was kept). A bulk action
    is undone as one step: ``count`` is how many decisions it took back (the fields above describe
    the first anomaly of the batch)."""

    anomaly_id: int
    label: int
    now: Decision | None
    was: Decision | None = None
    count: int = 1


_IMAGE_COLUMNS = (
    "id, label, prototype_id, kind, parent_id, round, position, seed, file, confidence, predicted, reason, "
    "uniqueness, score, feature"
)


def _image(row) -> ImageRecord:
    return ImageRecord(*row[:14], from_blob(row[14]))


def _prototype(row) -> PrototypeRecord:
    return PrototypeRecord(*row)


def to_blob(a: np.ndarray) -> bytes:
    return np.asarray(a, dtype=np.float32).tobytes()


def from_blob(b: bytes | None) -> np.ndarray | None:
    return None if b is None else np.frombuffer(b, dtype=np.float32)


def save_png(image: torch.Tensor, path: Path) -> None:
    """Write an image [C, H, W] in [0, 1] as an 8-bit PNG (grayscale or RGB)."""
    arr = (image.detach().cpu().float().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    arr = arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(arr).save(tmp, format="PNG")
    tmp.replace(path)


def load_png(path: Path) -> torch.Tensor:
    arr = np.asarray(Image.open(path), dtype=np.float32) / 255.0
    return torch.from_numpy(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1).copy())


def _open_writer_lock(run_dir: Path) -> int:
    """The file descriptor of ``RUN/writer.lock`` (made when missing; never through a symlink)."""
    return os.open(Path(run_dir) / "writer.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)


def _flock(fd: int) -> bool:
    """Take the writer lock on ``fd`` without waiting; False when another holder has it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


@contextmanager
def writer_lock_if_free(run_dir: str | Path):
    """Yield True while holding a run's writer lock (taken without waiting), False when a writer
    holds it: for deleting a run that no job may be writing (no job can start meanwhile)."""
    if fcntl is None:  # pragma: no cover - not POSIX
        yield True
        return
    try:
        fd = _open_writer_lock(Path(run_dir))
    except OSError:
        yield False
        return
    try:
        yield _flock(fd)
    finally:
        os.close(fd)


def read_config(run_dir: str | Path) -> RunConfig:
    """A run's parameters, read without opening the run: SQLite's ``immutable`` mode takes no lock,
    makes no ``-wal``/``-shm`` file and changes no modification time (the sweep reads runs this way).
    Raises StoreError when the database cannot be read or holds no config."""
    db_file = Path(run_dir) / "run.sqlite"
    try:
        db = sqlite3.connect(db_file.resolve().as_uri() + "?immutable=1", uri=True)
        try:
            row = db.execute("SELECT value FROM meta WHERE key = 'config'").fetchone()
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read the run database {db_file}: {exc}") from exc
    if row is None:
        raise StoreError(f"{run_dir} has no config")
    return RunConfig.from_json(row[0])


class RunStore:
    """A run folder. ``RunStore.create`` starts one; ``RunStore.open`` reopens it."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock_fd: int | None = None
        db_file = self.path / "run.sqlite"
        self.db = sqlite3.connect(db_file, timeout=30, check_same_thread=False, isolation_level=None)
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.executescript(SCHEMA)
            if "batch" not in {r[1] for r in self.db.execute("PRAGMA table_info(decision_log)")}:
                # bulk actions (issue 18): the log rows one action wrote share a batch id, undone as one
                self.db.execute("ALTER TABLE decision_log ADD COLUMN batch INTEGER")
        except sqlite3.IntegrityError as exc:
            self.db.close()
            raise StoreError(
                f"run database {db_file} holds duplicate rows (two processes wrote it at once?): {exc}"
            ) from exc
        except sqlite3.DatabaseError as exc:
            self.db.close()
            raise StoreError(f"cannot read the run database {db_file}: {exc}") from exc

    # --- lifecycle -----------------------------------------------------------------------------
    @classmethod
    def create(cls, root: str | Path, config: RunConfig, class_names: list[str], run_id: str | None = None) -> RunStore:
        run_id = run_id or time.strftime("run-%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        path = Path(root) / run_id
        if (path / "run.sqlite").exists():
            raise StoreError(f"a run already exists at {path}")
        path.mkdir(parents=True, exist_ok=True)
        store = cls(path)
        with store.transaction():
            store._set_meta("id", run_id)
            store._set_meta("config", config.to_json())
            store._set_meta("class_names", json.dumps(class_names))
            store._set_meta("created", str(time.time()))
            store.db.executemany("INSERT INTO classes(label, name) VALUES (?, ?)", list(enumerate(class_names)))
        return store

    @classmethod
    def open(cls, path: str | Path) -> RunStore:
        path = Path(path)
        if not (path / "run.sqlite").is_file():
            raise StoreError(f"no run at {path} (expected {path / 'run.sqlite'})")
        store = cls(path)
        if store.meta("config") is None:
            store.close()
            raise StoreError(f"{path} is an incomplete run (killed while it was created); delete it and start again")
        return store

    def close(self) -> None:
        self.db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the writer lock
            self._lock_fd = None

    def lock_for_writing(self) -> None:
        """Take this run's writer lock (``RUN/writer.lock``), held until ``close`` or process exit.

        A second writer, in this process or another, gets a StoreError naming the holder. Readers
        need no lock (SQLite WAL lets them read while one process writes).
        """
        if self._lock_fd is not None:
            return
        if fcntl is None:  # pragma: no cover - not POSIX: no OS lock; the schema still refuses twins
            return
        fd = _open_writer_lock(self.path)
        if not _flock(fd):
            holder = os.read(fd, 300).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise StoreError(
                f"run {self.run_id} is being written by {holder}; wait for it to finish or stop it, then resume"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"process {os.getpid()} ({' '.join(sys.argv)[:200]})".encode())
        self._lock_fd = fd

    def transaction(self):
        return _Transaction(self.db, self.path)

    def check(self) -> list[str]:
        """What is wrong with this run (empty when consistent): SQLite's ``integrity_check``, then the
        project's rules: one synthetic image per prototype, every file present, finished classes
        complete (prototypes, synthesis, whole candidate rounds, a decision per anomaly), decisions
        that point at their anomaly's candidates, automatic decisions that keep the stored automatic
        pick, scored candidates in finished classes, real features and centres for every class."""
        problems = [f"integrity_check: {r[0]}" for r in self.db.execute("PRAGMA integrity_check") if r[0] != "ok"]
        cfg = self.config
        for c in self.classes():
            label, done = c.label, c.status == "done"
            protos, synth = self.prototypes(label), self.synthetic(label)
            if len({r.prototype_id for r in synth}) != len(synth):
                problems.append(f"class {label}: more than one synthetic image for a prototype")
            if done and (len(protos) != cfg.ipc or len(synth) != len(protos)):
                problems.append(f"class {label}: done with {len(protos)} prototypes and {len(synth)} synthetic images")
            for a in self.anomalies(label):
                cands = self.candidates(a.id)
                per_round = Counter(r.round for r in cands)
                if done and any(n != cfg.k for n in per_round.values()):
                    problems.append(f"anomaly {a.id}: a candidate round is incomplete ({dict(per_round)})")
                d = self.decision(a.id)
                if done and d is None:
                    problems.append(f"anomaly {a.id}: class {label} is done but the anomaly has no decision")
                if done and any(c.score is None for c in cands):
                    problems.append(f"anomaly {a.id}: class {label} is done but candidates are not scored")
                if d is not None and d.choice == "candidate" and d.candidate_id not in {r.id for r in cands}:
                    problems.append(f"anomaly {a.id}: decision names image {d.candidate_id}, not its candidate")
                auto = self.automatic_decision(a.id)
                if d is not None and d.source == "auto" and auto is not None and d != auto:
                    problems.append(f"anomaly {a.id}: automatic decision keeps {d.candidate_id}, the stored pick is "
                                    f"{auto.candidate_id}")  # fmt: skip
        files = [r[0] for r in self.db.execute("SELECT file FROM images UNION ALL SELECT file FROM prototypes")]
        files += [r[0] for r in self.db.execute("SELECT preview FROM prototypes")]
        problems += [f"missing file {f}" for f in files if not (self.path / f).is_file()]
        labels = {r[0] for r in self.db.execute("SELECT DISTINCT label FROM real_features")}
        if labels and labels != set(range(len(self.class_names))):
            problems.append(f"real features for classes {sorted(labels)} only")
        if labels and set(self.centres()) != labels | {GLOBAL_CENTRE}:
            problems.append("feature centres do not cover every class")
        return problems

    # --- meta ----------------------------------------------------------------------------------
    def _set_meta(self, key: str, value: str) -> None:
        self.db.execute(
            "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (key, value),
        )

    def meta(self, key: str, default: str | None = None) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction():
            self._set_meta(key, value)

    @property
    def run_id(self) -> str:
        return self.meta("id") or self.path.name

    @property
    def config(self) -> RunConfig:
        return RunConfig.from_json(self.meta("config"))

    @property
    def class_names(self) -> list[str]:
        return json.loads(self.meta("class_names"))

    # --- classes -------------------------------------------------------------------------------
    def class_status(self, label: int) -> str:
        return self.db.execute("SELECT status FROM classes WHERE label=?", (label,)).fetchone()[0]

    def set_class_status(self, label: int, status: str, wall_seconds: float | None = None) -> None:
        """Set a class's status; ``wall_seconds`` is added to the time it already has."""
        with self.transaction():
            self.db.execute(
                "UPDATE classes SET status=?, wall_seconds=CASE WHEN ? IS NULL THEN wall_seconds "
                "ELSE COALESCE(wall_seconds, 0) + ? END WHERE label=?",
                (status, wall_seconds, wall_seconds, label),
            )

    def classes(self) -> list[ClassRecord]:
        rows = self.db.execute("SELECT label, name, status, wall_seconds FROM classes ORDER BY label")
        return [ClassRecord(*r) for r in rows]

    # --- prototypes ----------------------------------------------------------------------------
    def add_prototype(self, label: int, idx: int, latent: torch.Tensor, preview: torch.Tensor, n_members: int) -> int:
        file = f"prototypes/c{label}_p{idx:03d}.npy"
        png = f"prototypes/c{label}_p{idx:03d}.png"
        (self.path / "prototypes").mkdir(exist_ok=True)
        with self.transaction():
            tmp = self.path / (file + ".tmp.npy")
            np.save(tmp, latent.cpu().numpy())
            tmp.replace(self.path / file)
            save_png(preview, self.path / png)
            self.db.execute(
                "INSERT INTO prototypes(label, idx, file, preview, n_members) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(label, idx) DO UPDATE SET file=excluded.file, preview=excluded.preview, "
                "n_members=excluded.n_members",
                (label, idx, file, png, n_members),
            )
            return self.db.execute("SELECT id FROM prototypes WHERE label=? AND idx=?", (label, idx)).fetchone()[0]

    _PROTOTYPE = "SELECT id, label, idx, file, preview, n_members FROM prototypes"

    def prototypes(self, label: int | None = None) -> list[PrototypeRecord]:
        """The prototypes of ``label`` (all classes when None), by class and index."""
        where, args = ("WHERE label=?", (label,)) if label is not None else ("", ())
        return [_prototype(r) for r in self.db.execute(f"{self._PROTOTYPE} {where} ORDER BY label, idx", args)]

    def prototype(self, prototype_id: int) -> PrototypeRecord:
        row = self.db.execute(f"{self._PROTOTYPE} WHERE id=?", (prototype_id,)).fetchone()
        if row is None:
            raise StoreError(f"run {self.run_id} has no prototype {prototype_id}")
        return _prototype(row)

    def prototype_latent(self, prototype: int | PrototypeRecord) -> torch.Tensor:
        p = prototype if isinstance(prototype, PrototypeRecord) else self.prototype(prototype)
        return torch.from_numpy(np.load(self.path / p.file))

    # --- images --------------------------------------------------------------------------------
    def add_images(self, images: Sequence[NewImage]) -> list[int]:
        """Store images and their rows in one transaction (PNG files first); returns the new ids."""
        ids = []
        with self.transaction():
            for im in images:
                tag = "s" if im.kind == "synthetic" else f"a{im.parent_id}_r{im.round}"
                file = f"images/c{im.label}/p{im.prototype_id}_{tag}_{im.position:02d}.png"
                save_png(im.image, self.path / file)
                cur = self.db.execute(
                    "INSERT INTO images(label, prototype_id, kind, parent_id, round, position, seed, file, "
                    "confidence, predicted, reason, feature, created) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        im.label, im.prototype_id, im.kind, im.parent_id, im.round, im.position, int(im.seed), file,
                        float(im.confidence), int(im.predicted), im.reason, to_blob(im.feature), time.time(),
                    ),
                )  # fmt: skip
                ids.append(int(cur.lastrowid))
        return ids

    def set_scores(self, scores: Sequence[tuple[int, float, float]]) -> None:
        """(image id, uniqueness, score) for many candidates, in one transaction."""
        with self.transaction():
            self.db.executemany(
                "UPDATE images SET uniqueness=?, score=? WHERE id=?",
                [(float(u), float(sc), int(i)) for i, u, sc in scores],
            )

    def image(self, image_id: int) -> ImageRecord:
        row = self.db.execute(f"SELECT {_IMAGE_COLUMNS} FROM images WHERE id=?", (image_id,)).fetchone()
        if row is None:
            raise StoreError(f"run {self.run_id} has no image {image_id}")
        return _image(row)

    def _images(self, where: str, args: tuple = (), order: str = "i.label, p.idx, i.position") -> list[ImageRecord]:
        cols = ", ".join(f"i.{c.strip()}" for c in _IMAGE_COLUMNS.split(","))
        q = f"SELECT {cols} FROM images i JOIN prototypes p ON p.id = i.prototype_id WHERE {where} ORDER BY {order}"
        return [_image(r) for r in self.db.execute(q, args)]

    def synthetic(self, label: int | None = None) -> list[ImageRecord]:
        """The initial images of ``label`` (all classes when None), in prototype order."""
        if label is None:
            return self._images("i.kind='synthetic'")
        return self._images("i.kind='synthetic' AND i.label=?", (label,))

    def anomalies(self, label: int | None = None) -> list[ImageRecord]:
        where = "i.kind='synthetic' AND i.reason IS NOT NULL"
        if label is None:
            return self._images(where)
        return self._images(where + " AND i.label=?", (label,))

    def candidate_scores(self) -> list[tuple[int, int, float, int, float | None]]:
        """(candidate id, anomaly id, confidence, predicted class, selection score) of every
        candidate, one query and no features or files (the review queue's doubt is computed from it)."""
        q = ("SELECT id, parent_id, confidence, predicted, score FROM images "
             "WHERE kind='candidate' ORDER BY parent_id, id")  # fmt: skip
        return self.db.execute(q).fetchall()

    def scores_fingerprint(self) -> tuple:
        """A cheap summary that changes when images are added or rescored, or an automatic pick
        changes (not when a person decides): the key of the review queue's doubt cache."""
        return tuple(self.db.execute(
            "SELECT (SELECT COUNT(*) FROM images), (SELECT MAX(id) FROM images), "
            "(SELECT TOTAL(score) FROM images WHERE kind='candidate'), (SELECT COUNT(*) FROM auto_picks), "
            "(SELECT TOTAL(COALESCE(candidate_id, -1) * anomaly_id) FROM auto_picks)"
        ).fetchone())  # fmt: skip

    def anomaly_rows(self) -> list[tuple[int, int, str]]:
        """(id, label, reason) of every anomaly in ``anomalies()`` order, one query without reading
        images or features (the review queue is built from it on every action)."""
        q = ("SELECT i.id, i.label, i.reason FROM images i JOIN prototypes p ON p.id = i.prototype_id "
             "WHERE i.kind='synthetic' AND i.reason IS NOT NULL ORDER BY i.label, p.idx, i.position")  # fmt: skip
        return [(int(i), int(lab), r) for i, lab, r in self.db.execute(q)]

    def candidates(self, anomaly_id: int) -> list[ImageRecord]:
        return self._images("i.parent_id=?", (anomaly_id,), order="i.round, i.position")

    def all_candidates(self) -> list[ImageRecord]:
        return self._images("i.kind='candidate'", order="i.id")

    def candidate_counts(self, label: int | None = None) -> dict[int, int]:
        """{anomaly id: number of candidates stored} for the anomalies of ``label`` (or all)."""
        q = "SELECT parent_id, COUNT(*) FROM images WHERE parent_id IS NOT NULL"
        args: tuple = ()
        if label is not None:
            q, args = q + " AND label=?", (label,)
        return dict(self.db.execute(q + " GROUP BY parent_id", args).fetchall())

    def delete_round(self, anomaly_id: int, round: int) -> None:
        """Drop a partly written round (a killed process), so it can be generated again whole."""
        with self.transaction():
            self.db.execute("DELETE FROM images WHERE parent_id=? AND round=?", (anomaly_id, round))

    def load_image(self, record: ImageRecord | PrototypeRecord) -> torch.Tensor:
        """The pixels [C, H, W] in [0, 1] of an image, or a prototype's decoded preview."""
        return load_png(self.path / (record.preview if isinstance(record, PrototypeRecord) else record.file))

    # --- decisions -----------------------------------------------------------------------------
    def decision(self, anomaly_id: int) -> Decision | None:
        row = self.db.execute(
            "SELECT anomaly_id, choice, candidate_id, source FROM decisions WHERE anomaly_id=?", (anomaly_id,)
        ).fetchone()
        return None if row is None else Decision(*row)

    def set_auto_picks(self, picks: Sequence[tuple[int, int | None]]) -> None:
        """The automatic selection's pick of each anomaly ((anomaly id, candidate id or None =
        unresolved)), stored whatever a person decided, so the app shows the pipeline's own pick."""
        with self.transaction():
            self.db.executemany(
                "INSERT INTO auto_picks(anomaly_id, candidate_id) VALUES (?, ?) "
                "ON CONFLICT(anomaly_id) DO UPDATE SET candidate_id=excluded.candidate_id",
                [(int(a), None if c is None else int(c)) for a, c in picks],
            )

    def auto_pick(self, anomaly_id: int) -> int | None:
        """The candidate the automatic selection picked for the anomaly (None: unresolved or not
        selected yet). Runs stored before picks were kept fall back to an automatic decision."""
        row = self.db.execute("SELECT candidate_id FROM auto_picks WHERE anomaly_id=?", (anomaly_id,)).fetchone()
        if row is not None:
            return row[0]
        d = self.decision(anomaly_id)
        return d.candidate_id if d is not None and d.source == "auto" else None

    def _rows_for(self, sql: str, anomaly_ids: Sequence[int] | None) -> list[tuple]:
        """``sql`` (a SELECT whose first column is ``anomaly_id``) for every row, or only for
        ``anomaly_ids`` (in chunks within SQLite's parameter limit): a class's view reads its own rows."""
        if anomaly_ids is None:
            return self.db.execute(sql).fetchall()
        ids, out = [int(a) for a in anomaly_ids], []
        where = " AND " if " WHERE " in sql else " WHERE "
        for i in range(0, len(ids), 900):
            chunk = ids[i : i + 900]
            out += self.db.execute(f"{sql}{where}anomaly_id IN ({','.join('?' * len(chunk))})", chunk).fetchall()
        return out

    def auto_picks(self, anomaly_ids: Sequence[int] | None = None) -> dict[int, int | None]:
        """Every stored automatic pick (or those of ``anomaly_ids``): {anomaly id: candidate id or
        None}, with ``auto_pick``'s fallback."""
        picks = dict(self._rows_for("SELECT anomaly_id, candidate_id FROM decisions WHERE source='auto'", anomaly_ids))
        picks.update(self._rows_for("SELECT anomaly_id, candidate_id FROM auto_picks", anomaly_ids))
        return picks

    def decisions(self, anomaly_ids: Sequence[int] | None = None) -> dict[int, Decision]:
        """Every decision of the run (or those of ``anomaly_ids``): {anomaly id: decision}."""
        rows = self._rows_for("SELECT anomaly_id, choice, candidate_id, source FROM decisions", anomaly_ids)
        return {r[0]: Decision(*r) for r in rows}

    def decide(self, decision: Decision, log: bool = True, batch: int | None = None) -> None:
        """Write a decision now (committed before returning) and append it to the undo log.

        ``batch``: the id of a bulk action this decision belongs to (``new_batch``); its log rows
        are undone together. Call it inside the bulk's own transaction so the batch is all or none."""
        with self.transaction():
            before = self.decision(decision.anomaly_id)
            self.db.execute(
                "INSERT INTO decisions(anomaly_id, choice, candidate_id, source, decided) VALUES (?,?,?,?,?) "
                "ON CONFLICT(anomaly_id) DO UPDATE SET choice=excluded.choice, candidate_id=excluded.candidate_id, "
                "source=excluded.source, decided=excluded.decided",
                (decision.anomaly_id, decision.choice, decision.candidate_id, decision.source, time.time()),
            )
            if log:
                self.db.execute(
                    "INSERT INTO decision_log(anomaly_id, before, after, at, batch) VALUES (?,?,?,?,?)",
                    (decision.anomaly_id, before.as_json() if before else None, decision.as_json(), time.time(), batch),
                )

    def new_batch(self) -> int:
        """A fresh bulk-action id for ``decide(batch=...)`` (one more than any logged)."""
        return int(self.db.execute("SELECT COALESCE(MAX(batch), 0) + 1 FROM decision_log").fetchone()[0])

    def automatic_decision(self, anomaly_id: int) -> Decision | None:
        """The pipeline's decision as its stored pick (``auto_picks``) now stands; None before the
        anomaly's class was selected (or in runs stored before picks were kept)."""
        row = self.db.execute("SELECT candidate_id FROM auto_picks WHERE anomaly_id=?", (anomaly_id,)).fetchone()
        return None if row is None else Decision.automatic(anomaly_id, row[0])

    def undo_last(self) -> Undone | None:
        """Revert the most recent logged decision, or the whole most recent bulk action (its log
        rows share a batch id), in one transaction; None when the log is empty.

        A person's earlier decision comes back as it was logged. An undo that returns the anomaly
        to the pipeline (the logged "before" was automatic, or there was none) restores the
        automatic pick as it stands now: a regenerate since the decision may have changed it.
        """
        with self.transaction():
            last = self.db.execute("SELECT id, batch FROM decision_log ORDER BY id DESC LIMIT 1").fetchone()
            if last is None:
                return None
            where, args = ("l.batch=?", (last[1],)) if last[1] is not None else ("l.id=?", (last[0],))
            rows = self.db.execute(
                "SELECT l.id, l.anomaly_id, l.before, l.after, i.label FROM decision_log l "
                f"JOIN images i ON i.id = l.anomaly_id WHERE {where} ORDER BY l.id DESC", args
            ).fetchall()  # fmt: skip
            undone = None
            for log_id, anomaly_id, before, after, label in rows:  # newest first: the first state comes back last
                was = Decision(anomaly_id, **json.loads(after)) if after else None
                self.db.execute("DELETE FROM decision_log WHERE id=?", (log_id,))
                d = Decision(anomaly_id, **json.loads(before)) if before else None
                if d is None or d.source == "auto":
                    d = self.automatic_decision(anomaly_id) or d  # runs without stored picks: the logged one
                if d is None:
                    self.db.execute("DELETE FROM decisions WHERE anomaly_id=?", (anomaly_id,))
                else:
                    self.decide(d, log=False)
                undone = Undone(anomaly_id, label, d, was, len(rows))
            return undone

    # --- real features (feature centre, UMAP) --------------------------------------------------
    def set_real_features(
        self, features: dict[int, tuple[np.ndarray, np.ndarray]], centres: dict[int, np.ndarray]
    ) -> None:
        """Replace every class's real-image features ({label: (train indices, features)}) and the
        feature centres ({label or GLOBAL_CENTRE: centre}) in one transaction: all or nothing."""
        with self.transaction():
            self.db.execute("DELETE FROM real_features")
            self.db.execute("DELETE FROM centres")
            self.db.executemany(
                "INSERT INTO real_features(label, train_index, feature) VALUES (?,?,?)",
                [(label, int(i), to_blob(f)) for label, (idx, feats) in features.items() for i, f in zip(idx, feats)],
            )
            self.db.executemany(
                "INSERT INTO centres(label, feature) VALUES (?,?)", [(k, to_blob(c)) for k, c in centres.items()]
            )

    def centres(self) -> dict[int, np.ndarray]:
        """The stored feature centres: {label: centre} plus ``GLOBAL_CENTRE`` (empty before the first run)."""
        return {r[0]: from_blob(r[1]) for r in self.db.execute("SELECT label, feature FROM centres").fetchall()}

    def real_features(self, label: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        q, args = "SELECT label, train_index, feature FROM real_features", ()
        if label is not None:
            q, args = q + " WHERE label=?", (label,)
        rows = self.db.execute(q + " ORDER BY id", args).fetchall()
        if not rows:
            return np.zeros(0, int), np.zeros(0, int), np.zeros((0, 0), np.float32)
        return (
            np.array([r[0] for r in rows]),
            np.array([r[1] for r in rows]),
            np.stack([from_blob(r[2]) for r in rows]),
        )


def _disk_full(exc: BaseException | None) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(exc, sqlite3.OperationalError) and "full" in str(exc)


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (or ``ROLLBACK`` on error); nested uses join the outer one.

    A full disk inside the outermost transaction rolls it back and becomes a StoreError: the run
    stays as it was at its last commit, ready to resume once there is space.
    """

    def __init__(self, db: sqlite3.Connection, path: Path):
        self.db = db
        self.path = path
        self.outer = False

    def __enter__(self):
        if not self.db.in_transaction:
            self.db.execute("BEGIN IMMEDIATE")
            self.outer = True
        return self.db

    def __exit__(self, exc_type, exc, tb):
        if self.outer:
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")
            if not exc_type:
                _after_commit()
            elif _disk_full(exc):
                raise StoreError(
                    f"disk full while writing run {self.path.name} ({exc}); nothing after its last commit was kept: "
                    f"free some space, then resume it (python -m curator run --resume {self.path})"
                ) from exc
        return False


# === evaluations (issue 19): students trained on a run's sets, kept with the run ===================
# A separate block: its tables are made on the first write (``_ensure_evaluation_tables``), so a run
# stored before they existed opens unchanged and simply has no evaluations. One ``evaluations`` row
# per (set content, protocol, student, temperature, epochs, flips); one ``evaluation_students`` row per
# finished student, committed when it finishes. Status is derived from these rows, never stored:
# an evaluation is complete only when every asked seed has its row.
EVALUATION_SCHEMA = """
CREATE TABLE IF NOT EXISTS evaluations (
    id INTEGER PRIMARY KEY, set_name TEXT NOT NULL, set_digest TEXT NOT NULL, protocol TEXT NOT NULL,
    student TEXT NOT NULL, temperature REAL NOT NULL, epochs INTEGER NOT NULL, flip INTEGER NOT NULL,
    seeds TEXT NOT NULL, n_train INTEGER NOT NULL, n_test INTEGER NOT NULL, class_names TEXT NOT NULL,
    created REAL NOT NULL, UNIQUE(set_name, set_digest, protocol, student, temperature, epochs, flip));
CREATE TABLE IF NOT EXISTS evaluation_students (
    evaluation_id INTEGER NOT NULL REFERENCES evaluations(id) ON DELETE CASCADE, seed INTEGER NOT NULL,
    accuracy REAL NOT NULL, confusion TEXT NOT NULL, seconds REAL NOT NULL, device TEXT NOT NULL,
    finished REAL NOT NULL, PRIMARY KEY(evaluation_id, seed));
"""


@dataclass(frozen=True, eq=False)  # eq: identity (a numpy field has no truth value)
class StudentRecord:
    """One trained and tested student: top-1 in [0, 1], the confusion matrix [true, predicted] of
    test-image counts, its training and testing time in seconds, and where it ran."""

    seed: int
    accuracy: float
    confusion: np.ndarray
    seconds: float
    device: str


@dataclass(frozen=True, eq=False)
class EvaluationRecord:
    """One evaluation of a run: a set (by name and content digest), a protocol (``hard`` or ``soft``;
    ``temperature`` 0 for hard), a student, the seeds asked, and the students finished so far."""

    id: int
    set_name: str
    set_digest: str
    protocol: str
    student: str
    temperature: float
    epochs: int
    flip: bool  # mirror flips in the augmentation
    seeds: tuple[int, ...]
    n_train: int
    n_test: int
    class_names: tuple[str, ...]
    students: tuple[StudentRecord, ...]  # finished, by seed

    @property
    def done_seeds(self) -> list[int]:
        return [s.seed for s in self.students]

    @property
    def missing_seeds(self) -> list[int]:
        done = set(self.done_seeds)
        return [s for s in self.seeds if s not in done]

    @property
    def status(self) -> str:
        """``complete`` when every asked seed has a finished student, else ``partial``."""
        return "partial" if self.missing_seeds else "complete"

    @property
    def accuracies(self) -> list[float]:
        return [s.accuracy for s in self.students]

    @property
    def mean(self) -> float:
        """Mean top-1 in [0, 1] over finished students (NaN when none)."""
        return float(np.mean(self.accuracies)) if self.students else float("nan")

    @property
    def std(self) -> float:
        """Population std (``np.std``) of top-1 over finished students (NaN when none)."""
        return float(np.std(self.accuracies)) if self.students else float("nan")

    @property
    def confusion(self) -> np.ndarray:
        """The finished students' confusion matrices, summed [true, predicted]."""
        k = len(self.class_names)
        return sum((s.confusion for s in self.students), np.zeros((k, k), dtype=np.int64))

    @property
    def per_class(self) -> np.ndarray:
        """Accuracy of each true class in [0, 1] over the finished students (NaN: no test image)."""
        c = self.confusion.astype(np.float64)
        rows = c.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(rows > 0, np.diag(c) / np.maximum(rows, 1), np.nan)

    @property
    def seconds(self) -> float:
        """Time of all finished students, in seconds."""
        return float(sum(s.seconds for s in self.students))


def _ensure_evaluation_tables(store: RunStore) -> None:
    """Make the tables once (``executescript`` commits, so never inside a transaction)."""
    if not _has_evaluation_tables(store):
        store.db.executescript(EVALUATION_SCHEMA)


def _has_evaluation_tables(store: RunStore) -> bool:
    row = store.db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='evaluation_students'").fetchone()
    return row is not None


def start_evaluation(
    store: RunStore, *, set_name: str, set_digest: str, protocol: str, student: str, temperature: float,
    epochs: int, seeds: Sequence[int], n_train: int, n_test: int, class_names: Sequence[str], flip: bool = False,
) -> int:  # fmt: skip
    """The id of the evaluation with this key, made if new; its asked seeds become the union of the
    stored ones and ``seeds`` (a resume or a request for more seeds keeps what is done)."""
    _ensure_evaluation_tables(store)
    key = (set_name, set_digest, protocol, student, float(temperature), int(epochs), int(bool(flip)))
    with store.transaction():
        row = store.db.execute(
            "SELECT id, seeds FROM evaluations WHERE set_name=? AND set_digest=? AND protocol=? AND student=? "
            "AND temperature=? AND epochs=? AND flip=?", key,
        ).fetchone()  # fmt: skip
        if row is None:
            cur = store.db.execute(
                "INSERT INTO evaluations(set_name, set_digest, protocol, student, temperature, epochs, flip, seeds, "
                "n_train, n_test, class_names, created) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (*key, json.dumps(sorted({int(s) for s in seeds})), int(n_train), int(n_test),
                 json.dumps(list(class_names)), time.time()),
            )  # fmt: skip
            return int(cur.lastrowid)
        merged = sorted(set(json.loads(row[1])) | {int(s) for s in seeds})
        store.db.execute("UPDATE evaluations SET seeds=? WHERE id=?", (json.dumps(merged), row[0]))
        return int(row[0])


def add_student_result(
    store: RunStore, evaluation_id: int, seed: int, accuracy: float, confusion: np.ndarray, seconds: float,
    device: str,
) -> None:  # fmt: skip
    """Record one finished student (committed before returning: a later kill keeps it)."""
    _ensure_evaluation_tables(store)
    with store.transaction():
        store.db.execute(
            "INSERT INTO evaluation_students(evaluation_id, seed, accuracy, confusion, seconds, device, finished) "
            "VALUES (?,?,?,?,?,?,?) ON CONFLICT(evaluation_id, seed) DO UPDATE SET accuracy=excluded.accuracy, "
            "confusion=excluded.confusion, seconds=excluded.seconds, device=excluded.device, "
            "finished=excluded.finished",
            (int(evaluation_id), int(seed), float(accuracy), json.dumps(np.asarray(confusion).astype(int).tolist()),
             float(seconds), str(device), time.time()),
        )  # fmt: skip


def evaluations(store: RunStore, evaluation_id: int | None = None) -> list[EvaluationRecord]:
    """The run's evaluations (oldest first), or the one with ``evaluation_id``; empty for a run
    stored before evaluations were kept (nothing is written by reading)."""
    if not _has_evaluation_tables(store):
        return []
    where, args = ("WHERE id=?", (evaluation_id,)) if evaluation_id is not None else ("", ())
    rows = store.db.execute(
        "SELECT id, set_name, set_digest, protocol, student, temperature, epochs, flip, seeds, n_train, n_test, "
        f"class_names FROM evaluations {where} ORDER BY id", args,
    ).fetchall()  # fmt: skip
    students: dict[int, list[StudentRecord]] = {}
    for eid, seed, acc, conf, secs, dev in store.db.execute(
        "SELECT evaluation_id, seed, accuracy, confusion, seconds, device FROM evaluation_students ORDER BY seed"
    ):
        students.setdefault(eid, []).append(StudentRecord(seed, acc, np.asarray(json.loads(conf), np.int64), secs, dev))
    return [
        EvaluationRecord(r[0], r[1], r[2], r[3], r[4], r[5], r[6], bool(r[7]), tuple(json.loads(r[8])), r[9], r[10],
                         tuple(json.loads(r[11])), tuple(students.get(r[0], ())))
        for r in rows
    ]  # fmt: skip


# --- the detector's class probabilities of each image (exported for soft labels) ----------------
# Written at inspection, in the transaction that stores the image; a run stored before has none
# (``image_probs`` returns what there is, and the export computes the rest with the run's detector).
IMAGE_PROBS_TABLE = (
    "CREATE TABLE IF NOT EXISTS image_probs (image_id INTEGER PRIMARY KEY REFERENCES images(id) ON DELETE CASCADE, "
    "probs BLOB NOT NULL)"
)


def set_image_probs(store: RunStore, probs: Sequence[tuple[int, np.ndarray]]) -> None:
    """Store (image id, softmax over the run's classes [K]) pairs, float32; joins an open transaction."""
    if not probs:
        return
    with store.transaction():
        store.db.execute(IMAGE_PROBS_TABLE)  # one statement: safe inside the caller's transaction
        store.db.executemany(
            "INSERT INTO image_probs(image_id, probs) VALUES (?, ?) "
            "ON CONFLICT(image_id) DO UPDATE SET probs=excluded.probs",
            [(int(i), to_blob(p)) for i, p in probs],
        )


def image_probs(store: RunStore, image_ids: Sequence[int]) -> dict[int, np.ndarray]:
    """{image id: stored class probabilities [K] (float32)} for those of ``image_ids`` that have them."""
    if store.db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='image_probs'").fetchone() is None:
        return {}
    wanted = [int(i) for i in image_ids]
    out: dict[int, np.ndarray] = {}
    for lo in range(0, len(wanted), 500):
        part = wanted[lo : lo + 500]
        q = f"SELECT image_id, probs FROM image_probs WHERE image_id IN ({','.join('?' * len(part))})"
        out.update({int(i): from_blob(b) for i, b in store.db.execute(q, part)})
    return out
