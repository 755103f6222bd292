"""The Evaluate tab: does the curation help? Train fresh students on the run's sets and compare.

A person chooses the sets (the curated set with their decisions, the automatic set, the unrefined
synthesis, random real images at the same IPC), the protocol (hard labels, or soft labels from the
run's detector at a temperature), the student (ConvNet-3 or a timm name) and the seeds, and
presses Start. ``EvaluateCallbacks.start`` runs ``curator.evaluation.evaluate_run`` in a worker
thread on the app's one device queue (``concurrency_id="device"``, like a run's jobs), streaming
the student and epoch in training to the message line and the results after each student. Cancel
stops before the next SGD step (``curator.engine.Cancelled``): finished students stay stored, and
an evaluation that lacks seeds shows as partial, never as complete.

Everything shown is read from the run store (``curator.store.evaluations``) through the pure
functions of ``curator.evaluation`` (``results_for``, ``summary_frame``, ``per_class_frame``,
``student_frame``, ``review_gain``): opening the run, a reload or a later visit shows the same
numbers, as does ``python -m curator evaluate RUN --show``.

``build`` makes the components inside a ``gr.Tab``; ``wire`` connects them (the layout calls both).
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any, NamedTuple

import gradio as gr
import pandas as pd

from curator.engine import Cancelled
from curator.evalsets import SET_TITLES, SETS, review_changed_set
from curator.evaluation import (
    SUMMARY_COLUMNS,
    Setup,
    StudentProgress,
    evaluate_run,
    per_class_frame,
    review_gain,
    setups,
    stored_results,
    student_frame,
    summary_frame,
)
from curator.store import RunStore, evaluations
from curator.students import DEFAULT_TEMPERATURE, TIMM_EXAMPLES, check_student
from curator.ui import jobs
from curator.ui.callbacks import Callbacks, _error_message, _float, _int, _scrub, ok, warn
from curator.ui.eval_plots import accuracy_bars, confusion_figure
from curator.ui.views import UIError

SET_CHOICES = [(SET_TITLES[s], s) for s in SETS]
PROTOCOL_CHOICES = [("hard labels", "hard"), ("soft labels (the run's detector as teacher)", "soft")]
STUDENT_CHOICES = ["convnet", *TIMM_EXAMPLES]
MAX_SEEDS, MAX_EPOCHS = 10, 5000
POLL_SECONDS = 0.5  # how often the message line follows the student in training
NO_RESULTS = "No evaluation stored for this run yet: choose sets, a protocol and a student, then press Start."
NO_RUN = "No run open: start or reopen a run in Set-up, then evaluate it here."
HELP = (
    "Does the curation help? Train fresh students on each set, test them on the real test split. "
    "**curated**: the set as you left it, with your decisions · **automatic**: the pipeline's own picks · "
    "**unrefined**: the anomalies left in · **random real**: real images at the same IPC. "
    "Each student is stored with the run when it finishes; Start again trains only missing seeds."
)


class EvalOutputs(NamedTuple):
    """What the Evaluate tab shows; field order = wiring order = a handler's return order."""

    message: Any  # the job's line: progress, the outcome, or what was wrong with the input
    setup: Any  # "Results of": the stored setups (protocol · student), newest first
    comparison: Any  # curated (with your decisions) against automatic (markdown)
    bars: Any  # top-1 per set, mean ± std, seeds as dots
    confusion: Any  # the curated set's confusion matrix
    summary: Any  # one row per set: top-1, status, seconds per student
    per_class: Any  # top-1 per true class and set
    students: Any  # one row per student: seed, top-1, seconds

    @classmethod
    def skip(cls, **given: Any) -> EvalOutputs:
        return cls(**{name: given.pop(name, gr.skip()) for name in cls._fields}, **given)


EVAL_SIZE = len(EvalOutputs._fields)


def _comparison_md(records, changed: bool | None = None) -> str:
    gain = review_gain(records, changed)
    if gain is not None:
        return f"**Worth of your review.** {gain.text()}"
    names = {r.set_name for r in records if r.students}
    if not names:
        return "No student of these sets has finished yet."
    if not {"curated", "automatic"} <= names:
        return ("**Worth of your review:** evaluate both *curated (with your decisions)* and *automatic "
                "(pipeline's picks)* with this protocol and student to compare them.")  # fmt: skip
    return ""


class EvaluateCallbacks:
    """The tab's handlers; run access (public mode: only one's own runs) goes through ``Callbacks``."""

    def __init__(self, cb: Callbacks):
        self.cb = cb

    # --- the view ------------------------------------------------------------------------------
    def view(self, store: RunStore, setup_label: str | None = None, message: Any = None) -> EvalOutputs:
        """The stored evaluations of ``store`` for the chosen setup (its label; default the newest)."""
        records = evaluations(store)
        found = setups(records)
        labels = [s.label for s in found]
        chosen = next((s for s in found if s.label == setup_label), found[0] if found else None)
        shown, current = stored_results(store, chosen)  # what `curator evaluate RUN --show` prints
        curated = next((r for r in shown if r.set_name == "curated"), None)
        title = f"Top-1 by set · {chosen.label}" if chosen else ""
        return EvalOutputs(
            message=gr.skip() if message is None else message,
            setup=gr.update(choices=labels, value=chosen.label if chosen else None),
            comparison=_comparison_md(shown, review_changed_set(store)) if shown else NO_RESULTS,
            bars=accuracy_bars(shown, title, current),
            confusion=confusion_figure(curated),
            summary=summary_frame(shown, current),
            per_class=per_class_frame(shown),
            students=student_frame(shown),
        )

    def _empty(self, message: str) -> EvalOutputs:
        return EvalOutputs(
            message=message, setup=gr.update(choices=[], value=None), comparison=NO_RUN, bars=accuracy_bars([]),
            confusion=confusion_figure(None), summary=pd.DataFrame(columns=SUMMARY_COLUMNS),
            per_class=pd.DataFrame(columns=["set"]), students=student_frame([]),
        )  # fmt: skip

    def show(self, state: dict | None, setup_label: str | None = None, clear: bool = False) -> EvalOutputs:
        """The run's stored evaluations (the tab selected, a setup chosen); the message line is left
        as it is (a job's line stays), or cleared with ``clear``."""
        if not (state or {}).get("run"):
            return self._empty("")
        try:
            with self.cb._store(state) as store:
                return self.view(store, setup_label, message="" if clear else None)
        except Exception as exc:  # noqa: BLE001 - never a traceback in the page
            return EvalOutputs.skip(message=_scrub(_error_message(exc, "evaluate.show"), self.cb.settings))

    def show_on_click(self, state: dict | None, setup_label: str | None, clicked: str | None) -> EvalOutputs:
        """A click on a tab ("<tab id>:<time>"): the stored results when it is this tab, else nothing."""
        if str(clicked or "").partition(":")[0] != "evaluate":
            return EvalOutputs.skip()
        return self.show(state, setup_label)

    def show_run(self, state: dict | None) -> EvalOutputs:
        """A run opened (Start, Reopen, a reload): its stored evaluations, nothing of the previous run."""
        return self.show(state, None, clear=True)

    # --- a job ---------------------------------------------------------------------------------
    @staticmethod
    def parse(sets, protocol, temperature, student, seeds, epochs) -> dict:
        """The form as ``evaluate_run``'s arguments; a UIError or ConfigError names what is wrong."""
        chosen = [s for s in (sets or []) if s]
        if not chosen:
            raise UIError("choose at least one set to evaluate")
        unknown = [s for s in chosen if s not in SETS]
        if unknown:
            raise UIError(f"unknown set(s) {', '.join(map(str, unknown))}: choose from {', '.join(SETS)}")
        if protocol not in ("hard", "soft"):
            raise UIError(f"unknown protocol {protocol!r}: choose hard or soft labels")
        n_seeds = _int(seeds, "seeds")
        if not 1 <= n_seeds <= MAX_SEEDS:
            raise UIError(f"seeds must be between 1 and {MAX_SEEDS}, got {n_seeds}")
        n_epochs = None if epochs in (None, "") else _int(epochs, "epochs")
        if n_epochs == 0:  # 0 or empty: the protocol's default (about 300 SGD steps)
            n_epochs = None
        if n_epochs is not None and not 1 <= n_epochs <= MAX_EPOCHS:
            raise UIError(f"epochs must be between 1 and {MAX_EPOCHS} (0 for the default), got {n_epochs}")
        temp = DEFAULT_TEMPERATURE
        if protocol == "soft":
            temp = _float(temperature, "temperature")
            if not temp > 0:
                raise UIError(f"the temperature must be above 0, got {temperature}")
        name = str(student or "").strip()
        if not name:
            raise UIError("choose a student: convnet or a timm model name (e.g. resnet10t)")
        check_student(name)  # ConfigError: "unknown student 'x': use convnet or a timm model name ..."
        return dict(sets=chosen, protocol=protocol, temperature=temp, student=name, seeds=n_seeds, epochs=n_epochs)

    @staticmethod
    def _cancel_key(path: str) -> str:
        return f"{path}#evaluate"  # its own flag: Curate's Cancel stops a run, this one an evaluation

    @staticmethod
    def progress_text(p: StudentProgress, started: float) -> str:
        """``▶ student 2 of 4 · automatic (pipeline's picks), seed 1 · epoch 40 of 300 · 12 s``."""
        return (
            f"▶ student {p.done + 1} of {p.total} · {SET_TITLES.get(p.set_name, p.set_name)}, seed {p.seed} · "
            f"epoch {p.epoch} of {p.epochs} · {time.time() - started:.0f} s"
        )

    def start(self, state, sets, protocol, temperature, student, seeds, epochs):
        """Train the students the chosen evaluation lacks, streaming progress and, after each student,
        the stored results. Yields ``EvalOutputs``."""
        try:
            path = self.cb._run_path(state)
            args = self.parse(sets, protocol, temperature, student, seeds, epochs)
        except Exception as exc:  # noqa: BLE001 - a message, never a traceback
            yield EvalOutputs.skip(message=_scrub(_error_message(exc, "evaluate.start"), self.cb.settings))
            return
        event = jobs.cancel_event(self._cancel_key(path))
        event.clear()
        updates: queue.Queue = queue.Queue()
        outcome: dict = {}

        def work() -> None:
            store = RunStore.open(path)
            try:
                outcome["records"] = evaluate_run(
                    store, **args, device="auto", progress=updates.put, cancel=event.is_set
                )
            except BaseException as exc:  # noqa: BLE001 - handed to the page's message
                outcome["error"] = exc
            finally:
                store.close()

        started = time.time()
        worker = threading.Thread(target=work, name="curator-evaluate", daemon=True)
        worker.start()
        temp = args["temperature"] if args["protocol"] == "soft" else 0.0
        label = Setup(args["protocol"], args["student"], float(temp)).label  # the results shown while it runs
        done, shown_once = 0, False
        trained: set[tuple[str, int]] = set()
        try:
            yield EvalOutputs.skip(message=f"▶ preparing the sets ({', '.join(args['sets'])})…")
            alive = True
            while alive:
                alive = worker.is_alive()  # one more pass after the end: its last progress is shown too
                worker.join(POLL_SECONDS)
                latest = None
                while not updates.empty():
                    latest = updates.get_nowait()
                    trained.add((latest.set_name, latest.seed))
                if latest is None:
                    continue
                line = self.progress_text(latest, started)
                if latest.done > done or not shown_once:  # a student finished (or the first began): show results
                    done, shown_once = latest.done, True
                    with self.cb._store(state) as store:
                        yield self.view(store, setup_label=label, message=line)
                else:
                    yield EvalOutputs.skip(message=line)
        finally:
            if worker.is_alive():  # the page went away: stop the student, keep the finished ones
                event.set()
                worker.join(30)
        seconds = time.time() - started
        error = outcome.get("error")
        try:
            with self.cb._store(state) as store:
                yield self.view(store, label, message=self._outcome(error, outcome, trained, seconds))
        except Exception as exc:  # noqa: BLE001 - e.g. the run was deleted meanwhile: a message
            yield EvalOutputs.skip(message=_scrub(_error_message(exc, "evaluate.start"), self.cb.settings))

    def _outcome(self, error: BaseException | None, outcome: dict, trained: set, seconds: float) -> str:
        """The job's last message: what was trained, a cancel, or what went wrong."""
        if error is None and not trained:
            return ok(f"nothing to train: every asked seed of the {len(outcome['records'])} set(s) is stored")
        if error is None:
            return ok(f"done in {seconds:.0f} s: {len(trained)} student(s) trained, "
                      f"{len(outcome['records'])} set(s) evaluated")  # fmt: skip
        if isinstance(error, Cancelled):
            return warn(f"cancelled after {seconds:.0f} s: finished students are stored; an evaluation missing "
                        "seeds shows as partial; Start again trains only the missing ones")  # fmt: skip
        return _scrub(_error_message(error, "evaluate.start"), self.cb.settings)

    def cancel(self, state: dict | None) -> str:
        try:
            jobs.request_cancel(self._cancel_key(self.cb._run_path(state)))
        except Exception as exc:  # noqa: BLE001
            return _scrub(_error_message(exc, "evaluate.cancel"), self.cb.settings)
        return warn("cancelling the evaluation before its next training step…")


# --- layout --------------------------------------------------------------------------------------
class EvalTab(NamedTuple):
    sets: Any
    protocol: Any
    temperature: Any
    student: Any
    seeds: Any
    epochs: Any
    start: Any
    cancel: Any
    outputs: EvalOutputs


CSS = """
#eval-comparison { font-size: 1.02em; padding: 6px 10px; border-left: 4px solid #4f46e5;
  background: var(--background-fill-secondary); border-radius: 4px; }
#eval-row button { align-self: center; } #eval-row .msg { align-self: center; }
#eval-summary td, #eval-summary th, #eval-per-class td, #eval-per-class th, #eval-students td,
#eval-students th { padding: 3px 5px !important; font-size: 12px !important; }
"""


def build() -> EvalTab:
    """The tab's components (call inside ``gr.Tab``)."""
    from curator.ui.layout import _msg

    gr.Markdown(HELP, elem_id="eval-help")
    with gr.Row(equal_height=True):
        sets = gr.CheckboxGroup(SET_CHOICES, value=list(SETS), label="Sets to compare", elem_id="eval-sets", scale=4)
        protocol = gr.Radio(PROTOCOL_CHOICES, value="hard", label="Protocol", elem_id="eval-protocol", scale=3)
        temperature = gr.Number(DEFAULT_TEMPERATURE, label="temperature", visible=False, elem_id="eval-temperature",
                                min_width=100, scale=1, info="soft labels' T")  # fmt: skip
    with gr.Row(equal_height=True, elem_id="eval-row"):
        student = gr.Dropdown(
            STUDENT_CHOICES, value="convnet", label="Student", allow_custom_value=True, elem_id="eval-student",
            info="convnet (ConvNet-3), or a timm name, e.g. resnet10t", scale=3, min_width=220,
        )  # fmt: skip
        seeds = gr.Number(1, label="seeds", precision=0, elem_id="eval-seeds", scale=1, min_width=110,
                          info="students per set (3: mean ± std)")  # fmt: skip
        epochs = gr.Number(0, label="epochs", precision=0, elem_id="eval-epochs", scale=1, min_width=110,
                           info="0: the default, ~300 SGD steps")  # fmt: skip
        start = gr.Button("Start evaluation", variant="primary", elem_id="eval-start-btn", scale=0, min_width=150,
                          size="sm")  # fmt: skip
        cancel = gr.Button("Cancel", elem_id="eval-cancel-btn", scale=0, min_width=80, size="sm")
    message = _msg("eval-msg")
    with gr.Row(equal_height=True):
        setup = gr.Dropdown([], label="Results of (protocol · student)", elem_id="eval-setup", scale=1, min_width=220)
        comparison = gr.Markdown(NO_RESULTS, elem_id="eval-comparison")
    with gr.Row():
        bars = gr.Plot(label="Top-1 by set", elem_id="eval-bars")
        confusion = gr.Plot(label="Confusion matrix of the curated set's students", elem_id="eval-confusion")
    summary = gr.Dataframe(pd.DataFrame(columns=SUMMARY_COLUMNS), label="Per set (top-1 %, mean ± std over seeds)",
                           interactive=False, elem_id="eval-summary", wrap=True)  # fmt: skip
    per_class = gr.Dataframe(pd.DataFrame(columns=["set"]), label="Per class (top-1 % of each true class)",
                             interactive=False, elem_id="eval-per-class")  # fmt: skip
    students = gr.Dataframe(student_frame([]), label="Each student (seconds to train and test)", interactive=False,
                            elem_id="eval-students", max_height=300)  # fmt: skip
    outputs = EvalOutputs(message, setup, comparison, bars, confusion, summary, per_class, students)
    return EvalTab(sets, protocol, temperature, student, seeds, epochs, start, cancel, outputs)


def wire(tab: EvalTab, cb: Callbacks, state, tab_click, device_kw: dict) -> EvaluateCallbacks:
    """Connect the tab: Start on the device queue (``device_kw``), Cancel at once, and the stored
    results whenever the open run changes (Start, Reopen, a page load), a person opens the tab
    (``tab_click``: the layout's record of tab clicks, "<tab id>:<time>") or a setup is chosen.

    Not the tab's own ``select``: with a listener on it, Gradio put a reloaded page back on Set-up
    after the page load had selected the tab the person was on."""
    ev = EvaluateCallbacks(cb)
    outs = list(tab.outputs)
    quiet = dict(api_visibility="private", show_progress="hidden")
    tab.protocol.change(lambda p: gr.update(visible=p == "soft"), tab.protocol, tab.temperature, queue=False,
                        api_visibility="private")  # fmt: skip
    form = [tab.sets, tab.protocol, tab.temperature, tab.student, tab.seeds, tab.epochs]
    tab.start.click(ev.start, [state, *form], outs, api_name="evaluate",
                    show_progress_on=[tab.outputs.message], **device_kw)  # fmt: skip
    tab.cancel.click(ev.cancel, [state], tab.outputs.message, api_name="cancel_evaluation", queue=False)
    state.change(ev.show_run, [state], outs, **quiet)
    tab_click.change(ev.show_on_click, [state, tab.outputs.setup, tab_click], outs, **quiet)
    tab.outputs.setup.input(ev.show, [state, tab.outputs.setup], outs, **quiet)
    return ev
