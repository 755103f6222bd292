import json
import zipfile

import pandas as pd
import pytest
from torchvision.datasets import ImageFolder

from curator.config import RunConfig
from curator.export import COLUMNS, export_run
from curator.pipeline import Pipeline, final_set, user_decide


@pytest.fixture()
def finished_run(tmp_path, mnist, tiny_generator, tiny_detector):
    cfg = RunConfig(ipc=3, k=4, steps=3, strength=0.6, tau=1.0, classes=["0", "1", "2"], batch_size=8, real_sample=5)
    pipe = Pipeline.create(cfg, str(tmp_path / "runs"), data=mnist, generator=tiny_generator, detector=tiny_detector)
    pipe.run()
    return pipe.store


def test_export_round_trip_through_torchvision(tmp_path, finished_run):
    store = finished_run
    a = store.anomalies(1)[0]
    user_decide(store, a["id"], "candidate", store.candidates(a["id"])[0]["id"])
    out = export_run(store, tmp_path / "export", make_zip=True)
    assert out.suffix == ".zip" and zipfile.is_zipfile(out)
    folder = tmp_path / "export"
    meta = pd.read_csv(folder / "metadata.csv")
    assert list(meta.columns) == COLUMNS
    expected = sum(len(final_set(store, c)) for c in range(10))
    assert len(meta) == expected
    ds = ImageFolder(str(folder))
    assert len(ds) == expected
    by_file = {str(p.relative_to(folder)): y for p, y in ((__import__("pathlib").Path(p), y) for p, y in ds.samples)}
    for row in meta.itertuples():
        assert by_file[row.file_name] == row.label
        assert ds.classes[row.label] == str(row.class_name)
    user_rows = meta[meta.decision == "user"]
    assert len(user_rows) == 1 and user_rows.iloc[0].source == "refined"
    assert set(meta.run_id) == {store.run_id}
    params = json.loads((folder / "run.json").read_text())
    assert params["parameters"]["ipc"] == 3 and params["run_id"] == store.run_id
    with zipfile.ZipFile(out) as z:
        assert "metadata.csv" in z.namelist()


def test_export_refuses_to_overwrite_a_foreign_folder(tmp_path, finished_run):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not an earlier export"):
        export_run(finished_run, foreign)
    assert (foreign / "precious.txt").read_text() == "keep me"
