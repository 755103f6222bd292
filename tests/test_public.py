"""Public mode (issue #11): settings from the environment, who owns what, the cookie and file gate
against a live server, the sweep of old runs, per-run generator copies, one GPU call per class."""

from __future__ import annotations

import http.client
import importlib
import os
import stat
import sys
import time
import types
from pathlib import Path
from urllib.parse import quote, urlsplit

import httpx
import pytest
import test_backends
import torch
from conftest import make_tiny_detector, make_tiny_generator, write_image_folder

from curator.config import RunConfig
from curator.engine import Cancelled, LocalEngine
from curator.models.loading import load_generator, prepare_generator
from curator.store import RunStore
from curator.ui import cleanup, jobs, resources, serving, visitors
from curator.ui.resources import AppSettings

torch.set_num_threads(1)

sd_folder = test_backends.sd_folder  # tiny Stable Diffusion and DiT pipelines, built offline
dit_folder = test_backends.dit_folder
ENV = ("SPACE_ID", "CURATOR_PUBLIC", "CURATOR_MAX_AGE_HOURS", "CURATOR_DISK_CAP_MB", "CURATOR_SWEEP_INTERVAL_S",
       "CURATOR_SECRET")  # fmt: skip
HOUR = 3600.0


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in ENV:
        monkeypatch.delenv(var, raising=False)


def public(tmp_path, **kw) -> AppSettings:
    return AppSettings(runs_dir=tmp_path / "runs", public=True, **kw)


# --- settings --------------------------------------------------------------------------------------


def test_public_mode_and_its_secret_come_from_the_environment(tmp_path, monkeypatch):
    private = AppSettings(runs_dir=tmp_path / "runs")
    assert not private.public and private.secret == b"" and not private.secret_file.exists()
    assert (private.max_age_hours, private.disk_cap_mb, private.sweep_interval_s) == (24.0, 5000, 600.0)
    monkeypatch.setenv("SPACE_ID", "someone/curator")
    s = AppSettings(runs_dir=tmp_path / "runs")
    assert s.public and len(s.secret) == 32
    assert stat.S_IMODE(s.secret_file.stat().st_mode) == 0o600
    assert AppSettings(runs_dir=tmp_path / "runs").secret == s.secret  # read back, not made again
    monkeypatch.setenv("CURATOR_PUBLIC", "0")  # an explicit 0 wins, also on a Space
    assert not AppSettings(runs_dir=tmp_path / "runs").public
    monkeypatch.delenv("SPACE_ID")
    for value in ("1", "true", "YES"):
        monkeypatch.setenv("CURATOR_PUBLIC", value)
        assert AppSettings(runs_dir=tmp_path / "runs").public
    monkeypatch.setenv("CURATOR_MAX_AGE_HOURS", "0.5")
    monkeypatch.setenv("CURATOR_DISK_CAP_MB", "100")
    monkeypatch.setenv("CURATOR_SWEEP_INTERVAL_S", "30")
    monkeypatch.setenv("CURATOR_SECRET", "a secret of at least 16 characters")
    s = AppSettings(runs_dir=tmp_path / "other")
    assert (s.max_age_hours, s.disk_cap_mb, s.sweep_interval_s) == (0.5, 100, 30.0)
    assert s.secret == b"a secret of at least 16 characters" and not s.secret_file.exists()


@pytest.mark.parametrize(
    "var, value, message",
    [
        ("CURATOR_PUBLIC", "maybe", "CURATOR_PUBLIC='maybe' must be 1, true, yes"),
        ("CURATOR_MAX_AGE_HOURS", "a day", "CURATOR_MAX_AGE_HOURS='a day' is not a number"),
        ("CURATOR_MAX_AGE_HOURS", "-1", "CURATOR_MAX_AGE_HOURS='-1' must be a positive"),
        ("CURATOR_MAX_AGE_HOURS", "nan", "CURATOR_MAX_AGE_HOURS='nan' must be a positive"),
        ("CURATOR_DISK_CAP_MB", "1.5", "CURATOR_DISK_CAP_MB='1.5' is not a whole number"),
        ("CURATOR_DISK_CAP_MB", "0", "CURATOR_DISK_CAP_MB='0' must be a positive"),
        ("CURATOR_SWEEP_INTERVAL_S", "often", "CURATOR_SWEEP_INTERVAL_S='often' is not a number"),
        ("CURATOR_SECRET", "short", "CURATOR_SECRET must be at least 16 characters"),
    ],
)
def test_bad_environment_values_name_the_variable(tmp_path, monkeypatch, var, value, message):
    monkeypatch.setenv(var, value)
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        AppSettings(runs_dir=tmp_path / "runs")


# --- owners ----------------------------------------------------------------------------------------


class FakeRequest:
    """What owner_of reads of a gr.Request."""

    def __init__(self, username=None, cookies=None, session_hash=None, scope=None):
        self.username, self.cookies, self.session_hash = username, cookies or {}, session_hash
        self.request = types.SimpleNamespace(scope=scope) if scope is not None else None


TOKEN_A, TOKEN_B = "A" * 32, "b-_" + "B" * 29


def test_owner_of_prefers_login_then_cookie_then_session(tmp_path):
    s = public(tmp_path)
    cookie = {visitors.COOKIE: TOKEN_A}
    assert visitors.owner_of(FakeRequest("alice", cookie, "h1"), s) == "user:alice"
    oauth = {"session": {"oauth_info": {"userinfo": {"preferred_username": "bob"}, "expires_at": time.time() + 60}}}
    assert visitors.owner_of(FakeRequest(None, cookie, "h1", oauth), s) == "user:bob"
    expired = {"session": {"oauth_info": {"userinfo": {"preferred_username": "bob"}, "expires_at": 1}}}
    assert visitors.owner_of(FakeRequest(None, cookie, "h1", expired), s) == f"visitor:{TOKEN_A}"
    assert visitors.owner_of(FakeRequest(None, cookie, "h1"), s) == f"visitor:{TOKEN_A}"
    assert visitors.owner_of(FakeRequest(None, {visitors.COOKIE: "forged"}, "h1"), s) == "session:h1"
    # a cookie the middleware made for this very request (the client sends none): the session counts
    assert visitors.owner_of(FakeRequest(None, cookie, "h1", {visitors.FRESH: True}), s) == "session:h1"
    assert visitors.owner_of(FakeRequest(None, None, "h2"), s) == "session:h2"
    with pytest.raises(visitors.OwnerError, match="cannot tell who"):
        visitors.owner_of(FakeRequest(), s)
    with pytest.raises(visitors.OwnerError, match="needs the request"):
        visitors.owner_of(None, s)
    private = AppSettings(runs_dir=tmp_path / "private")
    assert visitors.owner_of(FakeRequest("alice", cookie, "h1"), private) is None
    assert visitors.owner_of(None, private) is None


def test_owner_keys_are_stable_secret_and_distinct(tmp_path):
    s = public(tmp_path)
    a, b = visitors.owner_key("visitor:" + TOKEN_A, s), visitors.owner_key("visitor:" + TOKEN_B, s)
    assert a == visitors.owner_key("visitor:" + TOKEN_A, public(tmp_path)) and a != b
    assert len(a) == 32 and int(a, 16) >= 0 and TOKEN_A not in a
    other = AppSettings(runs_dir=tmp_path / "elsewhere", public=True)  # another secret, other keys
    assert visitors.owner_key("visitor:" + TOKEN_A, other) != a
    assert visitors.owner_key("user:alice", s) != visitors.owner_key("visitor:alice", s)
    assert visitors.owner_key(None, AppSettings(runs_dir=tmp_path / "p")) == "local"
    assert visitors.request_key(FakeRequest("alice"), s) == visitors.owner_key("user:alice", s)
    with pytest.raises(visitors.OwnerError):
        visitors.owner_key(None, s)


def test_claim_and_owns(tmp_path):
    s, run = public(tmp_path), tmp_path / "runs" / "run-x"
    run.mkdir()
    a, b = visitors.owner_key("visitor:" + TOKEN_A, s), visitors.owner_key("visitor:" + TOKEN_B, s)
    assert not visitors.owns(run, a, s)  # nobody claimed it
    visitors.claim(run, a)
    assert visitors.owns(run, a, s) and not visitors.owns(run, b, s) and not visitors.owns(run, "", s)
    assert sorted(p.name for p in run.iterdir()) == ["owner"]  # written aside, then renamed
    visitors.claim(run, b)
    assert visitors.owns(run, b, s) and not visitors.owns(run, a, s)
    assert visitors.owned_runs([("label", str(run)), ("other", str(tmp_path / "nope"))], b, s) == [("label", str(run))]
    private = AppSettings(runs_dir=tmp_path / "runs")
    assert visitors.owns(run, "local", private) and visitors.owns(tmp_path / "unclaimed", "local", private)


# --- serving ---------------------------------------------------------------------------------------


def _png(path: Path, data: bytes = b"\x89PNG fake") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_served_paths_and_exports_are_per_owner(tmp_path):
    s = public(tmp_path)
    img = _png(s.runs_dir / "run-x" / "images" / "0" / "a.png")
    a = visitors.owner_key("visitor:" + TOKEN_A, s)
    served = Path(serving.served_path(s, img, a))
    assert served == s.served_dir / a / "run-x" / "images" / "0" / "a.png" and os.path.samefile(served, img)
    assert serving.served_path(s, img) == str(s.served_dir / "local" / "run-x" / "images" / "0" / "a.png")
    for bad in ("../x", "", ".", "a/b", "..", "_x/.."):
        with pytest.raises(ValueError, match="not a plain folder name"):
            serving.served_path(s, img, bad)
    with pytest.raises(ValueError, match="not a run image"):
        serving.served_path(s, _png(s.runs_dir / "run-x" / "run.png"), a)
    assert serving.export_dir(s, a, "run-x") == s.exports_dir / a / "run-x"
    with pytest.raises(ValueError):
        serving.export_dir(s, a, "../run-x")
    assert serving.file_url(served) == f"gradio_api/file={served}"
    assert serving.file_url(tmp_path / "a b.png") == f"gradio_api/file={quote(str(tmp_path))}/a%20b.png"


# --- the live server -------------------------------------------------------------------------------


def raw(url: str, path: str, cookie: str | None = None, method: str = "GET", headers: dict | None = None):
    """A request sent exactly as written (no client-side normalisation of ``..``)."""
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        hdrs = dict(headers or {})
        if cookie:
            hdrs["Cookie"] = f"{visitors.COOKIE}={cookie}"
        conn.request(method, path, headers=hdrs)
        r = conn.getresponse()
        return r.status, r.read(), r.getheader("set-cookie")
    finally:
        conn.close()


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """The real app in public mode with the visitor middleware, on 127.0.0.1."""
    from curator.ui import build_demo, launch_kwargs

    root = tmp_path_factory.mktemp("live")
    settings = AppSettings(runs_dir=root / "runs", public=True)
    demo = build_demo(settings)
    kw = launch_kwargs(settings)
    kw.setdefault("app_kwargs", visitors.app_kwargs(settings))  # layout adds it itself once integrated
    demo.queue().launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True, **kw)
    try:
        yield {"url": demo.local_url, "settings": settings}
    finally:
        demo.close()


def _new_visitor(url: str) -> str:
    r = httpx.get(url)
    assert r.status_code == 200
    header = r.headers["set-cookie"]
    assert "HttpOnly" in header and "SameSite=Lax" in header and "Path=/" in header and "Secure" not in header
    token = r.cookies[visitors.COOKIE]
    assert visitors.valid_token(token)
    return token


def test_each_visitor_is_served_only_their_own_files(live):
    url, s = live["url"], live["settings"]
    ta, tb = _new_visitor(url), _new_visitor(url)
    assert ta != tb
    ka, kb = (visitors.owner_key("visitor:" + t, s) for t in (ta, tb))
    a_png = _png(s.served_dir / ka / "run-x" / "images" / "0" / "a.png", b"image of A")
    b_png = _png(s.served_dir / kb / "run-y" / "images" / "0" / "b.png", b"image of B")
    a_zip = _png(s.exports_dir / ka / "run-x" / "run-x-export.zip", b"zip of A")

    def get(path, token):
        return httpx.get(f"{url}gradio_api/file={path}", cookies={visitors.COOKIE: token} if token else None)

    r = get(a_png, ta)
    assert (r.status_code, r.content) == (200, b"image of A") and "set-cookie" not in r.headers
    assert get(a_zip, ta).content == b"zip of A"
    assert get(b_png, tb).content == b"image of B"
    for path, token in ((b_png, ta), (a_png, tb), (a_zip, tb), (a_png, None), (a_png, "x" * 31)):
        r = get(path, token)
        assert (r.status_code, r.text) == (404, "not found"), (path, token)
    r = get(a_png, None)
    assert r.cookies.get(visitors.COOKIE) and r.cookies[visitors.COOKIE] != ta  # a newcomer gets a cookie
    assert raw(url, f"/gradio_api/file={a_png}", ta, "HEAD")[0] == 200
    assert raw(url, f"/gradio_api/file={b_png}", ta, "HEAD")[0] == 404
    assert raw(url, f"/gradio_api/file/{b_png}", ta)[0] == 404  # the deprecated route too
    # the login of the web page, and API calls (queue, server-sent events) pass through
    from gradio_client import Client

    client = Client(url, verbose=False)
    assert client.cookies.get(visitors.COOKIE)  # the client keeps the cookie /config gave it
    assert client.predict(str(s.runs_dir / "nope"), api_name="/open_run")[0].startswith("⚠")


def test_traversal_and_run_files_are_refused(live):
    url, s = live["url"], live["settings"]
    ta, tb = _new_visitor(url), _new_visitor(url)
    ka, kb = (visitors.owner_key("visitor:" + t, s) for t in (ta, tb))
    _png(s.served_dir / ka / "run-x" / "images" / "a.png")
    _png(s.served_dir / kb / "run-y" / "images" / "b.png", b"image of B")
    run = s.runs_dir / "run-y"
    (run / "images").mkdir(parents=True)
    (run / "run.sqlite").write_bytes(b"SQLite format 3\x00")
    _png(run / "images" / "b.png")
    served, b_rel = s.served_dir, f"{kb}/run-y/images/b.png"
    for path in (
        f"{served}/{ka}/../{b_rel}",
        f"{served}/{ka}/%2e%2e/{b_rel}",
        f"{served}/{ka}/%2E%2E/{b_rel}",
        f"{served}/{ka}/..%2f{b_rel}",
        f"{served}/{ka}/%252e%252e/{b_rel}",
        f"{served}/{ka}/%25252e%25252e%25252f{b_rel}",
        f"{served}/{ka}/run-x/../../../run-y/run.sqlite",
        f"{served}/{ka}/%2e%2e/%2e%2e/run-y/run.sqlite",
        f"{run}/run.sqlite",
        f"{run}/images/b.png",
        f"{s.runs_dir}/_secret",
        f"{s.uploads_dir}/u/a.png",
        f"{served}/{ka}",
        f"{served}/./{kb}/run-y/images/b.png",
    ):
        status, body, _ = raw(url, f"/gradio_api/file={path}", ta)
        assert (status, body) == (404, b"not found"), path
    assert raw(url, f"/gradio_api/file={served}/{b_rel}", tb)[:2] == (200, b"image of B")


def test_the_cookie_is_secure_behind_https_and_reaches_the_request_itself(tmp_path):
    import asyncio

    s = public(tmp_path)
    seen = {}

    async def app(scope, receive, send):
        seen.clear()
        seen.update(scope)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    sent = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b""}

    mw = visitors.VisitorMiddleware(app, s)
    scope = {"type": "http", "method": "GET", "path": "/", "scheme": "http", "session": {},
             "headers": [(b"x-forwarded-proto", b"https"), (b"cookie", b"other=1")]}  # fmt: skip
    asyncio.run(mw(scope, receive, send))
    cookie = dict(sent[0]["headers"])[b"set-cookie"].decode()
    assert "Secure" in cookie and "SameSite=None" in cookie and "HttpOnly" in cookie
    token = cookie.split(";")[0].split("=", 1)[1]
    assert dict(seen["headers"])[b"cookie"] == f"other=1; {visitors.COOKIE}={token}".encode() and seen[visitors.FRESH]
    assert scope["headers"][1] == (b"cookie", b"other=1")  # the caller's scope is not changed
    # the same cookie sent back: no new one, not fresh, and the handler's owner is that visitor
    sent.clear()
    again = dict(scope, headers=[(b"cookie", f"{visitors.COOKIE}={token}".encode())])
    asyncio.run(mw(again, receive, send))
    assert b"set-cookie" not in dict(sent[0]["headers"]) and visitors.FRESH not in seen
    from gradio.route_utils import Request as GrRequest
    from starlette.requests import Request

    assert visitors.owner_of(GrRequest(Request(seen), session_hash="h"), s) == f"visitor:{token}"
    # private mode: a pass-through
    sent.clear()
    asyncio.run(visitors.VisitorMiddleware(app, AppSettings(runs_dir=tmp_path / "p"))(dict(scope), receive, send))
    assert b"set-cookie" not in dict(sent[0]["headers"])
    assert visitors.app_kwargs(AppSettings(runs_dir=tmp_path / "p")) == {}


# --- the sweep -------------------------------------------------------------------------------------


def _age(paths, hours: float, now: float) -> None:
    for p in paths:
        if p.exists():
            os.utime(p, (now - hours * HOUR, now - hours * HOUR), follow_symlinks=False)


def make_run(s: AppSettings, run_id: str, hours: float, now: float, key: str = "k1", data: str = "mnist5k",
             size: int = 1000) -> Path:  # fmt: skip
    """A run folder (a real store, an image), its served link and its export, last active ``hours`` ago."""
    store = RunStore.create(s.runs_dir, RunConfig(data=data), ["a"], run_id)
    store.close()
    run = s.runs_dir / run_id
    img = _png(run / "images" / "0" / "a.png", os.urandom(size))
    serving.served_path(s, img, key)
    export = serving.export_dir(s, key, run_id)
    _png(export / f"{run_id}-export" / "a.png")
    _png(export / f"{run_id}-export.zip", os.urandom(size // 2))
    _age([*run.rglob("*"), run, export, *export.iterdir()], hours, now)
    return run


def _upload(s: AppSettings, name: str, hours: float, now: float) -> Path:
    root = s.uploads_dir / name
    _png(root / "wrapped" / "a" / "0.png")
    _age([*root.rglob("*"), root], hours, now)
    return root


def test_sweep_deletes_old_runs_uploads_and_exports_only(tmp_path):
    s, now = public(tmp_path), time.time()
    old, fresh = make_run(s, "run-old", 25, now), make_run(s, "run-fresh", 1, now, key="k2")
    used = _upload(s, "upload-used", 30, now)
    make_run(s, "run-upload", 2, now, data=str(used / "wrapped"))
    stale, recent = _upload(s, "upload-stale", 25, now), _upload(s, "upload-recent", 2, now)
    partial = _upload(s, ".partial-1234", 26, now)
    make_run(s, "run-export", 3, now)
    old_export = serving.export_dir(s, "k1", "run-export")
    _age([old_export, *old_export.iterdir()], 30, now)
    orphan = _png(s.served_dir / "k3" / "run-gone" / "images" / "a.png").parent.parent
    outside = _png(tmp_path / "outside" / "old.png")
    _age([outside, outside.parent, s.secret_file], 100, now)
    secret = s.secret_file.read_bytes()

    report = cleanup.sweep(s, now)
    assert not old.exists() and not (s.served_dir / "k1" / "run-old").exists()
    assert not serving.export_dir(s, "k1", "run-old").exists()
    assert not stale.exists() and not partial.exists() and not old_export.exists() and not orphan.exists()
    assert fresh.exists() and (s.served_dir / "k2" / "run-fresh").exists() and serving.export_dir(s, "k2", "run-fresh")
    assert used.exists() and recent.exists()  # an old upload a fresh run reads stays
    assert (s.runs_dir / "run-export").exists() and (s.served_dir / "k1" / "run-export").exists()
    assert outside.exists() and s.secret_file.read_bytes() == secret
    assert {old, stale, partial, old_export, orphan} <= set(report.removed) and report.kept_busy == []
    assert report.bytes_freed >= 1500  # the old run's image (its served link counted once) and zip
    assert cleanup.sweep(s, now).removed == []


def test_private_mode_deletes_nothing(tmp_path):
    s, now = AppSettings(runs_dir=tmp_path / "runs", disk_cap_mb=1), time.time()
    old = make_run(s, "run-old", 1000, now, size=3 * 2**20)
    upload = _upload(s, "upload-x", 1000, now)
    report = cleanup.sweep(s, now)
    assert report == cleanup.SweepReport() and old.exists() and upload.exists()
    assert cleanup.start_sweeper(s) is None


def test_a_run_a_job_is_writing_is_kept(tmp_path):
    s, now = public(tmp_path), time.time()
    run = make_run(s, "run-busy", 48, now)
    store = RunStore.open(run)
    store.lock_for_writing()
    _age([run, run / "run.sqlite", run / "run.sqlite-wal", run / "writer.lock"], 48, now)
    try:
        report = cleanup.sweep(s, now)
        assert run.exists() and report.kept_busy == [run] and run not in report.removed
        assert (s.served_dir / "k1" / run.name).exists()  # its served images stay with it
    finally:
        store.close()  # the job ends (its last write would also make the run fresh: age it again)
    _age([run, run / "run.sqlite", run / "run.sqlite-wal"], 48, now)
    assert run in cleanup.sweep(s, now).removed and not run.exists()


def test_the_disk_cap_removes_the_least_recently_active_first(tmp_path):
    s, now = public(tmp_path, disk_cap_mb=4), time.time()
    runs = [make_run(s, f"run-{i}", hours, now, size=2**20) for i, hours in enumerate((3, 5, 4, 1))]
    report = cleanup.sweep(s, now)  # 4 x 1.5 MB over 4 MB: the two least recently active go
    assert [r.exists() for r in runs] == [True, False, False, True]
    assert runs[1] in report.removed and runs[2] in report.removed
    assert not (s.served_dir / "k1" / "run-1").exists() and not serving.export_dir(s, "k1", "run-1").exists()
    s.disk_cap_mb = 1
    just_now = make_run(s, "run-now", 0, now, size=2**20)  # active within the grace period: spared
    cleanup.sweep(s, now)
    assert just_now.exists() and not any(r.exists() for r in runs)


def test_the_sweeper_thread_sweeps_in_public_mode(tmp_path, caplog):
    s = public(tmp_path, sweep_interval_s=0.05)
    run = make_run(s, "run-old", 25, time.time())
    caplog.set_level("INFO", logger="curator.ui.cleanup")
    thread = cleanup.start_sweeper(s)
    try:
        deadline = time.time() + 10
        while run.exists() and time.time() < deadline:
            time.sleep(0.05)
        assert not run.exists() and thread.daemon and thread.is_alive()
    finally:
        thread.stop()
    assert f"removed {run}" in caplog.text


# --- one generator, many runs ----------------------------------------------------------------------


def test_configuring_a_generator_returns_a_copy_and_leaves_the_cached_one(sd_folder, dit_folder):
    gen = load_generator(str(sd_folder), "cpu", class_names=["tench"])
    before = (gen.class_names, gen.prompts, gen.prompt_template, gen.negative_prompt)
    a = prepare_generator(gen, ["tench", "goldfish"], RunConfig(prompt_template="a photo of {name}"))
    b = prepare_generator(gen, ["church"], RunConfig(prompt_template="a drawing of {name}", negative_prompt="blurry"))
    assert a.prompts == ["a photo of tench", "a photo of goldfish"] and a.num_classes == 2
    assert b.prompts == ["a drawing of church"] and b.negative_prompt == "blurry" and a.negative_prompt == ""
    assert (gen.class_names, gen.prompts, gen.prompt_template, gen.negative_prompt) == before
    assert a.pipe is gen.pipe is b.pipe  # the weights are shared, not copied
    a._prompt_embeds([0, 1])
    assert len(a._embeds) == 2 and b._embeds == {} and gen._embeds == {}  # each its own embedding cache
    dit = load_generator(str(dit_folder), "cpu")
    c = prepare_generator(dit, ["tench", "goldfish"], RunConfig())
    d = prepare_generator(dit, ["goldfish"], RunConfig(class_map={"goldfish": 5}))
    assert (c.imagenet_ids, d.imagenet_ids, dit.class_names) == ([0, 1], [5], [])
    pixel = make_tiny_generator(["a", "b"])
    assert prepare_generator(pixel, ["a", "b"], RunConfig()) is pixel  # nothing per run to bind


def test_runs_with_different_prompts_interleaved_keep_their_own(sd_folder, tmp_path, monkeypatch):
    """Visitor B starts a run (which binds B's prompts) while A's run generates: A's run still uses A's."""
    data = write_image_folder(tmp_path / "data", {"tench": 4, "goldfish": 4}, size=24, rgb=True)
    make_tiny_detector(["tench", "goldfish"], input_size=32, channels=3).save(tmp_path / "det")
    common = dict(data=str(data), generator=str(sd_folder), detector=str(tmp_path / "det"), ipc=1, k=2, steps=2,
                  tau=1.0, guidance=2.0, device="cpu", batch_size=4, real_sample=2)  # fmt: skip
    ca = RunConfig(prompt_template="photo of {name}", **common)
    cb = RunConfig(prompt_template="drawing of {name}", negative_prompt="blurry", **common)
    cached = resources.generator(str(sd_folder), torch.device("cpu"), ca)
    before = list(cached.prompts)
    encoded: list[str] = []
    real_encode = cached.pipe.encode_prompt
    started_b = []

    def spy(prompt, *args, **kwargs):
        if prompt is None:  # the pipeline's own call with the embeddings given
            return real_encode(prompt, *args, **kwargs)
        encoded.append(prompt)
        if not started_b:  # B starts a run while A's first prompt is being encoded
            started_b.append(resources.components(cb))
        return real_encode(prompt, *args, **kwargs)

    monkeypatch.setattr(cached.pipe, "encode_prompt", spy)
    paths = []
    for config in (ca, cb):
        data_, gen, det = resources.components(config)
        engine = LocalEngine.create(config, str(tmp_path / "runs"), data=data_, generator=gen, detector=det)
        paths.append(str(engine.store.path))
        engine.close()
    encoded.clear()
    summaries = jobs.run_job(paths[0])  # both classes, batched together
    assert started_b and [x.images for x in summaries] == [1, 1]
    assert sorted(encoded) == ["photo of goldfish", "photo of tench"], encoded  # never B's prompts
    encoded.clear()
    jobs.run_job(paths[1])
    assert sorted(encoded) == ["drawing of goldfish", "drawing of tench"], encoded
    assert cached.prompts == before and resources.generator(str(sd_folder), torch.device("cpu"), ca) is cached
    stored = [RunStore.open(p) for p in paths]
    assert [st.config.prompt_template for st in stored] == ["photo of {name}", "drawing of {name}"]
    for st in stored:
        st.close()


# --- GPU calls that fit ZeroGPU --------------------------------------------------------------------


class FakeSpaces(types.ModuleType):
    """``spaces`` as on Hugging Face: GPU(duration=...) records the duration function and every call."""

    def __init__(self):
        super().__init__("spaces")
        self.decorated: dict[str, object] = {}
        self.calls: list[tuple[str, tuple, float]] = []
        self.after_call = None

    def GPU(self, duration):  # noqa: N802 - the name spaces uses
        def decorate(fn):
            self.decorated[fn.__name__] = duration

            def wrapper(*args, **kwargs):
                seconds = duration(*args, **kwargs)
                result = fn(*args, **kwargs)
                self.calls.append((fn.__name__, args, seconds))
                if self.after_call:
                    self.after_call(*args)
                return result

            return wrapper

        return decorate


@pytest.fixture
def spaces():
    fake = FakeSpaces()
    sys.modules["spaces"] = fake
    importlib.reload(jobs)  # decorates the GPU calls with the fake
    try:
        yield fake
    finally:
        del sys.modules["spaces"]
        importlib.reload(jobs)


@pytest.fixture(scope="module")
def pixel_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("pixel")
    data = write_image_folder(root / "data", {"a": 8, "b": 8}, size=20)
    make_tiny_generator(["a", "b"], resolution=20).save_pretrained(root / "gen")
    make_tiny_detector(["a", "b"], input_size=20).save(root / "det")
    return dict(data=str(data), generator=str(root / "gen"), detector=str(root / "det"))


def _pixel_run(tmp_path, models, **kw) -> str:
    config = RunConfig(**models, **{"ipc": 2, "k": 2, "steps": 2, "tau": 1.0, "device": "cpu", "real_sample": 2, **kw})
    data, gen, det = resources.components(config)
    engine = LocalEngine.create(config, str(tmp_path / "runs"), data=data, generator=gen, detector=det)
    try:
        return str(engine.store.path)
    finally:
        engine.close()


def test_one_gpu_call_per_class_and_per_regeneration(spaces, pixel_models, tmp_path):
    assert set(spaces.decorated) == {"run_class_job", "regenerate_job"} and jobs.ONE_CLASS_PER_CALL
    path = _pixel_run(tmp_path, pixel_models)
    summaries = jobs.run_job(path)
    assert [x.label for x in summaries] == [0, 1] and all(x.status == "done" for x in summaries)
    assert [(name, args[:2]) for name, args, _ in spaces.calls] == [("run_class_job", (path, 0)),
                                                                     ("run_class_job", (path, 1))]  # fmt: skip
    assert all(20 <= seconds <= 300 for *_, seconds in spaces.calls)
    spaces.calls.clear()
    assert [x.label for x in jobs.run_job(path, [1])] == [1] and spaces.calls == []  # finished: no call
    store = RunStore.open(path)
    aid = store.anomalies(0)[0].id
    store.close()
    assert jobs.run_job(path, regenerate_id=aid) == 2
    assert [(name, args[:2]) for name, args, _ in spaces.calls] == [("regenerate_job", (path, aid))]


def test_a_cancel_between_gpu_calls_stops_the_run(spaces, pixel_models, tmp_path):
    path = _pixel_run(tmp_path, pixel_models)
    spaces.after_call = lambda run_path, *_: jobs.request_cancel(run_path)
    with pytest.raises(Cancelled):
        jobs.run_job(path)
    assert [args[1] for _, args, _ in spaces.calls] == [0]
    store = RunStore.open(path)
    assert [c.status for c in store.classes()] == ["done", "pending"]
    store.close()
    spaces.after_call = None
    assert [x.status for x in jobs.run_job(path)] == ["done", "done"]  # resumes; the cancel was cleared


def test_gpu_durations_grow_with_the_work(tmp_path, monkeypatch):
    monkeypatch.setitem(jobs.STEP_SECONDS, "pixel", 0.05)  # the shipped (pixel) generator, made slow

    def run(**kw) -> str:
        store = RunStore.create(tmp_path / "runs", RunConfig(**kw), ["a", "b"])
        store.close()
        return str(store.path)

    small, large = run(ipc=10, k=20, steps=10), run(ipc=10, k=40, steps=10)
    longer = run(ipc=10, k=20, steps=20)
    est = jobs.estimate_seconds
    assert 20 < est(small, 0) < est(large, 0) < 300 and est(small, 0) < est(longer, 0)
    assert est(small) > est(small, 0)  # every class still to do
    assert est(small, regenerate_id=1) < est(large, regenerate_id=1) and est(small, regenerate_id=1) >= 20
    assert est(run(ipc=50, k=100, steps=50), 0) == 300  # clamped
    assert est(str(tmp_path / "no-run"), 0) == jobs.DEFAULT_SECONDS
    store = RunStore.open(small)
    store.set_class_status(0, "done")
    store.close()
    assert est(small, 0) == 20  # nothing left but loading
    assert jobs._class_duration(small, 1, None) == est(small, 1)
