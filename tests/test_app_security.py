"""Public demo safety: what the live app serves, and what it does with uploaded zips.

The server hands out the images a page shows and the export zip, nothing else: not a run's
database, lock or prototype arrays, not the uploads, not files outside the app's folders, also
when asked with ``..`` or percent-encoded ``..``.
"""

from __future__ import annotations

import http.client
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import torch
from gradio_client import Client

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
    panel = client.predict(0, api_name="/run_class")
    assert panel[0].startswith("✔ done"), panel[0]
    msg = client.predict(api_name="/export")[0]
    assert msg.startswith("✔ exported"), msg
    runs: Path = app["runs"]
    run = next(p.parent for p in runs.glob("*/run.sqlite"))
    return {
        "runs": runs,
        "run": run,
        "pngs": sorted((runs / "_served" / run.name).rglob("*.png")),
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
