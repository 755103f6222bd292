"""The method, top to bottom, as pure stages: arrays and small frozen records in, the same out.

    real_features(detector, data, seed, n)   per class: a seeded sample of real training images'
                                             detector features (their means are the feature centres)
    class_prototypes(generator, data, ...)   k-means in the generator's init space, streamed per class
    synthesis_jobs / candidate_jobs          one seed per image: (run seed, label, prototype, round, position)
    generate(generator, ...)                 SDEdit from the prototype, batch by batch
    inspect(detector, ...)                   confidence of the label, prediction, feature, anomaly reason
    select_class(...)                        greedy selection (``scoring.select_greedy``)

``run_group`` chains them for a group of classes and yields each stage's result as soon as it is
complete (plus progress between batches). An engine (``curator/engine/``) runs it, in this process
or on Ray workers, and is the only one that reads and writes the run store. Nothing here touches
the store, so two engines given the same inputs yield the same results.

An anomaly is named by its (label, prototype index): there is one synthetic image per prototype.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from curator.config import RunConfig
from curator.data import Dataset
from curator.models.detector import Detector
from curator.models.generator import Generator
from curator.prototypes import class_prototypes as kmeans_prototypes
from curator.prototypes import encode_class
from curator.scoring import GLOBAL_CENTRE, anomaly_reasons, label_consistent, normalize_features, select_greedy

AnomalyKey = tuple[int, int]  # (label, prototype index)


def derive_seed(*keys: int) -> int:
    """A 31-bit seed from integer keys (run seed, label, prototype, round, position)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0] & 0x7FFFFFFF)


# --- records -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Prototype:
    label: int
    idx: int  # 0 = the largest k-means cluster
    latent: torch.Tensor  # init space of the generator
    preview: torch.Tensor  # decoded [C, H, W] in [0, 1]
    n_members: int


@dataclass(frozen=True)
class Job:
    """One image to generate: round 0 is the synthetic image of a prototype, rounds 1.. its candidates."""

    label: int
    prototype: int  # prototype index within the class
    round: int
    position: int
    seed: int

    @property
    def anomaly(self) -> AnomalyKey:
        return (self.label, self.prototype)


@dataclass(frozen=True)
class Inspected:
    confidence: float  # detector probability of the job's label, in [0, 1]
    predicted: int
    reason: str | None  # label_mismatch | low_confidence | None; only synthetic images are flagged
    feature: np.ndarray  # penultimate detector feature [D], float32
    probs: np.ndarray | None = None  # detector softmax over the run's classes [K], float32 (exported)


@dataclass(frozen=True)
class PrototypesDone:
    label: int
    prototypes: tuple[Prototype, ...]


@dataclass(frozen=True)
class ImagesDone:
    """Generated and inspected images of a stage: synthesis (round 0) or a chunk of candidate rounds."""

    stage: str  # synthesis | refinement
    jobs: tuple[Job, ...]
    images: torch.Tensor  # [N, C, H, W] in [0, 1]
    inspected: tuple[Inspected, ...]


@dataclass(frozen=True)
class Progress:
    stage: str
    done: int
    total: int
    label: int | None  # None when the step covers several classes


@dataclass(frozen=True)
class GroupState:
    """What the store already holds for a group of classes, so a resumed group skips it."""

    prototypes: dict[int, tuple[Prototype, ...]] = field(default_factory=dict)  # complete sets only
    synthetic: dict[AnomalyKey, Inspected] = field(default_factory=dict)  # by (label, prototype index)
    rounds_done: dict[AnomalyKey, int] = field(default_factory=dict)  # complete candidate rounds per anomaly
    settled: frozenset[AnomalyKey] = frozenset()  # anomalies needing no more rounds (``is_settled``)


def is_settled(decided: bool, label: int, predicted: Sequence[int]) -> bool:
    """An anomaly needs no more automatic candidate rounds once it has a decision (``decided``:
    anything but unresolved) or a candidate selection can pick (``scoring.label_consistent``)."""
    return decided or bool(label_consistent(np.asarray(predicted, dtype=int), label).any())


# --- stages ------------------------------------------------------------------------------------
def real_features(
    detector: Detector, data: Dataset, seed: int, n: int, labels: Sequence[int] | None = None
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """{label: (train indices, detector features)} of a seeded sample of ``n`` real images per class,
    for ``labels`` (default: every class). The sample of a class does not depend on ``labels``: the
    draws are made for every class in order, and only the asked classes go through the detector."""
    rng = np.random.default_rng(seed)
    wanted = set(range(data.num_classes) if labels is None else labels)
    out = {}
    for label in range(data.num_classes):
        idx = data.train.class_indices(label)
        idx = np.sort(rng.choice(idx, size=min(n, len(idx)), replace=False))
        if label in wanted:
            out[label] = (idx, detector.inspect(data.train.load(idx)).features)
    return out


def feature_centres(features: dict[int, tuple[np.ndarray, np.ndarray]]) -> dict[int, np.ndarray]:
    """Each class's mean feature, and the mean over every class at key ``GLOBAL_CENTRE``."""
    centres = {label: f.mean(0) for label, (_, f) in features.items()}
    centres[GLOBAL_CENTRE] = np.concatenate([f for _, f in features.values()]).mean(0)
    return centres


def class_prototypes(generator: Generator, data: Dataset, label: int, ipc: int, seed: int, batch_size: int = 256):
    """The class's ``ipc`` prototypes: k-means centres of its encoded training images."""
    latents = encode_class(generator, data.train, label, batch_size)
    centres, members = kmeans_prototypes(latents, ipc, seed, data.class_names[label])
    previews = generator.decode(centres)
    return tuple(
        Prototype(label, i, c, previews[i], int((members == i).sum())) for i, c in enumerate(centres)
    )  # fmt: skip


def synthesis_jobs(run_seed: int, prototypes: Sequence[Prototype]) -> list[Job]:
    return [Job(p.label, p.idx, 0, 0, derive_seed(run_seed, p.label, p.idx, 0, 0)) for p in prototypes]


def candidate_jobs(run_seed: int, anomalies: Sequence[AnomalyKey], round_: int, k: int) -> list[Job]:
    """K candidates per anomaly for ``round_``: new seeds, the same prototype and label."""
    return [
        Job(label, idx, round_, j, derive_seed(run_seed, label, idx, round_, j + 1))
        for label, idx in anomalies
        for j in range(k)
    ]


def generate(
    generator: Generator, latents: torch.Tensor, jobs: Sequence[Job], config: RunConfig, stage: str, base: int = 0,
    total: int | None = None,
) -> Iterator[Progress | torch.Tensor]:  # fmt: skip
    """Generate ``jobs`` (``latents`` one row per job) batch by batch, yielding progress after each
    batch and the images [N, C, H, W] last. Same numbers as one ``generator.generate`` call: the
    batches are the ones it would make."""
    labels = [j.label for j in jobs]
    one = labels[0] if len(set(labels)) == 1 else None
    total = len(jobs) if total is None else total
    out = []
    for lo in range(0, len(jobs), config.batch_size):
        hi = min(len(jobs), lo + config.batch_size)
        out.append(
            generator.generate(
                latents[lo:hi],
                labels[lo:hi],
                [j.seed for j in jobs[lo:hi]],
                strength=config.strength,
                guidance=config.guidance,
                steps=config.steps,
                batch_size=config.batch_size,
            )
        )
        yield Progress(stage, base + hi, total, one)
    yield torch.cat(out) if out else torch.zeros(0)


def inspect(detector: Detector, images: torch.Tensor, jobs: Sequence[Job], tau: float) -> tuple[Inspected, ...]:
    """The detector's verdict on each image; synthetic images (round 0) also get an anomaly reason."""
    labels = np.asarray([j.label for j in jobs])
    insp = detector.inspect(images)
    reasons = anomaly_reasons(insp.probs, labels, tau)
    return tuple(
        Inspected(float(insp.probs[i, j.label]), int(insp.predicted[i]), reasons[i] if j.round == 0 else None,
                  insp.features[i], np.asarray(insp.probs[i], np.float32))
        for i, j in enumerate(jobs)
    )  # fmt: skip


def candidate_chunk(k: int, batch_size: int) -> int:
    """Anomalies per candidate chunk: whole generator batches (about four), so a killed run loses little."""
    chunk = max(1, math.lcm(k, batch_size) // k)
    return chunk * max(1, (4 * batch_size) // (chunk * k))


def run_group(
    generator: Generator,
    detector: Detector,
    data: Dataset,
    config: RunConfig,
    labels: Sequence[int],
    state: GroupState | None = None,
    rounds: range | None = None,
) -> Iterator[PrototypesDone | ImagesDone | Progress]:
    """Prototypes, synthesis, inspection and candidate rounds for ``labels``, each stage batched
    across the classes; yields what the store lacks (``state``), stage by stage.

    Candidate rounds (default ``1..config.rounds``) are made for anomalies that are not settled: an
    anomaly is settled by a decision or once a round gave it a candidate selection can pick
    (``is_settled``).
    """
    state = state or GroupState()
    protos: dict[int, tuple[Prototype, ...]] = {}
    for label in labels:
        if label in state.prototypes:
            protos[label] = state.prototypes[label]
            continue
        yield Progress("prototypes", 0, 1, label)
        protos[label] = class_prototypes(generator, data, label, config.ipc, config.seed)
        yield PrototypesDone(label, protos[label])
        yield Progress("prototypes", 1, 1, label)
    by_key = {(p.label, p.idx): p for label in labels for p in protos[label]}

    synthetic = dict(state.synthetic)
    todo = [p for label in labels for p in protos[label] if (p.label, p.idx) not in synthetic]
    if todo:
        jobs = synthesis_jobs(config.seed, todo)
        images = yield from _generate(generator, torch.stack([p.latent for p in todo]), jobs, config, "synthesis")
        one = labels[0] if len(labels) == 1 else None
        yield Progress("inspection", 0, len(jobs), one)
        inspected = inspect(detector, images, jobs, config.tau)
        yield ImagesDone("synthesis", tuple(jobs), images, inspected)
        yield Progress("inspection", len(jobs), len(jobs), one)
        synthetic.update(zip((j.anomaly for j in jobs), inspected))

    anomalies = [key for key in sorted(synthetic, key=lambda kl: (labels.index(kl[0]), kl[1]))
                 if key[0] in labels and synthetic[key].reason is not None]  # fmt: skip
    settled = set(state.settled)
    for round_ in rounds or range(1, config.rounds + 1):
        open_ = [a for a in anomalies if a not in settled and state.rounds_done.get(a, 0) < round_]
        if not open_:
            continue  # a resumed group may have this round stored and still need the next
        chunk, k = candidate_chunk(config.k, config.batch_size), config.k
        for lo in range(0, len(open_), chunk):
            part = open_[lo : lo + chunk]
            jobs = candidate_jobs(config.seed, part, round_, k)
            latents = torch.cat([by_key[a].latent[None].expand(k, *by_key[a].latent.shape) for a in part])
            images = yield from _generate(generator, latents, jobs, config, "refinement", lo * k, len(open_) * k)
            inspected = inspect(detector, images, jobs, config.tau)
            yield ImagesDone("refinement", tuple(jobs), images, inspected)
            settled |= {j.anomaly for j, r in zip(jobs, inspected) if is_settled(False, j.label, [r.predicted])}


def _generate(generator, latents, jobs, config, stage, base=0, total=None):
    """``generate`` as a sub-generator: re-yields its progress and returns the images."""
    images = None
    for item in generate(generator, latents, jobs, config, stage, base, total):
        if isinstance(item, Progress):
            yield item
        else:
            images = item
    return images


# --- selection ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Candidates:
    """One anomaly's candidates for selection: detector outputs, raw features, and what a person
    decided (``kept``: None = automatic; else the raw feature rows that join the pool)."""

    confidence: np.ndarray  # [K]
    predicted: np.ndarray  # [K]
    features: np.ndarray  # [K, D] raw
    kept: np.ndarray | None = None  # [M, D] raw

    @classmethod
    def of(cls, records: Sequence, kept: np.ndarray | None = None) -> Candidates:
        """From stored candidate records (anything with ``confidence``, ``predicted``, ``feature``)."""
        return cls(
            np.array([r.confidence for r in records]),
            np.array([r.predicted for r in records]),
            stacked_features(records),
            kept,
        )


def stacked_features(records: Sequence) -> np.ndarray:
    """The raw features [M, D] of stored records (anything with ``feature``); [0, 1] for none."""
    return np.stack([r.feature for r in records]) if len(records) else np.zeros((0, 1), np.float32)


def select_class(
    label: int, passed: np.ndarray, anomalies: Sequence[Candidates], centre: np.ndarray, lam: float, tau: float
):
    """Greedy selection over one class's anomalies, in order (``scoring.select_greedy``).

    ``passed`` [M, D] are the raw features of the class's images that passed inspection
    (``stacked_features``); features are centred on ``centre`` and L2-normalised before uniqueness
    is measured. Engines, benchmarks and tests all select through here.
    """

    def norm(f: np.ndarray) -> np.ndarray:
        return normalize_features(np.asarray(f, np.float32).reshape(len(f), -1), centre) if len(f) else f

    return select_greedy(
        [label] * len(anomalies),
        [a.confidence for a in anomalies],
        [a.predicted for a in anomalies],
        [norm(a.features) for a in anomalies],
        {label: norm(passed)},
        lam,
        [None if a.kept is None else norm(a.kept) for a in anomalies],
        tau=tau,
    )
