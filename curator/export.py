"""Export a run's curated set as an ImageFolder tree with Hugging Face ``imagefolder`` metadata.

Layout::

    OUT/<class name>/<file>.png
    OUT/metadata.parquet  file_name, label, class_name, source, prototype_id, seed, confidence,
                          uniqueness, score, decision, run_id, then the audit columns image_id,
                          anomaly_id, candidate_id, anomaly_reason, predicted_class, round (one row
                          per image), and ``probabilities``: the detector's softmax over run.json's
                          ``class_names`` (float32, one per class, in that order: soft labels); its
                          schema carries the Hugging Face features (``label`` a ``ClassLabel``,
                          ``probabilities`` a ``List(Value("float32"), length=K)``); ``decision`` is
                          ``review.PASSED`` or the anomaly's state (``review.DECISION_STATES``)
    OUT/provenance.csv    the same rows as CSV, for people and pandas (a name ``datasets`` and
                          ImageFolder ignore), without the probabilities
    OUT/run.json          "format": "curator-export/1" (the marker), the run's id, parameters, class
                          names, the export's label names, missing (unfinished) classes and per-class
                          summary; no wall-clock fields, so an export depends on the run's content only
    OUT/README.md         dataset card: ``configs``/``dataset_info`` YAML with the column types

``torchvision.datasets.ImageFolder(OUT)`` loads it (the other files are files, not class folders),
and so do ``datasets.load_dataset(OUT)`` (typed by the card) and ``datasets.load_dataset("imagefolder",
data_dir=OUT)`` (which reads no card: typed by metadata.parquet's schema): ``label`` a ``ClassLabel``
with the class names, ``class_name`` a string even for digit-named classes. The imagefolder metadata
is Parquet, not CSV, because datasets types a CSV's columns from their values (digit-named classes
would come out as integers), and it refuses a folder holding both ``metadata.csv`` and
``metadata.parquet``; hence the CSV copy's other name. ``label`` is the class index in the sorted
order of the class folders present in the export (what ImageFolder assigns), so a class with no
curated image shifts no label silently.

Exports are atomic and never destructive: everything is written to a hidden sibling of OUT (and of
OUT.zip) and renamed into place. An existing OUT is replaced only when it is empty or an earlier
export (its ``run.json`` carries the marker); the old one is moved aside and removed once the new
one is in place. Anything else is refused with ``FileExistsError``. A run whose classes are not all
finished is refused (``UnfinishedRunError``) unless ``partial=True``; the unfinished classes are then
left out and listed in ``run.json["missing_classes"]``.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import zipfile
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from curator.review import DECISION_STATES, PASSED, final_set, summarize
from curator.store import RunStore, StoreError

FORMAT = "curator-export/1"
MARKER = "run.json"
METADATA = "metadata.parquet"  # what datasets' imagefolder reads (typed)
PROVENANCE = "provenance.csv"  # the same rows for people; a name datasets and ImageFolder ignore
COLUMNS = [
    "file_name",
    "label",
    "class_name",
    "source",
    "prototype_id",
    "seed",
    "confidence",
    "uniqueness",
    "score",
    "decision",
    "run_id",
    # the audit trail: which image of the run this is, which anomaly it answers, and what became of it
    "image_id",
    "anomaly_id",
    "candidate_id",
    "anomaly_reason",
    "predicted_class",
    "round",
]
# metadata.parquet only (not the CSV): the detector's class probabilities, stored at inspection
# (``store.image_probs``); a run stored before they were kept gets them from its detector at export.
PROBS = "probabilities"
METADATA_COLUMNS = [*COLUMNS, PROBS]
# Hugging Face dtypes of the columns; file_name becomes the "image" column, label a class_label.
COLUMN_DTYPES = {
    "class_name": "string",
    "source": "string",
    "prototype_id": "int64",
    "seed": "int64",
    "confidence": "float64",
    "uniqueness": "float64",
    "score": "float64",
    "decision": "string",
    "run_id": "string",
    "image_id": "int64",
    "anomaly_id": "int64",  # empty for an image that passed inspection
    "candidate_id": "int64",  # empty unless the image is a refined candidate
    "anomaly_reason": "string",  # label_mismatch | low_confidence; empty when it passed
    "predicted_class": "string",  # the detector's predicted class name for this image (the candidate's, if refined)
    "round": "int64",  # 0 for the initial images, 1.. for rounds of candidates
}
_NULLABLE_INTS = ["anomaly_id", "candidate_id"]
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed entry times: the same run gives the same zip bytes
_TAG = ".curator-"  # hidden siblings: .<name>.curator-tmp-<pid>-<hex>, .<name>.curator-old-<pid>-<hex>


class UnfinishedRunError(StoreError):
    """Export of a run whose classes are not all finished, without ``partial=True``."""

    def __init__(self, run_id: str, missing: list[str]):
        self.missing = missing
        super().__init__(
            f"run {run_id} has unfinished classes {', '.join(missing)}; resume the run to finish them, "
            "or export with --partial (partial=True) to leave them out"
        )


def run_labels(store: RunStore) -> list[int]:
    """Class indices the run covers: its ``classes`` parameter (names or indices), else all classes."""
    names = store.class_names
    wanted = store.config.classes
    if not wanted:
        return list(range(len(names)))
    labels = []
    for c in wanted:
        c = str(c)
        if c in names:
            labels.append(names.index(c))
        elif c.isdigit() and int(c) < len(names):
            labels.append(int(c))
        else:
            raise StoreError(f"run {store.run_id}: class {c!r} of its parameters is not one of {names}")
    return labels


def unfinished_classes(store: RunStore) -> list[str]:
    """Names of the run's classes whose status is not 'done', in label order."""
    status = {r.label: r.status for r in store.classes()}
    names = store.class_names
    return [names[label] for label in sorted(set(run_labels(store))) if status.get(label) != "done"]


def export_run(store: RunStore, out: str | Path, make_zip: bool = False, partial: bool = False) -> Path:
    """Write the export to ``out`` (atomically replacing an earlier export there); returns the folder or OUT.zip.

    Raises ``UnfinishedRunError`` when classes are unfinished and ``partial`` is false, and
    ``FileExistsError`` when ``out`` (or OUT.zip) exists and is not an earlier export.
    """
    out = Path(os.path.abspath(out))
    missing = unfinished_classes(store)
    if missing and not partial:
        raise UnfinishedRunError(store.run_id, missing)
    zip_path = out.with_name(out.name + ".zip") if make_zip else None
    out.parent.mkdir(parents=True, exist_ok=True)
    _recover(out)
    _check_folder(out)
    if zip_path is not None:
        _recover(zip_path)
        _check_zip(zip_path)
    tmp = _sibling(out, "tmp")
    tmp_zip = _sibling(zip_path, "tmp") if zip_path is not None else None
    try:
        tmp.mkdir()
        _write(store, tmp, missing)
        if tmp_zip is not None:
            _write_zip(tmp, tmp_zip)
        _put_in_place(tmp, out)
        if tmp_zip is not None:
            os.replace(tmp_zip, zip_path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if tmp_zip is not None:
            tmp_zip.unlink(missing_ok=True)
        raise
    return zip_path if zip_path is not None else out


def hf_features(out: str | Path):
    """The export's ``datasets.Features`` (from its run.json): what ``load_dataset(OUT)`` (from the card)
    and ``load_dataset("imagefolder", data_dir=OUT)`` (from metadata.parquet) give without being told."""
    import datasets

    info = json.loads((Path(out) / MARKER).read_text())
    columns = _metadata_features(info["label_names"], len(info["class_names"]))
    del columns["file_name"]  # datasets turns it into the image column
    return datasets.Features.from_dict({"image": {"_type": "Image"}, **columns})


def _metadata_features(label_names: list[str], n_classes: int) -> dict:
    """metadata.parquet's columns as ``datasets.Features.to_dict()`` writes them (file_name a string)."""
    return {
        "file_name": {"dtype": "string", "_type": "Value"},
        "label": {"names": list(label_names), "_type": "ClassLabel"},
        **{k: {"dtype": v, "_type": "Value"} for k, v in COLUMN_DTYPES.items()},
        PROBS: {"feature": {"dtype": "float32", "_type": "Value"}, "length": int(n_classes), "_type": "List"},
    }


def _write_metadata(rows: list[dict], label_names: list[str], n_classes: int, path: Path) -> None:
    """metadata.parquet with the Hugging Face features in its schema metadata, as ``datasets`` writes
    them (``Features.from_arrow_schema`` reads ``label`` back as a ``ClassLabel``). No timestamps and
    fixed settings: the same rows give the same bytes."""
    import datasets

    schema = datasets.Features.from_dict(_metadata_features(label_names, n_classes)).arrow_schema
    table = pa.Table.from_pydict({c: [r[c] for r in rows] for c in METADATA_COLUMNS}, schema=schema)
    pq.write_table(table, path, compression="snappy", use_dictionary=True, write_statistics=True)


def _probabilities(store: RunStore, records: list) -> dict:
    """{image id: the detector's class probabilities [K] float32}: stored at inspection; for a run
    stored before they were kept, computed now from the stored images with the run's detector
    (left out, so the column is null, when that detector cannot be loaded or does not fit the run)."""
    from curator.store import image_probs

    out = image_probs(store, [r.id for r in records])
    todo = [r for r in records if r.id not in out]
    if todo:
        import numpy as np
        import torch

        from curator.errors import USER_ERRORS
        from curator.models.detector import Detector

        try:
            det = Detector.load(store.config.detector)
        except USER_ERRORS:
            return out
        if det.num_classes != len(store.class_names):
            return out
        probs = det.inspect(torch.stack([store.load_image(r) for r in todo])).probs
        out.update({r.id: np.asarray(p, np.float32) for r, p in zip(todo, probs)})
    return out


# --- writing -------------------------------------------------------------------------------------
def _write(store: RunStore, out: Path, missing: list[str]) -> None:
    names = store.class_names
    # finished classes only (those in the run's scope and unfinished are listed as missing)
    labels = [r.label for r in store.classes() if r.status == "done" and names[r.label] not in missing]
    items = [(label, names[label], item) for label in labels for item in final_set(store, label)]
    label_names = sorted({name for _, name, _ in items})
    order = {name: i for i, name in enumerate(label_names)}
    probs = _probabilities(store, [item.image for _, _, item in items])
    rows = []
    for label, name, item in items:
        r = item.image
        proto = store.prototype(r.prototype_id)
        anomaly_id = r.parent_id if r.kind == "candidate" else (r.id if r.is_anomaly else None)
        anomaly = r if r.is_anomaly else (store.image(anomaly_id) if anomaly_id is not None else None)
        # named by provenance (class, prototype, round, position), not by row id: the same in any run order
        file_name = f"{name}/c{label}_p{proto.idx:03d}_r{r.round}_{r.position:02d}.png"
        (out / name).mkdir(exist_ok=True)
        shutil.copyfile(store.path / r.file, out / file_name)
        rows.append(
            {
                "file_name": file_name,
                "label": order[name],
                "class_name": name,
                "source": item.source,
                "prototype_id": proto.idx,
                "seed": r.seed,
                "confidence": r.confidence,
                "uniqueness": r.uniqueness,
                "score": r.score,
                "decision": item.decision,
                "run_id": store.run_id,
                "image_id": r.id,
                "anomaly_id": anomaly_id,
                "candidate_id": r.id if r.kind == "candidate" else None,
                "anomaly_reason": anomaly.reason if anomaly is not None else None,
                "predicted_class": names[r.predicted],
                "round": r.round,
                PROBS: None if r.id not in probs else probs[r.id].tolist(),
            }
        )
    _write_metadata(rows, label_names, len(names), out / METADATA)
    table = pd.DataFrame(rows, columns=COLUMNS).astype({c: "Int64" for c in _NULLABLE_INTS})  # ids, not floats
    table.to_csv(out / PROVENANCE, index=False)  # no probabilities: for people
    summary = []
    for s in summarize(store):
        d = asdict(s)
        d.pop("wall_seconds", None)  # wall clock: would make a resumed run's export differ
        summary.append(d)
    info = {
        "format": FORMAT,
        "run_id": store.run_id,
        "class_names": names,
        "label_names": label_names,
        "missing_classes": missing,
        "parameters": json.loads(store.config.to_json()),
        "images": len(rows),
        "summary": summary,
    }
    (out / "README.md").write_text(_card(info), encoding="utf-8")
    (out / MARKER).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def _card(info: dict) -> str:
    """Dataset card: YAML front matter with the column types (``configs`` for ``load_dataset(OUT)``,
    ``dataset_info`` for the Hub), then a short description."""

    def features() -> list[dict]:
        names = {str(i): n for i, n in enumerate(info["label_names"])}
        return [
            {"name": "image", "dtype": "image"},
            {"name": "label", "dtype": {"class_label": {"names": names}}},
            *({"name": k, "dtype": v} for k, v in COLUMN_DTYPES.items()),
            {"name": PROBS, "list": "float32", "length": len(info["class_names"])},
        ]

    meta = {
        "pretty_name": f"curator export of run {info['run_id']}",
        "task_categories": ["image-classification"],
        "tags": ["synthetic", "dataset-distillation"],
        "configs": [
            {
                "config_name": "default",
                # the images and their metadata only: with run.json and provenance.csv among the data
                # files, datasets could pick its json or csv builder for an export of one image
                "data_files": [{"split": "train", "path": ["*/*.png", METADATA]}],
                "features": features(),
            }
        ],
        "dataset_info": {"features": features()},
    }
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=1000)
    missing = ", ".join(info["missing_classes"]) or "none"
    labels = ", ".join(f"{i} = {n}" for i, n in enumerate(info["label_names"])) or "none"
    return (
        f"---\n{front}---\n\n"
        f"# Curated set of run {info['run_id']}\n\n"
        f"{info['images']} synthetic images written by the curator (detector-guided dataset distillation).\n"
        f"Labels: {labels}. Classes not finished and left out: {missing}.\n\n"
        "    torchvision.datasets.ImageFolder(OUT)\n"
        "    datasets.load_dataset(OUT, split='train')   # typed by this card\n\n"
        "    datasets.load_dataset('imagefolder', data_dir=OUT, split='train')   # typed by metadata.parquet\n\n"
        f"`{METADATA}` (typed, for datasets) and `{PROVENANCE}` (the same rows, for people) have one row\n"
        "per image (provenance, detector confidence, uniqueness, score, decision); `run.json` has the\n"
        "run's parameters and per-class summary.\n\n"
        f"`{PROBS}` (in `{METADATA}` only) holds the detector's class probabilities of each image, in the\n"
        f"order of `run.json`'s `class_names` ({', '.join(info['class_names'])}): soft labels for distillation.\n"
        "Audit columns: `image_id` (the image in the run store), `anomaly_id` (the flagged image it answers;\n"
        "empty when it passed inspection), `candidate_id` (set when the image is a refined candidate),\n"
        "`anomaly_reason` (label_mismatch or low_confidence), `predicted_class` and `confidence` (the detector's\n"
        "predicted class for this image, and its probability of the label), `round` (0 = initial image,\n"
        f"1.. = rounds of candidates); `decision` is {PASSED}, or the anomaly's state in the app's words:\n"
        f"{', '.join(DECISION_STATES)}. A refined image whose `predicted_class` is not its `class_name` was\n"
        "kept by a person although the detector assigns it to another class.\n"
    )


def _write_zip(folder: Path, dest: Path) -> None:
    """Zip ``folder``'s contents with sorted entries and fixed times and modes (same input, same bytes)."""
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as z:
        for p in sorted(folder.rglob("*")):
            rel = p.relative_to(folder).as_posix()
            is_dir = p.is_dir()
            info = zipfile.ZipInfo(rel + "/" if is_dir else rel, _ZIP_TIME)
            info.create_system = 3  # unix, so modes below mean the same everywhere
            info.external_attr = (0o40755 << 16) | 0x10 if is_dir else 0o100644 << 16
            info.compress_type = zipfile.ZIP_STORED if is_dir else zipfile.ZIP_DEFLATED
            z.writestr(info, b"" if is_dir else p.read_bytes())


# --- atomic replacement --------------------------------------------------------------------------
def _sibling(path: Path, kind: str) -> Path:
    return path.with_name(f".{path.name}{_TAG}{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _alive(pid: int) -> bool:
    if pid == os.getpid() or os.name != "posix":
        return True  # our own (another thread's export) or unknowable: leave it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _stale(path: Path) -> list[tuple[str, Path]]:
    """Hidden siblings of ``path`` left by a killed export (their process is gone): (kind, path)."""
    prefix = f".{path.name}{_TAG}"
    out = []
    for p in path.parent.iterdir():
        if not p.name.startswith(prefix):
            continue
        kind, _, rest = p.name[len(prefix) :].partition("-")
        pid = rest.partition("-")[0]
        if kind in ("tmp", "old") and pid.isdigit() and not _alive(int(pid)):
            out.append((kind, p))
    return sorted(out, key=lambda kp: kp[1].name)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def _recover(path: Path) -> None:
    """Clean up after a killed export: an earlier export moved aside but not yet replaced goes back
    to ``path``; half-written temporaries are removed."""
    for kind, p in _stale(path):
        if kind == "old" and not path.exists() and not path.is_symlink():
            os.replace(p, path)
        else:
            _remove(p)


def _is_export(info: object) -> bool:
    return isinstance(info, dict) and str(info.get("format", "")).startswith("curator-export/")


def _check_folder(out: Path) -> None:
    if not out.exists() and not out.is_symlink():
        return
    if out.is_symlink() or not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder; choose a new or empty folder for the export")
    if not any(out.iterdir()):
        return
    try:
        ours = _is_export(json.loads((out / MARKER).read_text(encoding="utf-8")))
    except (OSError, ValueError):
        ours = False
    if not ours:
        raise FileExistsError(
            f'{out} is not empty and is not an earlier export (no {MARKER} with "format": "{FORMAT}"); '
            "refusing to replace it: choose a new or empty folder"
        )


def _check_zip(path: Path) -> None:
    if not path.exists() and not path.is_symlink():
        return
    try:
        with zipfile.ZipFile(path) as z:
            ours = path.is_file() and not path.is_symlink() and _is_export(json.loads(z.read(MARKER)))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        ours = False
    if not ours:
        raise FileExistsError(
            f"{path} exists and is not an earlier export's zip; refusing to replace it: choose another --out"
        )


def _put_in_place(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``; an existing ``out`` is moved aside first and removed only after."""
    if not out.exists():
        os.replace(tmp, out)
        return
    aside = _sibling(out, "old")
    os.replace(out, aside)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(aside, out)
        raise
    shutil.rmtree(aside, ignore_errors=True)
