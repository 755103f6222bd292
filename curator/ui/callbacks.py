"""Event handlers of the app, as plain methods of ``Callbacks`` (unit-tested without a server).

Every handler returns a message first (a line of Markdown), then its other outputs. Bad input
(``USER_ERRORS``, ``UIError``) becomes that message, with the other outputs left as they were
(``gr.skip()``); any other exception is logged with a reference and shown as a generic message,
never a traceback, and the server keeps serving everyone else.

Per-session state is a dict ``{"run": path}`` (``gr.State``); the run path is also kept in the
browser (``gr.BrowserState``) so a reload reopens the same run. Each handler opens its own
``RunStore`` (one SQLite connection per request) and closes it, so Gradio's worker threads never
share a connection. Decisions are written by ``user_decide``/``RunStore.decide`` before the
handler returns.
"""

from __future__ import annotations

import functools
import logging
import shutil
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import gradio as gr
import pandas as pd

from curator.config import ASSETS, DEFAULT_DETECTOR, DEFAULT_GENERATOR, RunConfig
from curator.embedding import run_embedding
from curator.engine import Cancelled, LocalEngine, ProgressFn
from curator.errors import USER_ERRORS
from curator.export import export_run, unfinished_classes
from curator.models.loading import resolve_config
from curator.review import user_decide
from curator.store import RunStore
from curator.ui import jobs, resources
from curator.ui.plots import umap_figure
from curator.ui.resources import AppSettings
from curator.ui.serving import served_gallery, served_path
from curator.ui.uploads import extract_image_folder
from curator.ui.views import (
    OVERVIEW_COLUMNS,
    UIError,
    anomaly_view,
    class_view,
    metadata_preview,
    overview_frame,
    run_choices,
)

log = logging.getLogger("curator.ui")

DATA_SOURCES = ["built-in (mnist5k)", "folder on the server", "uploaded zip"]
# the third: the shipped detector with a deliberately early generator checkpoint, a testbed where
# refinement has work to do (assets/generator-early/README.md); never for real distillation
MODEL_SOURCES = ["shipped models", "model folders", "shipped detector, early generator (testbed)"]
EARLY_GENERATOR = str(ASSETS / "generator-early")
CENTRES = ["class", "global"]  # RunConfig.uniqueness_centre
PANEL_SIZE = 10  # message + class gallery, anomaly table, anomaly id, anomaly text, original, prototype,
# candidate gallery, candidate table, candidate id
RUN_SIZE = 6  # message + state, browser state, runs dropdown, class dropdown, run info
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


def guarded(n_outputs: int) -> Callable:
    """Turn user errors into a message (first output) and other errors into a logged generic message."""

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except (*USER_ERRORS, UIError) as exc:
                msg = warn(str(exc))
            except Cancelled:
                msg = warn("cancelled; everything generated so far is saved, run the class again to resume")
            except Exception:  # noqa: BLE001 - never show a traceback; the server keeps serving
                ref = uuid.uuid4().hex[:8]
                log.exception("internal error %s in %s", ref, fn.__name__)
                msg = warn(f"something went wrong on the server (reference {ref}, logged); please try again")
            return (msg, *[gr.skip() for _ in range(n_outputs - 1)]) if n_outputs > 1 else msg

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


def _progress_fn(progress, names: list[str]) -> ProgressFn:
    """Adapt the pipeline's ``(stage, done, total, label)`` to ``gr.Progress``."""

    def report(stage: str, done: int, total: int, label: int | None) -> None:
        if progress is not None:
            where = "several classes" if label is None else f"class {names[label]}"
            progress((done, max(total, 1)), desc=f"{where}: {STAGE_NAMES.get(stage, stage)}", unit="img")

    return report


class Callbacks:
    """All handlers, bound to the app's settings (where runs live)."""

    def __init__(self, settings: AppSettings):
        self.settings = settings

    # --- helpers -------------------------------------------------------------------------------
    def _run_path(self, state: dict | None) -> str:
        path = (state or {}).get("run")
        if not path:
            raise UIError("no run open: start a run in Set-up, or reopen one")
        return path

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

    def _class_choices(self, store: RunStore) -> list[tuple[str, int]]:
        return [(f"{r.label}: {r.name} ({r.status})", r.label) for r in store.classes()]

    def _run_info(self, store: RunStore) -> str:
        cfg = store.config
        return (
            f"**Run** `{store.run_id}` · data `{cfg.data}` · {len(store.class_names)} classes · IPC {cfg.ipc} · "
            f"K {cfg.k} · tau {cfg.tau} · lambda {cfg.lam} ({cfg.uniqueness_centre} centre) · steps {cfg.steps} · "
            f"strength {cfg.strength} · guidance {cfg.guidance} · seed {cfg.seed}  \n"
            f"generator `{cfg.generator}` · folder `{store.path}`"
        )

    def _run_outputs(self, store: RunStore, message: str, label: int | None = None) -> tuple:
        path = str(store.path)
        choices = self._class_choices(store)
        value = label if label is not None else (choices[0][1] if choices else None)
        return (
            message,
            {"run": path},
            path,
            gr.update(choices=run_choices(self.settings.runs_dir), value=path),
            gr.update(choices=choices, value=value),
            self._run_info(store),
        )

    def panel(self, store: RunStore, label: int, anomaly_id=None, candidate_id=None, message: str = "") -> tuple:
        """The class view's outputs: gallery and anomaly table of ``label``, then one anomaly in detail."""
        cv = class_view(store, label)
        aid = int(anomaly_id) if anomaly_id not in (None, "") else None
        if aid not in cv.anomaly_ids:
            open_ = [i for i in cv.anomaly_ids if store.decision(i) is None or store.decision(i).choice == "unresolved"]
            aid = (open_ or cv.anomaly_ids or [None])[0]
        if not message:
            message = (
                f"class {cv.name}: {len(cv.gallery)} images, {len(cv.anomaly_ids)} anomalies ({cv.status})"
                if cv.gallery
                else f"class {cv.name} has not been run yet: press “Run this class”"
            )
        selected = cv.image_ids.index(aid) if aid in cv.image_ids else None
        gallery = gr.update(
            value=served_gallery(self.settings, cv.gallery),
            selected_index=selected,
            label=f"Class {cv.name}: synthetic set",
        )
        if aid is None:
            return (
                message,
                gallery,
                cv.anomalies,
                None,
                "No anomaly in this class." if cv.gallery else "",
                None,
                None,
                gr.update(value=[], selected_index=None),
                pd.DataFrame(),
                None,
            )
        av = anomaly_view(store, aid)
        cid = int(candidate_id) if candidate_id not in (None, "") else None
        if cid not in av.candidate_ids:
            cid = av.chosen_id or av.pick_id
        sel = av.candidate_ids.index(cid) if cid in av.candidate_ids else None
        return (
            message,
            gallery,
            cv.anomalies,
            aid,
            av.summary_md,
            gr.update(value=served_path(self.settings, av.original), label=av.original_caption),
            served_path(self.settings, av.prototype),
            gr.update(
                value=served_gallery(self.settings, av.candidates),
                selected_index=sel,
                label=f"{len(av.candidates)} candidates of #{aid}",
            ),
            av.table,
            cid,
        )

    # --- set-up --------------------------------------------------------------------------------
    def _dataset_spec(self, source: str, folder: str | None, upload) -> tuple[str, Path | None]:
        """(the run's ``data``, the upload folder this call extracted or None: removed if the Start fails)."""
        if source == DATA_SOURCES[0]:
            return "mnist5k", None
        if source == DATA_SOURCES[1]:
            folder = (folder or "").strip()
            if not folder:
                raise UIError("dataset folder path is empty: type the path of an ImageFolder on the server")
            return folder, None
        if source == DATA_SOURCES[2]:
            path = upload if isinstance(upload, str | Path) or upload is None else getattr(upload, "name", None)
            if not path:
                raise UIError("no zip uploaded: upload a .zip of an ImageFolder (root/<class>/<image>)")
            root, new = extract_image_folder(path, self.settings.uploads_dir, self.settings.upload_limits)
            top = self.settings.uploads_dir / root.relative_to(self.settings.uploads_dir).parts[0]
            return str(root), top if new else None
        raise UIError(f"unknown dataset source {source!r}; choose one of {DATA_SOURCES}")

    def _model_paths(self, source: str, gen: str | None, det: str | None) -> tuple[str, str]:
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
        return gen, det

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
    ) -> tuple:
        """Check data, models and parameters, then create a run folder; it becomes this session's run.
        ``uniqueness_centre`` ("class" or "global") comes last so that older callers keep working;
        None = the RunConfig default."""
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
        # Fields left at RunConfig's defaults take the generator backend's (guidance 8 for Stable
        # Diffusion, ...): the same resolver as the CLI's.
        defaults = RunConfig()
        given = {k: v for k, v in values.items() if v != getattr(defaults, k)}
        spec, extracted = self._dataset_spec(data_source, folder, upload)
        try:
            config = resolve_config(generator, detector=detector, data=spec, **given)
            data, gen, det = resources.components(config)
            # Creating a run only checks and stores it; the jobs run it on the app's engine (``jobs.run_job``).
            pipe = LocalEngine.create(config, str(self.settings.runs_dir), data=data, generator=gen, detector=det)
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
            return self._run_outputs(pipe.store, msg)
        finally:
            pipe.store.close()

    @guarded(RUN_SIZE)
    def open_run(self, run_path: str | None, state: dict | None = None) -> tuple:
        if not run_path:
            raise UIError("choose a run to reopen")
        path = Path(run_path).resolve()
        if self.settings.runs_dir not in path.parents:
            raise UIError(f"{run_path} is not a run of this app (runs live in {self.settings.runs_dir})")
        store = RunStore.open(path)
        try:
            return self._run_outputs(store, ok(f"reopened run {store.run_id}"))
        finally:
            store.close()

    def restore(self, saved: str | None, state: dict | None = None) -> tuple:
        """On page load: reopen the run this browser had open, if it still exists."""
        if saved and (Path(saved) / "run.sqlite").is_file() and not (state or {}).get("run"):
            return self.open_run(saved, state)
        # Nothing to reopen: leave status and state alone, so a slow page load cannot wipe a run
        # the user started in the meantime.
        return (
            gr.skip(),
            gr.skip(),
            gr.skip(),
            gr.update(choices=run_choices(self.settings.runs_dir)),
            gr.skip(),
            gr.skip(),
        )

    def refresh_runs(self) -> dict:
        return gr.update(choices=run_choices(self.settings.runs_dir))

    # --- running -------------------------------------------------------------------------------
    def _run(self, state, label, all_classes: bool, progress) -> tuple:
        path = self._run_path(state)
        with self._store(state) as store:
            lab = self._label(store, label)
            names = store.class_names
            labels = None if all_classes else [lab]
        t0 = time.perf_counter()
        summaries = jobs.run_job(path, labels, progress=_progress_fn(progress, names))
        secs = time.perf_counter() - t0
        with self._store(state) as store:
            done = ", ".join(
                f"{s.name}: {s.anomalies} anomalies, {s.resolved_auto} resolved, {s.unresolved} unresolved"
                for s in summaries
            )
            return self.panel(store, lab, message=ok(f"done in {secs:.1f} s · {done}")) + (
                gr.update(choices=self._class_choices(store), value=lab),
            )

    @guarded(PANEL_SIZE + 1)
    def run_class(self, state: dict | None, label, progress=gr.Progress()) -> tuple:
        """Run (or resume) one class; outputs the class panel and the class dropdown."""
        return self._run(state, label, False, progress)

    @guarded(PANEL_SIZE + 1)
    def run_all(self, state: dict | None, label, progress=gr.Progress()) -> tuple:
        """Run (or resume) every class not yet done."""
        return self._run(state, label, True, progress)

    @guarded(1)
    def cancel(self, state: dict | None) -> str:
        jobs.request_cancel(self._run_path(state))
        return warn("cancelling after the current batch…")

    # --- class view ----------------------------------------------------------------------------
    @guarded(PANEL_SIZE)
    def show_class(self, state: dict | None, label, anomaly_id=None, candidate_id=None) -> tuple:
        with self._store(state) as store:
            return self.panel(store, self._label(store, label), anomaly_id, candidate_id)

    @guarded(PANEL_SIZE)
    def show_anomaly(self, state: dict | None, label, anomaly_id) -> tuple:
        """Show one anomaly (by id) and its candidates; switches to the anomaly's class."""
        with self._store(state) as store:
            aid = _int(anomaly_id, "anomaly id")
            row = store.image(aid)
            if row.kind != "synthetic" or row.reason is None:
                what = "passed inspection" if row.kind == "synthetic" else "is a candidate"
                raise UIError(f"image #{aid} is not an anomaly (it {what})")
            return self.panel(store, row.label, aid)

    @guarded(PANEL_SIZE)
    def select_class_image(self, state: dict | None, label, evt: gr.SelectData) -> tuple:
        with self._store(state) as store:
            lab = self._label(store, label)
            rows = store.synthetic(lab)
            r = rows[evt.index if isinstance(evt.index, int) else evt.index[0]]
            if r.reason is None:
                return (ok(f"image #{r.id} passed inspection (confidence {r.confidence:.3f})"),) + tuple(
                    gr.skip() for _ in range(PANEL_SIZE - 1)
                )
            return self.panel(store, lab, r.id)

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
            return self.panel(store, lab, aid)

    @guarded(PANEL_SIZE)
    def step_anomaly(self, state: dict | None, label, anomaly_id, delta: int) -> tuple:
        """Next (``delta`` = 1) or previous (-1) anomaly of the class, wrapping around."""
        with self._store(state) as store:
            lab = self._label(store, label)
            ids = class_view(store, lab).anomaly_ids
            if not ids:
                raise UIError("this class has no anomaly")
            aid = int(anomaly_id) if anomaly_id not in (None, "") else None
            i = (ids.index(aid) + delta) % len(ids) if aid in ids else 0
            return self.panel(store, lab, ids[i])

    @guarded(2)
    def select_candidate(self, state: dict | None, anomaly_id, evt: gr.SelectData) -> tuple:
        with self._store(state) as store:
            cands = store.candidates(_int(anomaly_id, "anomaly id"))
            i = evt.index[0] if isinstance(evt.index, list | tuple) else evt.index
            c = cands[int(i)]
            return ok(f"candidate #{c.id} selected: press “Use selected candidate” to choose it"), c.id

    @guarded(PANEL_SIZE)
    def decide(self, state: dict | None, label, anomaly_id, candidate_id, action: str) -> tuple:
        """``accept`` (the automatic pick), ``candidate`` (the selected one), ``original`` or ``drop``."""
        with self._store(state) as store:
            aid = _int(anomaly_id, "anomaly id")
            a = store.image(aid)
            lab = a.label
            if action == "accept":
                pick = store.auto_pick(aid)  # the pick the pipeline stored
                if pick is None:
                    raise UIError(
                        f"anomaly #{aid} has no automatic pick (no candidate is predicted as its class): choose a "
                        "candidate, keep the original, drop it, or regenerate"
                    )
                user_decide(store, aid, "candidate", pick)  # reviewed: shown as "accepted"
                ids = class_view(store, lab).anomaly_ids
                nxt = ids[(ids.index(aid) + 1) % len(ids)]
                return self.panel(store, lab, nxt, message=ok(f"#{aid}: automatic pick #{pick} accepted; next anomaly"))
            if action == "candidate":
                d = user_decide(store, aid, "candidate", _int(candidate_id, "candidate id"))
                msg = f"#{aid}: candidate #{d.candidate_id} chosen (your decision)"
            elif action in ("original", "drop"):
                user_decide(store, aid, action)
                msg = f"#{aid}: {'original kept' if action == 'original' else 'dropped'} (your decision)"
            else:
                raise UIError(f"unknown action {action!r}")
            return self.panel(store, lab, aid, candidate_id, message=ok(msg + " · saved"))

    @guarded(PANEL_SIZE)
    def undo(self, state: dict | None, label, anomaly_id) -> tuple:
        with self._store(state) as store:
            undone = store.undo_last()
            if undone is None:
                raise UIError("nothing to undo")
            aid, d = undone.anomaly_id, undone.now
            return self.panel(
                store, undone.label, aid, message=ok(f"undone: #{aid} is back to {d.choice if d else 'pending'}")
            )

    @guarded(PANEL_SIZE)
    def regenerate(self, state: dict | None, label, anomaly_id, progress=gr.Progress()) -> tuple:
        """Another round of K candidates for the anomaly (queued on the device), then rescoring."""
        path = self._run_path(state)
        with self._store(state) as store:
            aid = _int(anomaly_id, "anomaly id")
            names = store.class_names
            store.image(aid)
        round_ = jobs.run_job(path, regenerate_id=aid, progress=_progress_fn(progress, names))
        with self._store(state) as store:
            lab = store.image(aid).label
            return self.panel(store, lab, aid, message=ok(f"#{aid}: round {round_} of candidates added and rescored"))

    # --- overview ------------------------------------------------------------------------------
    @guarded(2)
    def overview(self, state: dict | None, filter_by: str, sort_by: str, descending: bool) -> tuple:
        with self._store(state) as store:
            df = overview_frame(store, filter_by, sort_by, bool(descending))
            return ok(f"{len(df)} of {len(store.class_names)} classes shown"), df

    @guarded(3)
    def jump_to_class(self, state: dict | None, table, evt: gr.SelectData) -> tuple:
        """Selecting a row of the overview opens that class in the Curate tab."""
        df = table if isinstance(table, pd.DataFrame) else pd.DataFrame(table)
        if df.empty or "label" not in df:
            raise UIError("the overview is empty: refresh it first")
        if getattr(evt, "row_value", None):  # the row as displayed (the table may be sorted in the page)
            lab, name = int(evt.row_value[0]), evt.row_value[1]
        else:
            row = df.iloc[int(evt.index[0] if isinstance(evt.index, list | tuple) else evt.index)]
            lab, name = int(row["label"]), row["class"]
        return ok(f"class {name} opened"), gr.update(value=lab), gr.Tabs(selected="curate")

    # --- embeddings ----------------------------------------------------------------------------
    @guarded(3)
    def embedding(self, state: dict | None, color_by: str) -> tuple:
        with self._store(state) as store:
            det = resources.detector(store.config.detector, resources.device_for(store.config))
            emb = run_embedding(store, det)
            how = "fitted now" if emb.fitted else "from cache"
            extra = f", {emb.placed} new points placed by transform" if emb.placed else ""
            counts = emb.frame["kind"].value_counts().to_dict()
            fig = umap_figure(emb.frame, color_by, title=f"UMAP of detector features · run {store.run_id}")
            info = f"{len(emb.frame)} points ({', '.join(f'{v} {k}' for k, v in counts.items())}) · {how}{extra}"
            return ok(f"UMAP {how} in {emb.seconds:.1f} s{extra}"), fig, info

    # --- export --------------------------------------------------------------------------------
    @guarded(3)
    def export(self, state: dict | None) -> tuple:
        with self._store(state) as store:
            out = self.settings.exports_dir / store.run_id / f"{store.run_id}-export"
            out.parent.mkdir(parents=True, exist_ok=True)
            missing = unfinished_classes(store)  # the app exports what is finished and says what is not
            zip_path = export_run(store, out, make_zip=True, partial=True)
            preview = metadata_preview(out)
            n = len(pd.read_csv(out / "provenance.csv"))
            note = f" (partial: unfinished classes {', '.join(missing)} left out)" if missing else ""
            return (
                ok(f"exported {n} images to {out} and {zip_path.name}{note}"),
                gr.update(value=str(zip_path), visible=True, label=f"Download {zip_path.name}"),
                preview,
            )


__all__ = ["CENTRES", "Callbacks", "DATA_SOURCES", "EARLY_GENERATOR", "MODEL_SOURCES", "OVERVIEW_COLUMNS", "PANEL_SIZE"]
