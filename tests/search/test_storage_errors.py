"""Storage problems are one line and exit 2, and never print a password."""

import sqlite3

import pytest

pytest.importorskip("optuna")

from glocal_bench import search
from glocal_bench.cli import main
from glocal_bench.redact import redact

ARGS = ["search", "--task", "quadratic", "--budget-runs", "1", "--steps", "40", "--window", "10", "--quiet"]


def _one_line(capsys, argv, fragment):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err and fragment in err, err
    return err


def test_a_sqlite_file_of_another_application_is_refused(tmp_path, capsys):
    db = tmp_path / "other.db"
    with sqlite3.connect(db) as connection:  # a real database whose "studies" table has another schema
        connection.execute("create table studies (x integer)")
        connection.execute("insert into studies values (1)")
    _one_line(capsys, [*ARGS, "--out", str(tmp_path / "o"), "--storage", f"sqlite:///{db}"],
              "not an Optuna study database")
    with sqlite3.connect(db) as connection:
        assert connection.execute("select x from studies").fetchall() == [(1,)]


@pytest.mark.parametrize("url", ["sqlite:///:memory:", "sqlite://"])
def test_in_memory_sqlite_is_refused(tmp_path, capsys, url):
    _one_line(capsys, [*ARGS, "--out", str(tmp_path / "o"), "--storage", url], "in-memory SQLite")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://user:pass@host/db", "postgresql://user:***@host/db"),
        ("postgresql+psycopg2://u:p%40ss@h:5432/d", "postgresql+psycopg2://u:***@h:5432/d"),
        ("x mysql://a:p@ss@h/d and postgresql://b:q/r@h2/d", "x mysql://a:***@h/d and postgresql://b:***@h2/d"),
        ("postgresql://user@host/db", "postgresql://user@host/db"),
        ("sqlite:///runs/study.db", "sqlite:///runs/study.db"),
    ],
)
def test_redact_masks_every_password(text, expected):
    assert redact(text) == expected


def test_passwords_are_never_printed_or_stored(tmp_path, capsys):
    # no MySQL driver is installed: the error comes at once
    err = _one_line(capsys, [*ARGS, "--out", str(tmp_path / "o"), "--storage", "mysql://alice:s3cret-pw@h/db"],
                    "alice:***@h")
    assert "s3cret-pw" not in err
    # a real refused PostgreSQL connection (nothing listens on port 1; retried for ~8 s)
    with pytest.raises(search.SearchError) as info:
        search._storage("postgresql://alice:s3cret-pw@localhost:1/db", None, lambda s, t: None)
    assert "s3cret-pw" not in str(info.value) and "alice:***@localhost" in str(info.value)


def test_the_command_in_results_and_report_is_redacted(tmp_path, capsys):
    """A shared RDB study (a server this test cannot start) puts its URL in the command line."""
    from glocal_bench import cli, experiment

    record = experiment.run("quadratic", "fixed", 0, experiment.Settings(steps=20, window=10))
    argv = ["search", "--task", "quadratic", "--storage", "postgresql://bob:hunter2@db.example/x"]
    cli._finish([record], tmp_path, "search", argv)
    for name in ("results.json", "report.md"):
        text = (tmp_path / name).read_text()
        assert "hunter2" not in text and "bob:***@db.example" in text


def test_the_search_space_stays_within_the_bounds():
    from glocal_bench.experiment import Settings

    dims = {d.target: d for d in search.search_space("quadratic", Settings(init={"lr": 5.0}), spread=30.0)}
    assert dims["lr"].high == 10.0 and dims["lr"].low == pytest.approx(5.0 / 30)
