"""The detector-guided refinement pipeline, written to a run store as it goes.

Stages per class: prototypes (k-means in init space) -> synthesis (SDEdit, one seed per image)
-> inspection (detector confidence, prediction, feature; anomaly reason) -> refinement (K
candidates per anomaly from the same prototype and label) -> selection (greedy,
``scoring.select_greedy``). A group of classes goes through each stage together, so synthesis
and candidates are batched across classes and anomalies. Every stage skips what the store already
holds, so a killed run resumes where it stopped and regenerates exactly the same images.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from curator.config import RunConfig
from curator.data import DataError, Dataset, load_dataset
from curator.detector import Detector
from curator.generator import Generator
from curator.prototypes import class_prototypes
from curator.scoring import anomaly_reasons, normalize_features, select_greedy
from curator.store import GLOBAL_CENTRE, Decision, RunStore, StoreError, from_blob
from curator.training import pick_device

# (stage, done, total, label); label is None when the step covers several classes at once
Progress = Callable[[str, int, int, int | None], None]
STAGES = ("prototypes", "synthesis", "inspection", "refinement", "selection")


class Cancelled(Exception):
    """Raised between batches when the caller's ``cancel()`` returns True; the run can resume."""


def derive_seed(*keys: int) -> int:
    """A 31-bit seed from integer keys (run seed, label, prototype, round, position)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0] & 0x7FFFFFFF)


def generator_options(config: RunConfig | None) -> dict:
    """The run parameters the large-model backends read (prompts, DiT class map); see curator.backends."""
    if config is None:
        return {}
    return {
        "prompt_template": config.prompt_template,
        "negative_prompt": config.negative_prompt,
        "class_map": config.class_map,
    }


def load_generator(
    path: str,
    device: torch.device | str = "cpu",
    class_names: list[str] | None = None,
    config: RunConfig | None = None,
) -> Generator:
    """The generator in ``path`` (a folder or a cached Hugging Face id), backend chosen by its files.

    Built-in pixel model, Stable Diffusion or DiT (see ``curator.backends.loader``). Open-vocabulary
    backends need the dataset's ``class_names`` (prompts, ImageNet ids); without them, bind them
    later with ``prepare_generator``. ``config`` supplies dtype, prompt template, negative prompt
    and class map.
    """
    from curator.backends import load_generator as load_backend

    dtype = config.dtype if config is not None else "auto"
    return load_backend(path, device, class_names, dtype=dtype, **generator_options(config))


def prepare_generator(generator: Generator, class_names: list[str], config: RunConfig | None = None) -> Generator:
    """Bind a dataset's class names and the run's prompt/class-map options (no-op for the pixel model)."""
    from curator.backends import configure_generator

    return configure_generator(generator, class_names, **generator_options(config))


@dataclass
class ClassSummary:
    label: int
    name: str
    images: int
    label_mismatch: int
    low_confidence: int
    resolved_auto: int
    overridden: int
    unresolved: int
    confidence_before: float
    confidence_after: float
    wall_seconds: float | None
    status: str

    @property
    def anomalies(self) -> int:
        return self.label_mismatch + self.low_confidence


class Pipeline:
    """Runs the method for the classes of one run store. Models and data load once per Pipeline."""

    def __init__(
        self,
        store: RunStore,
        *,
        data: Dataset | None = None,
        generator: Generator | None = None,
        detector: Detector | None = None,
        progress: Progress | None = None,
        cancel: Callable[[], bool] | None = None,
    ):
        self.store = store
        self.config: RunConfig = store.config.validate()
        self.data, self.generator, self.detector = load_components(self.config, data, generator, detector)
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
        progress: Progress | None = None,
        cancel: Callable[[], bool] | None = None,
    ) -> Pipeline:
        """Check data, models and parameters first, then create the run folder under ``root``."""
        data, generator, detector = load_components(config.validate(), data, generator, detector)
        labels = [data.class_index(c) for c in config.classes] if config.classes else range(data.num_classes)
        _check_class_sizes(data, list(labels), config.ipc)
        store = RunStore.create(root, config, data.class_names, run_id)
        return cls(store, data=data, generator=generator, detector=detector, progress=progress, cancel=cancel)

    # --- set-up --------------------------------------------------------------------------------
    def labels(self) -> list[int]:
        """Class indices this run covers."""
        if not self.config.classes:
            return list(range(self.data.num_classes))
        return [self.data.class_index(c) for c in self.config.classes]

    def check_class_sizes(self, labels: list[int]) -> None:
        _check_class_sizes(self.data, labels, self.config.ipc)

    def centres(self) -> dict[int, np.ndarray]:
        """Feature centres: each class's mean detector feature over a seeded sample of its real
        training images, and ``GLOBAL_CENTRE``, the mean over all of them.

        Computed once per run for every class and stored with the sampled features in one
        transaction, so a resumed run (and the app) centres on exactly the same vectors.
        """
        if self._centres is None:
            stored = self.store.centres()
            if set(stored) != set(range(self.data.num_classes)) | {GLOBAL_CENTRE}:
                rng = np.random.default_rng(self.config.seed)
                features = {}
                for label in range(self.data.num_classes):
                    idx = np.flatnonzero(self.data.train.labels == label)
                    idx = np.sort(rng.choice(idx, size=min(self.config.real_sample, len(idx)), replace=False))
                    features[label] = (idx, self.detector.inspect(self.data.train.images[idx]).features)
                stored = {label: f.mean(0) for label, (_, f) in features.items()}
                stored[GLOBAL_CENTRE] = np.concatenate([f for _, f in features.values()]).mean(0)
                self.store.set_real_features(features, stored)
            self._centres = stored
        return self._centres

    def feature_center(self, label: int | None = None) -> np.ndarray:
        """The centre that uniqueness uses for ``label`` under the run's ``uniqueness_centre``
        (the global centre when ``label`` is None or the setting is "global")."""
        centres = self.centres()
        return centres[GLOBAL_CENTRE if label is None or self.config.uniqueness_centre == "global" else label]

    def normalized(self, rows) -> np.ndarray:
        """Stored detector features of ``rows``, each centred on its class's centre (``feature_center``)
        and L2-normalised ([N, D])."""
        if not rows:
            return np.zeros((0, 1), np.float32)
        feats = np.stack([from_blob(r["feature"]) for r in rows])
        centres = np.stack([self.feature_center(r["label"]) for r in rows])
        return normalize_features(feats - centres)

    def _check_cancel(self) -> None:
        if self.cancel():
            raise Cancelled("cancelled by the user; resume the run to continue")

    # --- the stages ----------------------------------------------------------------------------
    def run(self, labels: list[int] | None = None) -> list[ClassSummary]:
        """Run every listed class (default: the config's) that is not done yet; classes already done are skipped.

        Classes go through the stages in groups of about four batches of initial images, so the
        generator sees full batches (one class at IPC 10 would fill a third of a batch of 32), while
        a long run still finishes classes, for a person to review, as it goes.
        """
        labels = self.labels() if labels is None else labels
        self.check_class_sizes(labels)
        todo = [label for label in labels if self.store.class_status(label) != "done"]
        group = max(1, math.ceil(4 * self.config.batch_size / self.config.ipc))
        for lo in range(0, len(todo), group):
            self._run_together(todo[lo : lo + group])
        return summarize(self.store, labels)

    def run_class(self, label: int) -> ClassSummary:
        """All stages for one class, skipping what the store already holds (so it also resumes)."""
        self.check_class_sizes([label])
        self._run_together([label])
        return summarize(self.store, [label])[0]

    def _run_together(self, labels: list[int]) -> None:
        """All stages for ``labels``, each stage batched across them; a stage's wall time is shared
        among the classes in proportion to the images each had in it."""
        if not labels:
            return
        seconds = dict.fromkeys(labels, 0.0)

        def share(t0: float, weights: dict[int, int]) -> None:
            total = sum(weights.values())
            for label, w in weights.items():
                seconds[label] += (time.time() - t0) * (w / total if total else 1 / len(weights))

        with self.store.transaction():
            for label in labels:
                self.store.set_class_status(label, "running")
        t0 = time.time()
        self.centres()
        share(t0, dict.fromkeys(labels, 1))
        protos = {}
        for label in labels:
            t0 = time.time()
            protos[label] = self.ensure_prototypes(label)
            seconds[label] += time.time() - t0
        t0 = time.time()
        share(t0, self.ensure_synthesis_many(protos))
        unselected = set(labels)
        for round_ in range(1, self.config.rounds + 1):
            open_rows = [
                a for label in labels for a in self.store.anomalies(label) if self._needs_round(a["id"], round_)
            ]
            if not open_rows:
                continue  # a resumed run may have this round stored and still need the next
            t0 = time.time()
            self.generate_candidates([a["id"] for a in open_rows], round_)
            share(t0, Counter([a["label"] for a in open_rows]))
            for label in sorted({a["label"] for a in open_rows}):
                t0 = time.time()
                self.select(label)
                seconds[label] += time.time() - t0
                unselected.discard(label)
        # Classes with nothing to generate (no anomaly, or resumed with every candidate stored)
        # may still lack decisions.
        for label in sorted(unselected):
            t0 = time.time()
            self.select(label)
            seconds[label] += time.time() - t0
        with self.store.transaction():
            for label in labels:
                self.store.set_class_status(label, "done", seconds[label])

    def _needs_round(self, anomaly_id: int, round_: int) -> bool:
        """Whether the anomaly still needs candidate round ``round_``: it has no decision (or an
        unresolved one), no label-consistent candidate from an earlier round, and not all of
        this round's K candidates."""
        d = self.store.decision(anomaly_id)
        if d is not None and d.choice != "unresolved":
            return False
        label = self.store.image(anomaly_id)["label"]
        cands = self.store.candidates(anomaly_id)
        if any(c["predicted"] == label and c["round"] < round_ for c in cands):
            return False  # selection can pick one (it may not have run yet in a resumed run)
        return len([c for c in cands if c["round"] == round_]) < self.config.k

    def ensure_prototypes(self, label: int) -> list:
        rows = self.store.prototypes(label)
        if len(rows) == self.config.ipc:
            return rows
        self.progress("prototypes", 0, 1, label)
        real = self.data.train.of_class(label)
        latents = self.generator.encode(real)
        centres, members = class_prototypes(latents, self.config.ipc, self.config.seed, self.data.class_names[label])
        with self.store.transaction():
            for i, c in enumerate(centres):
                self.store.add_prototype(label, i, c, self.generator.decode(c[None])[0], int((members == i).sum()))
        self.progress("prototypes", 1, 1, label)
        return self.store.prototypes(label)

    def _generate(self, stage: str, init: torch.Tensor, labels: list[int], seeds: list[int], base: int = 0,
                  total: int | None = None) -> torch.Tensor:  # fmt: skip
        """``generator.generate`` with the run's parameters; progress counts images from ``base`` of
        ``total``, labelled with the class when the batch holds one class (None for several)."""
        cfg = self.config
        label = _one_class(labels)
        total = len(labels) if total is None else total

        def report(done: int, n: int) -> None:
            self.progress(stage, base + done, total, label)
            self._check_cancel()

        self._check_cancel()
        return self.generator.generate(
            init,
            labels,
            seeds,
            strength=cfg.strength,
            guidance=cfg.guidance,
            steps=cfg.steps,
            batch_size=cfg.batch_size,
            progress=report,
        )

    def ensure_synthesis_many(self, protos: dict[int, list]) -> dict[int, int]:
        """The initial image of each prototype not yet synthesised, for every class of ``protos``
        ({label: prototype rows}) in one generator call, inspected and stored.

        Returns how many images each class had synthesised now (for sharing out wall time).
        """
        todo = [(label, p) for label, rows in protos.items() for p in rows]
        done = {r["prototype_id"] for label in protos for r in self.store.synthetic(label)}
        todo = [(label, p) for label, p in todo if p["id"] not in done]
        if not todo:
            return {}
        labels = [label for label, _ in todo]
        init = torch.stack([self.store.prototype_latent(p["id"]) for _, p in todo])
        seeds = [derive_seed(self.config.seed, label, p["idx"], 0, 0) for label, p in todo]
        images = self._generate("synthesis", init, labels, seeds)
        one = _one_class(labels)
        self.progress("inspection", 0, len(todo), one)
        insp = self.detector.inspect(images)
        reasons = anomaly_reasons(insp.probs, np.asarray(labels), self.config.tau)
        with self.store.transaction():
            for i, (label, p) in enumerate(todo):
                self.store.add_image(
                    label=label,
                    prototype_id=p["id"],
                    kind="synthetic",
                    parent_id=None,
                    round=0,
                    position=0,
                    seed=seeds[i],
                    image=images[i],
                    confidence=insp.probs[i, label],
                    predicted=insp.predicted[i],
                    reason=reasons[i],
                    feature=insp.features[i],
                )
        self.progress("inspection", len(todo), len(todo), one)
        return Counter(labels)

    def generate_candidates(self, anomaly_ids: list[int], round_: int) -> None:
        """K candidates per anomaly for ``round_``, batched across anomalies (and their classes),
        stored per chunk of whole batches so that a killed run loses little."""
        k, cfg = self.config.k, self.config
        chunk = max(1, math.lcm(k, cfg.batch_size) // k)
        chunk *= max(1, (4 * cfg.batch_size) // (chunk * k))
        total = len(anomaly_ids) * k
        for lo in range(0, len(anomaly_ids), chunk):
            anomalies = [self.store.image(i) for i in anomaly_ids[lo : lo + chunk]]
            init = torch.cat(
                [self.store.prototype_latent(a["prototype_id"])[None].expand(k, *([-1] * 3)) for a in anomalies]
            )
            proto_idx = {a["id"]: self.store.prototype(a["prototype_id"])["idx"] for a in anomalies}
            seeds = [
                derive_seed(cfg.seed, a["label"], proto_idx[a["id"]], round_, j + 1)
                for a in anomalies
                for j in range(k)
            ]
            labels = [a["label"] for a in anomalies for _ in range(k)]
            images = self._generate("refinement", init, labels, seeds, base=lo * k, total=total)
            insp = self.detector.inspect(images)
            with self.store.transaction():  # a round of an anomaly is replaced whole, or not at all
                for n, a in enumerate(anomalies):
                    self.store.delete_round(a["id"], round_)
                    for j in range(k):
                        i = n * k + j
                        self.store.add_image(
                            label=a["label"],
                            prototype_id=a["prototype_id"],
                            kind="candidate",
                            parent_id=a["id"],
                            round=round_,
                            position=j,
                            seed=seeds[i],
                            image=images[i],
                            confidence=insp.probs[i, a["label"]],
                            predicted=insp.predicted[i],
                            reason=None,
                            feature=insp.features[i],
                        )

    def select(self, label: int) -> None:
        """Greedy selection over the class's anomalies; a person's decisions stay and join the pool."""
        self.progress("selection", 0, 1, label)
        pool = self.normalized([r for r in self.store.synthetic(label) if r["reason"] is None])
        anomalies = [a for a in self.store.anomalies(label) if self.store.candidates(a["id"])]
        cands = [self.store.candidates(a["id"]) for a in anomalies]
        feats = [self.normalized(c) for c in cands]
        keep = []
        for a, c, f in zip(anomalies, cands, feats):
            d = self.store.decision(a["id"])
            if d is None or d.source == "auto":
                keep.append(None)
            elif d.choice == "candidate":
                keep.append(f[[r["id"] for r in c].index(d.candidate_id)][None])
            elif d.choice == "original":
                keep.append(self.normalized([a]))
            else:
                keep.append(f[:0])
        selections = select_greedy(
            [label] * len(anomalies),
            [[r["confidence"] for r in c] for c in cands],
            [[r["predicted"] for r in c] for c in cands],
            feats,
            {label: pool},
            self.config.lam,
            keep,
            tau=self.config.tau,
        )
        with self.store.transaction():
            for a, c, sel, kept in zip(anomalies, cands, selections, keep):
                for r, u, s in zip(c, sel.uniqueness, sel.score):
                    self.store.update_scores(r["id"], u, s)
                if kept is None:
                    chosen = c[sel.pick]["id"] if sel.pick is not None else None
                    self.store.decide(
                        Decision(a["id"], "candidate" if chosen else "unresolved", chosen, "auto"), log=False
                    )
        self.progress("selection", 1, 1, label)

    # --- user actions --------------------------------------------------------------------------
    def regenerate(self, anomaly_id: int) -> int:
        """Another round of K candidates for one anomaly; rescore the class. Returns the round."""
        a = self.store.image(anomaly_id)
        if a["reason"] is None:
            raise StoreError(f"image {anomaly_id} is not an anomaly")
        round_ = self.store.last_round(anomaly_id) + 1
        self.generate_candidates([anomaly_id], round_)
        self.select(a["label"])
        return round_


def user_decide(store: RunStore, anomaly_id: int, choice: str, candidate_id: int | None = None) -> Decision:
    """Record a person's decision: ``candidate`` (with its id), ``original``, ``drop`` or back to ``auto``."""
    a = store.image(anomaly_id)
    if a["kind"] != "synthetic" or a["reason"] is None:
        raise StoreError(f"image {anomaly_id} is not an anomaly of run {store.run_id}")
    if choice == "candidate":
        cand = store.image(candidate_id) if candidate_id is not None else None
        if cand is None or cand["parent_id"] != anomaly_id:
            raise StoreError(f"image {candidate_id} is not a candidate of anomaly {anomaly_id}")
    elif choice not in ("original", "drop"):
        raise StoreError(f"unknown decision {choice!r}; use candidate, original or drop")
    else:
        candidate_id = None
    d = Decision(anomaly_id, choice, candidate_id, "user")
    store.decide(d)
    return d


def load_components(
    config: RunConfig, data: Dataset | None = None, generator: Generator | None = None, detector: Detector | None = None
) -> tuple[Dataset, Generator, Detector]:
    """Load whatever of (data, generator, detector) is not given, and check that they fit together."""
    device = pick_device(config.device)
    # The data is read at the generator's resolution, so the generator loads first; open-vocabulary
    # backends get the dataset's class names once the data is known (prepare_generator).
    generator = generator or load_generator(config.generator, device, config=config)
    detector = detector or Detector.load(config.detector, device)
    data = data or load_dataset(
        config.data,
        size=generator.resolution,
        channels=generator.channels,
        test_fraction=config.test_fraction,
        seed=config.seed,
    )
    prepare_generator(generator, data.class_names, config)
    check_compatible(data, generator, detector)
    return data, generator, detector


def _one_class(labels: list[int]) -> int | None:
    """The class of ``labels`` when they hold one, else None (progress then covers several classes)."""
    return labels[0] if len(set(labels)) == 1 else None


def _check_class_sizes(data: Dataset, labels: list[int], ipc: int) -> None:
    counts = np.bincount(data.train.labels, minlength=data.num_classes)
    small = [f"{data.class_names[c]!r} ({counts[c]} images)" for c in labels if counts[c] < ipc]
    if small:
        raise DataError(f"IPC = {ipc} is larger than these classes of {data.name}: {', '.join(small)}")


def check_compatible(data: Dataset, generator: Generator, detector: Detector) -> None:
    if generator.num_classes != data.num_classes:
        raise DataError(
            f"the generator has {generator.num_classes} classes but the dataset {data.name} has "
            f"{data.num_classes} ({data.class_names}); train a generator on this dataset first"
        )
    if detector.num_classes != data.num_classes:
        raise DataError(
            f"the detector has {detector.num_classes} classes but the dataset {data.name} has "
            f"{data.num_classes} ({data.class_names}); train a detector on this dataset first"
        )


def final_set(store: RunStore, label: int) -> list[dict]:
    """The curated images of a class: passed originals, picked candidates, originals kept by a person.

    Unresolved and dropped anomalies are left out.
    """
    out = []
    for r in store.synthetic(label):
        if r["reason"] is None:
            out.append({"row": r, "source": "original", "decision": "auto"})
            continue
        d = store.decision(r["id"])
        if d is None or d.choice in ("unresolved", "drop"):
            continue
        if d.choice == "original":
            out.append({"row": r, "source": "original", "decision": d.source})
        else:
            out.append({"row": store.image(d.candidate_id), "source": "refined", "decision": d.source})
    return out


def summarize(store: RunStore, labels: list[int] | None = None) -> list[ClassSummary]:
    names = store.class_names
    status = {r["label"]: (r["status"], r["wall_seconds"]) for r in store.classes()}
    out = []
    for label in labels if labels is not None else range(len(names)):
        synth = store.synthetic(label)
        anomalies = [r for r in synth if r["reason"] is not None]
        decisions = [store.decision(a["id"]) for a in anomalies]
        final = final_set(store, label)
        out.append(
            ClassSummary(
                label=label,
                name=names[label],
                images=len(synth),
                label_mismatch=sum(a["reason"] == "label_mismatch" for a in anomalies),
                low_confidence=sum(a["reason"] == "low_confidence" for a in anomalies),
                resolved_auto=sum(d is not None and d.source == "auto" and d.choice == "candidate" for d in decisions),
                overridden=sum(d is not None and d.source == "user" for d in decisions),
                unresolved=sum(d is None or d.choice == "unresolved" for d in decisions),
                confidence_before=float(np.mean([r["confidence"] for r in synth])) if synth else float("nan"),
                confidence_after=float(np.mean([f["row"]["confidence"] for f in final])) if final else float("nan"),
                wall_seconds=status[label][1],
                status=status[label][0],
            )
        )
    return out
