"""Export a run's curated set as an ImageFolder tree with Hugging Face ``imagefolder`` metadata.

Layout::

    OUT/<class name>/<file>.png
    OUT/metadata.csv   file_name, label, class_name, source, prototype_id, seed, confidence,
                       uniqueness, score, decision, run_id (one row per image)
    OUT/run.json       the run's parameters, id, class names and per-class summary

``torchvision.datasets.ImageFolder(OUT)`` and ``datasets.load_dataset("imagefolder", data_dir=OUT)``
both load it; ``label`` is the class index in the sorted order of the class folders present in the
export (what ImageFolder assigns), so a class with no curated image shifts no label silently.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from curator.pipeline import final_set, summarize
from curator.store import RunStore

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
]


def export_run(store: RunStore, out: str | Path, make_zip: bool = False) -> Path:
    """Write the export to ``out`` (replacing an earlier export there); returns the folder or the zip."""
    out = Path(out)
    if out.exists():
        if not (out / "metadata.csv").exists() and any(out.iterdir()):
            raise FileExistsError(f"{out} exists and is not an earlier export; choose an empty or new folder")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    names = store.class_names
    items = [(label, name, item) for label, name in enumerate(names) for item in final_set(store, label)]
    order = {name: i for i, name in enumerate(sorted({name for _, name, _ in items}))}
    rows = []
    for label, name, item in items:
        r = item["row"]
        proto = store.prototype(r["prototype_id"])
        file_name = f"{name}/c{label}_p{proto['idx']:03d}_{r['id']:06d}.png"
        (out / name).mkdir(exist_ok=True)
        shutil.copyfile(store.path / r["file"], out / file_name)
        rows.append(
            {
                "file_name": file_name,
                "label": order[name],
                "class_name": name,
                "source": item["source"],
                "prototype_id": proto["idx"],
                "seed": r["seed"],
                "confidence": r["confidence"],
                "uniqueness": r["uniqueness"],
                "score": r["score"],
                "decision": item["decision"],
                "run_id": store.run_id,
            }
        )
    pd.DataFrame(rows, columns=COLUMNS).to_csv(out / "metadata.csv", index=False)
    summary = [asdict(s) for s in summarize(store)]
    (out / "run.json").write_text(
        json.dumps(
            {
                "run_id": store.run_id,
                "class_names": names,
                "parameters": json.loads(store.config.to_json()),
                "images": len(rows),
                "summary": summary,
            },
            indent=2,
        )
    )
    if make_zip:
        return Path(shutil.make_archive(str(out), "zip", root_dir=out))
    return out
