"""Command-line interface: ``python -m curator <command> ...`` (``--help`` on each command).

python -m curator run --data mnist5k --ipc 10 --k 20 --out runs/
python -m curator run --resume runs/RUN_ID
python -m curator export runs/RUN_ID --out export/ --zip
python -m curator evaluate runs/RUN_ID --student convnet --seeds 3
python -m curator train-generator --data mnist5k --out assets/generator
python -m curator train-detector --data mnist5k --out assets/detector
python -m curator make-testbed data/glyphs1000 --classes 1000 --per-class 20 --size 16
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import fields
from pathlib import Path

from curator.config import DetectorTraining, GeneratorTraining, RunConfig

DEFAULTS = RunConfig()


def _add_run_args(p: argparse.ArgumentParser) -> None:
    d = DEFAULTS
    p.add_argument("--data", default=None, help=f"'mnist5k' or an ImageFolder path (default {d.data})")
    p.add_argument("--generator", default=None, help="generator folder (default: the shipped model)")
    p.add_argument("--detector", default=None, help="detector folder (default: the shipped model)")
    p.add_argument("--ipc", type=int, default=None, help=f"images per class (default {d.ipc})")
    p.add_argument("--k", type=int, default=None, help=f"candidates per anomaly (default {d.k})")
    p.add_argument("--tau", type=float, default=None, help=f"confidence threshold (default {d.tau})")
    p.add_argument("--lambda", dest="lam", type=float, default=None, help=f"uniqueness weight (default {d.lam})")
    p.add_argument("--steps", type=int, default=None, help=f"DDIM steps (default {d.steps})")
    p.add_argument("--strength", type=float, default=None, help=f"SDEdit strength (default {d.strength})")
    p.add_argument("--guidance", type=float, default=None, help=f"guidance scale (default {d.guidance})")
    p.add_argument("--seed", type=int, default=None, help=f"run seed (default {d.seed})")
    p.add_argument("--device", default=None, help="auto | cpu | cuda (default auto)")
    p.add_argument("--classes", default=None, help="comma-separated class names or indices (default: all)")
    p.add_argument(
        "--batch-size", dest="batch_size", type=int, default=None, help=f"generator batch (default {d.batch_size})"
    )
    p.add_argument("--rounds", type=int, default=None, help=f"automatic refinement rounds (default {d.rounds})")
    p.add_argument(
        "--prompt-template",
        dest="prompt_template",
        default=None,
        help="Stable Diffusion prompt per class, {name} = class name (default '{name}')",
    )
    p.add_argument("--negative-prompt", dest="negative_prompt", default=None, help="Stable Diffusion negative prompt")
    p.add_argument(
        "--class-map",
        dest="class_map",
        default=None,
        help="DiT: JSON file {class name: ImageNet id} or 'imagenette' (default: ImageNette ids, the model's labels)",
    )
    p.add_argument("--dtype", default=None, help="auto | float32 | float16 | bfloat16 (default auto: float16 on CUDA)")
    p.add_argument(
        "--uniqueness-centre",
        dest="uniqueness_centre",
        choices=("class", "global"),
        default=None,
        help=f"centre features on the image's class mean or the all-class mean (default {d.uniqueness_centre})",
    )


def _report_skipped(data) -> None:
    """List on stderr the files a dataset skipped as unreadable (the first 20), if any."""
    if data.skipped:
        print(f"skipped {len(data.skipped)} unreadable file(s):", file=sys.stderr)
        for path, reason in data.skipped[:20]:
            print(f"  {path}: {reason}", file=sys.stderr)
        if len(data.skipped) > 20:
            print(f"  ... and {len(data.skipped) - 20} more", file=sys.stderr)


def _add_training_args(p: argparse.ArgumentParser, config: type) -> None:
    """The command-line options of a training command, generated from its config dataclass
    (``curator.config.GeneratorTraining`` / ``DetectorTraining``): the fields that have a help text,
    with the dataclass's defaults."""
    for f in fields(config):
        if "help" not in f.metadata:
            continue
        flags = f.metadata.get("flags", (f"--{f.name.replace('_', '-')}",))
        if isinstance(f.default, bool):
            p.add_argument(*flags, dest=f.name, action="store_true", help=f.metadata["help"])
        else:
            kind = str if f.default is None else type(f.default)
            if "parse" in f.metadata:
                kind = _parsed(f.metadata["parse"])
            p.add_argument(*flags, dest=f.name, type=kind, default=f.default,
                           help=f"{f.metadata['help']} (default {f.default})")  # fmt: skip


def _parsed(parse):
    """An argparse type from a config parser: its ConfigError becomes argparse's one-line message."""
    from curator.config import ConfigError

    def typed(text: str):
        try:
            return parse(text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return typed


def _training_config(args: argparse.Namespace, config: type):
    """The training command's config from its options, range-checked (ConfigError names the option)."""
    return config(**{f.name: getattr(args, f.name) for f in fields(config) if "help" in f.metadata}).validate()


def _given_params(args: argparse.Namespace) -> dict:
    """The run parameters set on the command line ({RunConfig field: value}); unset flags are absent."""
    given = {}
    for f in fields(RunConfig):
        v = getattr(args, f.name, None)
        if v is not None:
            given[f.name] = [c.strip() for c in v.split(",") if c.strip()] if f.name == "classes" else v
    return given


def _config_from_args(args: argparse.Namespace, backend_defaults: bool = True) -> RunConfig:
    """The run's config: the flags over the generator backend's defaults (a heavy import,
    ``curator.models.loading.resolve_config``), or over RunConfig's alone; validated."""
    given = _given_params(args)
    if backend_defaults and given.get("generator"):
        from curator.models.loading import resolve_config

        return resolve_config(**given)
    return RunConfig(**given).validate()


def _progress_bar():
    from tqdm.auto import tqdm

    state: dict = {"bar": None, "key": None}

    def progress(stage: str, done: int, total: int, label: int | None) -> None:
        key = (stage, label)
        if state["key"] != key:
            if state["bar"] is not None:
                state["bar"].close()
            where = "several classes" if label is None else f"class {label}"
            state["bar"] = tqdm(total=total, desc=f"{where}: {stage}", unit="img" if total > 1 else "step", leave=False)
            state["key"] = key
        bar = state["bar"]
        bar.total = total
        bar.n = done
        bar.refresh()

    def close() -> None:
        """Clear the bar, so that a message printed next starts on a line of its own."""
        if state["bar"] is not None:
            state["bar"].close()
            state["bar"] = state["key"] = None

    progress.close = close  # type: ignore[attr-defined]
    return progress


def summary_frame(summaries):
    """The per-class summary as a table (pandas): the decision counts under the words of
    ``review.DECISION_STATES``, as the app's Overview shows them; a last row "all" sums the classes."""
    import pandas as pd

    from curator.review import DECISION_STATES

    rows = [
        {
            "class": s.name,
            "images": s.images,
            "mismatch": s.label_mismatch,
            "low_conf": s.low_confidence,
            **s.counts,
            "conf_before": round(s.confidence_before, 3),
            "conf_after": round(s.confidence_after, 3),
            "wall_s": round(s.wall_seconds or 0.0, 1),
            "status": s.status,
        }
        for s in summaries
    ]
    df = pd.DataFrame(rows)
    if len(df):
        total = {c: df[c].sum() for c in ("images", "mismatch", "low_conf", *DECISION_STATES, "wall_s")}
        total.update(
            {
                "class": "all",
                "conf_before": round(df["conf_before"].mean(), 3),
                "conf_after": round(df["conf_after"].mean(), 3),
                "status": "",
            }
        )
        df = pd.concat([df, pd.DataFrame([total])], ignore_index=True)
    return df


def summary_table(summaries) -> str:
    """``summary_frame`` as text, with what each decision state means underneath."""
    from curator.review import STATE_MEANINGS

    legend = "\n".join(f"  {s}: {m}" for s, m in STATE_MEANINGS.items())
    return summary_frame(summaries).to_string(index=False) + "\n" + legend


def _check_run_args(args: argparse.Namespace) -> RunConfig | None:
    """Everything about a ``run`` that can be checked before the heavy imports (torch, models):
    parameters, the engine, the data path, the run folder to resume. Returns the new run's config."""
    from curator.errors import ConfigError, DataError, StoreError

    if args.engine is not None and args.engine not in ("local", "ray"):
        raise ConfigError(f"--engine must be local or ray, got {args.engine!r}")
    if _ray_options(args) and args.engine != "ray" and not (args.resume and args.engine is None):
        raise ConfigError("--ray-* flags need --engine ray (or --resume of a run whose engine is Ray)")
    if args.ray_workers is not None and args.ray_workers < 1:
        raise ConfigError(f"--ray-workers must be at least 1, got {args.ray_workers}")
    if args.ray_cpus_per_worker is not None and args.ray_cpus_per_worker <= 0:
        raise ConfigError(f"--ray-cpus-per-worker must be more than 0, got {args.ray_cpus_per_worker}")
    if args.ray_gpus_per_worker is not None and args.ray_gpus_per_worker < 0:
        raise ConfigError(f"--ray-gpus-per-worker must be 0 or more, got {args.ray_gpus_per_worker}")
    if args.resume:
        if not (Path(args.resume) / "run.sqlite").is_file():
            raise StoreError(f"no run at {args.resume} (expected {Path(args.resume) / 'run.sqlite'})")
        return None
    if args.run_id is not None and (not args.run_id.strip() or Path(args.run_id).name != args.run_id):
        raise ConfigError(f"--run-id must be a plain folder name, got {args.run_id!r}")
    config = _config_from_args(args, backend_defaults=False)  # the flags' own ranges, before any import
    if config.data != "mnist5k" and not Path(config.data).is_dir():
        raise DataError(f"dataset path does not exist or is not a folder: {config.data}")
    return _config_from_args(args) if args.generator else config


def _check_resume_params(args: argparse.Namespace, stored: RunConfig) -> None:
    """``--resume`` continues a run with its own parameters: a flag that says otherwise is refused."""
    from curator.errors import ConfigError

    given = _given_params(args)
    given.pop("device", None)  # where it runs may change; what it computes may not
    differ = [f"--{k.replace('_', '-')} {v} (the run has {getattr(stored, k)})" for k, v in given.items()
              if getattr(stored, k) != v]  # fmt: skip
    if differ:
        raise ConfigError(
            f"--resume continues a run with the parameters it was made with; these differ: {'; '.join(differ)}. "
            "Start a new run to change them"
        )


def _ray_options(args: argparse.Namespace) -> dict:
    """The Ray engine's options the flags set (``RayEngine``'s keyword arguments)."""
    given = {"ray_address": args.ray_address, "workers": args.ray_workers, "cpus_per_worker": args.ray_cpus_per_worker,
             "gpus_per_worker": args.ray_gpus_per_worker, "placement": args.ray_placement,
             "wait_s": args.ray_wait_s}  # fmt: skip
    return {k: v for k, v in given.items() if v is not None}


def cmd_run(args: argparse.Namespace) -> int:
    config = _check_run_args(args)
    from curator.engine import create_run, open_run
    from curator.errors import ConfigError
    from curator.store import RunStore

    t0 = time.time()
    progress = _progress_bar()
    engine_kw = _ray_options(args) if args.engine == "ray" else {}
    if args.resume:
        store = RunStore.open(args.resume)
        try:
            _check_resume_params(args, store.config)
            engine_name = args.engine or store.meta("engine", "local")
            if _ray_options(args) and engine_name != "ray":
                raise ConfigError(f"--ray-* flags need --engine ray: the run's engine is {engine_name}")
            engine_kw = _ray_options(args) if engine_name == "ray" else {}
            print(f"resuming run {store.run_id} at {store.path} (engine {engine_name})")
        finally:
            store.close()
    try:
        if args.resume:
            engine = open_run(args.resume, engine=args.engine, progress=progress, **engine_kw)
        else:
            engine = create_run(config, args.out, args.run_id, engine=args.engine or "local", progress=progress,
                                **engine_kw)  # fmt: skip
    except BaseException:
        progress.close()  # the error starts a line of its own (Ray workers' start-up shows a bar)
        raise
    if not args.resume:
        print(f"new run {engine.store.run_id} at {engine.store.path} (engine {engine.name})")
    store = engine.store
    _report_skipped(engine.data)
    try:
        summaries = engine.run()
        run_id = store.run_id
    finally:
        progress.close()
        engine.close()
    print(summary_table(summaries))
    print(
        f"run {run_id}: {time.time() - t0:.1f} s wall; export with: "
        f"python -m curator export {store.path} --out {store.path}/export"
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from curator.export import export_run, unfinished_classes
    from curator.store import RunStore

    store = RunStore.open(args.run)
    missing = unfinished_classes(store) if args.partial else []
    out = export_run(store, args.out or store.path / "export", make_zip=args.zip, partial=args.partial)
    note = f" (partial: unfinished classes {', '.join(missing)} left out)" if missing else ""
    print(f"exported to {out}{note}")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from curator.review import summarize
    from curator.store import RunStore

    print(summary_table(summarize(RunStore.open(args.run))))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from curator.errors import ConfigError

    if (Path(args.path) / "run.sqlite").is_file() and args.test_data is None:
        return _evaluate_run(args)
    from curator.evaluation import evaluate_set, load_eval_set

    if args.protocol != "hard" or args.sets is not None or args.show:
        raise ConfigError("--protocol soft, --sets and --show need a run folder (its detector and its stored sets)")
    es = load_eval_set(args.path, test_data=args.test_data)
    print(f"evaluating {es.source} {args.path}: {len(es.images)} training images, on the {es.test_source}")
    result = evaluate_set(
        es,
        student=args.student,
        seeds=args.seeds,
        epochs=args.epochs,
        device=args.device,
        flip=args.flip,
        progress=lambda seed, acc: print(f"  seed {seed}: top-1 {100 * acc:.2f} %", flush=True),
    )
    print(result.summary())
    return 0


def _evaluate_run(args: argparse.Namespace) -> int:
    """A run's sets: train the students it lacks (each stored as it finishes), print what is stored."""
    from curator.evalsets import SETS, check_set_names
    from curator.evaluation import Setup, _check_protocol, evaluate_run, evaluation_table, stored_results
    from curator.store import RunStore

    sets = list(SETS) if args.sets in ("all",) else (args.sets or "curated").split(",")
    store = RunStore.open(args.path)
    last = {}

    def progress(p) -> None:
        key = (p.set_name, p.seed)
        if last.get("key") != key:
            print(f"  {p.set_name} seed {p.seed}: student {p.done + 1} of {p.total} ({p.student}, {p.epochs} epochs)",
                  flush=True)  # fmt: skip
            last["key"] = key

    try:
        current = None
        if args.show:  # what the app's Evaluate tab shows for this protocol and student (the same code)
            names = check_set_names([s.strip() for s in sets])
            setup = Setup(args.protocol, args.student, _check_protocol(args.protocol, args.temperature))
            records, current = stored_results(store, setup, names)
        else:
            records = evaluate_run(
                store, sets=[s.strip() for s in sets], protocol=args.protocol, student=args.student,
                seeds=args.seeds, temperature=args.temperature, epochs=args.epochs, device=args.device,
                flip=args.flip, progress=progress,
            )  # fmt: skip
        print(f"run {store.run_id}: top-1 on the real test split")
        print(evaluation_table(records, current=current))
    except KeyboardInterrupt:
        print("interrupted; finished students are stored: the same command continues", file=sys.stderr)
        return 130
    finally:
        store.close()
    return 0


def cmd_check_generator(args: argparse.Namespace) -> int:
    from curator.data import load_dataset
    from curator.models.detector import Detector
    from curator.models.loading import load_generator, prepare_generator
    from curator.quality import label_consistency, sample_grid
    from curator.store import save_png
    from curator.training import pick_device

    device = pick_device(args.device)
    gen = load_generator(args.generator, device)
    det = Detector.load(args.detector, device)
    data = load_dataset(args.data, size=gen.resolution, channels=gen.channels)
    gen = prepare_generator(gen, data.class_names)
    for name, strength in (("pure noise", 1.0), (f"prototypes, strength {args.strength}", args.strength)):
        share, per_class, images = label_consistency(
            gen,
            det,
            data,
            per_class=args.per_class,
            strength=strength,
            guidance=args.guidance,
            steps=args.steps,
            seed=args.seed,
        )
        print(
            f"{name}: {100 * share:.1f} % of {len(images)} samples assigned to their class by the detector; "
            f"per class {', '.join(f'{n} {100 * v:.0f}' for n, v in zip(data.class_names, per_class))}"
        )
        if args.grid and strength == 1.0:
            save_png(sample_grid(images, args.per_class), Path(args.grid))
            print(f"sample grid (one class per row) written to {args.grid}")
    return 0


def cmd_train_generator(args: argparse.Namespace) -> int:
    from curator.data import load_dataset
    from curator.training import pick_device, train_generator

    config = _training_config(args, GeneratorTraining)
    pick_device(config.device)  # a bad --device fails before the data is read
    data = load_dataset(args.data, size=args.size, channels=args.channels)
    _report_skipped(data)
    gen = train_generator(data, args.out, config)
    print(f"generator saved to {args.out} ({gen.num_classes} classes, {gen.resolution}px)")
    return 0


def cmd_train_detector(args: argparse.Namespace) -> int:
    from curator.data import load_dataset
    from curator.models.detector import default_input_size
    from curator.training import pick_device, train_detector

    config = _training_config(args, DetectorTraining)
    pick_device(config.device)  # a bad --device fails before the data is read
    size = args.size or (default_input_size(config.arch) if config.pretrained else None)  # pretrained: timm's size
    data = load_dataset(args.data, size=size, channels=args.channels)
    _report_skipped(data)
    det = train_detector(data, args.out, config)
    print(f"detector saved to {args.out}: test accuracy {det.info['test_accuracy']:.4f}")
    return 0


def cmd_make_testbed(args: argparse.Namespace) -> int:
    from curator.testbed import TestbedSpec, make_testbed

    spec = TestbedSpec(classes=args.classes, per_class=args.per_class, test_per_class=args.test_per_class,
                       size=args.size, seed=args.seed, jitter=args.jitter, noise=args.noise)  # fmt: skip
    t0 = time.time()
    out = make_testbed(args.out, spec)
    n_train = spec.per_class - spec.test_per_class
    print(
        f"testbed of {spec.classes} classes x {spec.per_class} images ({n_train} train, {spec.test_per_class} test), "
        f"{spec.size}px, written to {out} in {time.time() - t0:.1f} s"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m curator", description="Detector-guided dataset distillation.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the pipeline headless (or resume a run)")
    _add_run_args(p)
    p.add_argument("--out", default="runs", help="folder that holds run folders (default runs/)")
    p.add_argument("--resume", default=None, metavar="RUN", help="continue the run folder RUN")
    p.add_argument("--run-id", dest="run_id", default=None, help="name of the new run folder (default: time-stamped)")
    p.add_argument(
        "--engine", default=None, help="local (default; a resume keeps the run's engine) or ray (classes on Ray)"
    )
    p.add_argument(
        "--ray-workers",
        dest="ray_workers",
        type=int,
        default=None,
        help="with --engine ray: stage workers (default: one per free GPU, else one per free CPU of the cluster)",
    )
    p.add_argument(
        "--ray-address",
        dest="ray_address",
        default=None,
        help="with --engine ray: auto | HOST:PORT | ray://HOST:PORT (default: start a local Ray for the run); "
        "a cluster with token authentication needs RAY_AUTH_MODE=token",
    )
    p.add_argument(
        "--ray-cpus-per-worker",
        dest="ray_cpus_per_worker",
        type=float,
        default=None,
        help="with --engine ray: CPUs each worker asks for; its torch threads (default: the free CPUs shared)",
    )
    p.add_argument(
        "--ray-gpus-per-worker",
        dest="ray_gpus_per_worker",
        type=float,
        default=None,
        help="with --engine ray: GPUs each worker asks for, fractions allowed (default: 1 where the cluster has GPUs)",
    )
    p.add_argument(
        "--ray-placement",
        dest="ray_placement",
        choices=("pack", "spread"),
        default=None,
        help="with --engine ray: pack workers onto few nodes (default) or spread them across nodes",
    )
    p.add_argument(
        "--ray-wait-s",
        dest="ray_wait_s",
        type=float,
        default=None,
        help="with --engine ray: how long lost workers may take to come back before the run stops with a line "
        "saying how to resume (default: 5 times the workers' start-up, at least 60 s)",
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("export", help="export a run as an ImageFolder with metadata (Hugging Face imagefolder layout)")
    p.add_argument("run", help="run folder")
    p.add_argument("--out", default=None, help="export folder (default RUN/export)")
    p.add_argument("--zip", action="store_true", help="also write OUT.zip")
    p.add_argument(
        "--partial", action="store_true", help="export a run with unfinished classes (left out, listed in run.json)"
    )
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("check-generator", help="share of a generator's samples the detector assigns to their class")
    p.add_argument("--generator", default=DEFAULTS.generator, help="generator folder (default: shipped)")
    p.add_argument("--detector", default=DEFAULTS.detector, help="detector folder (default: shipped)")
    p.add_argument("--data", default="mnist5k", help="dataset for the prototypes")
    p.add_argument("--per-class", dest="per_class", type=int, default=20, help="samples per class (default 20)")
    p.add_argument("--strength", type=float, default=DEFAULTS.strength)
    p.add_argument("--guidance", type=float, default=DEFAULTS.guidance)
    p.add_argument("--steps", type=int, default=DEFAULTS.steps)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--grid", default=None, help="write a PNG grid of the pure-noise samples here")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_check_generator)

    p = sub.add_parser("summary", help="print a run's per-class summary")
    p.add_argument("run", help="run folder")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("evaluate", help="train students on a distilled set, report top-1 on the real test split")
    p.add_argument("path", help="run folder (results kept in it), export, or ImageFolder (then --test-data)")
    p.add_argument(
        "--sets",
        default=None,
        help="a run's sets, comma-separated: curated, automatic, unrefined, random_real, or all (default curated)",
    )
    p.add_argument("--protocol", default="hard", help="hard (labels) or soft (the run's detector's probabilities)")
    p.add_argument("--temperature", type=float, default=4.0, help="soft labels: distillation temperature (default 4)")
    p.add_argument("--student", default="convnet", help="convnet (ConvNet-3) or a timm model name, e.g. resnet10t")
    p.add_argument("--seeds", type=int, default=3, help="students trained, seeds 0..N-1 (default 3)")
    p.add_argument(
        "--show",
        action="store_true",
        help="a run: print the stored results, train nothing "
        "(as the app's Evaluate tab: the newest of each set for --protocol and --student)",
    )
    p.add_argument("--epochs", type=int, default=None, help="default: about 300 SGD steps (300 epochs <= 256 images)")
    p.add_argument(
        "--test-data",
        dest="test_data",
        default=None,
        help="'mnist5k' or a dataset path whose test split to use (default: the run's dataset)",
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--flip", action="store_true", help="also augment with mirror flips (not for digits)")
    p.set_defaults(func=cmd_evaluate)

    for name, func, config in (("train-generator", cmd_train_generator, GeneratorTraining),
                               ("train-detector", cmd_train_detector, DetectorTraining)):  # fmt: skip
        p = sub.add_parser(name, help=f"{name.replace('-', ' ')} on a dataset (resumes from OUT/train_state.pt)")
        p.add_argument("--data", default="mnist5k", help="'mnist5k' or an ImageFolder path")
        p.add_argument("--out", required=True, help="model folder")
        p.add_argument("--size", type=int, default=None, help="image size in pixels (default: native, 32 for folders)")
        p.add_argument("--channels", type=int, default=None, choices=(1, 3), help="1 or 3 (default: from the data)")
        _add_training_args(p, config)
        p.set_defaults(func=func)

    d = _testbed_defaults()
    p = sub.add_parser("make-testbed", help="write a synthetic ImageFolder of N procedurally drawn glyph classes")
    p.add_argument("out", help="new (or empty) folder for train/ and test/")
    p.add_argument("--classes", type=int, default=d.classes, help=f"number of classes (default {d.classes})")
    p.add_argument("--per-class", dest="per_class", type=int, default=d.per_class,
                   help=f"images per class, both splits (default {d.per_class})")  # fmt: skip
    p.add_argument("--test-per-class", dest="test_per_class", type=int, default=d.test_per_class,
                   help=f"of those, test images per class (default {d.test_per_class})")  # fmt: skip
    p.add_argument("--size", type=int, default=d.size, help=f"image side in pixels (default {d.size})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"seed of glyphs and jitter (default {d.seed})")
    p.add_argument("--jitter", type=float, default=d.jitter,
                   help=f"per-sample jitter scale, the difficulty (default {d.jitter})")  # fmt: skip
    p.add_argument("--noise", type=float, default=d.noise, help=f"pixel noise std in [0, 1] (default {d.noise})")
    p.set_defaults(func=cmd_make_testbed)
    return parser


def _testbed_defaults():
    from curator.testbed import TestbedSpec  # light: numpy and PIL only

    return TestbedSpec()


def main(argv: list[str] | None = None) -> int:
    from curator.errors import USER_ERRORS  # light: no torch before the arguments are parsed

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as exc:
        print("error: " + " ".join(line.strip() for line in str(exc).splitlines() if line.strip()), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; everything decided so far is saved. Resume with --resume RUN", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
