"""Public demo safety: what the live app serves, and what it does with uploaded zips.

The server hands out the images a page shows and the export zip, nothing else: not a run's
database, lock or prototype arrays, not the uploads, not files outside the app's folders, also
when asked with ``..`` or percent-encoded ``..``.
"""

from __future__ import annotations

import http.client
import io
import os
import struct
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import torch
from gradio_client import Client
from PIL import Image

from curator.data import DataError
from curator.store import RunStore
from curator.ui import uploads
from curator.ui.callbacks import DATA_SOURCES, MODEL_SOURCES, Callbacks
from curator.ui.resources import AppSettings
from curator.ui.uploads import UploadLimits, extract_image_folder

torch.set_num_threads(1)


def start(client: Client, app: dict, upload: str | None = None) -> tuple:
    source, folder = ("uploaded zip", None) if upload else ("folder on the server", app["data"])
    return client.predict(
        source, folder, upload, "model folders", app["gen"], app["det"], 3, 4, 0.99, 0.5, 2, 0.7, 2.0, 0,
        api_name="/start_run",
    )  # fmt: skip


def raw_get(url: str, path: str) -> int:
    """GET ``path`` exactly as written (no client-side normalisation of ``..``); the status code."""
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


@pytest.fixture(scope="module")
def served(app):
    """A run with one class run and an anomaly shown and exported, over HTTP: the files involved."""
    client = Client(app["url"], verbose=False)
    assert start(client, app)[0].startswith("✔ run ")
    out = client.predict(0, api_name="/run_class")
    assert out[0].startswith("✔ class a done"), out[0]
    msg = client.predict(api_name="/export")[0]
    assert msg.startswith("✔ exported"), msg
    runs: Path = app["runs"]
    run = next(p.parent for p in runs.glob("*/run.sqlite"))
    return {
        "runs": runs,
        "run": run,
        "pngs": sorted((runs / "_served" / "local" / run.name).rglob("*.png")),  # private mode: key "local"
        "zip": next((runs / "_exports").rglob("*.zip")),
    }


def file_url(app, path) -> str:
    return f"{app['url']}gradio_api/file={path}"


def test_images_the_page_shows_and_the_export_zip_are_served(app, served):
    assert any("prototypes" in p.parts for p in served["pngs"]) and any("images" in p.parts for p in served["pngs"])
    for png in served["pngs"][:3] + [p for p in served["pngs"] if "prototypes" in p.parts][:1]:
        r = httpx.get(file_url(app, png))
        assert r.status_code == 200 and r.content == png.read_bytes()
    assert httpx.get(file_url(app, served["zip"])).status_code == 200


def test_run_database_lock_arrays_uploads_and_outside_files_are_refused(app, served, tmp_path):
    run = served["run"]
    (served["runs"] / "_uploads" / "u").mkdir(parents=True, exist_ok=True)
    (served["runs"] / "_uploads" / "u" / "a.png").write_bytes(served["pngs"][0].read_bytes())
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"secret")
    refused = [run / "run.sqlite", run / "writer.lock", served["runs"] / "_uploads" / "u" / "a.png", outside]
    refused += [p for p in (run / "run.sqlite-wal", run / "run.sqlite-shm") if p.exists()]
    refused += sorted(run.glob("prototypes/*.npy"))[:1] + sorted(run.glob("images/*/*.png"))[:1]
    assert (run / "run.sqlite").is_file() and any(p.suffix == ".npy" for p in refused)
    for path in refused:
        assert path.exists(), path
        assert httpx.get(file_url(app, path)).status_code in (403, 404), path


def test_dot_dot_and_encoded_traversal_are_refused(app, served):
    served_dir = served["runs"] / "_served"
    db = f"{served['run'].name}/run.sqlite"
    for path in (
        f"/gradio_api/file={served_dir}/../{db}",
        f"/gradio_api/file={served_dir}/%2e%2e/{db}",
        f"/gradio_api/file={served_dir}/%2E%2E/{db}",
        f"/gradio_api/file={served_dir}/..%2f{db}",
        f"/gradio_api/file={served_dir}/%2e%2e%2f%2e%2e%2f%2e%2e%2fetc/passwd",
    ):
        assert raw_get(app["url"], path) in (403, 404), path
    png = served["pngs"][0]
    assert raw_get(app["url"], f"/gradio_api/file={png}") == 200  # the same raw client reaches a served image


# --- uploaded zips -----------------------------------------------------------------------------


def _zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def _folder_zip(path: Path, folder: str) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for f in sorted(Path(folder).rglob("*.png")):
            zf.write(f, f"wrapped/{f.relative_to(folder)}")
    return path


def _start_upload(cb: Callbacks, app: dict, upload, det: str | None = None) -> str:
    out = cb.start_run(DATA_SOURCES[2], None, str(upload), MODEL_SOURCES[1], app["gen"], det or app["det"],
                       3, 4, 0.99, 0.5, 2, 0.7, 2.0, 0, None)  # fmt: skip
    return out[0]


def _extracted(settings: AppSettings) -> list[Path]:
    return sorted(settings.uploads_dir.iterdir()) if settings.uploads_dir.is_dir() else []


def test_zip_bomb_is_refused_before_extraction_with_the_limit_named(tmp_path):
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf, zf.open("a/zeros.png", "w") as f:
        zero = bytes(2**20)
        for _ in range(96):  # 96 MB of zeros, about 0.4 MB zipped
            f.write(zero)
    assert bomb.stat().st_size < 2**20
    settings = AppSettings(runs_dir=tmp_path / "runs", max_uncompressed_mb=64)
    cb = Callbacks(settings)
    msg = cb.start_run(DATA_SOURCES[2], None, str(bomb), MODEL_SOURCES[0], None, None, 3, 4, 0.5, 0.5, 2, 0.7, 2.0, 0)[
        0
    ]
    assert msg == "⚠ bomb.zip unpacks to 96 MB; the limit is 64 MB (CURATOR_MAX_UNCOMPRESSED_MB)", msg
    assert _extracted(settings) == []


def test_a_zip_that_understates_its_sizes_is_refused_and_leaves_nothing(tmp_path):
    liar = _zip(tmp_path / "liar.zip", {"a/zeros.png": bytes(8 * 2**20)})
    data = bytearray(liar.read_bytes())
    struct.pack_into("<I", data, 22, 1)  # local header: uncompressed size 1 byte
    struct.pack_into("<I", data, data.rfind(b"PK\x01\x02") + 24, 1)  # central directory: the same
    liar.write_bytes(bytes(data))
    limits = UploadLimits(max_uncompressed_mb=4)
    with pytest.raises(DataError, match="liar.zip is corrupt"):
        extract_image_folder(liar, tmp_path / "up", limits)
    assert not (tmp_path / "up").exists() or list((tmp_path / "up").iterdir()) == []


@pytest.mark.parametrize(
    "limit, entries, expected",
    [
        (
            dict(max_files=5),
            {f"a/{i}.png": b"x" for i in range(6)},
            "has 6 entries; the limit is 5 (CURATOR_MAX_FILES)",
        ),
        (dict(max_upload_mb=1), {"a/noise.png": os.urandom(3 * 2**19)}, "the limit is 1 MB (CURATOR_MAX_UPLOAD_MB)"),
        (dict(max_image_pixels=5000), {"a/big.png": None}, "100x100 = 10000 pixels; the limit is 5000 pixels"),
    ],
    ids=["too many entries", "zip too large", "image too large"],
)
def test_zips_over_a_limit_are_refused_before_extraction(tmp_path, limit, entries, expected):
    if "a/big.png" in entries:
        buf = io.BytesIO()
        Image.new("L", (100, 100)).save(buf, format="PNG")
        entries = {"a/big.png": buf.getvalue()}
    settings = AppSettings(runs_dir=tmp_path / "runs", **limit)
    msg = Callbacks(settings).start_run(
        DATA_SOURCES[2], None, str(_zip(tmp_path / "up.zip", entries)), MODEL_SOURCES[0], None, None,
        3, 4, 0.5, 0.5, 2, 0.7, 2.0, 0,
    )[0]  # fmt: skip
    assert msg.startswith("⚠ ") and expected in msg and "\n" not in msg, msg
    assert _extracted(settings) == []


def test_limits_come_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CURATOR_MAX_FILES", "7")
    monkeypatch.setenv("CURATOR_MAX_UPLOAD_MB", "3")
    s = AppSettings(runs_dir=tmp_path / "runs")
    assert (s.max_files, s.max_upload_mb) == (7, 3)
    assert s.upload_limits == UploadLimits(max_upload_mb=3, max_files=7)
    monkeypatch.setenv("CURATOR_MAX_FILES", "many")
    with pytest.raises(ValueError, match="CURATOR_MAX_FILES='many' is not a whole number"):
        AppSettings(runs_dir=tmp_path / "runs")


def test_an_upload_is_extracted_once_and_a_failed_start_leaves_nothing(app, tmp_path, monkeypatch):
    calls = []
    real = uploads._extract
    monkeypatch.setattr(uploads, "_extract", lambda *a: calls.append(a[3]) or real(*a))
    settings = AppSettings(runs_dir=tmp_path / "runs")
    cb = Callbacks(settings)
    first = _folder_zip(tmp_path / "data.zip", app["data"])
    assert _start_upload(cb, app, first, det=str(tmp_path / "no-detector")).startswith("⚠")
    assert calls == ["data.zip"] and _extracted(settings) == []  # the failed Start removed its extraction
    again = tmp_path / "again" / "data.zip"  # the same file uploaded again: another temporary path
    again.parent.mkdir()
    again.write_bytes(first.read_bytes())
    assert _start_upload(cb, app, first).startswith("✔ run ")
    assert _start_upload(cb, app, again).startswith("✔ run ")
    assert calls == ["data.zip", "data.zip"] and len(_extracted(settings)) == 1
    datas = {RunStore.open(p.parent).config.data for p in settings.runs_dir.glob("*/run.sqlite")}
    assert len(datas) == 1 and Path(datas.pop()).name == "wrapped"
