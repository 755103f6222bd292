"""Event handlers of the app, as plain methods of ``Callbacks`` (unit-tested without a server).

Every handler returns a message first (plain text, shown next to the control that failed), then
its other outputs. Bad input (``USER_ERRORS``, ``UIError``) becomes that message, with the other
outputs left as they were (``gr.skip()``); any other exception is logged with a reference and
shown as a generic message, never a traceback, and the server keeps serving everyone else.
Messages never show the server's folders (``_scrub``).

Per-session state is a dict ``{"run": path}`` (``gr.State``); the run path is also kept in the
browser (``gr.BrowserState``) so a reload reopens the same run. Each handler opens its own
``RunStore`` (one SQLite connection per request) and closes it, so Gradio's worker threads never
share a connection. Decisions are written by ``user_decide``/``RunStore.decide`` before the
handler returns.
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
import shutil
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import gradio as gr
import pandas as pd

from curator.config import ASSETS, DEFAULT_DETECTOR, DEFAULT_GENERATOR, RunConfig
from curator.embedding import class_embedding, run_embedding
from curator.engine import Cancelled, LocalEngine, ProgressFn
from curator.errors import USER_ERRORS
from curator.export import COLUMNS as EXPORT_COLUMNS
from curator.export import export_run, unfinished_classes
from curator.models.backends import backend_defaults
from curator.models.loading import resolve_config
from curator.review import DECISION_STATES as _STATES
from curator.review import (
    QUEUE_ORDERS,
    REASONS,
    TO_REVIEW,
    QueueItem,
    bulk_accept,
    bulk_targets,
    decision_state,
    filter_queue,
    is_reviewed,
    review_queue,
    user_decide,
)
from curator.store import RunStore
from curator.ui import jobs, resources, serving, visitors
from curator.ui.outputs import PANEL_SIZE, RUN_SIZE, Panel, RunOutputs
from curator.ui.plots import MAX_THUMB_POINTS, class_figure, umap_figure
from curator.ui.resources import AppSettings
from curator.ui.uploads import extract_image_folder
from curator.ui.views import (
    CANDIDATE_COLUMNS,
    OVERVIEW_COLUMNS,
    OVERVIEW_PAGE,
    TOTAL,
    UIError,
    anomaly_view,
    cards_html,
    class_choices,
    class_view,
    decision_text,
    doubt_line,
    metadata_preview,
    overview_frame,
    page_of,
    run_choices,
    with_totals,
)

log = logging.getLogger("curator.ui")

PICKER_REFRESH_S = 2.0  # Run all: the class picker's counts are refreshed at most this often (s)

DATA_SOURCES = ["built-in (mnist5k)", "folder on the server", "uploaded zip"]
# the third: the shipped detector with a deliberately early generator checkpoint, a testbed where
# refinement has work to do (assets/generator-early/README.md); never for real distillation
MODEL_SOURCES = ["shipped models", "model folders", "shipped detector, early generator (testbed)"]
EARLY_GENERATOR = str(ASSETS / "generator-early")
CENTRES = ["class", "global"]  # RunConfig.uniqueness_centre
STAGE_NAMES = {
    "prototypes": "prototypes (k-means)",
    "synthesis": "synthesis",
    "inspection": "inspection",
    "refinement": "refinement (candidates)",
    "selection": "selection",
}


def ok(text: str) -> str:
    return f"✔ {text}"


def warn(text: str) -> str:
    return f"⚠ {text}"


def _scrub(text: str, settings: AppSettings | None) -> str:
    """A message without the server's folders: an upload's extraction folder and the runs folder go."""
    if settings is None:
        return text
    text = re.sub(re.escape(str(settings.uploads_dir)) + r"/[^/\s]+/", "", text)
    return text.replace(str(settings.runs_dir), "runs")


def _error_message(exc: BaseException, where: str) -> str:
    if isinstance(exc, (*USER_ERRORS, UIError)):
        return warn(str(exc))
    if isinstance(exc, Cancelled):
        return warn("cancelled; everything generated so far is saved, run the class again to resume")
    ref = uuid.uuid4().hex[:8]
    log.error("internal error %s in %s", ref, where, exc_info=exc)
    return warn(f"something went wrong on the server (reference {ref}, logged); please try again")


def guarded(n_outputs: int) -> Callable:
    """Turn user errors into a message (first output) and other errors into a logged generic message;
    the other outputs stay as they were. Works for plain handlers and for generators (streaming)."""

    def fail(self, exc: BaseException, name: str):
        msg = _scrub(_error_message(exc, name), getattr(self, "settings", None))
        return (msg, *[gr.skip() for _ in range(n_outputs - 1)]) if n_outputs > 1 else msg

    def scrub(self, out):
        settings = getattr(self, "settings", None)
        if isinstance(out, tuple) and out and isinstance(out[0], str):
            first = _scrub(out[0], settings)
            if hasattr(out, "_fields"):  # a Panel or RunOutputs keeps its names
                return out._replace(**{out._fields[0]: first})
            return (first, *out[1:])
        return _scrub(out, settings) if isinstance(out, str) else out

    def wrap(fn: Callable) -> Callable:
        if inspect.isgeneratorfunction(fn):

            @functools.wraps(fn)
            def gen(self, *args, **kwargs):
                try:
                    for out in fn(self, *args, **kwargs):
                        yield scrub(self, out)
                except Exception as exc:  # noqa: BLE001 - never show a traceback; the server keeps serving
                    yield fail(self, exc, fn.__name__)

            return gen

        @functools.wraps(fn)
        def inner(self, *args, **kwargs):
            try:
                return scrub(self, fn(self, *args, **kwargs))
            except Exception as exc:  # noqa: BLE001 - never show a traceback; the server keeps serving
                return fail(self, exc, fn.__name__)

        return inner

    return wrap


def _int(value, name: str) -> int:
    if value is None or value == "":
        raise UIError(f"{name} is empty")
    try:
        f = float(value)
    except (TypeError, ValueError) as exc:
        raise UIError(f"{name} must be a number, got {value!r}") from exc
    if f != int(f):
        raise UIError(f"{name} must be a whole number, got {value!r}")
    return int(f)


def _float(value, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise UIError(f"{name} must be a number, got {value!r}") from exc


def _count(n: int, one: str, many: str) -> str:
    """``1 anomaly``, ``3 anomalies``."""
    return f"{n} {one if n == 1 else many}"


def _progress_fn(progress, names: list[str], where: str = "") -> ProgressFn:
    """Adapt the pipeline's ``(stage, done, total, label)`` to ``gr.Progress`` (one display per job)."""

    def report(stage: str, done: int, total: int, label: int | None) -> None:
        if progress is not None:
            what = "several classes" if label is None else f"class {names[label]}"
            progress((done, max(total, 1)), desc=f"{where}{what}: {STAGE_NAMES.get(stage, stage)}", unit="img")

    return report


def _served(settings: AppSettings, path, key: str):
    return serving.served_path(settings, path, key)


_file_url = serving.file_url


QUEUE_VIEW = {"order": "class", "reason": None, "state": None, "this_class": False}
ANY = "any"
QUEUE_ORDER_CHOICES = [("class by class", "class"), ("by doubt (unresolved, close calls, the rest)", "doubt")]
REASON_CHOICES = [ANY, *REASONS]
STATE_CHOICES = [ANY, TO_REVIEW, *_STATES]


class Callbacks:
    """All handlers, bound to the app's settings (where runs live)."""

    def __init__(self, settings: AppSettings):
        self.settings = settings

    # --- helpers -------------------------------------------------------------------------------
    def _run_path(self, state: dict | None) -> str:
        path = (state or {}).get("run")
        if not path:
            raise UIError("no run open: start a run in Set-up, or reopen one")
        if not visitors.owns(path, self._key(state), self.settings):  # public mode: only one's own runs
            raise UIError(f"run {Path(path).name} not found")
        return path

    def _runs_of(self, key: str) -> list[tuple[str, str]]:
        """The reopen dropdown's runs: all of them in private mode, the visitor's own in public mode."""
        owned = visitors.owned_runs(run_choices(self.settings.runs_dir), key, self.settings)
        return [(label, self._shown(path)) for label, path in owned]

    def _shown(self, run_dir: str | Path) -> str:
        """A run as the browser sees it (dropdown value, saved run): in public mode its name, never a
        server path (``open_run`` and ``restore`` take names); in private mode its folder."""
        return Path(run_dir).name if self.settings.public else str(run_dir)

    @staticmethod
    def _key(state: dict | None) -> str:
        return (state or {}).get("key") or "local"

    @contextmanager
    def _store(self, state: dict | None):
        store = RunStore.open(self._run_path(state))
        try:
            yield store
        finally:
            store.close()

    def _label(self, store: RunStore, label) -> int:
        if label is None or label == "":
            raise UIError("choose a class first")
        lab = _int(label, "class")
        if not 0 <= lab < len(store.class_names):
            raise UIError(f"class {lab} is not in this run (it has {len(store.class_names)} classes)")
        return lab

    # --- the review queue as this session views it (order and filters kept in the session state) --
    @staticmethod
    def _view(state: dict | None) -> dict:
        """{"order", "reason", "state", "this_class"} of the session's review queue (class order, no filter)."""
        return {**QUEUE_VIEW, **((state or {}).get("queue") or {})}

    @staticmethod
    def _queue(store: RunStore, view: dict | None, label: int | None, everything: list | None = None) -> list:
        """The session's queue: the run's anomalies in its order, filtered (``review.review_queue``).
        ``everything``: the unfiltered queue in that order, when the caller has it already."""
        v = {**QUEUE_VIEW, **(view or {})}
        lab = label if v["this_class"] else None
        if everything is not None:
            return filter_queue(everything, v["reason"], v["state"], lab)
        return review_queue(store, v["order"], v["reason"], v["state"], lab)

    def _run_info(self, store: RunStore) -> str:
        """The header: which run is open and with what parameters (model and data by name, no server paths)."""
        cfg = store.config
        data = cfg.data if cfg.data == "mnist5k" else Path(cfg.data).name
        return (
            f"**Run `{store.run_id}`** · dataset {data} · {len(store.class_names)} classes · IPC {cfg.ipc} · "
            f"K {cfg.k} · τ {cfg.tau} · λ {cfg.lam} ({cfg.uniqueness_centre} centre) · {cfg.steps} steps · "
            f"strength {cfg.strength} · guidance {cfg.guidance} · seed {cfg.seed} · generator "
            f"{Path(cfg.generator).name}"
        )

    def _run_outputs(self, store: RunStore, message: str, key: str = "local", queue: dict | None = None) -> RunOutputs:
        """A run opened (Start, Reopen, reload): it becomes the session's and the browser's run, the
        runs list is refreshed, and every message and view of the previous run is cleared. ``queue``:
        the session's queue order and filters, kept (the controls still show them)."""
        path, shown = str(store.path), self._shown(store.path)
        choices = class_choices(store)
        return RunOutputs(
            message=message,
            state={"run": path, "key": key, **({"queue": queue} if queue else {})},
            saved_run=shown,
            runs=gr.update(choices=self._runs_of(key), value=shown),
            picker=gr.update(choices=choices, value=choices[0][1] if choices else None),
            run_info=self._run_info(store),
            run_message="",
            umap_message="",
            class_plot=None,
            run_plot=None,
            umap_info="",
            export_message="",
            download=gr.update(value=None, visible=False),
            preview=pd.DataFrame(columns=EXPORT_COLUMNS),
            overview_message="",
            overview=pd.DataFrame(columns=OVERVIEW_COLUMNS),
        )

    def _first_open(
        self, store: RunStore, label: int | None = None, view: dict | None = None
    ) -> tuple[int | None, int | None]:
        """(label, anomaly) of the first anomaly still to review: in ``label`` if it has one, else in the run."""
        queue = review_queue(store, {**QUEUE_VIEW, **(view or {})}["order"])
        todo = [q for q in queue if not q.reviewed]
        for items in ([q for q in todo if q.label == label], todo):
            if items:
                return items[0].label, items[0].anomaly_id
        return label, None

    def panel(
        self, store: RunStore, label: int, anomaly_id=None, candidate_id=None, message: str = "", key: str = "local",
        view: dict | None = None, everything: list | None = None,
    ) -> tuple:  # fmt: skip
        """The Curate tab's outputs: class picker, queue position, the class's synthetic set and
        anomaly table, then one anomaly beside its candidate cards. ``view``: the session's queue
        order and filters (``_view``), for the position line; ``everything``: the run's unfiltered
        queue in that order, when the caller has just read it (a step, with no write since)."""
        cv = class_view(store, label)
        v = {**QUEUE_VIEW, **(view or {})}
        if everything is None:  # once per panel: picker, default anomaly, queue line
            everything = review_queue(store, v["order"])
        shown = self._queue(store, v, label, everything)
        queue = everything
        aid = int(anomaly_id) if anomaly_id not in (None, "") else None
        if aid not in cv.anomaly_ids:
            todo = (q.anomaly_id for q in queue if q.label == label and not q.reviewed)
            aid = next(todo, cv.anomaly_ids[0] if cv.anomaly_ids else None)
        if not message:
            message = (
                f"class {cv.name}: {len(cv.gallery)} images, {_count(len(cv.anomaly_ids), 'anomaly', 'anomalies')}"
                if cv.gallery
                else f"class {cv.name} has not been run yet: press “Run this class”"
            )
        selected = cv.image_ids.index(aid) if aid in cv.image_ids else None
        gallery = gr.update(
            value=[(_served(self.settings, p, key), c) for p, c in cv.gallery],
            selected_index=selected,
            label=f"Class {cv.name}: synthetic set, {len(cv.gallery)} images (✓ passed; ⚠ "
            f"{_count(len(cv.anomaly_ids), 'anomaly', 'anomalies')}, their states in the table below; click one "
            "to open it)",
        )
        picker = gr.update(choices=class_choices(store, queue), value=label)
        if aid is None:
            empty = "No anomaly in this class." if cv.gallery else "This class has not been run yet."
            return Panel(
                message=message,
                gallery=gallery,
                anomalies=cv.anomalies,
                anomaly_id=None,
                anomaly_text=empty,
                original=gr.update(value=None, label="Flagged image"),
                prototype=None,
                cards=cards_html([], str),
                candidate_table=pd.DataFrame(columns=CANDIDATE_COLUMNS),
                candidate_id=None,
                picker=picker,
                queue=self._queue_text(shown, None, v, queue),
            )
        av = anomaly_view(store, aid)
        cid = int(candidate_id) if candidate_id not in (None, "") else None
        if cid not in av.candidate_ids:
            cid = av.chosen_id or av.pick_id
        item = next((q for q in queue if q.anomaly_id == aid), None)
        return Panel(
            message=message,
            gallery=gallery,
            anomalies=cv.anomalies,
            anomaly_id=aid,
            anomaly_text=av.summary_md + (doubt_line(item, store.config.tau) if item is not None else ""),
            original=gr.update(value=_served(self.settings, av.original, key), label=f"Flagged #{aid}"),
            prototype=_served(self.settings, av.prototype, key),
            cards=cards_html(av.cards, lambda f: _file_url(_served(self.settings, f, key)), cid),
            candidate_table=av.table,
            candidate_id=cid,
            picker=picker,
            queue=self._queue_text(shown, aid, v, queue),
        )

    @staticmethod
    def _queue_text(shown: list, aid: int | None, view: dict | None = None, everything: list | None = None) -> str:
        """The action bar's line: where ``aid`` stands in the session's (filtered) queue, that
        anomaly's state, the filter, and how many of the run remain to review."""
        everything = shown if everything is None else everything
        if not everything:
            return "No anomaly to review yet."
        v = {**QUEUE_VIEW, **(view or {})}
        todo = sum(not q.reviewed for q in everything)
        ids = [q.anomaly_id for q in shown]
        filters = [f for f in (v["reason"], v["state"], "this class" if v["this_class"] else None) if f]
        scope = ("by doubt" if v["order"] == "doubt" else "class order") + (
            f", {' · '.join(filters)}" if filters else ""
        )
        if aid in ids:
            where = f"{ids.index(aid) + 1} of {len(ids)} · {shown[ids.index(aid)].state}"
        else:
            where = f"not in this queue ({len(ids)} match)" if aid is not None else f"{len(ids)} in this queue"
        return f"{where} ({scope}) · {todo} to review"

    # --- set-up --------------------------------------------------------------------------------
    def data_sources(self) -> list[str]:
        """The dataset choices. In public mode a server folder only where the operator offers some
        (``AppSettings.server_folders``): any other path could name another visitor's files."""
        if self.settings.public and not self.settings.server_folders:
            return [DATA_SOURCES[0], DATA_SOURCES[2]]
        return list(DATA_SOURCES)

    def model_sources(self) -> list[str]:
        """The model choices: in public mode, model folders only where the operator offers some."""
        if self.settings.public and not self.settings.server_folders:
            return [MODEL_SOURCES[0], MODEL_SOURCES[2]]
        return list(MODEL_SOURCES)

    def _server_folder(self, path: str, what: str) -> str:
        if not self.settings.folder_allowed(path):  # public mode: the same answer as for a missing folder
            raise UIError(f"{what} {path} is not offered on this server")
        return path

    def _dataset_spec(self, source: str, folder: str | None, upload) -> tuple[str, Path | None]:
        """(the run's ``data``, the upload folder this call extracted or None: removed if the Start fails)."""
        if source not in self.data_sources():
            raise UIError(f"unknown dataset source {source!r}; choose one of {self.data_sources()}")
        if source == DATA_SOURCES[0]:
            return "mnist5k", None
        if source == DATA_SOURCES[1]:
            folder = (folder or "").strip()
            if not folder:
                raise UIError("dataset folder path is empty: type the path of an ImageFolder on the server")
            return self._server_folder(folder, "dataset folder"), None
        if source == DATA_SOURCES[2]:
            path = upload if isinstance(upload, str | Path) or upload is None else getattr(upload, "name", None)
            if not path:
                raise UIError("no zip uploaded: upload a .zip of an ImageFolder (root/<class>/<image>)")
            root, new = extract_image_folder(path, self.settings.uploads_dir, self.settings.upload_limits)
            top = self.settings.uploads_dir / root.relative_to(self.settings.uploads_dir).parts[0]
            return str(root), top if new else None
        raise UIError(f"unknown dataset source {source!r}; choose one of {DATA_SOURCES}")

    @staticmethod
    def _upload_name(upload) -> str | None:
        """The name of the file the person chose (Gradio keeps it as the uploaded file's name)."""
        path = upload if isinstance(upload, str | Path) or upload is None else getattr(upload, "name", None)
        return Path(path).name if path else None

    @contextmanager
    def _named_as_uploaded(self, spec: str, upload):
        """Errors about an extracted upload name the zip the person chose, not the server's folder."""
        name = self._upload_name(upload)
        try:
            yield
        except USER_ERRORS as exc:
            if not name or spec not in str(exc):
                raise
            raise UIError(str(exc).replace(spec, name)) from exc

    def _model_paths(self, source: str, gen: str | None, det: str | None) -> tuple[str, str]:
        if source not in self.model_sources():
            raise UIError(f"unknown model source {source!r}; choose one of {self.model_sources()}")
        if source == MODEL_SOURCES[0]:
            return DEFAULT_GENERATOR, DEFAULT_DETECTOR
        if source == MODEL_SOURCES[2]:
            return EARLY_GENERATOR, DEFAULT_DETECTOR
        if source != MODEL_SOURCES[1]:
            raise UIError(f"unknown model source {source!r}; choose one of {MODEL_SOURCES}")
        gen, det = (gen or "").strip(), (det or "").strip()
        if not gen:
            raise UIError("generator folder path is empty")
        if not det:
            raise UIError("detector folder path is empty")
        return self._server_folder(gen, "generator folder"), self._server_folder(det, "detector folder")

    FORM_DEFAULTS = ("steps", "strength", "guidance")  # the run parameters a generator backend brings

    def model_defaults(self, model_source: str, gen_path: str | None = None) -> tuple:
        """(message, steps, strength, guidance) for the form when a model is chosen: the values
        ``resolve_config`` gives that generator (the library's one resolver of backend defaults:
        guidance 8 for Stable Diffusion, 4 for DiT, ...). For a model folder the form changes only
        when its backend brings defaults of its own, so a typed value is never replaced by a
        RunConfig default; what is then typed is what runs."""
        skip = (gr.skip(),) * (1 + len(self.FORM_DEFAULTS))
        try:
            if model_source == MODEL_SOURCES[1]:
                gen = (gen_path or "").strip()
                if not gen or not backend_defaults(gen):
                    return skip
                generator = gen
            elif model_source in (MODEL_SOURCES[0], MODEL_SOURCES[2]):
                generator = self._model_paths(model_source, None, None)[0]
            else:
                return skip
            cfg = resolve_config(generator)
        except (*USER_ERRORS, UIError, ValueError):  # a half-typed path: leave the form as it is
            return skip
        values = [getattr(cfg, f) for f in self.FORM_DEFAULTS]
        said = ", ".join(f"{f} {v}" for f, v in zip(self.FORM_DEFAULTS, values))
        return (f"the model's defaults filled in: {said} (change them if you like: what the form shows runs)", *values)

    @guarded(RUN_SIZE)
    def start_run(
        self,
        data_source: str,
        folder: str | None,
        upload,
        model_source: str,
        gen_path: str | None,
        det_path: str | None,
        ipc,
        k,
        tau,
        lam,
        steps,
        strength,
        guidance,
        seed,
        state: dict | None = None,
        uniqueness_centre: str | None = None,
        request: gr.Request = None,
    ) -> tuple:
        """Check data, models and parameters, then create a run folder; it becomes this session's run.
        ``uniqueness_centre`` ("class" or "global") comes last so that older callers keep working;
        None = the RunConfig default."""
        key = visitors.request_key(request, self.settings)
        generator, detector = self._model_paths(model_source, gen_path, det_path)
        values = dict(
            ipc=_int(ipc, "IPC"),
            k=_int(k, "K"),
            tau=_float(tau, "tau"),
            lam=_float(lam, "lambda"),
            steps=_int(steps, "steps"),
            strength=_float(strength, "strength"),
            guidance=_float(guidance, "guidance"),
            seed=_int(seed, "seed"),
            uniqueness_centre=uniqueness_centre or RunConfig.uniqueness_centre,
        )
        RunConfig(generator=generator, detector=detector, **values).validate()  # ranges first, then the data
        # What the form shows is what runs: every value is given (the form was filled with the
        # backend's own defaults when its model was chosen: ``model_defaults``), as in the CLI,
        # where only an absent value takes the backend's default.
        spec, extracted = self._dataset_spec(data_source, folder, upload)
        try:
            config = resolve_config(generator, detector=detector, data=spec, **values)
            with self._named_as_uploaded(spec, upload if data_source == DATA_SOURCES[2] else None):
                data, gen, det = resources.components(config)
            # Creating a run only checks and stores it; the jobs run it on the app's engine (``jobs.run_job``).
            pipe = LocalEngine.create(config, str(self.settings.runs_dir), data=data, generator=gen, detector=det)
            visitors.claim(pipe.store.path, key)  # public mode: the run is this visitor's (private: "local")
        except BaseException:
            if extracted is not None:  # a failed Start leaves no extracted upload behind
                shutil.rmtree(extracted, ignore_errors=True)
            raise
        try:
            skipped = f" ({len(data.skipped)} unreadable files skipped)" if data.skipped else ""
            msg = ok(
                f"run {pipe.store.run_id} created: {data.num_classes} classes, {len(data.train)} training images"
                f"{skipped}. Go to “Curate” and run a class."
            )
            return self._run_outputs(pipe.store, msg, key, (state or {}).get("queue"))
        finally:
            pipe.store.close()

    @guarded(RUN_SIZE)
    def open_run(self, run_path: str | None, state: dict | None = None, request: gr.Request = None) -> tuple:
        """Reopen a run by its folder or its id. In public mode only the visitor's own runs open:
        any other is "not found", exactly like a run that does not exist."""
        if not run_path:
            raise UIError("choose a run to reopen")
        key = visitors.request_key(request, self.settings)
        path = Path(run_path) if Path(run_path).is_absolute() else self.settings.runs_dir / str(run_path)
        path = path.resolve()
        name = path.name
        if self.settings.runs_dir not in path.parents:
            raise UIError(f"{run_path} is not a run of this app (runs live in {self.settings.runs_dir})")
        # a run is a folder right inside the runs folder; uploads, exports and served files are not runs
        in_place = path.parent == self.settings.runs_dir and not name.startswith(("_", "."))
        if not in_place or not (path / "run.sqlite").is_file() or not visitors.owns(path, key, self.settings):
            raise UIError(f"run {name} not found")
        store = RunStore.open(path)
        try:
            return self._run_outputs(store, ok(f"reopened run {store.run_id}"), key, (state or {}).get("queue"))
        finally:
            store.close()

    def restore(self, saved: str | None, state: dict | None = None, request: gr.Request = None) -> tuple:
        """On page load: reopen the run this browser had open, if it still exists (and is its own)."""
        key = visitors.request_key(request, self.settings)
        folder = self.settings.runs_dir / saved if saved and not Path(saved).is_absolute() else saved  # a name
        if (
            saved
            and (Path(folder) / "run.sqlite").is_file()
            and not (state or {}).get("run")
            and visitors.owns(folder, key, self.settings)
        ):
            return self.open_run(saved, state, request)
        # Nothing to reopen: leave status and state alone, so a slow page load cannot wipe a run
        # the user started in the meantime.
        return RunOutputs.skip(runs=gr.update(choices=self._runs_of(key)))

    TABS = ("setup", "curate", "overview", "embeddings", "export", "evaluate")

    def remember_place(self, state: dict | None, place: dict | None, label=None, anomaly_id=None, tab=None):
        """The place this browser keeps with its run (``gr.BrowserState``): the tab, class and
        anomaly in view. Given values replace the kept ones; a new run starts a new place. ``tab``
        comes from a click on a tab (``"curate"``, or ``"curate:<n>"`` as the page sends it). With
        no run open yet (a page still loading) the kept place is left as it is."""
        run = (state or {}).get("run")
        if not run:
            return gr.skip()
        kept = dict(place) if isinstance(place, dict) and place.get("run") == run else {"run": run}
        tab = str(tab).partition(":")[0] if tab is not None else None
        if tab in self.TABS:
            kept["tab"] = tab
        if label not in (None, ""):
            try:
                kept["label"] = int(float(label))
            except (TypeError, ValueError):
                pass
        if tab is None:  # the anomaly in view changed (None: no anomaly shown)
            kept["anomaly"] = int(anomaly_id) if anomaly_id not in (None, "") else None
        return kept

    @guarded(PANEL_SIZE)
    def open_place(self, state: dict | None, label=None, place: dict | None = None) -> tuple:
        """After a page load: the anomaly (or class) this browser had in view in its run, else the
        first anomaly still to review."""
        run = (state or {}).get("run")
        if not run or not isinstance(place, dict) or place.get("run") != run:
            return self.open_first(state, label)
        with self._store(state) as store:
            aid = place.get("anomaly")
            if aid is not None:
                try:
                    row = store.image(int(aid))
                except (*USER_ERRORS, ValueError):
                    row = None
                if row is not None and row.is_anomaly:
                    return self.panel(store, row.label, row.id, key=self._key(state), view=self._view(state))
            lab = place.get("label")
            if isinstance(lab, int) and 0 <= lab < len(store.class_names):
                return self.panel(store, lab, key=self._key(state), view=self._view(state))
        return self.open_first(state, label)

    def place_tab(self, state: dict | None, place: dict | None = None):
        """The tab this browser had open in its run (after a reload), or Set-up."""
        run = (state or {}).get("run")
        if run and isinstance(place, dict) and place.get("run") == run and place.get("tab") in self.TABS:
            return gr.Tabs(selected=place["tab"])
        return gr.skip()

    def refresh_runs(self, request: gr.Request = None) -> dict:
        return gr.update(choices=self._runs_of(visitors.request_key(request, self.settings)))

    # --- running -------------------------------------------------------------------------------
    @guarded(PANEL_SIZE + 1)
    def run_class(self, state: dict | None, label, progress=gr.Progress()) -> tuple:
        """Run (or resume) one class. Outputs: the job's message, then the panel, opened on the
        class's first anomaly still to review."""
        path = self._run_path(state)
        with self._store(state) as store:
            lab = self._label(store, label)
            names = store.class_names
        t0 = time.perf_counter()
        (s,) = jobs.run_job(path, [lab], progress=_progress_fn(progress, names))
        msg = ok(
            f"class {s.name} done in {time.perf_counter() - t0:.1f} s: {s.anomalies} anomalies, "
            f"{s.auto} picked automatically, {s.unresolved} unresolved"
        )
        with self._store(state) as store:
            return (msg, *self.panel(store, lab, message=msg, key=self._key(state), view=self._view(state)))

    @guarded(PANEL_SIZE + 1)
    def run_all(self, state: dict | None, label, anomaly_id=None, progress=gr.Progress()):
        """Run (or resume) every class not yet done, batched across classes in the engine's groups
        (as ``curator run`` does; one class per GPU call on Spaces), streaming: as each group is
        done the class picker's counts are refreshed (at most every ``PICKER_REFRESH_S``), so
        finished classes can be reviewed while the rest runs. The panel is left alone (the user may
        be reviewing), except that if nothing was open it opens on the first anomaly to review as
        soon as there is one; at the end it does the same."""
        path = self._run_path(state)
        with self._store(state) as store:
            names = store.class_names
            covered = jobs.run_labels(store)  # a run made with --classes covers only those
            done_before = {c.label for c in store.classes() if c.status == "done"}
            todo = [lab for lab in covered if lab not in done_before]
        opened = anomaly_id not in (None, "")

        def picker_only(store: RunStore, queue=None) -> Panel:  # the panel left alone but the picker's counts
            return Panel.skip(picker=gr.update(choices=class_choices(store, queue)))

        t0 = refreshed = time.perf_counter()
        done = 0
        report = _progress_fn(progress, names, f"run all ({len(todo)} classes) · ")
        for group in jobs.run_stream(path, todo, progress=report):
            done += len(group)
            which = f"class {names[group[0]]}" if len(group) == 1 else f"classes {names[group[0]]}–{names[group[-1]]}"
            msg = ok(f"{done} of {len(todo)} classes done ({time.perf_counter() - t0:.0f} s); {which} ready")
            if opened and time.perf_counter() - refreshed < PICKER_REFRESH_S:
                continue  # the picker's counts were refreshed moments ago: let the run go on
            with self._store(state) as store:
                first_label, first = (None, None) if opened else self._first_open(store)
                if first is not None:
                    opened = True
                    yield (msg, *self.panel(store, first_label, first, key=self._key(state), view=self._view(state)))
                else:
                    yield (msg, *picker_only(store))
            refreshed = time.perf_counter()
        with self._store(state) as store:
            summary = f"all {len(covered)} classes done" + (f" in {time.perf_counter() - t0:.1f} s" if todo else "")
            queue = review_queue(store)
            msg = ok(f"{summary}: {len(queue)} anomalies, {sum(not q.reviewed for q in queue)} to review")
            if opened:
                yield (msg, *picker_only(store, queue))
                return
            first_label, first = self._first_open(store, self._label(store, label) if label not in (None, "") else 0)
            yield (
                msg,
                *self.panel(
                    store,
                    first_label if first_label is not None else 0,
                    first,
                    key=self._key(state),
                    view=self._view(state),
                ),
            )

    def queue_position(self, state: dict | None, anomaly_id=None) -> str:
        """The review queue's line for the anomaly in view (after a run, when the queue has grown)."""
        try:
            with self._store(state) as store:
                aid = int(anomaly_id) if anomaly_id not in (None, "") else None
                return self._queue_text(review_queue(store), aid)
        except (*USER_ERRORS, UIError, ValueError):  # no run open, or it is gone: leave the line as it is
            return gr.skip()

    @guarded(1)
    def cancel(self, state: dict | None) -> str:
        jobs.request_cancel(self._run_path(state))
        return warn("cancelling after the current batch…")

    # --- class view ----------------------------------------------------------------------------
    @guarded(PANEL_SIZE)
    def show_class(self, state: dict | None, label, anomaly_id=None, candidate_id=None) -> tuple:
        with self._store(state) as store:
            return self.panel(
                store, self._label(store, label), anomaly_id, candidate_id, key=self._key(state), view=self._view(state)
            )

    @guarded(PANEL_SIZE)
    def open_first(self, state: dict | None, label=None) -> tuple:
        """The first anomaly still to review (in ``label`` if it has one, else in the run); the class
        otherwise. With no run open it changes nothing (it follows Start, Reopen and page load)."""
        if not (state or {}).get("run"):
            return Panel.skip()
        with self._store(state) as store:
            lab = self._label(store, label) if label not in (None, "") else 0
            first_label, first = self._first_open(store, lab)
            return self.panel(
                store,
                first_label if first_label is not None else lab,
                first,
                key=self._key(state),
                view=self._view(state),
            )

    @guarded(PANEL_SIZE)
    def show_anomaly(self, state: dict | None, label, anomaly_id) -> tuple:
        """Show one anomaly (by id) and its candidates; switches to the anomaly's class."""
        with self._store(state) as store:
            aid = _int(anomaly_id, "anomaly id")
            row = store.image(aid)
            if not row.is_anomaly:
                what = "passed inspection" if row.kind == "synthetic" else "is a candidate"
                raise UIError(f"image #{aid} is not an anomaly (it {what})")
            return self.panel(store, row.label, aid, key=self._key(state), view=self._view(state))

    @guarded(PANEL_SIZE)
    def open_from_map(self, state: dict | None, label, clicked) -> tuple:
        """A click on either map: ``"<anomaly id>"`` opens the anomaly, ``"<anomaly id>:<candidate id>"``
        (a candidate or a pick) opens it with that candidate selected."""
        aid, _, cid = str(clicked or "").partition(":")
        out = self.show_anomaly(state, label, aid)
        if not cid or not isinstance(out, Panel):
            return out
        with self._store(state) as store:
            lab = store.image(_int(aid, "anomaly id")).label
            c = _int(cid, "candidate id")
            return self.panel(store, lab, out.anomaly_id, c, message=ok(f"candidate #{c} selected (from the map)"),
                              key=self._key(state), view=self._view(state))  # fmt: skip

    @guarded(PANEL_SIZE)
    def select_class_image(self, state: dict | None, label, evt: gr.SelectData) -> tuple:
        with self._store(state) as store:
            lab = self._label(store, label)
            rows = store.synthetic(lab)
            r = rows[evt.index if isinstance(evt.index, int) else evt.index[0]]
            if not r.is_anomaly:
                return Panel.skip(message=ok(f"image #{r.id} passed inspection (confidence {r.confidence:.4f})"))
            return self.panel(store, lab, r.id, key=self._key(state), view=self._view(state))

    @guarded(PANEL_SIZE)
    def select_anomaly_row(self, state: dict | None, label, table, evt: gr.SelectData) -> tuple:
        with self._store(state) as store:
            lab = self._label(store, label)
            ids = class_view(store, lab).anomaly_ids
            if getattr(evt, "row_value", None):  # the row as displayed (the table may be sorted in the page)
                aid = int(evt.row_value[0])
            else:
                aid = ids[int(evt.index[0] if isinstance(evt.index, list | tuple) else evt.index)]
            if aid not in ids:
                raise UIError(f"#{aid} is not an anomaly of this class")
            return self.panel(store, lab, aid, key=self._key(state), view=self._view(state))

    @guarded(PANEL_SIZE)
    def step_anomaly(self, state: dict | None, label, anomaly_id, delta: int) -> tuple:
        """Next (``delta`` = 1) or previous (-1) anomaly in the session's review queue (its order and
        filters; class by class by default), wrapping around; the view follows it into its class."""
        with self._store(state) as store:
            lab = self._label(store, label) if label not in (None, "") else None
            view = self._view(state)
            everything = review_queue(store, view["order"])
            queue = self._queue(store, view, lab, everything)
            if not queue:
                if everything:
                    raise UIError("no anomaly matches this queue's filters: set them to “any”")
                raise UIError("this run has no anomaly yet: run a class first")
            ids = [q.anomaly_id for q in queue]
            aid = int(anomaly_id) if anomaly_id not in (None, "") else None
            if aid in ids:
                i = (ids.index(aid) + delta) % len(ids)
            elif view["order"] == "class":  # nothing of the queue shown: start from the class in view
                in_class = [j for j, q in enumerate(queue) if q.label >= (lab or 0)]
                i = in_class[0] if in_class and delta > 0 else (in_class[0] - 1 if in_class else len(ids) - 1)
            else:  # by doubt: from the top (N) or the bottom (P)
                i = 0 if delta > 0 else len(ids) - 1
            q = queue[i % len(ids)]
            return self.panel(store, q.label, q.anomaly_id, key=self._key(state), view=view, everything=everything)

    @guarded(PANEL_SIZE)
    def next_unreviewed(self, state: dict | None, label, anomaly_id) -> tuple:
        """The next anomaly no person has reviewed yet, after the one shown, in the session's queue."""
        with self._store(state) as store:
            aid = int(anomaly_id) if anomaly_id not in (None, "") else None
            view = self._view(state)
            everything = review_queue(store, view["order"])
            nxt = self._next_todo(store, aid, view, label, everything)
            if nxt is None:
                raise UIError("every anomaly in this queue has been reviewed: export it, change the filters, or step "
                              "with N / P")  # fmt: skip
            return self.panel(store, nxt.label, nxt.anomaly_id, key=self._key(state), view=view, everything=everything)

    def _next_todo(self, store: RunStore, after: int | None, view: dict | None = None, label=None, everything=None):
        lab = int(label) if label not in (None, "") else None
        queue = self._queue(store, view, lab, everything)
        ids = [q.anomaly_id for q in queue]
        start = ids.index(after) + 1 if after in ids else 0
        return next((q for q in queue[start:] + queue[:start] if not q.reviewed and q.anomaly_id != after), None)

    # --- the queue's order and filters; bulk accept ----------------------------------------------
    @guarded(PANEL_SIZE + 1)
    def set_queue_view(self, state: dict | None, label, anomaly_id, order, reason, st, this_class) -> tuple:
        """Set the session's queue order and filters (kept in its state) and show where the anomaly
        in view stands in it. Outputs: the new state, then the panel."""
        if order not in QUEUE_ORDERS:
            raise UIError(f"unknown queue order {order!r}; use one of {list(QUEUE_ORDERS)}")
        if reason not in REASON_CHOICES:
            raise UIError(f"unknown reason {reason!r}; use one of {REASON_CHOICES}")
        if st not in STATE_CHOICES:
            raise UIError(f"unknown decision state {st!r}; use one of {STATE_CHOICES}")
        view = {"order": order, "reason": None if reason == ANY else reason, "state": None if st == ANY else st,
                "this_class": bool(this_class)}  # fmt: skip
        new_state = {**(state or {}), "queue": view}
        with self._store(new_state) as store:
            lab = self._label(store, label) if label not in (None, "") else 0
            aid = int(anomaly_id) if anomaly_id not in (None, "") else None
            n = len(self._queue(store, view, lab))
            how = "by doubt" if order == "doubt" else "class by class"
            msg = ok(f"review queue: {n} anomal{'y' if n == 1 else 'ies'} {how} · N / P step through it, J goes to the "
                     "next to review")  # fmt: skip
            return (new_state, *self.panel(store, lab, aid, message=msg, key=self._key(state), view=view))

    def _bulk_items(self, store: RunStore, state: dict | None, label, min_confidence, min_margin) -> list[QueueItem]:
        lab = self._label(store, label) if label not in (None, "") else None
        x, y = _float(min_confidence, "minimum confidence"), _float(min_margin, "minimum margin")
        if not 0.0 <= x <= 1.0:
            raise UIError(f"minimum confidence must be in [0, 1], got {x}")
        if y < 0:
            raise UIError(f"minimum margin must be ≥ 0 (score units), got {y}")
        return bulk_targets(self._queue(store, self._view(state), lab), x, y)

    @guarded(4)
    def bulk_preview(self, state: dict | None, label, min_confidence, min_margin) -> tuple:
        """Say how many automatic picks the bulk accept would accept in the session's queue, and show
        its Confirm button. Outputs: message, Confirm, Cancel, what awaits confirmation."""
        with self._store(state) as store:
            items = self._bulk_items(store, state, label, min_confidence, min_margin)
            v = self._view(state)
            shown = self._queue(store, v, int(label) if label not in (None, "") else None)
            people = sum(q.reviewed for q in shown)
            x, y = float(min_confidence), float(min_margin)
            if not items:
                return (warn(f"no automatic pick in this queue has confidence ≥ {x:g} and a lead ≥ {y:g} over its "
                             "runner-up; nothing to accept"), gr.update(visible=False), gr.update(visible=False),
                        None)  # fmt: skip
            msg = warn(
                f"Accept {len(items)} automatic pick{'s' if len(items) != 1 else ''} ★ of the {len(shown)} anomalies "
                f"in this queue (confidence ≥ {x:g}, lead over the runner-up ≥ {y:g})? {people} decided by a person "
                "stay as they are. Press “Confirm bulk accept”; U undoes it in one step."
            )
            pending = {"ids": [q.anomaly_id for q in items], "run": (state or {}).get("run")}
            return msg, gr.update(visible=True), gr.update(visible=True), pending

    @guarded(PANEL_SIZE + 3)
    def bulk_confirm(self, state: dict | None, label, anomaly_id, pending) -> tuple:
        """Accept the previewed picks in one step (``review.bulk_accept``). Outputs: the panel, then
        Confirm and Cancel hidden and nothing pending."""
        if not isinstance(pending, dict) or pending.get("run") != (state or {}).get("run") or not pending.get("ids"):
            raise UIError("nothing to confirm: press “Bulk accept…” first")
        with self._store(state) as store:
            want = set(pending["ids"])
            items = [q for q in review_queue(store) if q.anomaly_id in want]
            n = bulk_accept(store, items)
            skipped = len(want) - n
            msg = f"bulk accept: {n} automatic pick{'s' if n != 1 else ''} accepted in one step (U takes all {n} back)"
            if skipped:
                msg += f"; {skipped} left as they are (a person decided meanwhile)"
            lab = self._label(store, label) if label not in (None, "") else 0
            hide = gr.update(visible=False)
            return (*self.panel(store, lab, anomaly_id, message=ok(msg), key=self._key(state), view=self._view(state)),
                    hide, hide, None)  # fmt: skip

    def bulk_cancel(self) -> tuple:
        hide = gr.update(visible=False)
        return ok("bulk accept cancelled: nothing changed"), hide, hide, None

    @guarded(3)
    def select_candidate(self, state: dict | None, anomaly_id, evt: gr.EventData) -> tuple:
        """A click on a candidate card (its id comes with the event) selects it."""
        with self._store(state) as store:
            aid = _int(anomaly_id, "anomaly id")
            cid = _int(getattr(evt, "cid", None), "candidate id")
            if cid not in {c.id for c in store.candidates(aid)}:
                raise UIError(f"image {cid} is not a candidate of anomaly {aid}")
            c, a = store.image(cid), store.image(aid)
            other = (
                f" (predicted as class {store.class_names[c.predicted]}: keeping it needs a second press)"
                if c.predicted != a.label
                else ""
            )
            return ok(f"candidate #{cid} selected: press “Use selected” to keep it for #{aid}{other}"), cid, None

    @guarded(PANEL_SIZE + 1)
    def choose_candidate(self, state: dict | None, label, anomaly_id, candidate_id, pending=None) -> tuple:
        """“Use selected”: keep the selected candidate. One that the detector assigns to another
        class is kept only on a second press for the same candidate; the first press says so and
        changes nothing. Outputs: the panel, then what awaits confirmation ([anomaly, candidate] or None)."""
        with self._store(state) as store:
            aid, cid = _int(anomaly_id, "anomaly id"), _int(candidate_id, "candidate id")
            a, c = store.image(aid), store.image(cid)
            if c.parent_id == aid and c.predicted != a.label and list(pending or []) != [aid, cid]:
                names = store.class_names
                msg = warn(
                    f"#{cid} is predicted as class {names[c.predicted]}, not {names[a.label]} (confidence "
                    f"{c.confidence:.3f}): press “Use selected” again to keep it anyway, or select another"
                )
                return (*Panel.skip(message=msg), [aid, cid])
        return (*self.decide(state, label, aid, cid, "candidate"), None)

    @guarded(PANEL_SIZE)
    def decide(self, state: dict | None, label, anomaly_id, candidate_id, action: str) -> tuple:
        """``accept`` (the stored automatic pick), ``candidate`` (the selected one), ``original`` or
        ``drop``. Accepting moves on to the next anomaly still to review; the others stay."""
        with self._store(state) as store:
            aid = _int(anomaly_id, "anomaly id")
            a = store.image(aid)
            if not a.is_anomaly:
                raise UIError(f"image #{aid} is not an anomaly of this run")
            key = self._key(state)
            if action == "accept":
                pick = store.auto_pick(aid)  # the pick the pipeline stored
                if pick is None:
                    raise UIError(
                        f"anomaly #{aid} has no automatic pick (no candidate is predicted as its class): choose a "
                        "candidate, keep the original, drop it, or regenerate"
                    )
                before = decision_state(store.decision(aid), pick)
                user_decide(store, aid, "candidate", pick)  # reviewed: shown as "accepted"
                note = f" (it was {before}; U undoes)" if is_reviewed(before) and before != "accepted" else ""
                msg = ok(f"#{aid}: automatic pick #{pick} accepted{note}")
                view = self._view(state)
                everything = review_queue(store, view["order"])  # read after the write: one queue for both
                nxt = self._next_todo(store, aid, view, a.label, everything)
                if nxt is None:
                    return self.panel(store, a.label, aid, message=msg + " · every anomaly is reviewed", key=key,
                                      view=view, everything=everything)  # fmt: skip
                return self.panel(store, nxt.label, nxt.anomaly_id, message=msg + "; next to review", key=key,
                                  view=view, everything=everything)  # fmt: skip
            if action == "candidate":
                d = user_decide(store, aid, "candidate", _int(candidate_id, "candidate id"))
                msg = f"#{aid}: candidate #{d.candidate_id} kept ({decision_state(d, store.auto_pick(aid))})"
                predicted = store.image(d.candidate_id).predicted
                if predicted != a.label:  # an off-class keep (confirmed in ``choose_candidate``)
                    msg += f", though the detector predicts {store.class_names[predicted]}"
            elif action in ("original", "drop"):
                user_decide(store, aid, action)
                msg = f"#{aid}: {'original kept' if action == 'original' else 'dropped'} (your decision)"
            else:
                raise UIError(f"unknown action {action!r}")
            return self.panel(
                store, a.label, aid, candidate_id, message=ok(msg + " · saved"), key=key, view=self._view(state)
            )

    @guarded(PANEL_SIZE)
    def undo(self, state: dict | None, label, anomaly_id) -> tuple:
        """Undo the last decision of the run, say what was undone and move the view to it."""
        with self._store(state) as store:
            undone = store.undo_last()
            if undone is None:
                raise UIError("nothing to undo")
            if undone.count > 1:
                msg = ok(f"undone the bulk accept: {undone.count} decisions taken back, each back to its automatic "
                         "pick (no person's decision)")  # fmt: skip
                return self.panel(store, undone.label, undone.anomaly_id, message=msg, key=self._key(state),
                                  view=self._view(state))  # fmt: skip
            aid, pick = undone.anomaly_id, store.auto_pick(undone.anomaly_id)
            was = "a decision" if undone.was is None else decision_text(undone.was, pick)
            now = "nothing decided" if undone.now is None else decision_text(undone.now, pick)
            name = store.class_names[undone.label]
            msg = ok(f"undone on #{aid} (class {name}): {was}; now {now}")
            return self.panel(store, undone.label, aid, message=msg, key=self._key(state), view=self._view(state))

    @guarded(PANEL_SIZE + 1)
    def regenerate(self, state: dict | None, label, anomaly_id, progress=gr.Progress()) -> tuple:
        """Another round of K candidates for the anomaly (queued on the device), then rescoring."""
        path = self._run_path(state)
        with self._store(state) as store:
            aid = _int(anomaly_id, "anomaly id")
            names = store.class_names
            if not store.image(aid).is_anomaly:
                raise UIError(f"image #{aid} is not an anomaly of this run")
        round_ = jobs.run_job(path, regenerate_id=aid, progress=_progress_fn(progress, names, f"#{aid} · "))
        with self._store(state) as store:
            lab = store.image(aid).label
            msg = ok(f"#{aid}: round {round_} of candidates added and rescored")
            return (msg, *self.panel(store, lab, aid, message=msg, key=self._key(state), view=self._view(state)))

    # --- overview ------------------------------------------------------------------------------
    @guarded(3)
    def overview(self, state: dict | None, filter_by: str, sort_by: str, descending: bool, page=1) -> tuple:
        """The per-class table, filtered and sorted, one page (``OVERVIEW_PAGE`` classes) at a time.
        Outputs: message, the page's table with its totals row, the page shown."""
        with self._store(state) as store:
            df = overview_frame(store, filter_by, sort_by, bool(descending))
            rows, page, pages = page_of(df, page)
            first = (page - 1) * OVERVIEW_PAGE
            shown = f"classes {first + 1}–{first + len(rows)} of {len(df)}" if len(df) else "no class"
            msg = f"{shown} ({filter_by}; {len(store.class_names)} in the run) · page {page} of {pages}"
            return ok(msg + " · the last row sums this page"), with_totals(rows), page

    @guarded(3)
    def jump_to_class(self, state: dict | None, table, evt: gr.SelectData) -> tuple:
        """Selecting a row of the overview opens that class in the Curate tab."""
        df = table if isinstance(table, pd.DataFrame) else pd.DataFrame(table)
        if df.empty or "label" not in df:
            raise UIError("the overview is empty: refresh it first")
        if getattr(evt, "row_value", None):  # the row as displayed (the table may be sorted in the page)
            lab, name = evt.row_value[0], evt.row_value[1]
        else:
            row = df.iloc[int(evt.index[0] if isinstance(evt.index, list | tuple) else evt.index)]
            lab, name = row["label"], row["class"]
        if name == TOTAL or lab in (None, ""):
            raise UIError("that is the totals row: select a class's row to open it")
        lab = int(lab)
        return ok(f"class {name} opened"), gr.update(value=lab), gr.Tabs(selected="curate")

    # --- embeddings ----------------------------------------------------------------------------
    @guarded(3)
    def embedding(self, state: dict | None, color_by: str) -> tuple:
        """The whole run's UMAP (fitted once, cached)."""
        with self._store(state) as store:
            det = resources.detector(store.config.detector, resources.device_for(store.config))
            emb = run_embedding(store, det)
            how = "fitted now" if emb.fitted else "from cache"
            if emb.fitted and emb.placed:
                extra = f" on a sample of {emb.fit_points} points, the other {emb.placed} placed by transform"
            else:
                extra = f", {emb.placed} new points placed by transform" if emb.placed else ""
            counts = emb.frame["kind"].value_counts().to_dict()
            key = self._key(state)

            def thumb(file: str) -> str | None:
                return _file_url(_served(self.settings, store.path / file, key)) if file else None

            many = len(emb.frame) > MAX_THUMB_POINTS  # a served file per point would cost more than the map
            title = f"UMAP of detector features · run {store.run_id}"
            fig = umap_figure(emb.frame, color_by, title, None if many else thumb)
            points = f"{len(emb.frame)} points ({', '.join(f'{v} {k}' for k, v in counts.items())})"
            info = f"{points} · {how}{extra}"
            if many:
                info += f" · over {MAX_THUMB_POINTS} points: thumbnails on hover in the class map"
            return ok(f"whole run: UMAP {how} in {emb.seconds:.1f} s{extra} · {points}"), fig, info

    @guarded(3)
    def class_embedding(self, state: dict | None, label) -> tuple:
        """One class's real images, prototypes, synthetic images, anomalies, candidates and picks in
        one map (UMAP, or PCA for a handful of points), zoomed to the data; hover shows a thumbnail
        and a click on an anomaly, candidate or pick opens that anomaly in Curate."""
        with self._store(state) as store:
            lab = self._label(store, label)
            det = resources.detector(store.config.detector, resources.device_for(store.config))
            emb = class_embedding(store, det, lab)
            key = self._key(state)

            def thumb(file: str) -> str | None:
                return _file_url(_served(self.settings, store.path / file, key)) if file else None

            name = store.class_names[lab]
            fig = class_figure(emb.frame, f"Class {name}: detector features ({emb.method.upper()})", thumb)
            how = "fitted now" if emb.fitted else "from cache"
            counts = emb.frame["kind"].value_counts().to_dict()
            info = f"{len(emb.frame)} points ({', '.join(f'{v} {k}' for k, v in counts.items())})"
            return ok(f"class {name}: {emb.method.upper()} {how} in {emb.seconds:.2f} s · {info}"), fig, info

    # --- export --------------------------------------------------------------------------------
    @guarded(3)
    def export(self, state: dict | None) -> tuple:
        with self._store(state) as store:
            out = serving.export_dir(self.settings, self._key(state), store.run_id) / f"{store.run_id}-export"
            out.parent.mkdir(parents=True, exist_ok=True)
            missing = unfinished_classes(store)  # the app exports what is finished and says what is not
            zip_path = export_run(store, out, make_zip=True, partial=True)
            preview = metadata_preview(out)
            n = len(pd.read_csv(out / "provenance.csv"))
            note = f" (partial: unfinished classes {', '.join(missing)} left out)" if missing else ""
            return (
                ok(f"exported {n} images as {zip_path.name}: press Download{note}"),
                gr.update(value=str(zip_path), visible=True),  # a plain "Download zip": the message names the file
                preview,
            )


__all__ = ["CENTRES", "Callbacks", "DATA_SOURCES", "EARLY_GENERATOR", "MODEL_SOURCES", "OVERVIEW_COLUMNS", "PANEL_SIZE"]
