"""Exports: ImageFolder + metadata, atomic and never destructive, refused for unfinished runs unless
partial, deterministic, and typed for Hugging Face ``datasets`` by metadata.parquet and the card."""

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from torchvision.datasets import ImageFolder

from curator.cli import main as cli_main
from curator.config import RunConfig
from curator.engine import LocalEngine
from curator.export import (
    COLUMNS,
    FORMAT,
    METADATA,
    METADATA_COLUMNS,
    PROBS,
    PROVENANCE,
    UnfinishedRunError,
    export_run,
    hf_features,
)
from curator.review import DECISION_STATES, REVIEWED_STATES, final_set, user_decide


def _config() -> RunConfig:
    return RunConfig(ipc=2, k=2, steps=3, strength=0.6, tau=1.0, classes=["0", "1"], batch_size=8, real_sample=5)


def keep_first_anomaly(store, labels):
    """The random tiny detector flags every image and accepts no candidate: keep one original per class."""
    for label in labels:
        user_decide(store, store.anomalies(label)[0].id, "original")
    return store


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, mnist, tiny_generator, tiny_detector):
    root = tmp_path_factory.mktemp("runs")
    engine = LocalEngine.create(_config(), str(root), data=mnist, generator=tiny_generator, detector=tiny_detector)
    engine.run()
    return keep_first_anomaly(engine.store, [0, 1])


@pytest.fixture(scope="module")
def half_run(tmp_path_factory, mnist, tiny_generator, tiny_detector):
    """A run killed after its first class: class "1" is not finished."""
    root = tmp_path_factory.mktemp("runs")
    engine = LocalEngine.create(_config(), str(root), data=mnist, generator=tiny_generator, detector=tiny_detector)
    engine.run([0])
    return keep_first_anomaly(engine.store, [0])


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) by relative path, with its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_export_round_trip_through_torchvision(tmp_path, finished_run):
    store = finished_run
    a = store.anomalies(1)[1]
    user_decide(store, a.id, "candidate", store.candidates(a.id)[0].id)
    out = export_run(store, tmp_path / "export", make_zip=True)
    assert out == tmp_path / "export.zip" and zipfile.is_zipfile(out)
    folder = tmp_path / "export"
    meta = pd.read_csv(folder / PROVENANCE)
    assert list(meta.columns) == COLUMNS
    typed = pd.read_parquet(folder / METADATA)
    assert list(typed.columns) == METADATA_COLUMNS and typed.class_name.tolist() == meta.class_name.astype(str).tolist()
    names = {"class_name": str, "predicted_class": str}  # digit-named classes stay text
    csv = pd.read_csv(folder / PROVENANCE, dtype=names)
    pd.testing.assert_frame_equal(typed.drop(columns=PROBS), csv, check_dtype=False)
    assert not (folder / "metadata.csv").exists()  # datasets refuses a CSV next to the Parquet
    expected = sum(len(final_set(store, c)) for c in range(len(store.class_names)))
    assert len(meta) == expected
    ds = ImageFolder(str(folder))  # README.md, run.json and the metadata are files: no class of their own
    assert len(ds) == expected and ds.classes == ["0", "1"]
    by_file = {Path(p).relative_to(folder).as_posix(): y for p, y in ds.samples}
    for row in meta.itertuples():
        assert by_file[row.file_name] == row.label
        assert ds.classes[row.label] == str(row.class_name)
    user_rows = meta[meta.decision.isin(REVIEWED_STATES)]
    assert len(user_rows) == 3 and sorted(user_rows.source) == ["original", "original", "refined"]
    assert set(meta.decision[meta.source == "original"]) <= {"kept original", "passed"}
    assert set(meta.decision) <= {"passed", *DECISION_STATES}
    assert set(meta.run_id) == {store.run_id}
    info = json.loads((folder / "run.json").read_text())
    assert info["format"] == FORMAT and info["missing_classes"] == [] and info["label_names"] == ["0", "1"]
    assert info["parameters"]["ipc"] == 2 and info["run_id"] == store.run_id and info["images"] == expected
    with zipfile.ZipFile(out) as z:
        assert z.namelist() == sorted(z.namelist()) and {METADATA, PROVENANCE} <= set(z.namelist())
        assert {n for n in z.namelist() if not n.endswith("/")} == set(snapshot(folder))
    assert hidden(tmp_path) == []


def test_a_foreign_folder_is_refused_and_left_untouched(tmp_path, finished_run):
    mine = tmp_path / "mine"  # what any Hugging Face imagefolder dataset looks like
    (mine / "cats").mkdir(parents=True)
    (mine / "metadata.csv").write_text("file_name,label\ncats/0.png,0\n")
    (mine / "NOTES.txt").write_text("keep me")
    (mine / "cats" / "0.png").write_bytes(b"\x89PNG not really")
    before = snapshot(mine)
    with pytest.raises(FileExistsError, match="not an earlier export") as exc:
        export_run(finished_run, mine, make_zip=True)
    assert str(mine) in str(exc.value) and "\n" not in str(exc.value)
    assert snapshot(mine) == before and not (tmp_path / "mine.zip").exists()
    assert hidden(tmp_path) == []

    # a zip at OUT.zip that is not an earlier export's is refused too, before anything is written
    (tmp_path / "fresh.zip").write_bytes(b"my own zip")
    with pytest.raises(FileExistsError, match="fresh.zip"):
        export_run(finished_run, tmp_path / "fresh", make_zip=True)
    assert (tmp_path / "fresh.zip").read_bytes() == b"my own zip" and not (tmp_path / "fresh").exists()

    # the CLI says so on one line and exits 2
    assert cli_main(["export", str(finished_run.path), "--out", str(mine)]) == 2
    assert snapshot(mine) == before


def test_reexport_replaces_our_own_export(tmp_path, finished_run):
    out = tmp_path / "export"
    export_run(finished_run, out, make_zip=True)
    first = snapshot(out)
    (out / "stale.txt").write_text("from an older export")
    export_run(finished_run, out, make_zip=True)
    assert snapshot(out) == first  # replaced as a whole: the stray file is gone
    assert json.loads((out / "run.json").read_text())["format"] == FORMAT
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "export.zip"]  # nothing left aside


def test_a_failure_mid_export_leaves_nothing_at_the_final_name(tmp_path, finished_run, monkeypatch):
    real_copy = shutil.copyfile
    calls = []

    def failing_copy(src, dst, *args, **kwargs):
        calls.append(dst)
        if len(calls) > 2:
            raise OSError("disk full (injected)")
        return real_copy(src, dst, *args, **kwargs)

    fresh = tmp_path / "fresh"
    monkeypatch.setattr(shutil, "copyfile", failing_copy)
    with pytest.raises(OSError, match="injected"):
        export_run(finished_run, fresh)
    assert not fresh.exists() and hidden(tmp_path) == []

    monkeypatch.setattr(shutil, "copyfile", real_copy)
    out = tmp_path / "export"
    export_run(finished_run, out, make_zip=True)
    earlier, earlier_zip = snapshot(out), (tmp_path / "export.zip").read_bytes()
    calls.clear()
    monkeypatch.setattr(shutil, "copyfile", failing_copy)
    with pytest.raises(OSError, match="injected"):
        export_run(finished_run, out, make_zip=True)
    assert snapshot(out) == earlier and (tmp_path / "export.zip").read_bytes() == earlier_zip
    assert hidden(tmp_path) == []

    monkeypatch.setattr(shutil, "copyfile", real_copy)
    export_run(finished_run, fresh)
    assert snapshot(fresh).keys() == earlier.keys()


def test_an_interrupted_zip_leaves_no_file_at_the_final_name(tmp_path, finished_run, monkeypatch):
    entries = []

    def interrupt(real):
        def inner(self, *args, **kwargs):
            entries.append(args[0])
            if len(entries) > 3:
                raise KeyboardInterrupt  # like Ctrl-C while zipping
            return real(self, *args, **kwargs)

        return inner

    monkeypatch.setattr(zipfile.ZipFile, "write", interrupt(zipfile.ZipFile.write))
    monkeypatch.setattr(zipfile.ZipFile, "writestr", interrupt(zipfile.ZipFile.writestr))
    with pytest.raises(KeyboardInterrupt):
        export_run(finished_run, tmp_path / "export", make_zip=True)
    assert not (tmp_path / "export.zip").exists() and not (tmp_path / "export").exists()
    assert hidden(tmp_path) == []


def test_leftovers_of_a_killed_export_do_not_block_the_next(tmp_path, finished_run):
    out = tmp_path / "export"
    export_run(finished_run, out, make_zip=True)
    earlier = snapshot(out)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    # killed while writing (a half folder, a half zip) and between moving the old export aside and
    # renaming the new one into place (no folder at the final name)
    half = tmp_path / f".export.curator-tmp-{dead.pid}-0000dead"
    (half / "0").mkdir(parents=True)
    (half / METADATA).write_bytes(b"half")
    (tmp_path / f".export.zip.curator-tmp-{dead.pid}-0000dead").write_bytes(b"PK half")
    out.rename(tmp_path / f".export.curator-old-{dead.pid}-0000dead")

    export_run(finished_run, out, make_zip=True)
    assert snapshot(out) == earlier
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "export.zip"]


def test_an_unfinished_run_is_refused_unless_partial(tmp_path, half_run, finished_run, capsys):
    out = tmp_path / "export"
    with pytest.raises(UnfinishedRunError, match="unfinished classes 1;") as exc:
        export_run(half_run, out)
    assert exc.value.missing == ["1"] and "\n" not in str(exc.value)
    assert not out.exists() and hidden(tmp_path) == []
    assert cli_main(["export", str(half_run.path), "--out", str(out)]) == 2
    assert "error: run" in capsys.readouterr().err and not out.exists()

    export_run(half_run, out, partial=True)
    info = json.loads((out / "run.json").read_text())
    assert info["missing_classes"] == ["1"] and info["label_names"] == ["0"]
    meta = pd.read_csv(out / PROVENANCE, dtype={"class_name": str})
    assert set(meta.class_name) == {"0"} and len(meta) == len(final_set(half_run, 0)) > 0
    assert [p.name for p in out.iterdir() if p.is_dir()] == ["0"]
    assert "left out: 1" in (out / "README.md").read_text()

    assert cli_main(["export", str(half_run.path), "--out", str(out), "--partial"]) == 0
    assert "unfinished classes 1 left out" in capsys.readouterr().out


def test_hugging_face_datasets_reads_class_labels_and_string_class_names(tmp_path, finished_run, half_run):
    datasets = pytest.importorskip("datasets")
    out = export_run(finished_run, tmp_path / "export")
    meta = pd.read_csv(out / PROVENANCE)
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "dataset_info:" in card and "configs:" in card

    # the path form reads the card; the imagefolder form reads no card, only metadata.parquet's schema
    by_path = datasets.load_dataset(str(out), split="train", cache_dir=str(tmp_path / "cache"))
    by_dir = datasets.load_dataset("imagefolder", data_dir=str(out), split="train", cache_dir=str(tmp_path / "cache"))
    told = datasets.load_dataset(
        "imagefolder", data_dir=str(out), split="train", features=hf_features(out), cache_dir=str(tmp_path / "cache")
    )
    for ds in (by_path, by_dir, told):
        f = ds.features
        assert f == hf_features(out) and list(f) == ["image", *METADATA_COLUMNS[1:]]
        assert isinstance(f["label"], datasets.ClassLabel) and f["label"].names == ["0", "1"]
        assert f["class_name"] == datasets.Value("string") and f["decision"] == datasets.Value("string")
        assert f["seed"] == datasets.Value("int64") and f["confidence"] == datasets.Value("float64")
        assert isinstance(f["image"], datasets.Image) and len(ds) == len(meta)
        assert sorted(zip(ds["class_name"], ds["label"], strict=True)) == sorted(
            zip(meta.class_name.astype(str), meta.label, strict=True)
        )

    # an export of one image: run.json and provenance.csv must not make datasets pick its json/csv builder
    one = export_run(half_run, tmp_path / "one", partial=True)
    assert len(pd.read_csv(one / PROVENANCE)) == 1
    ds = datasets.load_dataset(str(one), split="train", cache_dir=str(tmp_path / "cache"))
    assert len(ds) == 1 and ds.features["label"].names == ["0"] and ds[0]["class_name"] == "0"


def test_exports_of_the_same_run_are_byte_identical(tmp_path, finished_run):
    """An export depends on the run's content only: not on where or when, nor on wall time spent."""
    a = export_run(finished_run, tmp_path / "a" / "export", make_zip=True)
    elsewhere = tmp_path / "elsewhere" / finished_run.path.name
    shutil.copytree(finished_run.path, elsewhere)
    from curator.store import RunStore

    copy = RunStore.open(elsewhere)
    copy.set_class_status(0, "done", 12.5)  # resumed after a kill: more wall time on the clock
    b = export_run(copy, tmp_path / "b" / "other-name", make_zip=True)
    assert a.read_bytes() == b.read_bytes()
    assert snapshot(a.with_suffix("")) == snapshot(b.with_suffix(""))
    assert "wall_seconds" not in (b.with_suffix("") / "run.json").read_text()


def test_the_audit_columns_load_typed_and_match_the_store(tmp_path, finished_run):
    """Every exported image says which image, anomaly and candidate it is, why the anomaly was flagged,
    what the detector predicts for it, its round and its decision state in the app's words; typed in
    metadata.parquet (datasets), the card and provenance.csv, and equal to what the store holds."""
    datasets = pytest.importorskip("datasets")
    from curator.review import decision_state
    from curator.store import RunStore

    copy = tmp_path / "run"
    shutil.copytree(finished_run.path, copy)
    store = RunStore.open(copy)
    a0, a1 = store.anomalies(0)[1], store.anomalies(1)[1]
    user_decide(store, a0.id, "candidate", store.candidates(a0.id)[-1].id)  # a person keeps a candidate
    user_decide(store, a1.id, "original")
    out = export_run(store, tmp_path / "export")

    by_dir = datasets.load_dataset("imagefolder", data_dir=str(out), split="train", cache_dir=str(tmp_path / "c"))
    by_card = datasets.load_dataset(str(out), split="train", cache_dir=str(tmp_path / "c"))
    for ds in (by_dir, by_card):
        f = ds.features
        for col in ("image_id", "anomaly_id", "candidate_id", "round"):
            assert f[col] == datasets.Value("int64"), col
        for col in ("anomaly_reason", "predicted_class", "decision"):
            assert f[col] == datasets.Value("string"), col
    csv = pd.read_csv(out / PROVENANCE, dtype={"class_name": str, "predicted_class": str})
    for line in (out / PROVENANCE).read_text().splitlines()[1:]:  # ids as people read them: "12", never "12.0"
        cells = line.split(",")
        assert all("." not in cells[COLUMNS.index(c)] for c in ("image_id", "anomaly_id", "candidate_id")), line

    decisions, picks, names = store.decisions(), store.auto_picks(), store.class_names
    rows = by_dir.remove_columns("image").to_list()
    assert len(rows) == len(csv)
    for row, (_, line) in zip(rows, csv.iterrows(), strict=True):
        r = store.image(row["image_id"])
        assert line["image_id"] == row["image_id"] and row["round"] == r.round
        assert row["predicted_class"] == names[r.predicted] == line["predicted_class"]
        assert abs(row["confidence"] - r.confidence) < 1e-9
        if r.kind == "candidate":  # a refined image answers its anomaly
            assert row["candidate_id"] == r.id and row["anomaly_id"] == r.parent_id and row["source"] == "refined"
        elif r.is_anomaly:  # an original a person kept
            assert row["candidate_id"] is None and row["anomaly_id"] == r.id and pd.isna(line["candidate_id"])
        else:
            assert row["anomaly_id"] is None and row["anomaly_reason"] is None and row["decision"] == "passed"
            continue
        anomaly = store.image(row["anomaly_id"])
        assert row["anomaly_reason"] == anomaly.reason == line["anomaly_reason"]
        assert row["decision"] == decision_state(decisions[anomaly.id], picks.get(anomaly.id))
        assert line["anomaly_id"] == row["anomaly_id"]
    states = {r["anomaly_id"]: r["decision"] for r in rows}
    assert states[a0.id] in ("accepted", "overridden") and states[a1.id] == "kept original"
    card = (out / "README.md").read_text()
    assert "name: anomaly_id\n    dtype: int64" in card and "name: decision\n    dtype: string" in card
