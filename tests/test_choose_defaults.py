from benchmarks.choose_defaults import main


def test_quick_choose_defaults_writes_both_tables(tmp_path):
    assert main(["--quick", "--work", str(tmp_path / "work"), "--out", str(tmp_path)]) == 0
    text = (tmp_path / "DEFAULTS.md").read_text()
    assert "**tau = " in text and "**Chosen: lambda = " in text and "**Measured choice: guidance = " in text
    rows = (tmp_path / "defaults.csv").read_text().splitlines()
    assert rows[0].startswith("tau,lambda,anomalies") and len(rows) == 1 + 6 + 5
