"""The live app in public mode (issue #11): two visitors, over the API and in two browsers.

The real app (``build_demo`` + ``launch_kwargs``, the visitor middleware included) on 127.0.0.1
over tiny models and 2-class ImageFolders. Each visitor has their own ``curator_visitor`` cookie.
A visitor never lists, reopens, changes or downloads another's run ("run … not found", 404); the
sweep removes an old run with its served images and exports while its visitor's page stays
usable; two visitors' runs with different classes take turns on the one device queue and keep
their own classes and exports. Browser screenshots: ``test-artifacts/browser/public-*.png``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import threading
import time
import zipfile
from pathlib import Path

import httpx
import pytest
import test_app_browser
import torch
from conftest import make_tiny_detector, make_tiny_generator, serving, write_image_folder
from gradio_client import Client, handle_file
from gradio_client.utils import Status

from curator.store import RunStore
from curator.ui import cleanup, jobs, visitors
from curator.ui.resources import AppSettings

torch.set_num_threads(1)

browser = test_app_browser.browser  # headless Chromium (skips without one, unless CI=true)
ENV = ("SPACE_ID", "CURATOR_PUBLIC", "CURATOR_MAX_AGE_HOURS", "CURATOR_DISK_CAP_MB", "CURATOR_SWEEP_INTERVAL_S",
       "CURATOR_SECRET")  # fmt: skip
NO_RUN = "⚠ no run open: start a run in Set-up, or reopen one"


@pytest.fixture(scope="module")
def pub(tmp_path_factory):
    """The app launched in public mode on 127.0.0.1 (free port) over tiny models, with two ImageFolders
    of two classes each: ``a``/``b`` and ``cat``/``dog``."""
    saved = {var: os.environ.pop(var) for var in ENV if var in os.environ}
    root = tmp_path_factory.mktemp("public-app")
    data = write_image_folder(root / "data", {"a": 12, "b": 12}, size=20)
    pets = write_image_folder(root / "pets", {"cat": 12, "dog": 12}, size=20, seed=1)
    make_tiny_generator(["a", "b"], resolution=20).save_pretrained(root / "gen")
    make_tiny_detector(["a", "b"], input_size=20).save(root / "det")
    # the operator offers the tiny models and data folders under root (server_folders); nothing else
    settings = AppSettings(runs_dir=root / "runs", public=True, server_folders=[root])
    try:
        with serving(settings) as url:
            yield {"url": url, "data": str(data), "pets": str(pets), "gen": str(root / "gen"),
                   "det": str(root / "det"), "settings": settings}  # fmt: skip
    finally:
        os.environ.update(saved)


class Visitor:
    """An API visitor with a cookie of their own (as a browser would keep it)."""

    def __init__(self, pub: dict):
        self.pub = pub
        self.token = secrets.token_urlsafe(24)
        self.key = visitors.owner_key(f"visitor:{self.token}", pub["settings"])
        self.client = Client(
            pub["url"], verbose=False, headers={"Cookie": f"{visitors.COOKIE}={self.token}"}, download_files=False
        )

    def __call__(self, *args, api: str):
        return self.client.predict(*args, api_name=api)

    def start(self, folder: str | None = None) -> tuple:
        return self(
            "folder on the server", folder or self.pub["data"], None, "model folders", self.pub["gen"],
            self.pub["det"], 3, 4, 0.99, 0.5, 2, 0.7, 2.0, 0,
            api="/start_run",
        )  # fmt: skip

    def start_ok(self, folder: str | None = None) -> Path:
        out = self.start(folder)
        assert out[0].startswith("✔ run "), out[0]
        assert out[1] == Path(out[1]).name, out[1]  # the browser keeps the run's name, never a server path
        return self.pub["settings"].runs_dir / out[1]


def get(pub: dict, path, token: str | None) -> httpx.Response:
    cookies = {visitors.COOKIE: token} if token else None
    return httpx.get(f"{pub['url']}gradio_api/file={path}", cookies=cookies, timeout=30)


def choices(update: dict) -> list[str]:
    """The runs a runs-dropdown update offers (their names: public mode shows no server path)."""
    return [value for _, value in update["choices"]]


# --- a. two API visitors ---------------------------------------------------------------------------


def test_a_visitor_never_lists_opens_or_changes_another_visitors_run(pub):
    a, b = Visitor(pub), Visitor(pub)
    run_a = a.start_ok()
    rid = run_a.name
    assert visitors.owner_of_run(run_a) == a.key
    ran = a(0, api="/run_class")
    assert ran[0].startswith("✔ class a done"), ran[0]
    aid = ran[4]
    dropped = a(0, aid, None, api="/drop_image")
    assert dropped[0].startswith(f"✔ #{aid}: dropped"), dropped[0]

    # B, with no run open: A's run by path, by id, by a path that leads to it: not found
    for name in (str(run_a), rid, f"{run_a.parent}/run-x/../{rid}"):
        out = b(name, api="/open_run")
        assert out[0] == f"⚠ run {rid} not found", (name, out[0])
    assert a(rid, api="/open_run")[0] == f"✔ reopened run {rid}"  # A's own: found (the same words work)
    # every handler of B's has nothing open: none reaches A's run
    for args, api in (
        ((0,), "/show_class"),
        ((0, aid), "/show_anomaly"),
        ((0, aid, None), "/accept_pick"),
        ((0, aid, None), "/keep_original"),
        ((0, aid, None), "/drop_image"),
        ((0, aid), "/undo"),
        ((0, aid), "/next_unreviewed"),
        ((0,), "/run_class"),
        ((0, aid), "/regenerate"),
        ((), "/export"),
        ((), "/cancel"),
    ):
        out = b(*args, api=api)
        assert (out if isinstance(out, str) else out[0]) == NO_RUN, (api, out)

    # B's own run: its list holds it and not A's; B's undo undoes B's decisions only
    out = b.start()
    run_b = pub["settings"].runs_dir / out[1]
    assert choices(out[2]) == [run_b.name] and rid not in str(out)
    assert b(str(run_a), api="/open_run")[0] == f"⚠ run {rid} not found"  # also with a run of its own open
    b_ran = b(0, api="/run_class")
    b_aid = b_ran[4]
    assert b(0, b_aid, None, api="/keep_original")[0].startswith(f"✔ #{b_aid}: original kept")
    assert b(0, b_aid, api="/undo")[0].startswith(f"✔ undone on #{b_aid}")
    assert b(0, b_aid, api="/undo")[0] == "⚠ nothing to undo"
    assert choices(a(rid, api="/open_run")[2]) == [rid]  # A's list: A's run only

    store = RunStore.open(run_a)
    try:
        assert (store.decision(aid).choice, store.decision(aid).source) == ("drop", "user") and [
            c.status for c in store.classes()
        ] == ["done", "pending"]
    finally:
        store.close()
    assert not (pub["settings"].exports_dir / b.key).exists()  # B's export of nothing wrote nothing
    assert a(0, aid, api="/undo")[0].startswith(f"✔ undone on #{aid}")  # A's decision was still there


def test_public_mode_answers_with_run_names_never_server_paths(pub):
    """Start and reopen answer with run names: the runs dropdown's values and the run the browser
    keeps; no message shows a folder of the server (runs, data, models)."""
    v = Visitor(pub)
    root = str(pub["settings"].runs_dir.parent)
    started = v.start()
    assert started[0].startswith("✔ run "), started[0]
    rid = started[1]
    dropdown = started[2]
    assert (rid, dropdown["value"], choices(dropdown)) == (Path(rid).name, rid, [rid]), started
    reopened = v(rid, api="/open_run")
    assert reopened[:2] == (f"✔ reopened run {rid}", rid) and choices(reopened[2]) == [rid]
    assert v(0, api="/run_class")[0].startswith("✔ class a done")
    exported = v(api="/export")
    assert exported[0].startswith("✔ exported"), exported[0]
    refused = v("/elsewhere/run-x", api="/open_run")[0]
    assert refused.startswith("⚠ /elsewhere/run-x is not a run of this app"), refused
    for out in (started, reopened):  # all they answer
        assert root not in json.dumps(out), out
    for message in (started[0], reopened[0], exported[0], refused):  # (a download's URL is Gradio's file route)
        assert root not in message, message


# --- b. files ----------------------------------------------------------------------------------------


def test_served_images_and_the_export_zip_go_to_their_owner_only(pub):
    s = pub["settings"]
    a, b = Visitor(pub), Visitor(pub)
    run = a.start_ok()
    ran = a(0, api="/run_class")
    images = [ran[6]["value"]["path"], ran[7]["path"], ran[2]["value"][0]["image"]["path"]]  # flagged, prototype
    assert all(Path(p).is_relative_to(s.served_dir / a.key / run.name) for p in images), images
    msg = a(api="/export")[0]
    assert msg.startswith(f"✔ exported 3 images as {run.name}-export.zip") and str(s.runs_dir) not in msg
    zips = sorted((s.exports_dir / a.key).rglob("*.zip"))
    assert zips == [s.exports_dir / a.key / run.name / f"{run.name}-export.zip"]

    for path in [*images, zips[0]]:
        r = get(pub, path, a.token)
        assert r.status_code == 200 and r.content == Path(path).read_bytes(), path
        for token in (b.token, None):
            r = get(pub, path, token)
            assert (r.status_code, r.text) == (404, "not found"), (path, token)
    refused = [run / "run.sqlite", run / "writer.lock", run / "owner", next(run.glob("images/*/*.png")), s.secret_file]
    for path in refused:
        assert path.exists(), path
        for token in (a.token, b.token, None):
            assert get(pub, path, token).status_code == 404, (path, token)


# --- c. two browsers -----------------------------------------------------------------------------------


def _dropdown_options(page, label: str) -> list[str]:
    """The option texts a dropdown offers (opened, read, closed)."""
    box = page.get_by_label(label, exact=True)
    box.click()
    page.wait_for_timeout(300)
    texts = page.locator(f"#{box.get_attribute('aria-controls')} [role=option]").all_inner_texts()
    box.press("Escape")
    return texts


def test_two_browsers_keep_to_their_own_runs(browser, pub):
    from test_app_browser import fill_number, msg, shot, wait_msg

    url = pub["url"]
    ctx_a = browser.new_context(viewport={"width": 1400, "height": 900})
    ctx_b = browser.new_context(viewport={"width": 1400, "height": 900})
    page_a, page_b = ctx_a.new_page(), ctx_b.new_page()
    for page in (page_a, page_b):
        page.set_default_timeout(60_000)
    try:
        page_a.goto(url)
        page_a.get_by_text("Device in use:").wait_for()
        page_a.get_by_label("folder on the server").check()
        page_a.get_by_label("ImageFolder path on the server").fill(pub["data"])
        page_a.get_by_label("model folders").check()
        page_a.get_by_label("Generator folder").fill(pub["gen"])
        page_a.get_by_label("Detector folder").fill(pub["det"])
        fill_number(page_a, "IPC (images per class)", 3)
        fill_number(page_a, "K (candidates per anomaly)", 4)
        fill_number(page_a, "DDIM steps", 2)
        fill_number(page_a, "tau (confidence threshold)", 0.99)
        page_a.locator("#start-btn").click()
        wait_msg(page_a, "setup-msg", "run run-.* created")
        rid = re.search(r"run-[\w-]+", page_a.locator("#run-info").inner_text()).group(0)
        run = pub["settings"].runs_dir / rid
        page_a.get_by_role("tab", name="Curate").click()
        page_a.locator("#run-class-btn").click()
        wait_msg(page_a, "run-msg", "class a done")
        page_a.locator("#anomaly-md").get_by_text("Anomaly #").wait_for()
        aid = int(float(page_a.locator("#anomaly-id input").input_value()))
        page_a.locator("#drop-btn").click()
        wait_msg(page_a, "status", f"#{aid}: dropped")
        shot(page_a, "public-01-a-dropped")
        key_a = visitors.owner_of_run(run)
        cookie_a = next(c["value"] for c in ctx_a.cookies() if c["name"] == visitors.COOKIE)
        assert key_a == visitors.owner_key(f"visitor:{cookie_a}", pub["settings"])  # the browser's cookie owns it
        served = next((pub["settings"].served_dir / key_a / rid).rglob("*.png"))

        # B: another browser, another cookie; A's run is neither offered nor reopened, A's files 404
        page_b.goto(url)
        page_b.get_by_text("Device in use:").wait_for()
        cookie_b = next(c["value"] for c in ctx_b.cookies() if c["name"] == visitors.COOKIE)
        assert cookie_b != cookie_a
        assert not any(rid in t for t in _dropdown_options(page_b, "Existing runs"))
        box = page_b.get_by_label("Existing runs", exact=True)
        box.fill(rid)
        box.press("Enter")
        page_b.locator("#open-btn").click()
        assert wait_msg(page_b, "setup-msg", "not found") == f"⚠ run {rid} not found"
        assert "No run open" in page_b.locator("#run-info").inner_text()
        assert page_b.request.get(f"{url}gradio_api/file={served}").status == 404
        assert page_a.request.get(f"{url}gradio_api/file={served}").status == 200
        shot(page_b, "public-02-b-not-found")

        # A reloads: its run, its decision and its list are still there
        page_a.reload()
        page_a.locator("#run-info").get_by_text(rid).first.wait_for()
        # the reload reopens the tab it was on (Curate) as its last step: wait for that before leaving it,
        # or the restore switches back under the click
        page_a.get_by_role("tab", name="Curate", selected=True).wait_for()
        page_a.locator("#candidates .cards").first.wait_for(state="visible")
        page_a.get_by_role("tab", name="Set-up").click()
        assert any(rid in t for t in _dropdown_options(page_a, "Existing runs"))
        page_a.get_by_role("tab", name="Curate").click()
        page_a.locator("#anomaly-id input").fill(str(aid))
        page_a.locator("#show-btn").click()
        page_a.locator("#anomaly-md").get_by_text("Decision: dropped").first.wait_for()
        shot(page_a, "public-03-a-reloaded")
        assert msg(page_b, "setup-msg") == f"⚠ run {rid} not found"
        store = RunStore.open(run)
        try:
            assert store.decision(aid).choice == "drop"
        finally:
            store.close()
    except Exception:
        shot(page_a, "public-failure-a")
        shot(page_b, "public-failure-b")
        raise
    finally:
        ctx_a.close()
        ctx_b.close()


# --- d. the sweep on the live app ----------------------------------------------------------------------


def test_the_sweep_removes_an_old_run_and_its_visitor_is_told_not_found(pub):
    s = pub["settings"]
    old, fresh = Visitor(pub), Visitor(pub)
    run = old.start_ok()
    assert old(0, api="/run_class")[0].startswith("✔ class a done")
    assert old(api="/export")[0].startswith("✔ exported")
    kept = fresh.start_ok()
    assert fresh(0, api="/run_class")[0].startswith("✔ class a done")
    served, exported = s.served_dir / old.key / run.name, s.exports_dir / old.key / run.name
    assert served.is_dir() and exported.is_dir()
    assert cleanup.sweep(s).removed == []  # nothing is old yet

    then = time.time() - 25 * 3600
    for p in (run, run / "run.sqlite", run / "run.sqlite-wal"):
        if p.exists():
            os.utime(p, (then, then))
    report = cleanup.sweep(s)
    assert {run, served, exported} <= set(report.removed) and report.kept_busy == []
    assert not run.exists() and not served.exists() and not exported.exists()
    assert kept.exists() and (s.served_dir / fresh.key / kept.name).is_dir()

    gone = f"⚠ run {run.name} not found"
    assert old(0, api="/show_class")[0] == gone
    assert old(0, None, api="/undo")[0] == gone
    assert old(api="/export")[0] == gone
    assert old(run.name, api="/open_run")[0] == gone
    assert fresh(0, api="/show_class")[0].startswith("class a: 3 images")
    assert old.start_ok().exists()  # the visitor carries on with a new run


# --- e. two runs with different classes through the one device queue ----------------------------------


def test_runs_with_different_classes_take_turns_on_the_device_and_keep_their_own(pub, monkeypatch):
    s = pub["settings"]
    jobs_seen: list[tuple[str, float, float]] = []
    real = jobs.run_stream
    queued = threading.Event()  # the second visitor's /run_all has reached the server

    def timed(run_path, *args, **kwargs):
        t0 = time.monotonic()
        if not jobs_seen:  # hold the first job until the other visitor's call waits for the device
            queued.wait(20)
        try:
            yield from real(run_path, *args, **kwargs)
        finally:
            time.sleep(0.2)  # long enough that jobs running side by side would overlap
            jobs_seen.append((Path(run_path).name, t0, time.monotonic()))

    monkeypatch.setattr(jobs, "run_stream", timed)
    letters, pets = Visitor(pub), Visitor(pub)
    run_l = letters.start_ok()
    first = letters.client.submit(None, None, api_name="/run_all")
    run_p = pets.start_ok(pub["pets"])  # while the letters' first job runs
    second = pets.client.submit(None, None, api_name="/run_all")
    deadline = time.monotonic() + 20
    while second.status().code in (Status.STARTING, Status.JOINING_QUEUE) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    waiting = second.status().code
    queued.set()
    assert waiting == Status.IN_QUEUE, waiting  # behind the letters' job, not beside it
    results = {}
    threads = [threading.Thread(target=lambda n=n, j=j: results.update({n: j.result(timeout=120)}))
               for n, j in (("letters", first), ("pets", second))]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join(150)
    assert results["letters"][0].startswith("✔ all 2 classes done"), results["letters"][0]
    assert results["pets"][0].startswith("✔ all 2 classes done"), results["pets"][0]

    assert sorted(name for name, *_ in jobs_seen) == sorted([run_l.name, run_p.name])  # both classes: one job
    spans = sorted(jobs_seen, key=lambda j: j[1])
    for (_, _, end), (_, start, _) in zip(spans, spans[1:], strict=False):
        assert start >= end, f"jobs overlapped on the device: {spans}"

    for visitor, run, names in ((letters, run_l, ["a", "b"]), (pets, run_p, ["cat", "dog"])):
        store = RunStore.open(run)
        try:
            assert store.class_names == names and [c.status for c in store.classes()] == ["done", "done"]
        finally:
            store.close()
        exported = re.match(r"✔ exported (\d+) images as ", visitor(api="/export")[0])
        assert exported and int(exported.group(1)) > 0
        zips = sorted((s.exports_dir / visitor.key).rglob("*.zip"))
        assert zips == [s.exports_dir / visitor.key / run.name / f"{run.name}-export.zip"]
        with zipfile.ZipFile(zips[0]) as zf:
            pngs = [n for n in zf.namelist() if n.endswith(".png")]
            info = json.loads(zf.read("run.json"))
        assert len(pngs) == int(exported.group(1)) and {n.split("/")[0] for n in pngs} <= set(names)
        assert (info["run_id"], info["class_names"]) == (run.name, names)


# --- f. a run folder smuggled in through an upload -----------------------------------------------------


def test_a_run_folder_inside_an_upload_is_never_opened(pub, tmp_path):
    """A visitor's zip holds a valid ImageFolder and, inside it, a copy of one of their own runs with
    their own key in its ``owner`` file (both visible to them). Once a Start has extracted it, that
    folder lies inside the runs folder: it must not open as a run (its database and cached UMAP
    pickle would be the visitor's own bytes), by path, by relative path or through the browser's
    saved run."""
    s = pub["settings"]
    v = Visitor(pub)
    real = v.start_ok()
    assert v(0, api="/run_class")[0].startswith("✔ class a done")
    zip_path = tmp_path / "data.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:
        for f in sorted(Path(pub["data"]).rglob("*.png")):
            zf.write(f, str(f.relative_to(pub["data"])))
        for f in sorted(real.rglob("*")):
            if f.is_file() and f.name != "writer.lock":
                zf.write(f, f"a/zz-run/{f.relative_to(real)}")
    out = v.client.predict(
        "uploaded zip", None, handle_file(str(zip_path)), "model folders", pub["gen"], pub["det"],
        3, 4, 0.99, 0.5, 2, 0.7, 2.0, 0, api_name="/start_run",
    )  # fmt: skip
    assert out[0].startswith("✔ run "), out[0]
    smuggled = next(s.uploads_dir.glob("upload-*/a/zz-run"))
    assert (smuggled / "run.sqlite").is_file() and visitors.owner_of_run(smuggled) == v.key
    for name in (str(smuggled), str(smuggled.relative_to(s.runs_dir))):
        assert v(name, api="/open_run")[0] == "⚠ run zz-run not found", name
    assert not visitors.owns(smuggled, v.key, s) and visitors.owns(real, v.key, s)
    link = s.runs_dir / "run-link"  # a link in the runs folder to it (the app never makes one) is no run either
    link.symlink_to(smuggled, target_is_directory=True)
    try:
        assert not visitors.owns(link, v.key, s) and v(link.name, api="/open_run")[0] == "⚠ run zz-run not found"
    finally:
        link.unlink()
    for bad in (s.served_dir / v.key / real.name, s.exports_dir / v.key / real.name, s.runs_dir / "_x", s.runs_dir):
        assert not visitors.owns(bad, v.key, s), bad


# --- the load benchmark ----------------------------------------------------------------------------------


def test_the_load_benchmark_quick_mode_passes_its_checks(tmp_path):
    """``python -m benchmarks.load --quick``: 2 visitors against the app as a subprocess, then the GPU calls."""
    from benchmarks import load

    argv = ["--quick", "--threads", "1", "--work", str(tmp_path / "work"), "--out", str(tmp_path)]
    assert load.main(argv) == 0
    text = (tmp_path / "LOAD.md").read_text()
    assert "| visitors, all checks passed | 2, **yes** |" in text
    assert "| device jobs / overlapping pairs | 2 / 0 |" in text  # Run all: one job a visitor
    assert text.count("| ok |") == 2 and "`run_class_job` | class v0-left" in text and "`regenerate_job`" in text


def test_server_folders_outside_what_the_operator_offers_are_refused(pub, tmp_path):
    """In public mode a visitor may name a dataset or model folder only inside the operator's
    ``server_folders``, never inside the runs folder (uploads, other visitors' served images)."""
    v = Visitor(pub)
    outside = write_image_folder(tmp_path / "elsewhere", {"a": 12, "b": 12}, size=20)
    runs = pub["settings"].runs_dir
    for folder in (str(outside), str(runs / "_served"), str(runs)):
        out = v.start(folder)
        assert out[0] == f"⚠ dataset folder {folder.replace(str(runs), 'runs')} is not offered on this server", out[0]
    out = v(
        "folder on the server", pub["data"], None, "model folders", str(tmp_path), pub["det"], 3, 4, 0.99, 0.5, 2,
        0.7, 2.0, 0, api="/start_run",
    )  # fmt: skip
    assert out[0] == f"⚠ generator folder {tmp_path} is not offered on this server"
    assert not [p for p in runs.glob("*/run.sqlite") if visitors.owner_of_run(p.parent) == v.key]
