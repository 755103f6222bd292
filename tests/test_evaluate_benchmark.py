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
    (tmp_path / "work" / "quick" / "EVALUATE.md").unlink()
    assert evaluate.main([*argv, "--report-only"]) == 0  # the table again, from the stores alone
    table = (tmp_path / "work" / "quick" / "EVALUATE.md").read_text()
    assert table[table.index("## Top-1") : table.index("## Seconds")] == report[report.index("## Top-1") :
                                                                                 report.index("## Seconds")]
    store = RunStore.open(run)
    try:
        assert {r.id: [(s.accuracy, s.seconds) for s in r.students] for r in evaluations(store)} == first  # kept
    finally:
        store.close()


def test_review_worth_quick_decides_on_a_copy_and_evaluates_both_sets(tmp_path):
    from benchmarks import review_worth
    from benchmarks.quality import fingerprint, run_path
    from curator.review import review_queue

    make_tiny_generator(DIGITS).save_pretrained(tmp_path / "gen")
    make_tiny_detector(DIGITS).save(tmp_path / "det")
    argv = ["--quick", "--generator", str(tmp_path / "gen"), "--detector", str(tmp_path / "det"),
            "--work", str(tmp_path / "work"), "--threads", "1"]  # fmt: skip
    assert review_worth.main(argv) == 0
    shared = run_path(review_worth.parse_args(argv), 1, fingerprint(str(tmp_path / "gen")))
    copy = tmp_path / "work" / "review" / shared.name
    store = RunStore.open(shared)
    try:  # the shared benchmark run keeps the pipeline's decisions only
        assert not any(d.source == "user" for d in store.decisions().values())
    finally:
        store.close()
    store = RunStore.open(copy)
    try:
        user = [d for d in store.decisions().values() if d.source == "user"]
        reviewed = sum(q.reviewed for q in review_queue(store))
        recs = {r.set_name: r for r in evaluations(store)}
    finally:
        store.close()
    report = (tmp_path / "work" / "quick" / "REVIEW.md").read_text()
    assert f"({len(user)} made, of " in report and reviewed == len(user)
    assert set(recs) == {"curated", "automatic"} and all(len(r.students) == 1 for r in recs.values())
    assert "curated (with your decisions)" in report and "automatic (pipeline's picks)" in report
    assert review_worth.main(argv) == 0  # a rerun decides nothing new, trains nothing, reports the same decisions
    rerun = (tmp_path / "work" / "quick" / "REVIEW.md").read_text()

    def decisions(text: str) -> str:
        return text[text.index("## The reviewer's") : text.index("## Student top-1")]

    assert decisions(rerun) == decisions(report)
    store = RunStore.open(copy)
    try:
        assert {r.set_name: [s.accuracy for s in r.students] for r in evaluations(store)} == {
            n: [s.accuracy for s in r.students] for n, r in recs.items()
        }
    finally:
        store.close()


def test_evaluate_plan_trains_the_important_rows_first():
    args = evaluate.parse_args(["--generators", "g1", "g2", "--students", "convnet", "resnet10t"])
    steps = evaluate.plan(args)
    students = [st for _, _, _, st, _ in steps]
    assert students.index("resnet10t") > max(i for i, st in enumerate(students) if st == "convnet")
    first = [(g, ipc, seeds) for g, ipc, proto, st, seeds in steps if st == "convnet" and proto == "hard"]
    assert first[:4] == [("g1", 1, [0]), ("g2", 1, [0]), ("g1", 1, [0, 1, 2]), ("g2", 1, [0, 1, 2])]
    assert [s for s in steps if s[2] == "app-default"] == [("g1", 10, "app-default", "convnet", [0])]
    # every (generator, IPC, protocol, student) ends with all its seeds asked
    grid = {(g, i, p, st) for g in ("g1", "g2") for i in (1, 10) for p in ("hard", "soft")
            for st in ("convnet", "resnet10t")}  # fmt: skip
    assert {(g, i, p, st) for g, i, p, st, seeds in steps if seeds == [0, 1, 2]} == grid
