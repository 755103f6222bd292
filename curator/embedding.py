"""UMAP of detector features for one run: fitted once per run with a fixed seed, cached, extended by transform.

Points (one row each in the returned frame):

* ``real``: the per-class sample of real training images kept in the store (``real_features``);
* ``prototype``: each class prototype's preview image, inspected by the detector (needs ``detector``);
* ``synthetic``: synthetic images that passed inspection;
* ``anomaly``: synthetic images flagged by the detector;
* ``candidate``: refinement candidates; ``pick``: the candidate chosen for its anomaly (auto or user).

Features are centred on the real-data mean and L2-normalised (``scoring.normalize_features``),
the same space uniqueness is computed in. The first call fits UMAP on every point present and
writes ``RUN/embedding/umap.npz`` (point keys and 2-D coordinates) and ``umap.pkl`` (the fitted
reducer; a run folder is trusted local data). Later calls read the cache and place only points the
cache lacks (new classes, regenerated candidates) with ``reducer.transform``: no refit, so the
picture does not jump. ``umap`` is imported lazily: its first use in a process compiles with
numba (about 15 s).
"""

from __future__ import annotations

import pickle
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from curator.scoring import normalize_features
from curator.store import RunStore

CACHE_DIR = "embedding"
COLUMNS = ["key", "kind", "status", "label", "class_name", "image_id", "x", "y", "confidence", "uniqueness", "score"]
_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


@dataclass
class Embedding:
    """The 2-D map of a run. ``fitted``: UMAP was fitted in this call; ``placed``: points added by transform."""

    frame: pd.DataFrame
    fitted: bool
    placed: int
    seconds: float


def _lock(path: Path) -> threading.Lock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(str(path.resolve()), threading.Lock())


def _status(kind: str, decision) -> str:
    """Colour-by-status value: passed / candidate for images, the decision state for anomalies."""
    if kind != "anomaly":
        return {"synthetic": "passed"}.get(kind, kind)
    if decision is None or decision.choice == "unresolved":
        return "unresolved"
    if decision.source == "user":
        return "overridden"
    return "resolved (auto)"


def collect_points(store: RunStore, detector=None) -> tuple[pd.DataFrame, np.ndarray]:
    """Every point of the run with its metadata, and its raw detector feature [N, D] (float32)."""
    names = store.class_names
    rows: list[dict] = []
    feats: list[np.ndarray] = []
    labels, indices, real = store.real_features()
    for lab, idx, f in zip(labels, indices, real):
        rows.append(dict(key=f"real:{lab}:{idx}", kind="real", status="real", label=int(lab), image_id=None))
        feats.append(f)
    if detector is not None:
        protos = store.prototypes()
        if protos:
            images = np.stack([store.load_image(p).numpy() for p in protos])
            import torch

            pf = detector.inspect(torch.from_numpy(images)).features
            for p, f in zip(protos, pf):
                rows.append(
                    dict(
                        key=f"proto:{p.id}",
                        kind="prototype",
                        status="prototype",
                        label=int(p.label),
                        image_id=None,
                    )
                )
                feats.append(f)
    decisions = store.decisions()
    picked = {d.candidate_id for d in decisions.values() if d.choice == "candidate"}
    images = sorted(store.synthetic() + store.all_candidates(), key=lambda r: r.id)
    for r in images:
        if r.kind == "synthetic":
            kind = "anomaly" if r.reason is not None else "synthetic"
        else:
            kind = "pick" if r.id in picked else "candidate"
        rows.append(
            dict(
                key=f"img:{r.id}",
                kind=kind,
                label=int(r.label),
                image_id=int(r.id),
                confidence=r.confidence,
                uniqueness=r.uniqueness,
                score=r.score,
                status="picked" if kind == "pick" else _status(kind, decisions.get(r.id)),
            )
        )
        feats.append(r.feature)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=COLUMNS), np.zeros((0, 0), np.float32)
    frame["class_name"] = [names[i] for i in frame.label]
    for col in ("confidence", "uniqueness", "score"):
        if col not in frame:
            frame[col] = np.nan
    center = real.mean(0) if len(real) else None
    return frame, normalize_features(np.stack(feats), center)


def _fit(features: np.ndarray, seed: int):
    import umap  # lazy: numba compiles on first use

    n = len(features)
    reducer = umap.UMAP(
        n_components=2,
        n_neighbors=max(2, min(15, n - 1)),
        min_dist=0.1,
        metric="euclidean",
        random_state=seed,
        n_jobs=1,  # a fixed random_state runs single-threaded anyway; saying so silences umap's warning
    )
    coords = reducer.fit_transform(features)
    return reducer, np.asarray(coords, dtype=np.float32)


def run_embedding(store: RunStore, detector=None, seed: int | None = None) -> Embedding:
    """The run's UMAP (see the module docstring). Raises ValueError with fewer than 4 points."""
    t0 = time.perf_counter()
    seed = store.config.seed if seed is None else seed
    frame, feats = collect_points(store, detector)
    if len(frame) < 4:
        raise ValueError(f"run {store.run_id} has {len(frame)} points to embed; run a class first")
    cache = store.path / CACHE_DIR
    npz, pkl = cache / "umap.npz", cache / "umap.pkl"
    with _lock(store.path):
        fitted, placed = False, 0
        known: dict[str, np.ndarray] = {}
        reducer = None
        if npz.is_file() and pkl.is_file():
            try:
                z = np.load(npz, allow_pickle=False)
                known = dict(zip(z["keys"].tolist(), z["xy"]))
                with open(pkl, "rb") as fh:
                    reducer = pickle.load(fh)
            except (OSError, ValueError, KeyError, pickle.UnpicklingError, EOFError, AttributeError):
                known, reducer = {}, None  # unreadable cache: fit again
        if reducer is None:
            reducer, xy = _fit(feats, seed)
            known = dict(zip(frame["key"].tolist(), xy))
            fitted = True
            cache.mkdir(exist_ok=True)
            with open(pkl.with_suffix(".tmp"), "wb") as fh:
                pickle.dump(reducer, fh)
            pkl.with_suffix(".tmp").replace(pkl)
        missing = [i for i, k in enumerate(frame["key"]) if k not in known]
        if missing:
            xy = np.asarray(reducer.transform(feats[missing]), dtype=np.float32)
            known.update(zip(frame["key"].iloc[missing].tolist(), xy))
            placed = len(missing)
        if fitted or placed:
            tmp = cache / "umap.tmp.npz"
            np.savez(tmp, keys=np.array(list(known), dtype=str), xy=np.stack(list(known.values())))
            tmp.replace(npz)
    xy = np.stack([known[k] for k in frame["key"]])
    frame["x"], frame["y"] = xy[:, 0], xy[:, 1]
    return Embedding(frame[COLUMNS], fitted, placed, time.perf_counter() - t0)


def warm_up(seed: int = 0) -> float:
    """Fit and transform a tiny random set once, so numba's compilation (about 30 s on one core) is
    paid before a user asks for a UMAP. Returns the seconds spent."""
    t0 = time.perf_counter()
    x = np.random.default_rng(seed).normal(size=(40, 8)).astype(np.float32)
    reducer, _ = _fit(x, seed)
    reducer.transform(x[:2] + 0.01)
    return time.perf_counter() - t0
