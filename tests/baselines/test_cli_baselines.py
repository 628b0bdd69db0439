"""The baselines through ``glocal compare``: results.json and report.md, and the missing-extra message."""

import json
import sys

from glocal_bench.cli import main


def test_compare_runs_the_baselines_into_the_report(tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", "--task", "logistic-digits", "--strategies", "fixed,hd,schedulefree,prodigy", "--steps", "20",
            "--window", "10", "--quiet", "--threads", "1", "--out", str(out)]
    assert main(argv) == 0
    records = json.loads((out / "results.json").read_text())["records"]
    assert [r["strategy"] for r in records] == ["fixed", "hd", "schedulefree", "prodigy"]
    report = (out / "report.md").read_text()
    assert "| logistic-digits | hd |" in report and "| logistic-digits | prodigy |" in report


def test_a_missing_extra_is_one_line_and_exit_2(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "schedulefree", None)
    argv = ["compare", "--task", "logistic-digits", "--strategies", "local,schedulefree", "--steps", "20", "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "glocal[baselines]" in err and "\n" not in err
