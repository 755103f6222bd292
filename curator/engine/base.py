"""The driver every engine shares: it owns the run store, decides what is left to do, and writes
each stage result as it arrives. Engines differ only in where the stages run (``_stream``,
``_real_features``): in this process (``LocalEngine``) or on Ray actors (``RayEngine``).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from curator import stages
from curator.config import RunConfig
from curator.data import Dataset
from curator.models.detector import Detector
from curator.models.generator import Generator
from curator.models.loading import check_class_sizes, load_components
from curator.review import ClassSummary, kept_image, summarize
from curator.store import GLOBAL_CENTRE, Decision, ImageRecord, NewImage, RunStore, StoreError, set_image_probs

# (stage, done, total, label); label is None when the step covers several classes at once
ProgressFn = Callable[[str, int, int, int | None], None]


class Cancelled(Exception):
    """Raised between batches when the caller's ``cancel()`` returns True; the run can resume."""


class Engine:
    """Runs the method for the classes of one run store; subclasses say where the stages run."""

    name = "base"

    def __init__(
        self,
        store: RunStore,
        *,
        data: Dataset | None = None,
        generator: Generator | None = None,
        detector: Detector | None = None,
        progress: ProgressFn | None = None,
        cancel: Callable[[], bool] | None = None,
    ):
        self.store = store
        self.config: RunConfig = store.config.validate()
        self.data, self.generator, self.detector = type(self)._load(self.config, data, generator, detector)
        self.progress = progress or (lambda stage, done, total, label: None)
        self.cancel = cancel or (lambda: False)
        self._centres: dict[int, np.ndarray] | None = None
        store.lock_for_writing()

    @classmethod
    def create(
        cls,
        config: RunConfig,
        root: str,
        run_id: str | None = None,
        *,
        data: Dataset | None = None,
        generator: Generator | None = None,
        detector: Detector | None = None,
        progress: ProgressFn | None = None,
        cancel: Callable[[], bool] | None = None,
        **options,
    ) -> Engine:
        """Check data, models and parameters first, then create the run folder under ``root``.
        ``options`` go to the engine (e.g. the Ray address)."""
        data, generator, detector = cls._load(config.validate(), data, generator, detector)
        labels = [data.class_index(c) for c in config.classes] if config.classes else range(data.num_classes)
        check_class_sizes(data, list(labels), config.ipc)
        store = RunStore.create(root, config, data.class_names, run_id)
        store.set_meta("engine", cls.name)
        try:
            return cls(store, data=data, generator=generator, detector=detector, progress=progress, cancel=cancel,
                       **options)  # fmt: skip
        except BaseException:
            store.close()
            raise

    @classmethod
    def _load(
        cls, config: RunConfig, data: Dataset | None, generator: Generator | None, detector: Detector | None
    ) -> tuple[Dataset, Generator | None, Detector | None]:
        """What this process needs of (data, generator, detector), loading what is not given: all
        three here, as the stages run in this process; an engine whose stages run elsewhere loads
        the models there (``RayEngine``)."""
        return load_components(config, data, generator, detector)

    @classmethod
    def start_workers(cls, config: RunConfig, data: Dataset | None = None, progress: ProgressFn | None = None,
                      **options) -> object | None:  # fmt: skip
        """Start what a long-lived caller may keep across jobs of one run (``pool.EnginePool``),
        handed back to the constructor as ``pool=``; it has ``kill()``. None here: the local
        engine's stages run in this process, with models the caller loads (and caches)."""
        return None

    # --- where the stages run (engines override these) -------------------------------------------
    def _stream(
        self, labels: list[int], state: stages.GroupState, rounds: range | None = None
    ) -> Iterator[stages.PrototypesDone | stages.ImagesDone | stages.Progress]:
        raise NotImplementedError

    def _real_features(self) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        raise NotImplementedError

    def close(self) -> None:
        """Let go of the run (and its writer lock) and of any workers."""
        self.store.close()

    # --- set-up --------------------------------------------------------------------------------
    def labels(self) -> list[int]:
        """Class indices this run covers."""
        if not self.config.classes:
            return list(range(self.data.num_classes))
        return [self.data.class_index(c) for c in self.config.classes]

    def check_class_sizes(self, labels: list[int]) -> None:
        check_class_sizes(self.data, labels, self.config.ipc)

    def centres(self) -> dict[int, np.ndarray]:
        """Feature centres: each class's mean detector feature over a seeded sample of its real
        training images, and ``GLOBAL_CENTRE``, the mean over all of them.

        Computed once per run for every class and stored with the sampled features in one
        transaction, so a resumed run (and the app) centres on exactly the same vectors.
        """
        if self._centres is None:
            stored = self.store.centres()
            if set(stored) != set(range(self.data.num_classes)) | {GLOBAL_CENTRE}:
                features = self._real_features()
                stored = stages.feature_centres(features)
                self.store.set_real_features(features, stored)
            self._centres = stored
        return self._centres

    def feature_center(self, label: int | None = None) -> np.ndarray:
        """The centre that uniqueness uses for ``label`` under the run's ``uniqueness_centre``
        (the global centre when ``label`` is None or the setting is "global")."""
        centres = self.centres()
        return centres[GLOBAL_CENTRE if label is None or self.config.uniqueness_centre == "global" else label]

    # --- the run -------------------------------------------------------------------------------
    def run(self, labels: list[int] | None = None) -> list[ClassSummary]:
        """Run every listed class (default: the config's) that is not done yet; finished classes
        are never redone.

        Classes go through the stages in groups of about four batches of initial images, so the
        generator sees full batches (one class at IPC 10 would fill a third of a batch of 32), while
        a long run still finishes classes, for a person to review, as it goes.
        """
        labels = self.labels() if labels is None else labels
        for _ in self.run_stream(labels):
            pass
        return summarize(self.store, labels)

    def run_stream(self, labels: list[int] | None = None) -> Iterator[list[int]]:
        """``run``, yielding each group of classes as soon as it is written and marked done, in
        order: a caller (the app) can show the first group for review while the rest run."""
        labels = self.labels() if labels is None else labels
        self.check_class_sizes(labels)
        todo = [label for label in labels if self.store.class_status(label) != "done"]
        yield from self._run_groups(self.groups(todo))

    def run_class(self, label: int) -> ClassSummary:
        """All stages for one class, skipping what the store already holds (so it also resumes)."""
        self.check_class_sizes([label])
        for _ in self._run_groups([[label]]):
            pass
        return summarize(self.store, [label])[0]

    def groups(self, labels: list[int]) -> list[list[int]]:
        """The classes in groups whose initial images fill about four generator batches."""
        size = max(1, math.ceil(4 * self.config.batch_size / self.config.ipc))
        return [labels[lo : lo + size] for lo in range(0, len(labels), size)]

    def _run_groups(self, groups: list[list[int]]) -> Iterator[list[int]]:
        """Run ``groups`` one after the other, yielding each once it is done."""
        self.centres()
        for labels in groups:
            self._run_group(labels)
            yield labels

    def _run_group(self, labels: list[int]) -> None:
        """All stages for ``labels``; the wall time of each stage is shared among the classes in
        proportion to the images each had in it."""
        if not labels:
            return
        t0 = time.time()
        with self.store.transaction():
            for label in labels:
                self.store.set_class_status(label, "running")
        seconds = self.consume(labels, self._stream(labels, self.group_state(labels)))
        self.finish(labels, seconds, time.time() - t0)

    def consume(self, labels: list[int], items: Iterator) -> dict[int, float]:
        """Write each stage result of ``items`` as it arrives; report progress; honour cancel.
        Returns each class's share of the time spent (seconds)."""
        seconds: dict[int, float] = Counter()
        t0 = time.time()
        for item in items:
            if isinstance(item, stages.Progress):
                self.progress(item.stage, item.done, item.total, item.label)
                if self.cancel():
                    close = getattr(items, "close", None)
                    if close:
                        close()
                    raise Cancelled("cancelled by the user; resume the run to continue")
                continue
            if isinstance(item, stages.PrototypesDone):
                self.write_prototypes(item)
                weights = {item.label: 1}
            else:
                self.write_images(item)
                weights = Counter(j.label for j in item.jobs)
            dt, t0 = time.time() - t0, time.time()
            total = sum(weights.values())
            for label, w in weights.items():
                seconds[label] += dt * w / total
        return seconds

    def finish(self, labels: list[int], seconds: dict[int, float], wall: float) -> None:
        """Select in each class, then mark the classes done with their share of ``wall``."""
        for label in labels:
            t0 = time.time()
            self.select(label)
            seconds[label] = seconds.get(label, 0.0) + time.time() - t0
        spent = sum(seconds.values())
        with self.store.transaction():
            for label in labels:
                share = seconds.get(label, 0.0) / spent if spent else 1 / len(labels)
                self.store.set_class_status(label, "done", wall * share)

    def group_state(self, labels: Sequence[int]) -> stages.GroupState:
        """What the store holds for ``labels``: complete prototype sets, synthetic images and
        their inspection, complete candidate rounds, and anomalies that need no more rounds."""
        protos, synthetic, rounds_done, settled = {}, {}, {}, set()
        decisions = self.store.decisions()
        counts = self.store.candidate_counts()
        for label in labels:
            rows = self.store.prototypes(label)
            idx_of = {p.id: p.idx for p in rows}
            if len(rows) == self.config.ipc:
                protos[label] = tuple(
                    stages.Prototype(label, p.idx, self.store.prototype_latent(p), self.store.load_image(p),
                                     p.n_members or 0)
                    for p in rows
                )  # fmt: skip
            for r in self.store.synthetic(label):
                key = (label, idx_of[r.prototype_id])
                synthetic[key] = stages.Inspected(r.confidence, r.predicted, r.reason, r.feature)
                if not r.is_anomaly or not counts.get(r.id):
                    continue
                cands = self.store.candidates(r.id)
                per_round = Counter(c.round for c in cands)
                rounds_done[key] = max((n for n, c in per_round.items() if c == self.config.k), default=0)
                d = decisions.get(r.id)
                if stages.is_settled(d is not None and d.choice != "unresolved", label, [c.predicted for c in cands]):
                    settled.add(key)
        return stages.GroupState(protos, synthetic, rounds_done, frozenset(settled))

    # --- writing stage results -----------------------------------------------------------------
    def write_prototypes(self, item: stages.PrototypesDone) -> None:
        if len(self.store.prototypes(item.label)) == len(item.prototypes):
            return  # a retried task sends it again
        with self.store.transaction():
            for p in item.prototypes:
                self.store.add_prototype(p.label, p.idx, p.latent, p.preview, p.n_members)

    def write_images(self, item: stages.ImagesDone) -> None:
        """Store a batch of synthetic images or whole candidate rounds, in one transaction."""
        labels = sorted({j.label for j in item.jobs})  # only this item's classes are read
        proto_ids = {(p.label, p.idx): p.id for label in labels for p in self.store.prototypes(label)}
        stored = [r for label in labels for r in self.store.synthetic(label)]
        synth = {(r.label, r.prototype_id): r.id for r in stored}
        new, probs = [], []
        for job, image, insp in zip(item.jobs, item.images, item.inspected):
            pid = proto_ids[job.anomaly]
            parent = synth[(job.label, pid)] if job.round else None
            new.append(
                NewImage(job.label, pid, "candidate" if job.round else "synthetic", parent, job.round, job.position,
                         job.seed, image, insp.confidence, insp.predicted, insp.reason, insp.feature)
            )  # fmt: skip
            probs.append(insp.probs)
        with self.store.transaction():
            if item.stage == "synthesis":
                have = {r.prototype_id for r in stored}
                keep = [i for i, n in enumerate(new) if n.prototype_id not in have]  # a retried task sends it again
                new, probs = [new[i] for i in keep], [probs[i] for i in keep]
            else:
                for parent, round_ in {(n.parent_id, n.round) for n in new}:
                    self.store.delete_round(parent, round_)  # a round is replaced whole, or not at all
            ids = self.store.add_images(new)
            set_image_probs(self.store, [(i, p) for i, p in zip(ids, probs) if p is not None])

    # --- selection -----------------------------------------------------------------------------
    def select(self, label: int) -> None:
        """Greedy selection over the class's anomalies; a person's decisions stay and join the pool.

        Decisions are read and the automatic ones written in one write transaction (SQLite's
        ``BEGIN IMMEDIATE``), so a person's decision made meanwhile (the app allows one while a
        Regenerate or Run of the class is going) waits for it and is never overwritten by it.
        """
        self.progress("selection", 0, 1, label)
        centre = self.feature_center(label)  # before the transaction: it may compute and store the centres
        with self.store.transaction():
            decisions = self.store.decisions()
            passed = stages.stacked_features([r for r in self.store.synthetic(label) if not r.is_anomaly])
            anomalies, inputs = [], []
            for a in self.store.anomalies(label):
                cands = self.store.candidates(a.id)
                if not cands:
                    continue
                d = decisions.get(a.id)
                if d is None or d.source == "auto":
                    kept = None
                else:
                    by_id = {c.id: c for c in cands}
                    image = kept_image(a, d, by_id.__getitem__)
                    kept = np.zeros((0, len(a.feature)), np.float32) if image is None else image.feature[None]
                anomalies.append((a, cands, kept))
                inputs.append(stages.Candidates.of(cands, kept))
            selections = stages.select_class(
                label, passed, inputs, centre, self.config.lam, self.config.tau,
            )  # fmt: skip
            self.store.set_scores(
                [(c.id, u, s) for (_, cands, _), sel in zip(anomalies, selections)
                 for c, u, s in zip(cands, sel.uniqueness, sel.score)]
            )  # fmt: skip
            picks = [(a.id, cands[sel.pick].id if sel.pick is not None else None)
                     for (a, cands, _), sel in zip(anomalies, selections)]  # fmt: skip
            self.store.set_auto_picks(picks)
            for (a_id, pick), (_, _, kept) in zip(picks, anomalies):
                if kept is None:
                    self.store.decide(Decision.automatic(a_id, pick), log=False)
        self.progress("selection", 1, 1, label)

    def normalized(self, rows: Sequence[ImageRecord]) -> np.ndarray:
        """Stored detector features of ``rows``, each centred on its class's centre (``feature_center``)
        and L2-normalised ([N, D])."""
        from curator.scoring import normalize_features

        if not rows:
            return np.zeros((0, 1), np.float32)
        feats = np.stack([r.feature for r in rows])
        centres = np.stack([self.feature_center(r.label) for r in rows])
        return normalize_features(feats - centres)

    # --- user actions --------------------------------------------------------------------------
    def regenerate(self, anomaly_id: int) -> int:
        """Another round of K candidates for one anomaly; rescore the class. Returns the round."""
        a = self.store.image(anomaly_id)
        if not a.is_anomaly:
            raise StoreError(f"image {anomaly_id} is not an anomaly")
        round_ = max((c.round for c in self.store.candidates(anomaly_id)), default=0) + 1
        state = self.group_state([a.label])
        key = (a.label, self.store.prototype(a.prototype_id).idx)
        only = stages.GroupState(
            state.prototypes, state.synthetic, {key: round_ - 1},
            frozenset(k for k in state.synthetic if k != key),
        )  # fmt: skip
        was_done = self.store.class_status(a.label) == "done"
        if was_done:  # until it is rescored, a killed process leaves the class to resume (``run``)
            self.store.set_class_status(a.label, "running")
        try:
            self.consume([a.label], self._stream([a.label], only, range(round_, round_ + 1)))
        except Cancelled:  # the round is stored whole or not at all: rescore what is there
            self._rescore(a.label, was_done)
            raise
        self._rescore(a.label, was_done)
        return round_

    def _rescore(self, label: int, done: bool) -> None:
        """Select in the class and, if it was done, mark it done again, in one transaction."""
        with self.store.transaction():
            self.select(label)
            if done:
                self.store.set_class_status(label, "done")
