"""The detector-guided refinement pipeline, one class at a time, written to a run store as it goes.

Stages per class: prototypes (k-means in init space) -> synthesis (SDEdit, one seed per image)
-> inspection (detector confidence, prediction, feature; anomaly reason) -> refinement (K
candidates per anomaly from the same prototype and label, batched across anomalies) ->
selection (greedy, ``scoring.select_greedy``). Every stage skips what the store already holds,
so a killed run resumes where it stopped and regenerates exactly the same images.
"""

from __future__ import annotations

import time
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
from curator.store import Decision, RunStore, StoreError, from_blob
from curator.training import pick_device

Progress = Callable[[str, int, int, int], None]  # (stage, done, total, label)
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
        self._center: np.ndarray | None = None

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

    def feature_center(self) -> np.ndarray:
        """Mean detector feature of a seeded per-class sample of real training images (cached)."""
        if self._center is not None:
            return self._center
        _, _, feats = self.store.real_features()
        if len(feats) == 0:
            rng = np.random.default_rng(self.config.seed)
            for label in range(self.data.num_classes):
                idx = np.flatnonzero(self.data.train.labels == label)
                idx = np.sort(rng.choice(idx, size=min(self.config.real_sample, len(idx)), replace=False))
                f = self.detector.inspect(self.data.train.images[idx]).features
                self.store.set_real_features(label, idx, f)
            _, _, feats = self.store.real_features()
        self._center = feats.mean(0)
        return self._center

    def normalized(self, rows) -> np.ndarray:
        """Stored detector features of ``rows``, centred on the real mean and L2-normalised ([N, D])."""
        feats = np.stack([from_blob(r["feature"]) for r in rows]) if rows else np.zeros((0, 1), np.float32)
        return normalize_features(feats, self.feature_center()) if len(rows) else feats

    def _check_cancel(self) -> None:
        if self.cancel():
            raise Cancelled("cancelled by the user; resume the run to continue")

    # --- the stages ----------------------------------------------------------------------------
    def run(self, labels: list[int] | None = None) -> list[ClassSummary]:
        """Run every listed class (default: the config's) that is not done yet; classes already done are skipped."""
        labels = self.labels() if labels is None else labels
        self.check_class_sizes(labels)
        for label in labels:
            if self.store.class_status(label) != "done":
                self.run_class(label)
        return summarize(self.store, labels)

    def run_class(self, label: int) -> ClassSummary:
        """All stages for one class, skipping what the store already holds (so it also resumes)."""
        self.check_class_sizes([label])
        t0 = time.time()
        self.store.set_class_status(label, "running")
        self.feature_center()
        protos = self.ensure_prototypes(label)
        self.ensure_synthesis(label, protos)
        selected = False
        for round_ in range(1, self.config.rounds + 1):
            open_ids = [a["id"] for a in self.store.anomalies(label) if self._needs_round(a["id"], round_)]
            if not open_ids:
                break
            self.generate_candidates(open_ids, round_)
            self.select(label)
            selected = True
        if not selected:  # resumed with every candidate already stored: decisions may still be missing
            self.select(label)
        prev = self.store.db.execute("SELECT wall_seconds FROM classes WHERE label=?", (label,)).fetchone()[0] or 0.0
        self.store.set_class_status(label, "done", prev + time.time() - t0)
        return summarize(self.store, [label])[0]

    def _needs_round(self, anomaly_id: int, round_: int) -> bool:
        d = self.store.decision(anomaly_id)
        if d is not None and d.choice != "unresolved":
            return False
        return (
            self.store.last_round(anomaly_id) < round_
            or len([c for c in self.store.candidates(anomaly_id) if c["round"] == round_]) < self.config.k
        )

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

    def _generate(
        self, stage: str, label: int, init: torch.Tensor, labels: list[int], seeds: list[int]
    ) -> torch.Tensor:
        cfg = self.config

        def report(done: int, total: int) -> None:
            self.progress(stage, done, total, label)
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

    def ensure_synthesis(self, label: int, protos: list) -> None:
        done = {r["prototype_id"] for r in self.store.synthetic(label)}
        todo = [p for p in protos if p["id"] not in done]
        if not todo:
            return
        init = torch.stack([self.store.prototype_latent(p["id"]) for p in todo])
        seeds = [derive_seed(self.config.seed, label, p["idx"], 0, 0) for p in todo]
        images = self._generate("synthesis", label, init, [label] * len(todo), seeds)
        self.progress("inspection", 0, len(todo), label)
        insp = self.detector.inspect(images)
        reasons = anomaly_reasons(insp.probs, np.full(len(todo), label), self.config.tau)
        with self.store.transaction():
            for i, p in enumerate(todo):
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
        self.progress("inspection", len(todo), len(todo), label)

    def generate_candidates(self, anomaly_ids: list[int], round_: int) -> None:
        """K candidates per anomaly for ``round_``, batched across anomalies, stored per chunk."""
        k, cfg = self.config.k, self.config
        chunk = max(1, (4 * cfg.batch_size) // k)
        total = len(anomaly_ids) * k
        for lo in range(0, len(anomaly_ids), chunk):
            ids = anomaly_ids[lo : lo + chunk]
            anomalies = [self.store.image(i) for i in ids]
            for a in anomalies:
                self.store.delete_round(a["id"], round_)
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
            label = anomalies[0]["label"]

            def report(done: int, n: int, base: int = lo * k, label: int = label) -> None:
                self.progress("refinement", base + done, total, label)
                self._check_cancel()

            self._check_cancel()
            images = self.generator.generate(
                init,
                labels,
                seeds,
                strength=cfg.strength,
                guidance=cfg.guidance,
                steps=cfg.steps,
                batch_size=cfg.batch_size,
                progress=report,
            )
            insp = self.detector.inspect(images)
            with self.store.transaction():
                for n, a in enumerate(anomalies):
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
