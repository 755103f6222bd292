"""UMAP of detector features for one run: fitted once per run with a fixed seed, cached, extended by transform.

Points (one row each in the returned frame):

* ``real``: the per-class sample of real training images kept in the store (``real_features``);
* ``prototype``: each class prototype's preview image, inspected by the detector (needs ``detector``);
* ``synthetic``: synthetic images that passed inspection;
* ``anomaly``: synthetic images flagged by the detector;
* ``candidate``: refinement candidates; ``pick``: the candidate chosen for its anomaly (auto or user).

Features are centred on the real-data mean and L2-normalised (``scoring.normalize_features``),
the same space uniqueness is computed in. The run view keeps at most ``MAX_RUN_REAL`` real points
and ``MAX_RUN_PROTOTYPES`` prototypes (seeded samples: at 1,000 classes they would be half the map).
The first call fits UMAP on at most ``MAX_FIT`` points (every point up to that; above it a seeded
sample, so the first fit stays within seconds at ImageNet's size), places the rest with
``reducer.transform`` and writes ``RUN/embedding/umap.npz`` (point keys and 2-D coordinates) and
``umap.pkl`` (the fitted reducer; a run folder is trusted local data). Later calls read the cache
and place only points the cache lacks (new classes, regenerated candidates) with
``reducer.transform``: no refit, so the picture does not jump. ``umap`` is imported lazily: its
first use in a process compiles with numba (about 15 s).

``class_embedding`` draws one class alone (its real sample, prototypes, synthetic images,
anomalies, candidates and picks) in the same feature space: detector features separate classes so
well that the run view is ten tight blobs, while a class view shows where a pick sits among its
class's real images and the other candidates. It is small, so it is refitted whenever its points
change (see its docstring).
"""

from __future__ import annotations

import os
import pickle
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from curator.review import decision_state
from curator.scoring import normalize_features
from curator.store import GLOBAL_CENTRE, RunStore

CACHE_DIR = "embedding"
COLUMNS = [
    "key",
    "kind",
    "status",
    "label",
    "class_name",
    "image_id",
    "x",
    "y",
    "confidence",
    "uniqueness",
    "score",
    "file",  # run-relative image file (a prototype's preview); "" for real images (no file in the run)
    "anomaly_id",  # an anomaly's own id, a candidate's or pick's anomaly; NaN otherwise
]
PCA_BELOW = 15  # a class view with fewer points is drawn with PCA (UMAP needs a neighbourhood)
MAX_CLASS_REAL = 300  # real images in a class view at most (a deterministic sample), so a fit stays fast
MAX_RUN_REAL = 5000  # real images in the run view at most (a seeded sample)
MAX_RUN_PROTOTYPES = 2000  # prototypes in the run view at most (a seeded sample; 10 a class at 1,000 classes)
MAX_FIT = 5000  # points the run view's UMAP is fitted on at most; the others are placed by transform
_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


@dataclass
class Embedding:
    """The 2-D map of a run or a class. ``fitted``: fitted in this call, on ``fit_points`` points;
    ``placed``: points added by transform; ``method``: "umap" or "pca" (small class views)."""

    frame: pd.DataFrame
    fitted: bool
    placed: int
    seconds: float
    method: str = "umap"
    fit_points: int = 0


def _lock(path: Path) -> threading.Lock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(str(path.resolve()), threading.Lock())


def _status(kind: str, decision, pick: int | None = None) -> str:
    """Colour-by-status value: passed / candidate for images; for anomalies the decision state the
    review panel shows (``review.decision_state``: auto, accepted, overridden, kept original, dropped,
    unresolved)."""
    if kind != "anomaly":
        return {"synthetic": "passed"}.get(kind, kind)
    return decision_state(decision, pick)


def _global_centre(store: RunStore) -> np.ndarray | None:
    """The mean of every class's stored real features (what the run view centres on), read from the
    stored centres; recomputed from the real features for a run that has no centres stored."""
    centre = store.centres().get(GLOBAL_CENTRE)
    if centre is not None:
        return centre
    real = store.real_features()[2]
    return real.mean(0) if len(real) else None


def _images(store: RunStore, label: int | None) -> list:
    """Synthetic images and candidates of one class (every class when None), by id."""
    if label is None:
        return sorted(store.synthetic() + store.all_candidates(), key=lambda r: r.id)
    synth = store.synthetic(label)
    return sorted(synth + [c for a in synth if a.is_anomaly for c in store.candidates(a.id)], key=lambda r: r.id)


def _prototype_features(store: RunStore, detector, protos: list) -> np.ndarray:
    """The detector's features [N, D] of the prototypes' previews, cached by prototype id in
    ``RUN/embedding/prototypes.npz`` (a stored prototype never changes), so a map drawn again
    inspects only prototypes it has not seen: at 1,000 classes, 10,000 previews read and inspected
    on every call otherwise."""
    path = store.path / CACHE_DIR / "prototypes.npz"
    known: dict[int, np.ndarray] = {}
    if path.is_file():
        try:
            z = np.load(path, allow_pickle=False)
            known = dict(zip(z["ids"].tolist(), z["features"]))
        except (OSError, ValueError, KeyError, EOFError):
            known = {}  # unreadable cache: inspect again
    missing = [p for p in protos if p.id not in known]
    if missing:
        import torch

        images = np.stack([store.load_image(p).numpy() for p in missing])
        known.update(zip([p.id for p in missing], detector.inspect(torch.from_numpy(images)).features))
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_name(f"prototypes.{os.getpid()}.{threading.get_ident()}.tmp.npz")
        np.savez(tmp, ids=np.array(list(known), dtype=np.int64), features=np.stack(list(known.values())))
        tmp.replace(path)
    return np.stack([known[p.id] for p in protos])


def collect_points(
    store: RunStore, detector=None, label: int | None = None, max_prototypes: int | None = None, seed: int = 0
) -> tuple[pd.DataFrame, np.ndarray]:
    """Every point of the run (of class ``label`` only, when given) with its metadata, and its
    normalised detector feature [N, D] (float32), centred on the mean real feature of all classes.
    ``max_prototypes``: at most that many prototypes (a seeded sample, in stored order), chosen
    before any preview is read."""
    names = store.class_names
    rows: list[dict] = []
    feats: list[np.ndarray] = []
    labels, indices, real = store.real_features(label)
    for lab, idx, f in zip(labels, indices, real):
        rows.append(dict(key=f"real:{lab}:{idx}", kind="real", status="real", label=int(lab), image_id=None, file=""))
        feats.append(f)
    if detector is not None:
        protos = store.prototypes(label)
        if max_prototypes is not None and len(protos) > max_prototypes:
            keep = np.sort(np.random.default_rng(seed).choice(len(protos), max_prototypes, replace=False))
            protos = [protos[i] for i in keep]
        if protos:
            pf = _prototype_features(store, detector, protos)
            for p, f in zip(protos, pf):
                rows.append(
                    dict(
                        key=f"proto:{p.id}",
                        kind="prototype",
                        status="prototype",
                        label=int(p.label),
                        image_id=None,
                        file=p.preview,
                    )
                )
                feats.append(f)
    decisions, picks = store.decisions(), store.auto_picks()
    picked = {d.candidate_id for d in decisions.values() if d.choice == "candidate"}
    for r in _images(store, label):
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
                status="picked" if kind == "pick" else _status(kind, decisions.get(r.id), picks.get(r.id)),
                file=r.file,
                anomaly_id=int(r.id) if kind == "anomaly" else r.parent_id,
            )
        )
        feats.append(r.feature)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=COLUMNS), np.zeros((0, 0), np.float32)
    frame["class_name"] = [names[i] for i in frame.label]
    for col in ("confidence", "uniqueness", "score", "anomaly_id"):
        if col not in frame:
            frame[col] = np.nan
    frame["anomaly_id"] = frame["anomaly_id"].astype(float)  # None (no anomaly) becomes NaN, like image_id
    if label is None:
        center = real.mean(0) if len(real) else None
    else:
        center = _global_centre(store)
    return frame, normalize_features(np.stack(feats), center)


def _fit(features: np.ndarray, seed: int, n_neighbors: int | None = None, n_epochs: int | None = None):
    import umap  # lazy: numba compiles on first use

    n = len(features)
    reducer = umap.UMAP(
        n_components=2,
        n_neighbors=n_neighbors or max(2, min(15, n - 1)),
        min_dist=0.1,
        metric="euclidean",
        random_state=seed,
        n_jobs=1,  # a fixed random_state runs single-threaded anyway; saying so silences umap's warning
        n_epochs=n_epochs,
    )
    coords = reducer.fit_transform(features)
    return reducer, np.asarray(coords, dtype=np.float32)


def _pca(features: np.ndarray) -> np.ndarray:
    """The first two principal components [N, 2] (numpy SVD), each signed so that its largest
    loading is positive (deterministic); zeros where there are fewer components."""
    x = np.asarray(features, dtype=np.float64)
    x = x - x.mean(0)
    xy = np.zeros((len(x), 2), np.float32)
    if len(x) < 2:
        return xy
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    k = min(2, len(s))
    signs = np.sign(vt[np.arange(k), np.abs(vt[:k]).argmax(1)])
    xy[:, :k] = u[:, :k] * s[:k] * np.where(signs == 0, 1, signs)
    return xy


def _class_neighbors(n: int) -> int:
    """UMAP's neighbourhood for a class view of ``n`` points: about sqrt(n), within 4..15."""
    return int(np.clip(round(np.sqrt(n)), 4, min(15, n - 1)))


def _sample_real(frame: pd.DataFrame, feats: np.ndarray, limit: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Keep at most ``limit`` real points (a seeded sample, in stored order) and every other point."""
    real = np.flatnonzero((frame["kind"] == "real").to_numpy())
    if len(real) <= limit:
        return frame, feats
    drop = np.setdiff1d(real, np.sort(np.random.default_rng(seed).choice(real, limit, replace=False)))
    keep = np.setdiff1d(np.arange(len(frame)), drop)
    return frame.iloc[keep].reset_index(drop=True), feats[keep]


def _fit_sample(n: int, limit: int, seed: int) -> np.ndarray:
    """Indices of the points a run view is fitted on: all ``n`` up to ``limit``, else a seeded
    sample of ``limit`` in stored order."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))


def run_embedding(store: RunStore, detector=None, seed: int | None = None) -> Embedding:
    """The run's UMAP (see the module docstring). Raises ValueError with fewer than 4 points."""
    t0 = time.perf_counter()
    seed = store.config.seed if seed is None else seed
    frame, feats = collect_points(store, detector, max_prototypes=MAX_RUN_PROTOTYPES, seed=seed)
    frame, feats = _sample_real(frame, feats, MAX_RUN_REAL, seed)
    if len(frame) < 4:
        raise ValueError(f"run {store.run_id} has {len(frame)} points to embed; run a class first")
    cache = store.path / CACHE_DIR
    npz, pkl = cache / "umap.npz", cache / "umap.pkl"
    with _lock(store.path):
        fitted, placed, fit_points = False, 0, 0
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
            fit = _fit_sample(len(frame), MAX_FIT, seed)
            reducer, xy = _fit(feats[fit], seed)
            known = dict(zip(frame["key"].iloc[fit].tolist(), xy))
            fitted, fit_points = True, len(fit)
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
    return Embedding(frame[COLUMNS], fitted, placed, time.perf_counter() - t0, fit_points=fit_points)


def class_embedding(store: RunStore, detector, label: int, seed: int | None = None) -> Embedding:
    """The map of one class: its real sample (at most ``MAX_CLASS_REAL``, a seeded sample), its
    prototypes (with ``detector``), synthetic images, anomalies, candidates and picks, in the run
    view's feature space (centred on the all-class real mean, L2-normalised).

    UMAP (``n_neighbors`` about the square root of the point count, the run's seed) from
    ``PCA_BELOW`` points up, PCA (numpy SVD) below. Coordinates are cached in
    ``RUN/embedding/class-<label>.npz`` with their point keys, the method and the seed, and reused
    while the class has exactly those points; decisions change only the colours, which are read
    from the store on every call. When the points change (regenerated candidates, say) the class
    is fitted again, not extended by transform: a class view has a few hundred points at most, so a
    fit takes well under 2 s once numba is warm, and every point then shapes the map; with
    transform a new round of candidates would be pushed into a layout fitted without them, and a
    reducer would have to be pickled per class. The same seed keeps the refit close to the old one.
    Raises ValueError for an unknown class or one with no points yet.
    """
    t0 = time.perf_counter()
    seed = store.config.seed if seed is None else seed
    names = store.class_names
    if not 0 <= int(label) < len(names):
        raise ValueError(f"run {store.run_id} has no class {label} (classes 0..{len(names) - 1})")
    label = int(label)
    frame, feats = collect_points(store, detector, label)
    frame, feats = _sample_real(frame, feats, MAX_CLASS_REAL, seed)
    if frame.empty:
        raise ValueError(f"class {names[label]} of run {store.run_id} has no points to embed; run it first")
    keys = frame["key"].tolist()
    cache = store.path / CACHE_DIR
    npz = cache / f"class-{label}.npz"
    with _lock(store.path):
        known, method = {}, None
        if npz.is_file():
            try:
                z = np.load(npz, allow_pickle=False)
                if int(z["seed"]) == seed:
                    known, method = dict(zip(z["keys"].tolist(), z["xy"])), str(z["method"])
            except (OSError, ValueError, KeyError, EOFError):
                known = {}  # unreadable cache: fit again
        fitted = set(known) != set(keys)
        if fitted:
            if len(frame) >= PCA_BELOW:
                method, xy = "umap", _fit(feats, seed, _class_neighbors(len(frame)))[1]
            else:
                method, xy = "pca", _pca(feats)
            known = dict(zip(keys, xy))
            cache.mkdir(exist_ok=True)
            tmp = cache / f"class-{label}.tmp.npz"
            np.savez(tmp, keys=np.array(keys, dtype=str), xy=xy, method=np.array(method), seed=np.array(seed))
            tmp.replace(npz)
    xy = np.stack([known[k] for k in keys])
    frame["x"], frame["y"] = xy[:, 0], xy[:, 1]
    frame = frame[COLUMNS]
    frame.attrs["method"] = method
    return Embedding(frame, fitted, 0, time.perf_counter() - t0, method)


WARM_POINTS = (40, 4200)  # a small fit (exact neighbours) and one past umap's 4,096 (pynndescent's path)


def warm_up(seed: int = 0) -> float:
    """Fit and transform a small and a larger random set once (few epochs), so numba's compilation
    of both neighbour searches (about 30 s on one core) is paid before a user asks for a UMAP: a
    class map, or a whole-run map of thousands of points. Returns the seconds spent."""
    t0 = time.perf_counter()
    for n in WARM_POINTS:
        x = np.random.default_rng(seed).normal(size=(n, 8)).astype(np.float32)
        reducer, _ = _fit(x, seed, n_epochs=5)
        reducer.transform(x[:2] + 0.01)
    return time.perf_counter() - t0
