"""Evaluation, the field's yardstick: train fresh students on a distilled set, test them on real data.

**A run** (``evaluate_run``; ``python -m curator evaluate RUN --sets all --protocol soft --student
resnet10t --seeds 3``): the sets of ``curator.evalsets`` (curated, automatic, unrefined,
random_real), each trained with a protocol (``hard`` labels, or ``soft`` labels distilled from the
run's detector at a temperature) and a student (``convnet`` or a timm model name,
``curator.students``), one student per seed, tested on the real test split of the run's dataset
(``RunConfig.data``, split with the run's ``test_fraction`` and ``seed``). Results stay with the
run (``curator.store``'s evaluation tables): each student is committed as it finishes, so a kill
loses at most the student in training, and the same call resumes with the missing seeds only. An
evaluation is ``complete`` only when all its seeds are stored; ``evaluation_table`` prints what is
stored, for the CLI and the app alike.

**An export or an ImageFolder** (``load_eval_set`` + ``evaluate_set``; hard labels, nothing stored):

* an **export** (``run.json`` + ``OUT/<class>/*.png``): every image in the class folders, tested
  on the test split of ``run.json["parameters"]["data"]``, split the same way;
* any other **ImageFolder** (``root/<class>/*``): every image is training data, and
  ``--test-data`` (``mnist5k`` or a dataset path) names the dataset whose test split is used, split
  as ``curator.data.load_dataset`` splits it (its ``test/`` folder, or a seeded 20% per class).

``--test-data`` also overrides the dataset of an export (e.g. when its path moved). Classes are
matched by **name**, so a distilled set may cover a subset of the test classes.

The protocol's details (DC, Zhao et al. 2021; DM, Zhao & Bilen 2023; SRe2L and RDED for soft
labels) are in ``curator.students``. Top-1 is reported as mean and population std (``np.std``)
over seeds, in percent. Runs on CUDA when present, else the CPU. Measured on one core of the
2-core machine (the other core busy): a ConvNet-3 student takes about 17 s at IPC 1 and 360 s at
IPC 10 on mnist5k.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from curator.data import IMAGE_EXTENSIONS, DataError, Dataset, ImageSet, load_dataset
from curator.errors import ConfigError
from curator.evalsets import SET_TITLES, SETS, TrainSet, build_set, check_set_names, run_dataset
from curator.store import EvaluationRecord, RunStore, add_student_result, evaluations, start_evaluation
from curator.students import (  # noqa: F401  (re-exported: the evaluation API of earlier versions)
    BATCH_SIZE,
    DEFAULT_TEMPERATURE,
    PROTOCOLS,
    TRAIN_STEPS,
    ConvNet,
    augment,
    build_student,
    check_student,
    default_epochs,
    detector_teacher,
    score_student,
    top1_accuracy,
    train_student,
)
from curator.training import pick_device


# --- what to evaluate --------------------------------------------------------------------------
@dataclass
class EvalSet:
    """Training images [N, C, H, W] in [0, 1] with labels indexing ``class_names`` (the test data's
    classes), the real test split, and where both came from (for reports)."""

    images: torch.Tensor
    labels: np.ndarray
    class_names: list[str]
    test: ImageSet
    source: str  # run | export | folder | arrays
    test_source: str


@dataclass
class EvalResult:
    """Top-1 accuracy per seed (fractions in [0, 1]) and how it was obtained."""

    accuracies: list[float]
    student: str
    epochs: int
    n_train: int
    n_test: int
    seconds: float  # wall time of all seeds
    seeds: list[int] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return float(np.mean(self.accuracies))

    @property
    def std(self) -> float:
        return float(np.std(self.accuracies))

    def summary(self) -> str:
        per = ", ".join(f"{100 * a:.2f}" for a in self.accuracies)
        return (
            f"top-1 {100 * self.mean:.2f} +- {100 * self.std:.2f} % over {len(self.accuracies)} seed(s) [{per}]; "
            f"{self.student}, {self.epochs} epochs, {self.n_train} training / {self.n_test} test images, "
            f"{self.seconds:.1f} s"
        )


def _read_folder(root: Path, size: int | None) -> tuple[torch.Tensor, list[str], list[str]]:
    """Every image under ``root/<class>/`` (recursively): images, their class names, class list.

    Grayscale when every image is; resized to ``size`` (default: the first image's width)."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    files = [
        (c, f)
        for c in classes
        for f in sorted((root / c).rglob("*"))
        if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
    ]
    if not files:
        raise DataError(f"{root} holds no images in class folders (expected {root}/<class>/<image>)")
    pics, names = [], []
    for c, f in files:
        try:
            with Image.open(f) as im:
                im.load()
                pics.append(im.copy())
                names.append(c)
        except (OSError, UnidentifiedImageError) as exc:
            raise DataError(f"cannot read image {f}: {exc}") from exc
    gray = all(p.mode in ("L", "1", "I", "I;16", "LA", "F") for p in pics)
    mode, side = ("L" if gray else "RGB"), size or pics[0].size[0]
    arrays = []
    for p in pics:
        a = np.asarray(p.convert(mode).resize((side, side), Image.Resampling.BILINEAR), dtype=np.float32) / 255
        arrays.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    return torch.from_numpy(np.stack(arrays)), names, sorted(set(names))


def _run_images(path: Path) -> tuple[torch.Tensor, list[str], dict]:
    from curator.review import final_set

    store = RunStore.open(path)
    try:
        names = store.class_names
        rows = [(names[label], item.image) for label in range(len(names)) for item in final_set(store, label)]
        if not rows:
            raise DataError(f"the run at {path} has no curated images yet; run or resume it first")
        images = torch.stack([store.load_image(r) for _, r in rows])
        params = json.loads(store.config.to_json())
    finally:
        store.close()
    return images, [n for n, _ in rows], params


def load_eval_set(
    path: str | os.PathLike,
    test_data: str | None = None,
    size: int | None = None,
    test_fraction: float | None = None,
    split_seed: int | None = None,
) -> EvalSet:
    """A run folder, an export or an ImageFolder as a training set, with the matching real test split.

    ``test_fraction`` and ``split_seed`` override how a test split is cut from a dataset without
    ``train/`` and ``test/`` folders (default: the run's parameters, else 0.2 and 0).
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        raise DataError(f"nothing to evaluate at {path}: expected a run folder, an export or an ImageFolder")
    params: dict = {}
    if (path / "run.sqlite").is_file():
        source = "run"
        images, names, params = _run_images(path)
        if size and images.shape[-1] != size:
            from curator.data import resize_images

            images = resize_images(images, size, images.shape[1])
    elif (path / "train").is_dir() and (path / "test").is_dir():
        raise DataError(f"{path} has train/ and test/ splits: evaluate {path / 'train'} with --test-data {path}")
    else:
        source = "folder"
        if (path / "run.json").is_file():
            try:
                params = json.loads((path / "run.json").read_text()).get("parameters", {})
                source = "export"
            except (json.JSONDecodeError, AttributeError) as exc:
                raise DataError(f"cannot read {path / 'run.json'}: {exc}") from exc
        images, names, _ = _read_folder(path, size)
    spec = test_data or params.get("data")
    if not spec:
        raise DataError(
            f"{path} is a plain ImageFolder, so its test data is unknown: pass --test-data mnist5k "
            "or --test-data PATH (a dataset whose test split to use)"
        )
    frac = test_fraction if test_fraction is not None else params.get("test_fraction", 0.2)
    seed = split_seed if split_seed is not None else params.get("seed", 0)
    data = load_dataset(spec, size=images.shape[-1], channels=images.shape[1], test_fraction=frac, seed=seed)
    missing = sorted(set(names) - set(data.class_names))
    if missing:
        raise DataError(f"classes {missing} of {path} are not classes of the test data {spec!r} ({data.class_names})")
    if len(data.test) == 0:
        raise DataError(f"the test data {spec!r} has an empty test split")
    labels = np.asarray([data.class_names.index(n) for n in names], dtype=np.int64)
    return EvalSet(images, labels, data.class_names, data.test, source, f"{data.name} test split ({len(data.test)})")


def evaluate_set(
    es: EvalSet,
    *,
    student: str = "convnet",
    seeds: int | list[int] = 3,
    epochs: int | None = None,
    device: str = "auto",
    flip: bool = False,
    progress: Callable[[int, float], None] | None = None,
) -> EvalResult:
    """Train one student per seed (``seeds``: a count, meaning 0..n-1, or a list) and test each."""
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if not seed_list:
        raise ValueError("seeds must be at least 1")
    check_student(student)
    dev = pick_device(device)
    epochs = default_epochs(len(es.images)) if epochs is None else epochs
    t0, accs = time.time(), []
    for s in seed_list:
        model = train_student(
            es.images, es.labels, len(es.class_names), student=student, seed=s, epochs=epochs, flip=flip, device=dev
        )
        accs.append(top1_accuracy(model, es.test))
        if progress:
            progress(s, accs[-1])
    return EvalResult(accs, student, epochs, len(es.images), len(es.test), time.time() - t0, seed_list)


# --- a run's sets, stored with the run ---------------------------------------------------------
@dataclass(frozen=True)
class StudentProgress:
    """Where an evaluation is: the student of ``set_name`` and ``seed`` has finished ``epoch`` of
    ``epochs``; ``done`` of ``total`` students of the call are finished before it."""

    set_name: str
    student: str
    seed: int
    epoch: int
    epochs: int
    done: int
    total: int


def seed_list(seeds: int | Sequence[int]) -> list[int]:
    """``seeds`` as a list: a count N means seeds 0..N-1."""
    out = list(range(seeds)) if isinstance(seeds, int) else sorted({int(s) for s in seeds})
    if not out:
        raise ConfigError("seeds must be at least 1")
    return out


def _check_protocol(protocol: str, temperature: float) -> float:
    """The temperature stored with the evaluation: ``temperature`` for soft labels, 0 for hard."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r}: use {' or '.join(PROTOCOLS)}")
    if protocol == "soft" and not temperature > 0:
        raise ConfigError(f"the temperature must be above 0, got {temperature}")
    return float(temperature) if protocol == "soft" else 0.0


def run_teacher(store: RunStore, device: torch.device | str = "cpu", detector=None):
    """The run's detector (``RunConfig.detector``, or ``detector`` when given) as a soft-label teacher."""
    from curator.models.detector import Detector

    det = detector if detector is not None else Detector.load(store.config.detector, device)
    det.to(device)
    return detector_teacher(det, store.class_names)


def _find(store: RunStore, ts: TrainSet, protocol: str, student: str, temperature: float, epochs: int, flip: bool):
    for rec in evaluations(store):
        if (rec.set_name, rec.set_digest, rec.protocol, rec.student, rec.temperature, rec.epochs, rec.flip) == (
            ts.name, ts.digest, protocol, student, temperature, epochs, flip,
        ):  # fmt: skip
            return rec
    return None


def evaluate_run(
    store: RunStore,
    *,
    sets: Sequence[str] = ("curated",),
    protocol: str = "hard",
    student: str = "convnet",
    seeds: int | Sequence[int] = 3,
    temperature: float = DEFAULT_TEMPERATURE,
    epochs: int | None = None,
    device: str = "auto",
    flip: bool = False,
    train: bool = True,
    data: Dataset | None = None,
    detector=None,
    progress: Callable[[StudentProgress], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> list[EvaluationRecord]:
    """Evaluate ``sets`` of the run (``curator.evalsets.SETS``) and return their stored records, in
    ``SETS`` order.

    Each (set content, protocol, student, temperature, epochs, flip) is one stored evaluation; ``seeds``
    join its asked seeds, and only the students it lacks are trained, each committed as it
    finishes. ``train`` False trains nothing and returns what is stored for the current sets.
    ``epochs`` None means ``default_epochs`` of the set's size. Soft labels come from ``detector``
    (default: the run's, loaded from ``RunConfig.detector``). ``progress`` gets a
    ``StudentProgress`` after each epoch; ``cancel()`` is checked before each step and raises
    ``curator.engine.Cancelled`` (finished students stay stored)."""
    names = check_set_names(list(sets))
    check_student(student)
    temp = _check_protocol(protocol, temperature)
    asked = seed_list(seeds)
    if epochs is not None and epochs < 1:
        raise ConfigError(f"epochs must be at least 1, got {epochs}")
    dev = pick_device(device)
    data = data or run_dataset(store)
    # the teacher before anything is written: a missing detector stores no empty evaluation
    teacher = run_teacher(store, dev, detector) if protocol == "soft" and train else None
    built = [build_set(store, n, data) for n in names]
    for ts in built:
        if len(ts) == 0:
            raise DataError(f"the {ts.name} set of run {store.run_id} is empty: nothing to train a student on")
    plans = []
    for ts in built:
        ep = epochs or default_epochs(len(ts))
        if train:
            eid = start_evaluation(
                store, set_name=ts.name, set_digest=ts.digest, protocol=protocol, student=student,
                temperature=temp, epochs=ep, seeds=asked, n_train=len(ts), n_test=len(data.test),
                class_names=data.class_names, flip=flip,
            )  # fmt: skip
            plans.append((ts, ep, eid, evaluations(store, eid)[0].missing_seeds))
        else:
            rec = _find(store, ts, protocol, student, temp, ep, flip)
            plans.append((ts, ep, None if rec is None else rec.id, []))
    total = sum(len(todo) for *_, todo in plans)
    done = 0
    for ts, ep, eid, todo in plans:
        for seed in todo:
            def on_epoch(epoch: int, epochs_: int, seed: int = seed, name: str = ts.name, before: int = done) -> None:
                if progress is not None:
                    progress(StudentProgress(name, student, seed, epoch, epochs_, before, total))

            t0 = time.time()
            model = train_student(
                ts.images, ts.labels, len(data.class_names), student=student, seed=seed, epochs=ep, flip=flip,
                device=dev, teacher=teacher, temperature=temp or DEFAULT_TEMPERATURE, progress=on_epoch,
                cancel=cancel,
            )  # fmt: skip
            scores = score_student(model, data.test, len(data.class_names))
            add_student_result(store, eid, seed, scores.accuracy, scores.confusion, time.time() - t0, str(dev))
            done += 1
    by_id = {r.id: r for r in evaluations(store)}
    return [by_id[eid] for _, _, eid, _ in plans if eid is not None]


def _pct(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:.1f}"


def evaluation_table(
    records: Sequence[EvaluationRecord], per_class: bool = True, current: dict[str, str] | None = None
) -> str:
    """Stored evaluations as text: one line each (set, protocol, student, seeds done of asked,
    status, top-1 mean ± std in %, each seed's top-1, seconds per student), then the per-class
    accuracy (%) of each evaluation. The CLI prints it; the numbers are the store's. With
    ``current`` (``evalsets.current_digests``), a set evaluated in an earlier version is starred."""
    if not records:
        return "no evaluations stored"
    head = f"{'set':<32} {'protocol':<10} {'student':<12} {'images':>6} {'seeds':>6} {'status':<9} " \
           f"{'top-1 %':>12}  per seed %             s/student"  # fmt: skip
    lines = [head]
    for r in records:
        proto = r.protocol if r.protocol == "hard" else f"soft T={r.temperature:g}"
        per_seed = ", ".join(f"{s.seed}: {_pct(s.accuracy)}" for s in r.students) or "-"
        top = f"{_pct(r.mean)} ± {_pct(r.std)}" if r.students else "-"
        secs = f"{r.seconds / len(r.students):.1f}" if r.students else "-"
        title = SET_TITLES.get(r.set_name, r.set_name) + ("" if is_current(r, current) else " *")
        lines.append(
            f"{title:<32} {proto:<10} {r.student:<12} {r.n_train:>6} "
            f"{len(r.students):>2}/{len(r.seeds):<3} {r.status:<9} {top:>12}  {per_seed:<22} {secs:>9}"
        )
    if per_class:
        names = " ".join(f"{n[:6]:>6}" for n in records[0].class_names)
        lines += ["", "per-class top-1 % (all finished seeds)", f"{'set':<32} {names}"]
        for r in records:
            cells = " ".join(f"{_pct(a):>6}" for a in r.per_class)
            lines.append(f"{SET_TITLES.get(r.set_name, r.set_name):<32} {cells}")
    if not all(is_current(r, current) for r in records):
        lines += ["", "* an earlier version of the set: decisions changed since it was evaluated"]
    return "\n".join(lines)


# --- what the app shows: pure functions of stored records (the CLI's numbers, the same properties) ---
@dataclass(frozen=True)
class Setup:
    """How students were trained, apart from the set: the protocol, its temperature (0 for hard
    labels) and the student. Results of one setup are comparable across sets."""

    protocol: str
    student: str
    temperature: float = 0.0

    @property
    def label(self) -> str:
        proto = "hard labels" if self.protocol == "hard" else f"soft labels (T={self.temperature:g})"
        name = "ConvNet-3" if self.student == "convnet" else self.student
        return f"{proto} · {name}"


def setup_of(record: EvaluationRecord) -> Setup:
    return Setup(record.protocol, record.student, float(record.temperature))


def setups(records: Sequence[EvaluationRecord]) -> list[Setup]:
    """The setups of ``records``, the most recently evaluated first."""
    latest: dict[Setup, int] = {}
    for r in records:
        latest[setup_of(r)] = max(latest.get(setup_of(r), -1), r.id)
    return sorted(latest, key=lambda s: -latest[s])


def results_for(
    records: Sequence[EvaluationRecord], setup: Setup | None = None, current: dict[str, str] | None = None
) -> list[EvaluationRecord]:
    """One record per set for ``setup`` (default: the newest setup), in ``SETS`` order: the newest
    evaluation of the set as it stands now (``current``: set name -> digest, from
    ``evalsets.current_digests``), else the newest of an earlier version of the set."""
    if setup is None:
        found = setups(records)
        if not found:
            return []
        setup = found[0]
    out = []
    for name in SETS:
        mine = [r for r in records if r.set_name == name and setup_of(r) == setup]
        now = [r for r in mine if is_current(r, current)]
        pick = max(now or mine, key=lambda r: r.id, default=None)
        if pick is not None:
            out.append(pick)
    return out


def is_current(record: EvaluationRecord, current: dict[str, str] | None) -> bool:
    """Whether ``record`` evaluated the set as it stands (True when unknown, and for random real)."""
    return current is None or record.set_name not in current or current[record.set_name] == record.set_digest


def _round(x: float, digits: int = 1) -> float:
    return float("nan") if x != x else round(100 * x, digits)


SUMMARY_COLUMNS = ["set", "images", "epochs", "seeds done", "status", "top-1 %", "± std", "per seed %",
                   "s / student", "note"]  # fmt: skip


def summary_frame(records: Sequence[EvaluationRecord], current: dict[str, str] | None = None):
    """One row per evaluation: the set, its size, epochs, seeds done of asked, status (``partial``
    until every asked seed is stored), top-1 mean and population std over finished seeds in %,
    each seed's top-1, the mean seconds per student, and a note when the set has changed since."""
    import pandas as pd

    rows = []
    for r in records:
        rows.append({
            "set": SET_TITLES.get(r.set_name, r.set_name),
            "images": r.n_train,
            "epochs": r.epochs,
            "seeds done": f"{len(r.students)} of {len(r.seeds)}",
            "status": r.status,
            "top-1 %": _round(r.mean),
            "± std": _round(r.std),
            "per seed %": ", ".join(f"{s.seed}: {_pct(s.accuracy)}" for s in r.students) or "-",
            "s / student": round(r.seconds / len(r.students), 1) if r.students else float("nan"),
            "note": "" if is_current(r, current) else "an earlier version of the set (decisions changed since)",
        })  # fmt: skip
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def per_class_frame(records: Sequence[EvaluationRecord]):
    """Top-1 % of each true class (columns, the run's class names) for each evaluation (rows, by
    set), over its finished students; NaN where a class has no test image or nothing finished."""
    import pandas as pd

    if not records:
        return pd.DataFrame(columns=["set"])
    names = [str(n) for n in records[0].class_names]
    rows = []
    for r in records:
        cells = [_round(a) for a in r.per_class] if r.students else [float("nan")] * len(names)
        rows.append([SET_TITLES.get(r.set_name, r.set_name), *cells])
    return pd.DataFrame(rows, columns=["set", *names])


def student_frame(records: Sequence[EvaluationRecord]):
    """One row per finished student: the set, its seed, top-1 %, seconds to train and test, device."""
    import pandas as pd

    rows = [
        [SET_TITLES.get(r.set_name, r.set_name), s.seed, _round(s.accuracy, 2), round(s.seconds, 1), s.device]
        for r in records
        for s in r.students
    ]
    return pd.DataFrame(rows, columns=["set", "seed", "top-1 %", "seconds", "device"])


def confusion_percent(record: EvaluationRecord) -> np.ndarray:
    """The summed confusion matrix [true, predicted] as % of each true class's test images (rows
    sum to 100; a class without test images is a row of NaN)."""
    c = record.confusion.astype(np.float64)
    rows = c.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(rows > 0, 100 * c / np.maximum(rows, 1), np.nan)


@dataclass(frozen=True)
class ReviewGain:
    """What a person's decisions were worth: top-1 (fractions) of the curated set, with the
    decisions, against the automatic set, the pipeline's picks, under one setup."""

    curated: EvaluationRecord
    automatic: EvaluationRecord
    changed: bool | None = None  # whether the decisions changed the set's images (None: unknown)

    @property
    def points(self) -> float:
        """Curated minus automatic mean top-1, in percentage points."""
        return 100 * (self.curated.mean - self.automatic.mean)

    def text(self) -> str:
        c, a = self.curated, self.automatic
        verdict = (
            "your decisions raised top-1" if self.points > 0
            else "your decisions lowered top-1" if self.points < 0 else "your decisions left top-1 unchanged"
        )  # fmt: skip
        spread = max(c.std, a.std) * 100
        caution = (
            f" (within one std, {spread:.1f} points: not a clear difference)" if abs(self.points) <= spread else ""
        )
        partial = " Partial: not every asked seed is done." if "partial" in (c.status, a.status) else ""
        outcome = f"{verdict}{'' if self.points == 0 else f' by {abs(self.points):.1f} points'}{caution}"
        if self.changed is False:  # the same images: any difference is training noise
            outcome = "the same images: no decision of yours has changed the set yet"
        return (
            f"Curated, with your decisions: {_pct(c.mean)} ± {_pct(c.std)} % ({len(c.students)} seed(s), "
            f"{c.n_train} images) · automatic, the pipeline's picks: {_pct(a.mean)} ± {_pct(a.std)} % "
            f"({len(a.students)} seed(s), {a.n_train} images) → {outcome}.{partial}"
        )


def stored_results(
    store: RunStore, setup: Setup | None = None, sets: Sequence[str] | None = None
) -> tuple[list[EvaluationRecord], dict[str, str]]:
    """What the app's Evaluate tab and ``python -m curator evaluate RUN --show`` show: for ``setup``
    (default the newest), the newest evaluation of each set (of ``sets``, default all), preferring
    the set as it stands now (``results_for``); and the sets' current digests, to mark the rest.
    Reads only: nothing is trained or written."""
    from curator.evalsets import current_digests

    current = current_digests(store)
    shown = results_for(evaluations(store), setup, current)
    return [r for r in shown if sets is None or r.set_name in sets], current


def review_gain(records: Sequence[EvaluationRecord], changed: bool | None = None) -> ReviewGain | None:
    """The curated-versus-automatic comparison among ``records`` (one setup, e.g. ``results_for``'s),
    or None unless both sets have a finished student. ``changed``: whether the person's decisions
    changed the set (``evalsets.review_changed_set``), said in the text when they did not."""
    by = {r.set_name: r for r in records if r.students}
    if "curated" not in by or "automatic" not in by:
        return None
    return ReviewGain(by["curated"], by["automatic"], changed)


__all__ = [
    "SETS", "EvalResult", "EvalSet", "ReviewGain", "Setup", "StudentProgress", "confusion_percent", "evaluate_run",
    "evaluate_set", "evaluation_table", "is_current", "load_eval_set", "per_class_frame", "results_for",
    "review_gain", "seed_list", "setup_of", "setups", "stored_results", "student_frame", "summary_frame",
]  # fmt: skip
