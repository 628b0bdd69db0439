"""Two workers on one study in a real PostgreSQL server, through the documented ``postgresql://`` URL.

The server is Debian's ``postgresql`` package (``.ci/run`` installs it), started by the test on
127.0.0.1 with a free port in a temporary data directory and stopped at the end. The test is
skipped, saying why, only where the server or the driver is not available.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("optuna")

from shared_study import run_two_workers_on_one_study

from glocal_bench import search
from glocal_bench.experiment import Settings


def _pg_bin(name: str) -> str | None:
    """Path of a PostgreSQL server program (Debian keeps them out of PATH)."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(Path(p).parts[-3]))
    return found[-1] if found else shutil.which(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """``postgresql://glocal@127.0.0.1:PORT/postgres`` of a fresh server, stopped afterwards."""
    pytest.importorskip("psycopg2", reason="the postgres extra (psycopg2-binary) is not installed")
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL server programs not found (apt-get install -y postgresql)")
    as_user: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="glocal-pg-"))
    if os.geteuid() == 0:  # the server refuses to run as root
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
        try:
            shutil.chown(root, user="postgres")
        except (LookupError, OSError):
            pytest.skip("running as root and there is no 'postgres' user to start PostgreSQL as")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, log, port = root / "data", root / "server.log", _free_port()

    def pg(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([*as_user, *argv], capture_output=True, text=True, timeout=120)

    done = pg(initdb, "-D", str(data), "-U", "glocal", "--auth=trust", "--no-sync", "-E", "UTF8")
    if done.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"initdb failed: {done.stderr.strip()[-300:]}")
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    done = pg(pg_ctl, "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start")
    if done.returncode != 0:
        detail = log.read_text()[-300:] if log.exists() else done.stderr
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"PostgreSQL did not start: {detail.strip()}")
    try:
        yield f"postgresql://glocal@127.0.0.1:{port}/postgres"
    finally:
        pg(pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_two_workers_complete_one_postgres_study_without_lost_or_duplicated_trials(postgres_url, tmp_path):
    result = run_two_workers_on_one_study(postgres_url, tmp_path, timeout=180)
    assert len({t["worker"] for t in result.trials}) == 2  # both workers ran trials


@pytest.mark.slow
def test_a_postgres_url_with_an_explicit_missing_driver_is_one_clear_error(postgres_url):
    url = postgres_url.replace("postgresql://", "postgresql+pg8000://")
    with pytest.raises(search.SearchError, match="pg8000"):
        search.run_search("quadratic", "local", budget_runs=1, storage=url, study_name="x",
                          settings=Settings(steps=100, window=50))


def test_a_bare_postgresql_url_uses_the_installed_driver_or_says_how_to_install_one(monkeypatch):
    import importlib.util

    import sqlalchemy

    url = "postgresql://me:secret@db.example:5432/studies"
    parsed = sqlalchemy.engine.make_url(url)
    real = importlib.util.find_spec
    for installed, expected in (("psycopg", "postgresql+psycopg://"), ("psycopg2", "postgresql+psycopg2://")):
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, i=installed: object() if name == i else None)
        assert search._postgres_url(url, parsed) == url.replace("postgresql://", expected)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(search.SearchError, match=r"pip install 'glocal\[postgres\]'") as error:
        search._postgres_url(url, parsed)
    assert "secret" not in str(error.value)
    monkeypatch.setattr(importlib.util, "find_spec", real)
    explicit = "postgresql+pg8000://me@db/x"
    assert search._postgres_url(explicit, sqlalchemy.engine.make_url(explicit)) == explicit
