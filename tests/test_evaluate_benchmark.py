"""benchmarks/evaluate.py --quick with tiny random models: every cell filled, stored, and resumed."""

from __future__ import annotations

from conftest import DIGITS, make_tiny_detector, make_tiny_generator

from benchmarks import evaluate
from curator.store import RunStore, evaluations


def test_evaluate_quick_fills_every_cell_and_a_rerun_trains_nothing(tmp_path):
    make_tiny_generator(DIGITS).save_pretrained(tmp_path / "gen")
    make_tiny_detector(DIGITS).save(tmp_path / "det")
    argv = ["--quick", "--generators", str(tmp_path / "gen"), "--detector", str(tmp_path / "det"),
            "--work", str(tmp_path / "work"), "--students", "convnet", "--threads", "1"]  # fmt: skip
    assert evaluate.main(argv) == 0
    report = (tmp_path / "work" / "quick" / "EVALUATE.md").read_text()
    assert "Quick mode" in report and "| hard, convnet | soft T=4, convnet |" in report
    for title in ("refined (curated)", "unrefined synthesis", "random real"):
        row = next(line for line in report.splitlines() if f"| {title} |" in line)
        assert row.count("(1)") == 2  # one student under each protocol
    (run,) = (tmp_path / "work" / "runs").iterdir()
    store = RunStore.open(run)
    try:
        first = {r.id: [(s.accuracy, s.seconds) for s in r.students] for r in evaluations(store)}
    finally:
        store.close()
    assert len(first) == 6 and all(len(v) == 1 for v in first.values())  # 3 sets x 2 protocols
    assert evaluate.main(argv) == 0  # resumes from the stores: nothing left to train
    store = RunStore.open(run)
    try:
        assert {r.id: [(s.accuracy, s.seconds) for s in r.students] for r in evaluations(store)} == first  # kept
    finally:
        store.close()
