"""Who is asking, in public mode: each visitor sees, reopens and changes only the runs their own
browser (or Hugging Face account) created, and is served only their own images and exports.

* ``owner_of(request, settings)``: the owner of a request: ``user:<name>`` for a logged-in user
  (Gradio ``auth``, or Hugging Face OAuth when the Space enables it, so that ownership survives
  a new browser), else ``visitor:<token>`` from the ``curator_visitor`` cookie, else
  ``session:<session hash>`` (API clients that keep no cookies). None in private mode.
* ``owner_key(owner, settings)``: the owner as a folder name, an HMAC of it under the app's
  secret (``local`` in private mode). A run records it (``claim``: ``RUN/owner``); images are
  served from ``RUNS/_served/<key>/`` and exports written to ``RUNS/_exports/<key>/``.
* ``VisitorMiddleware``: a pure ASGI middleware (streaming and server-sent events pass through
  untouched) that gives every browser a ``curator_visitor`` cookie, and answers 404 to a file
  request under ``_served`` or ``_exports`` unless the first folder below it is the requester's
  key, and to any other file request inside the runs folder. Install it with
  ``demo.launch(app_kwargs=app_kwargs(settings))``.

Private mode (the default for ``python app.py``): one user; everything is ``local`` and owned.
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import logging
import os
import re
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from curator.ui.resources import AppSettings
from curator.ui.serving import LOCAL

log = logging.getLogger("curator.ui.visitors")

COOKIE = "curator_visitor"
OWNER_FILE = "owner"
FRESH = "curator.fresh_visitor"  # scope key: the cookie was made by the middleware for this request
_TOKEN = re.compile(r"[A-Za-z0-9_-]{32}")  # secrets.token_urlsafe(24)
FILE_ROUTES = ("/gradio_api/file=", "/gradio_api/file/", "/file=", "/file/")
MAX_AGE_S = 400 * 24 * 3600  # how long a browser keeps the cookie (the most browsers allow)


class OwnerError(RuntimeError):
    """Public mode could not tell who made a request."""


# --- who is asking ---------------------------------------------------------------------------------


def _oauth_username(session: Any) -> str | None:
    """The Hugging Face username Gradio's OAuth stored in the session (``oauth_info``), unless expired."""
    if not isinstance(session, Mapping):
        return None
    info = session.get("oauth_info")
    if not isinstance(info, Mapping):
        return None
    expires = info.get("expires_at")
    if isinstance(expires, int | float) and expires < time.time():
        return None
    user = (info.get("userinfo") or {}).get("preferred_username")
    return str(user) if user else None


def valid_token(value: Any) -> str | None:
    return value if isinstance(value, str) and _TOKEN.fullmatch(value) else None


def owner_of(request: Any, settings: AppSettings) -> str | None:
    """The owner of a request (a ``gr.Request``), most durable first: ``user:<name>`` (Gradio auth
    or Hugging Face OAuth), ``visitor:<cookie>``, ``session:<session hash>``. None in private mode.

    A cookie the middleware made for this very request (the client sent none) does not count:
    such a client keeps no cookies, so its session hash is what stays the same between calls."""
    if not settings.public:
        return None
    if request is None:
        raise OwnerError("public mode needs the request to tell visitors apart; the handler got none")
    user = getattr(request, "username", None)
    if user:
        return f"user:{user}"
    underlying = getattr(request, "request", None) or request
    scope = getattr(underlying, "scope", None)
    scope = scope if isinstance(scope, dict) else {}
    session = scope.get("session") if scope else getattr(underlying, "session", None)
    user = _oauth_username(session)
    if user:
        return f"user:{user}"
    try:
        cookies = getattr(request, "cookies", None) or {}  # a dict, or Gradio's dict-like Obj
    except AssertionError:
        cookies = {}
    token = valid_token(cookies.get(COOKIE))
    if token and not scope.get(FRESH):
        return f"visitor:{token}"
    session_hash = getattr(request, "session_hash", None)
    if session_hash:
        return f"session:{session_hash}"
    raise OwnerError("cannot tell who made this request: no login, no visitor cookie and no session")


def owner_key(owner: str | None, settings: AppSettings) -> str:
    """The folder name of an owner: 32 hex digits of HMAC-SHA256(secret, owner); ``local`` in private mode."""
    if not settings.public:
        return LOCAL
    if not owner:
        raise OwnerError("public mode: a request without an owner has no key")
    if not settings.secret:
        raise OwnerError("public mode needs AppSettings.secret (CURATOR_SECRET or RUNS/_secret)")
    return hmac.new(settings.secret, owner.encode(), hashlib.sha256).hexdigest()[:32]


def request_key(request: Any, settings: AppSettings) -> str:
    """``owner_key(owner_of(request))``: the requester's folder name (``local`` in private mode)."""
    return owner_key(owner_of(request, settings), settings)


# --- run ownership ---------------------------------------------------------------------------------


def claim(run_dir: str | Path, key: str) -> None:
    """Record ``key`` as the owner of the run in ``run_dir`` (``RUN/owner``, written whole: temp + rename)."""
    run_dir = Path(run_dir)
    tmp = run_dir / f".{OWNER_FILE}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    tmp.write_text(key)
    os.replace(tmp, run_dir / OWNER_FILE)


def owner_of_run(run_dir: str | Path) -> str | None:
    """The key recorded in ``RUN/owner``, or None."""
    try:
        return (Path(run_dir) / OWNER_FILE).read_text().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def is_run_folder(run_dir: str | Path, settings: AppSettings) -> bool:
    """Whether ``run_dir`` is where the app makes runs: a folder directly in the runs folder (not a
    link), named like a run (not ``_served``, ``_uploads``, ``.x``...). Anything deeper, an
    extracted upload above all, holds bytes a visitor chose (a database, a pickled UMAP cache)."""
    path = Path(run_dir)
    if not path.is_absolute():
        path = settings.runs_dir / path
    path = Path(os.path.abspath(path))
    if path.parent != settings.runs_dir or path.name.startswith(("_", ".")) or path.is_symlink():
        return False
    return path.resolve().parent == settings.runs_dir


def owns(run_dir: str | Path, key: str, settings: AppSettings) -> bool:
    """Whether ``key`` owns the run: always in private mode; in public mode only when ``run_dir`` is
    a run folder of the app (``is_run_folder``) and its ``RUN/owner`` holds ``key``."""
    if not settings.public:
        return True
    if not is_run_folder(run_dir, settings):
        return False
    recorded = owner_of_run(run_dir)
    return recorded is not None and bool(key) and hmac.compare_digest(recorded.encode(), key.encode())


def owned_runs(run_dirs: list, key: str, settings: AppSettings) -> list:
    """The entries of ``run_dirs`` (paths, or tuples whose last item is the path) that ``key`` owns."""
    return [r for r in run_dirs if owns(r[-1] if isinstance(r, tuple | list) else r, key, settings)]


# --- the middleware --------------------------------------------------------------------------------


def _first_header(scope: dict, name: bytes) -> str | None:
    for k, v in scope.get("headers") or ():
        if k.lower() == name:
            return v.decode("latin-1")
    return None


def _cookies(scope: dict) -> dict[str, str]:
    from starlette.requests import cookie_parser

    raw = _first_header(scope, b"cookie")  # what Starlette's request.cookies (and so gr.Request) reads
    return cookie_parser(raw) if raw else {}


def _inside(path: str, folder: Path) -> tuple[str, ...] | None:
    """The parts of ``path`` below ``folder``, or None when it is not inside (or is ``folder`` itself: ())."""
    try:
        rel = Path(path).relative_to(folder)
    except ValueError:
        return None
    return rel.parts


class VisitorMiddleware:
    """Public mode's cookie and file gate (pure ASGI); a pass-through in private mode."""

    def __init__(self, app, settings: AppSettings):
        self.app = app
        self.settings = settings

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http" or not self.settings.public:
            await self.app(scope, receive, send)
            return
        cookies = _cookies(scope)
        token = valid_token(cookies.get(COOKIE))
        set_cookie = None
        if token is None:
            token = secrets.token_urlsafe(24)
            set_cookie = self._set_cookie(scope, token)
            scope = dict(scope)
            scope["headers"] = self._with_cookie(scope.get("headers") or [], token)
            scope[FRESH] = True
        if scope.get("method") in ("GET", "HEAD"):
            target = self._file_target(scope)
            if target is not None:
                key = owner_key(await self._owner(scope, token), self.settings)
                if not self.allowed(target, key):
                    await self._not_found(send, set_cookie)
                    return
        if set_cookie is None:
            await self.app(scope, receive, send)
            return

        async def send_with_cookie(message):
            if message.get("type") == "http.response.start":
                message = dict(message)
                message["headers"] = [*(message.get("headers") or []), (b"set-cookie", set_cookie)]
            await send(message)

        await self.app(scope, receive, send_with_cookie)

    # --- the cookie ------------------------------------------------------------------------------
    @staticmethod
    def _set_cookie(scope: dict, token: str) -> bytes:
        proto = (_first_header(scope, b"x-forwarded-proto") or "").split(",")[0].strip().lower()
        secure = scope.get("scheme") == "https" or proto == "https"
        # Over https (a Hugging Face Space, shown in an iframe on huggingface.co) the cookie must be
        # SameSite=None to reach the app at all; Partitioned keeps it to that embedding site.
        attrs = "; Secure; SameSite=None; Partitioned" if secure else "; SameSite=Lax"
        return f"{COOKIE}={token}; Path=/; Max-Age={MAX_AGE_S}; HttpOnly{attrs}".encode("latin-1")

    @staticmethod
    def _with_cookie(headers: list, token: str) -> list:
        """The request headers with the new cookie added to the first Cookie header (which Starlette
        reads; a later ``name=value`` wins there, so an invalid old value is overridden)."""
        out, done = [], False
        for k, v in headers:
            if not done and k.lower() == b"cookie":
                v = v + f"; {COOKIE}={token}".encode("latin-1")
                done = True
            out.append((k, v))
        if not done:
            out.append((b"cookie", f"{COOKIE}={token}".encode("latin-1")))
        return out

    # --- who asks ---------------------------------------------------------------------------------
    async def _owner(self, scope: dict, token: str) -> str:
        """The same owner ``owner_of`` gives a handler: the logged-in user, else the visitor cookie."""
        user = await self._auth_user(scope)
        if user:
            return f"user:{user}"
        user = _oauth_username(scope.get("session"))
        if user:
            return f"user:{user}"
        return f"visitor:{token}"

    @staticmethod
    async def _auth_user(scope: dict) -> str | None:
        """The user of Gradio's own ``auth`` (what ``gr.Request.username`` holds), if any."""
        app = scope.get("app")
        dependency = getattr(app, "auth_dependency", None)
        try:
            if dependency is not None:
                from starlette.requests import Request

                user = dependency(Request(scope))
                return await user if inspect.isawaitable(user) else user
            tokens = getattr(app, "tokens", None)
            cookie_id = getattr(app, "cookie_id", None)
            if not tokens or not cookie_id:
                return None
            cookies = _cookies(scope)
            token = cookies.get(f"access-token-{cookie_id}") or cookies.get(f"access-token-unsecure-{cookie_id}")
            return tokens.get(token) if token else None
        except Exception:  # noqa: BLE001 - no user is the safe answer
            return None

    # --- files ------------------------------------------------------------------------------------
    @staticmethod
    def _file_target(scope: dict) -> str | None:
        """The path a Gradio file route is asked for (as routed: percent-decoded once), or None."""
        path = scope.get("path") or ""
        root = scope.get("root_path") or ""
        if root and path.startswith(root):
            path = path[len(root) :]
        for prefix in FILE_ROUTES:
            if path.startswith(prefix):
                return path[len(prefix) :]
        return None

    def allowed(self, target: str, key: str) -> bool:
        """Whether the requester with owner key ``key`` may fetch ``target``. Every decoding of it
        (percent-encoding applied several times over), with ``..`` resolved and with links followed,
        is checked: one that lands inside the runs folder must be under ``_served/<key>/`` or
        ``_exports/<key>/``. Paths outside the runs folder are left to Gradio's own rules."""
        runs = self.settings.runs_dir
        variants, text = [target], target
        for _ in range(5):
            decoded = unquote(text)
            if decoded == text:
                break
            variants.append(decoded)
            text = decoded
        for variant in variants:
            if "\x00" in variant:
                return False
            absolute = os.path.abspath(variant)  # Gradio reads a relative path from its working folder
            top = (self.settings.served_dir.name, self.settings.exports_dir.name)
            for candidate in {os.path.normpath(absolute), os.path.realpath(absolute)}:
                parts = _inside(candidate, runs)
                if parts is None:
                    continue
                if len(parts) < 3 or parts[0] not in top or parts[1] != key:
                    return False
        return True

    @staticmethod
    async def _not_found(send, set_cookie: bytes | None) -> None:
        body = b"not found"
        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
        if set_cookie is not None:
            headers.append((b"set-cookie", set_cookie))
        await send({"type": "http.response.start", "status": 404, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def app_kwargs(settings: AppSettings) -> dict:
    """What to pass as ``demo.launch(app_kwargs=...)``: installs ``VisitorMiddleware`` in public
    mode (Gradio hands these to its FastAPI app), nothing in private mode. A new dict each call
    (Gradio adds its own entries to the one it gets)."""
    if not settings.public:
        return {}
    from starlette.middleware import Middleware

    return {"middleware": [Middleware(VisitorMiddleware, settings=settings)]}
