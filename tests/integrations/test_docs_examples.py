"""Every Python example in docs/integrations.md runs as written (and the CLI lines with --log-dir)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "integrations.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
NEEDS = {"lightning": "lightning", "transformers": "transformers", "tensorboard": "tensorboard"}


def _id(code: str) -> str:
    for name in ("lightning", "transformers", "TensorBoardListener", "Tuner"):
        if name in code:
            return name
    return "example"


def test_the_doc_has_the_examples():
    assert [_id(code) for code in BLOCKS] == ["TensorBoardListener", "Tuner", "lightning", "transformers"]


@pytest.mark.slow
@pytest.mark.parametrize("code", BLOCKS, ids=[_id(code) for code in BLOCKS])
def test_example_runs_as_written(code, tmp_path):
    for module, package in NEEDS.items():
        if module in code:
            pytest.importorskip(package)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(DOC.parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tuned lr:" in result.stdout or "{'hparams/lr'" in result.stdout, result.stdout[-2000:]
    lr = [float(m) for m in re.findall(r"tuned lr: ([0-9.e-]+)", result.stdout)]
    assert all(v != 0.01 and v != 1e-3 for v in lr)  # the example did tune


def test_cli_lines_run(tmp_path, monkeypatch, capsys):
    pytest.importorskip("tensorboard")
    from glocal_bench.cli import main

    lines = [line.strip() for line in DOC.read_text().splitlines() if line.strip().startswith("glocal run ")]
    assert lines
    monkeypatch.chdir(tmp_path)
    for line in lines:
        argv = [*line.split()[1:], "--quiet"]
        assert main(argv) == 0
    assert (tmp_path / "runs" / "tb" / "glocal-seed0").is_dir()
