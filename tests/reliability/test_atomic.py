"""Crash-safe output files: the previous file survives a writer killed mid-write; bad folders are found first."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from glocal_bench import atomic, report


def test_replacing_keeps_the_old_file_when_the_block_fails(tmp_path):
    path = tmp_path / "results.json"
    atomic.write_text(path, "old")
    with pytest.raises(RuntimeError), atomic.replacing(path) as f:
        f.write(b"half of the new ")
        raise RuntimeError("killed")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary file left behind


def test_a_file_size_limit_mid_write_leaves_the_previous_results(tmp_path):
    """A real fault: RLIMIT_FSIZE makes the kernel stop the writer (SIGXFSZ) in the middle of results.json."""
    report.write_results(tmp_path, [{"strategy": "fixed", "value": 1.0}])
    before = (tmp_path / "results.json").read_bytes()
    script = textwrap.dedent(f"""
        import resource
        from pathlib import Path
        from glocal_bench import report
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        report.write_results(Path({str(tmp_path)!r}), [{{"strategy": "fixed", "curve": list(range(100000))}}])
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert result.returncode == -signal.SIGXFSZ or b"File too large" in result.stderr, result.stderr
    assert (tmp_path / "results.json").read_bytes() == before
    assert json.loads(before)["records"][0]["value"] == 1.0


def test_write_report_and_plots_are_atomic_and_complete(tmp_path):
    records = [{"task": "t", "strategy": "fixed", "seed": 0, "final_val_loss": 1.0, "test_loss": 1.0,
                "inner_steps": 2, "wall_seconds": 0.1, "hparams": {"lr": 0.1}, "curve": [[1, 2.0], [2, 1.0]],
                "hparam_trajectory": [{"step": 0, "lr": 0.1}, {"step": 2, "lr": 0.2}]}]
    path = report.write_report(tmp_path, records, "title")
    assert "val_loss.png" in path.read_text()
    assert (tmp_path / "val_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_check_folder_rejects_files_and_paths_under_files(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(atomic.OutputError, match="exists and is not a folder"):
        atomic.check_folder(a_file)
    with pytest.raises(atomic.OutputError, match="not a writable folder"):
        atomic.check_folder(a_file / "below")
    made = atomic.check_folder(tmp_path / "new" / "deeper")
    assert made.is_dir() and not list(made.iterdir())


@pytest.fixture
def mount_tmpfs(tmp_path):
    """Mount a real tmpfs with the given options (needs root and mount rights; skipped otherwise)."""
    mounted = []

    def mount(options: str):
        target = tmp_path / f"mnt{len(mounted)}"
        target.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
        mounted.append(target)
        return target

    yield mount
    for target in mounted:
        subprocess.run(["umount", str(target)], check=False)


def test_a_read_only_filesystem_is_refused_before_any_work(mount_tmpfs, capsys):
    from glocal_bench.cli import main

    read_only = mount_tmpfs("ro,size=1m")
    for out in (read_only, read_only / "sub"):
        assert main(["run", "--task", "quadratic", "--strategy", "fixed", "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "Read-only file system" in err


def test_a_full_disk_mid_write_leaves_the_previous_results(mount_tmpfs):
    small = mount_tmpfs("size=64k")
    report.write_results(small, [{"strategy": "fixed", "value": 1.0}])
    before = (small / "results.json").read_bytes()
    with pytest.raises(OSError, match="No space left"):
        report.write_results(small, [{"strategy": "fixed", "curve": list(range(100000))}])
    assert (small / "results.json").read_bytes() == before
    assert [p.name for p in small.iterdir()] == ["results.json"]


def test_a_kernel_protected_folder_is_refused():
    """/sys refuses new entries even to root: a real unwritable folder on any Linux machine."""
    if not os.path.isdir("/sys/kernel"):
        pytest.skip("no sysfs")
    with pytest.raises(atomic.OutputError, match="not a writable folder"):
        atomic.check_folder("/sys/kernel/glocal-out")


def test_files_get_the_permissions_a_plain_open_would_give(tmp_path):
    atomic.write_text(tmp_path / "atomic.txt", "x")
    (tmp_path / "plain.txt").write_text("x")
    assert (tmp_path / "atomic.txt").stat().st_mode == (tmp_path / "plain.txt").stat().st_mode
