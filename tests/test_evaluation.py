"""curator.evaluation and ``python -m curator evaluate``: tiny sets, few epochs (seconds)."""

from __future__ import annotations

import shutil
import sqlite3

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_tiny_detector, make_tiny_generator, write_image_folder

from curator.cli import main
from curator.config import RunConfig
from curator.data import DataError, load_dataset
from curator.engine import Cancelled, LocalEngine
from curator.errors import ConfigError
from curator.evalsets import build_set, run_dataset
from curator.evaluation import (
    ConvNet,
    StudentProgress,
    augment,
    default_epochs,
    evaluate_run,
    evaluate_set,
    evaluation_table,
    load_eval_set,
    top1_accuracy,
    train_student,
)
from curator.export import METADATA, PROBS, export_run
from curator.review import final_set, user_decide
from curator.store import RunStore, evaluations, image_probs
from curator.students import build_student, kd_loss, score_student

CLASSES = {"a": 10, "b": 10, "c": 10}


@pytest.fixture(scope="module")
def split_folder(tmp_path_factory):
    """An ImageFolder with train/ and test/ splits: three classes, a bright square each."""
    root = tmp_path_factory.mktemp("split")
    write_image_folder(root / "train", CLASSES, seed=0)
    write_image_folder(root / "test", {k: 6 for k in CLASSES}, seed=1)
    return root


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, split_folder):
    """A finished run of the pipeline with tiny random models on ``split_folder``."""
    names = sorted(CLASSES)
    gen, det = make_tiny_generator(names, 20), make_tiny_detector(names, 20)
    det_dir = tmp_path_factory.mktemp("det")
    det.save(det_dir)  # the run's detector, the soft labels' teacher
    cfg = RunConfig(data=str(split_folder), detector=str(det_dir), ipc=2, k=3, steps=2, device="cpu")
    engine = LocalEngine.create(cfg, str(tmp_path_factory.mktemp("runs")), "r1", generator=gen, detector=det)
    engine.run()
    return engine.store


@pytest.fixture
def run_copy(tmp_path, tiny_run):
    """A private copy of ``tiny_run`` (its images and a consistent database backup), opened."""
    dest = tmp_path / "copy"
    shutil.copytree(tiny_run.path, dest, ignore=shutil.ignore_patterns("run.sqlite*", "writer.lock"))
    with sqlite3.connect(dest / "run.sqlite") as db:
        tiny_run.db.backup(db)
    db.close()
    store = RunStore.open(dest)
    yield store
    store.close()


def test_convnet_is_three_blocks_of_128_and_a_linear_head():
    net = ConvNet(1, 10, 28)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [128, 128, 128]
    assert sum(isinstance(m, torch.nn.GroupNorm) and m.num_groups == 128 for m in net.modules()) == 3
    assert net.classifier.in_features == 128 * 4 * 4  # 28 padded to 32 -> 16 -> 8 -> 4, as in DC
    assert net(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert ConvNet(3, 5, 32)(torch.rand(2, 3, 32, 32)).shape == (2, 5)


def test_augment_is_seeded_and_never_mirrors_without_flip():
    x = torch.zeros(64, 1, 16, 16)
    x[:, :, 4:12, 1:4] = 1.0  # a bar at the left edge
    a = augment(x, torch.Generator().manual_seed(0))
    b = augment(x, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == x.shape and not torch.equal(a, x)
    left, right = a[..., :8].sum((1, 2, 3)), a[..., 8:].sum((1, 2, 3))
    assert (left > right).all()  # shifts of at most 1/8 and 15 degrees keep the bar on the left
    flipped = augment(x, torch.Generator().manual_seed(0), flip=True)
    assert (flipped[..., 8:].sum((1, 2, 3)) > flipped[..., :8].sum((1, 2, 3))).any()


def test_default_epochs_keep_about_300_sgd_steps():
    assert default_epochs(10) == default_epochs(256) == 300
    assert default_epochs(500) == 150  # 2 minibatches of 256 per epoch


def test_student_learns_a_separable_set(split_folder):
    data = load_dataset(str(split_folder), size=20)
    model = train_student(data.train.images, data.train.labels, 3, seed=0, epochs=30)
    assert top1_accuracy(model, data.test) >= 0.9


def test_plain_folder_needs_test_data(tmp_path, capsys):
    folder = write_image_folder(tmp_path / "set", {"a": 2, "b": 2})
    assert main(["evaluate", str(folder), "--seeds", "1", "--epochs", "1"]) == 2
    assert "--test-data" in capsys.readouterr().err


def test_a_split_dataset_is_not_mistaken_for_classes_train_and_test(split_folder):
    with pytest.raises(DataError, match="train/ and test/ splits"):
        load_eval_set(split_folder, test_data="mnist5k")
    assert load_eval_set(split_folder / "train", test_data=str(split_folder)).class_names == ["a", "b", "c"]


def test_classes_unknown_to_the_test_data_are_named(tmp_path, split_folder):
    folder = write_image_folder(tmp_path / "set", {"a": 2, "zebra": 2})
    with pytest.raises(DataError, match="zebra"):
        load_eval_set(folder, test_data=str(split_folder))


def test_cli_evaluates_an_image_folder_against_a_test_split(tmp_path, split_folder, capsys):
    folder = write_image_folder(tmp_path / "set", {"b": 3, "c": 3}, seed=5)  # a subset of the classes
    es = load_eval_set(folder, test_data=str(split_folder))
    assert es.source == "folder" and es.class_names == ["a", "b", "c"]
    assert sorted(es.labels.tolist()) == [1, 1, 1, 2, 2, 2]  # matched by name, not by folder order
    assert len(es.test) == 18
    assert main(["evaluate", str(folder), "--test-data", str(split_folder), "--seeds", "2", "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "seed 0" in out and "seed 1" in out and "over 2 seed(s)" in out


def test_run_and_its_export_evaluate_the_same_curated_set(tmp_path, tiny_run):
    run_set = load_eval_set(tiny_run.path)
    curated = [item for c in range(3) for item in final_set(tiny_run, c)]
    assert run_set.source == "run" and len(run_set.images) == len(curated)
    assert run_set.labels.tolist() == [item.image.label for item in curated]
    assert len(run_set.test) == 18  # the run's dataset's test/ folder
    exp_set = load_eval_set(export_run(tiny_run, tmp_path / "export"))
    assert exp_set.source == "export"
    assert sorted(exp_set.labels.tolist()) == sorted(run_set.labels.tolist())
    assert np.allclose(np.sort(exp_set.images.sum((1, 2, 3)).numpy()), np.sort(run_set.images.sum((1, 2, 3)).numpy()))


def test_evaluate_reports_one_accuracy_per_seed(tiny_run):
    result = evaluate_set(load_eval_set(tiny_run.path), seeds=[3, 4], epochs=1, device="cpu")
    assert result.seeds == [3, 4] and len(result.accuracies) == 2
    assert all(0 <= a <= 1 for a in result.accuracies)
    assert result.std == pytest.approx(np.std(result.accuracies))


# --- a run's sets and stored evaluations (issue 19) --------------------------------------------
def test_the_four_sets_come_from_the_run_store(run_copy):
    store = run_copy
    picked = {a: c for a, c in store.auto_picks().items() if c is not None}
    assert picked, "the tiny run has no automatic pick to compare"
    anomaly, pick = sorted(picked.items())[0]
    before = build_set(store, "curated")
    user_decide(store, anomaly, "drop")  # a person's decision: curated changes, automatic does not
    curated, automatic = build_set(store, "curated"), build_set(store, "automatic")
    assert pick in automatic.ids and pick not in curated.ids and pick in before.ids
    assert curated.digest != before.digest
    assert set(curated.ids) == {f.image.id for c in range(3) for f in final_set(store, c)}
    passed = {r.id for r in store.synthetic() if r.reason is None}
    assert set(automatic.ids) == passed | set(picked.values())
    unrefined = build_set(store, "unrefined")
    assert list(unrefined.ids) == [r.id for r in store.synthetic()] and len(unrefined) == 3 * store.config.ipc
    assert unrefined.labels.tolist() == [r.label for r in store.synthetic()]
    assert torch.equal(unrefined.images[0], store.load_image(store.synthetic()[0]))
    data = run_dataset(store)
    real, again = build_set(store, "random_real", data), build_set(store, "random_real", data)
    assert real.ids == again.ids and np.bincount(real.labels).tolist() == [store.config.ipc] * 3
    assert data.train.labels[list(real.ids)].tolist() == real.labels.tolist()
    assert torch.equal(real.images, data.train.load(list(real.ids)))


def test_kd_loss_is_zero_only_when_student_matches_teacher():
    t = torch.tensor([[3.0, 0.0, -1.0]])
    assert kd_loss(t, t, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(t.flip(1), t, 4.0).item() > 0.1


def test_soft_labels_follow_the_teacher_not_the_labels(split_folder):
    data = load_dataset(str(split_folder), size=20)
    seen = []

    def teacher(views):  # says "class 2" for every view, whatever the label
        seen.append(views.shape)
        return torch.tensor([0.0, 0.0, 8.0]).expand(len(views), 3)

    keep = np.concatenate([np.flatnonzero(data.train.labels == c)[:3] for c in range(3)])
    model = train_student(data.train.load(keep), data.train.labels[keep], 3, seed=0, epochs=5, teacher=teacher,
                          temperature=2.0)  # fmt: skip
    scores = score_student(model, data.test, 3)
    assert scores.confusion[:, 2].sum() == len(data.test)  # every test image predicted as the teacher's class
    assert seen and seen[0] == (9, 1, 20, 20)  # the teacher saw the student's (augmented) views


def test_soft_protocol_on_a_run_trains_and_stores_accuracy(run_copy):
    (rec,) = evaluate_run(run_copy, sets=["curated"], protocol="soft", temperature=3.0, seeds=1, epochs=2,
                          device="cpu")  # fmt: skip
    assert (rec.protocol, rec.temperature, rec.status, rec.done_seeds) == ("soft", 3.0, "complete", [0])
    assert 0 <= rec.mean <= 1 and rec.confusion.sum() == 18 and rec.students[0].seconds > 0


@pytest.mark.parametrize("channels,size", [(1, 28), (3, 20)])
def test_a_timm_student_trains_on_small_images(channels, size):
    torch.manual_seed(0)
    images, labels = torch.rand(6, channels, size, size), np.array([0, 0, 1, 1, 2, 2])
    model = train_student(images, labels, 3, student="resnet10t", epochs=2)
    assert type(model).__module__.startswith("timm.")
    assert model(torch.rand(2, channels, size, size)).shape == (2, 3)
    with pytest.raises(ConfigError, match="no_such_net"):
        build_student("no_such_net", 1, 3, 28)


def test_results_survive_reopening_and_old_runs_have_none(run_copy):
    path = run_copy.path
    assert evaluations(run_copy) == []  # a run without the tables reads as "no evaluations"
    tables = {r[0] for r in run_copy.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "evaluations" not in tables  # reading made no table
    made = evaluate_run(run_copy, sets=["unrefined", "random_real"], seeds=[0, 1], epochs=1, device="cpu")
    run_copy.close()
    store = RunStore.open(path)
    try:
        again = evaluations(store)
        assert [(r.set_name, r.accuracies, r.per_class.tolist(), r.seconds) for r in again] == [
            (r.set_name, r.accuracies, r.per_class.tolist(), r.seconds) for r in made
        ]
        assert all(np.array_equal(a.confusion, b.confusion) for a, b in zip(again, made))
        shown = evaluate_run(store, sets=["random_real", "unrefined"], seeds=2, epochs=1, train=False)
        assert [r.id for r in shown] == [r.id for r in made]  # the same rows, nothing retrained
    finally:
        store.close()


def test_a_kill_after_the_first_seed_leaves_a_partial_result_and_resume_trains_the_rest(run_copy):
    def killed(p: StudentProgress) -> None:
        if p.seed == 1:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        evaluate_run(run_copy, sets=["unrefined"], seeds=2, epochs=1, device="cpu", progress=killed)
    (partial,) = evaluations(run_copy)
    assert (partial.status, partial.done_seeds, partial.missing_seeds) == ("partial", [0], [1])
    assert "partial" in evaluation_table([partial])
    trained = []
    (done,) = evaluate_run(run_copy, sets=["unrefined"], seeds=2, epochs=1, device="cpu",
                           progress=lambda p: trained.append(p.seed))  # fmt: skip
    assert set(trained) == {1} and done.id == partial.id
    assert (done.status, done.done_seeds) == ("complete", [0, 1])
    kept, first = done.students[0], partial.students[0]
    assert (kept.accuracy, kept.seconds, kept.confusion.tolist()) == (first.accuracy, first.seconds,
                                                                      first.confusion.tolist())  # fmt: skip


def test_cancel_stops_before_the_next_step_and_keeps_finished_students(run_copy):
    with pytest.raises(Cancelled):
        evaluate_run(run_copy, sets=["unrefined"], seeds=2, epochs=1, device="cpu",
                     cancel=lambda: bool(evaluations(run_copy) and evaluations(run_copy)[0].students))  # fmt: skip
    assert evaluations(run_copy)[0].done_seeds == [0]


def test_cli_evaluates_a_run_and_prints_the_stored_numbers(run_copy, capsys):
    path = str(run_copy.path)
    args = ["evaluate", path, "--sets", "curated,random_real", "--seeds", "1", "--epochs", "1", "--device", "cpu"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main([*args, "--show"]) == 0
    shown = capsys.readouterr().out
    recs = evaluations(run_copy)
    assert len(recs) == 2 and all(r.status == "complete" for r in recs)
    table = evaluation_table(recs)
    assert table in first and table in shown and "student 1 of 2" in first and "student" not in shown.split("\n")[0]
    assert main(["evaluate", path, "--protocol", "warm"]) == 2
    assert "unknown protocol 'warm'" in capsys.readouterr().err


# --- the export's class probabilities (soft labels outside the app) ----------------------------
def test_export_carries_typed_class_probabilities_that_sum_to_one(tmp_path, run_copy):
    datasets = pytest.importorskip("datasets")
    out = export_run(run_copy, tmp_path / "export")
    ds = datasets.load_dataset("imagefolder", data_dir=str(out), split="train", cache_dir=str(tmp_path / "cache"))
    feature = ds.features[PROBS]
    assert feature == datasets.List(datasets.Value("float32"), length=3)
    probs = np.asarray(ds[PROBS], dtype=np.float64)
    assert probs.shape == (len(ds), 3) and np.allclose(probs.sum(1), 1, atol=1e-5)
    curated = build_set(run_copy, "curated").ids
    assert len(image_probs(run_copy, curated)) == len(curated) == len(ds)  # stored at inspection
    names = run_copy.class_names  # the column follows run.json's class_names, the detector's order
    own = probs[np.arange(len(ds)), [names.index(c) for c in ds["class_name"]]]
    assert np.allclose(own, ds["confidence"], atol=1e-6)  # the stored confidence is the label's probability


def test_export_of_a_run_stored_without_probabilities_computes_them_with_its_detector(tmp_path, run_copy):
    want = pd.read_parquet(export_run(run_copy, tmp_path / "with") / METADATA)[PROBS]
    run_copy.db.execute("DROP TABLE image_probs")  # as a run stored before they were kept
    got = pd.read_parquet(export_run(run_copy, tmp_path / "without") / METADATA)[PROBS]
    # the same detector, but on the stored 8-bit PNGs rather than the generated floats: close, not equal
    assert np.allclose(np.stack(got.to_numpy()), np.stack(want.to_numpy()), atol=1e-3)


def test_a_real_kill_after_the_first_student_resumes_with_the_missing_seed(run_copy):
    import signal

    from benchmarks.crash import run_cli

    path = str(run_copy.path)
    args = ["evaluate", path, "--sets", "unrefined", "--seeds", "2", "--epochs", "1", "--device", "cpu"]
    killed = run_cli(args, crash_after=2)  # commit 1: the evaluation's row; commit 2: the first student
    assert killed.returncode == -signal.SIGKILL
    (partial,) = evaluations(run_copy)
    assert (partial.status, partial.done_seeds) == ("partial", [0])
    resumed = run_cli(args)
    assert resumed.returncode == 0, resumed.stderr
    assert "unrefined seed 1" in resumed.stdout and "seed 0:" not in resumed.stdout.split("top-1 on")[0]
    (done,) = evaluations(run_copy)
    assert done.status == "complete" and done.students[0].accuracy == partial.students[0].accuracy


def test_soft_labels_without_the_runs_detector_is_one_line_and_stores_nothing(run_copy, tmp_path, capsys):
    cfg = run_copy.config
    cfg.detector = str(tmp_path / "gone")
    run_copy.set_meta("config", cfg.to_json())
    assert main(["evaluate", str(run_copy.path), "--protocol", "soft", "--seeds", "1", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "gone" in err and len(err.strip().splitlines()) == 1
    assert evaluations(run_copy) == []
