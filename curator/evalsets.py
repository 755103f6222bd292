"""The sets an evaluation compares, each built from a run store by one function (never re-derived).

    curated      the run's curated set as it stands, with the person's decisions (``review.final_set``)
    automatic    the pipeline's own set: passed originals plus the stored automatic pick of each
                 anomaly (``RunStore.auto_picks``), whatever a person decided; unresolved left out
    unrefined    the initial synthesis, one image per prototype, anomalies left in
    random_real  ``ipc`` random real training images per class (the run's IPC), drawn with a fixed
                 seed (the run's seed), so every evaluation of the run sees the same draw

All four cover the run's classes (its ``classes`` parameter, else all) and label images by index
into the run's class names, which are the dataset's. The run's dataset is read at the size and
channels of the run's images, split with the run's ``test_fraction`` and ``seed`` (``run_dataset``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from curator.data import DataError, Dataset, load_dataset
from curator.export import run_labels, unfinished_classes
from curator.review import final_set
from curator.store import ImageRecord, RunStore, StoreError

SETS = ("curated", "automatic", "unrefined", "random_real")
SET_TITLES = {
    "curated": "curated (with your decisions)",
    "automatic": "automatic (pipeline's picks)",
    "unrefined": "unrefined synthesis",
    "random_real": "random real",
}


@dataclass
class TrainSet:
    """Training images [N, C, H, W] in [0, 1], class indices, and what they are: ``ids`` are store
    image ids (synthetic sets) or training-split row indices (``random_real``)."""

    images: torch.Tensor
    labels: np.ndarray
    name: str = ""
    ids: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def digest(self) -> str:
        """12 hex digits naming the set's content (name, ids, labels): a changed decision changes it."""
        h = hashlib.sha1(self.name.encode())
        h.update(np.asarray(self.ids, dtype=np.int64).tobytes())
        h.update(np.asarray(self.labels, dtype=np.int64).tobytes())
        return h.hexdigest()[:12]


def check_set_names(names: list[str] | tuple[str, ...]) -> list[str]:
    """``names`` in ``SETS`` order, duplicates removed; a ConfigError names an unknown one."""
    from curator.errors import ConfigError

    unknown = [n for n in names if n not in SETS]
    if unknown or not names:
        raise ConfigError(f"unknown set(s) {unknown or names}: choose from {', '.join(SETS)}")
    return [s for s in SETS if s in names]


def finished_labels(store: RunStore) -> list[int]:
    """The run's classes; a StoreError names the unfinished ones (their sets are not final)."""
    missing = unfinished_classes(store)
    if missing:
        raise StoreError(
            f"run {store.run_id} has unfinished classes {', '.join(missing)}; resume the run to finish them "
            "before evaluating it"
        )
    return sorted(set(run_labels(store)))


def _from_rows(store: RunStore, name: str, rows: list[ImageRecord]) -> TrainSet:
    if not rows:  # e.g. every anomaly unresolved at IPC 1: an empty set, refused by ``evaluate_run``
        return TrainSet(torch.zeros(0, 1, 1, 1), np.zeros(0, np.int64), name)
    images = torch.stack([store.load_image(r) for r in rows])
    return TrainSet(images, np.asarray([r.label for r in rows], dtype=np.int64), name, tuple(r.id for r in rows))


def _curated_rows(store: RunStore) -> list[ImageRecord]:
    return [f.image for c in finished_labels(store) for f in final_set(store, c)]


def _automatic_rows(store: RunStore) -> list[ImageRecord]:
    picks = store.auto_picks()
    rows = []
    for c in finished_labels(store):
        for r in store.synthetic(c):
            if r.reason is None:
                rows.append(r)
            elif picks.get(r.id) is not None:
                rows.append(store.image(picks[r.id]))
    return rows


def _unrefined_rows(store: RunStore) -> list[ImageRecord]:
    return [r for c in finished_labels(store) for r in store.synthetic(c)]


_ROWS = {"curated": _curated_rows, "automatic": _automatic_rows, "unrefined": _unrefined_rows}


def curated_set(store: RunStore) -> TrainSet:
    """The curated set as it stands: passed originals, picked candidates, a person's decisions."""
    return _from_rows(store, "curated", _curated_rows(store))


def automatic_set(store: RunStore) -> TrainSet:
    """Passed originals plus the stored automatic pick of each anomaly; people's decisions ignored."""
    return _from_rows(store, "automatic", _automatic_rows(store))


def unrefined_set(store: RunStore) -> TrainSet:
    """The initial synthesis: every synthetic image, anomalies included."""
    return _from_rows(store, "unrefined", _unrefined_rows(store))


def current_digests(store: RunStore) -> dict[str, str]:
    """``TrainSet.digest`` of the run's synthetic sets as they stand now, from their image ids and
    labels only (no image is read), so a view can tell an evaluation of an earlier version of a set
    (before a person's later decisions, say) from one of the current set. ``random_real`` is left
    out: its draw is fixed by the run's seed. Empty while a class is unfinished."""
    try:
        finished_labels(store)
    except StoreError:
        return {}
    out = {}
    for name, rows_of in _ROWS.items():
        rows = rows_of(store)
        ids, labels = tuple(r.id for r in rows), np.asarray([r.label for r in rows], dtype=np.int64)
        out[name] = TrainSet(torch.zeros(0), labels, name, ids).digest
    return out


def review_changed_set(store: RunStore) -> bool | None:
    """Whether a person's decisions made the curated set differ from the automatic one (other
    images or labels, order aside); None while a class is unfinished."""
    try:
        finished_labels(store)
    except StoreError:
        return None

    def key(rows: list[ImageRecord]) -> list[tuple[int, int]]:
        return sorted((r.id, r.label) for r in rows)

    return key(_curated_rows(store)) != key(_automatic_rows(store))


def random_real(data: Dataset, ipc: int, seed: int, labels: list[int] | None = None) -> TrainSet:
    """``ipc`` random training images of each class in ``labels`` (default all), seeded. The draws are
    made for every class in order, so a class's draw does not depend on ``labels``."""
    rng = np.random.default_rng(seed)
    wanted = set(range(data.num_classes) if labels is None else labels)
    picked = []
    for c in range(data.num_classes):
        pool = data.train.class_indices(c)
        if len(pool) < ipc:
            raise DataError(f"class {data.class_names[c]!r} has {len(pool)} training images, fewer than IPC {ipc}")
        idx = np.sort(rng.choice(pool, ipc, replace=False))
        if c in wanted:
            picked.append(idx)
    idx = np.concatenate(picked) if picked else np.zeros(0, np.int64)
    return TrainSet(data.train.load(idx), data.train.labels[idx], "random_real", tuple(int(i) for i in idx))


def run_dataset(store: RunStore) -> Dataset:
    """The run's dataset at the size and channels of its images, split as the run split it."""
    cfg = store.config
    first = store.synthetic()
    if not first:
        raise StoreError(f"run {store.run_id} has no images yet; run it first")
    shape = store.load_image(first[0]).shape
    data = load_dataset(cfg.data, size=shape[-1], channels=shape[0], test_fraction=cfg.test_fraction, seed=cfg.seed)
    if list(data.class_names) != list(store.class_names):
        raise DataError(
            f"the dataset {cfg.data!r} now has classes {data.class_names}, not the run's {store.class_names}"
        )
    if len(data.test) == 0:
        raise DataError(f"the dataset {cfg.data!r} has an empty test split")
    return data


def random_real_set(store: RunStore, data: Dataset | None = None) -> TrainSet:
    """Random real images at the run's IPC, drawn with the run's seed, for the run's classes."""
    return random_real(data or run_dataset(store), store.config.ipc, store.config.seed, finished_labels(store))


def build_set(store: RunStore, name: str, data: Dataset | None = None) -> TrainSet:
    """The set called ``name`` (one of ``SETS``) of the run; ``data`` only for ``random_real``."""
    if name == "random_real":
        return random_real_set(store, data)
    builders = {"curated": curated_set, "automatic": automatic_set, "unrefined": unrefined_set}
    if name not in builders:
        check_set_names([name])
    return builders[name](store)
