"""User files that cannot be parsed are bad input: one line naming the file (and line), exit 2."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from diffloc.tracing.errors import InputFileError
from diffloc.tracing.io import read_jsonl, read_lines, read_tensors, read_trace

ROOT = Path(__file__).resolve().parent.parent
CASES = ROOT / "experiments" / "cases" / "toy_edits.jsonl"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "diffloc", *args], capture_output=True, text=True, cwd=ROOT, timeout=600)


def _bad_cases(tmp_path: Path) -> Path:
    good = CASES.read_text().splitlines()[0]
    path = tmp_path / "cases.jsonl"
    path.write_text(good + "\n{not json\n")
    return path


def test_read_jsonl_names_file_and_line(tmp_path):
    path = _bad_cases(tmp_path)
    with pytest.raises(InputFileError, match=r"cases\.jsonl, line 2: not valid JSON"):
        read_jsonl(path, "cases")


def test_corrupt_binary_files_are_input_errors(tmp_path):
    bad = tmp_path / "trace.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(InputFileError, match="not a readable Parquet file"):
        read_trace(bad)
    bad = tmp_path / "000.safetensors"
    bad.write_bytes(b"\x00" * 5)
    with pytest.raises(InputFileError, match="not a readable safetensors file"):
        read_tensors(bad)
    (tmp_path / "t.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(InputFileError, match="cannot be read as text"):
        read_lines(tmp_path / "t.txt", "templates")


def test_cli_evaluate_corrupt_cases_is_one_line_exit_2(tmp_path):
    r = _cli("evaluate", "--cases", str(_bad_cases(tmp_path)), "--out", str(tmp_path / "eval"), "--seeds", "1")
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "line 2" in lines[0] and "cases.jsonl" in lines[0], lines


def test_cli_plot_corrupt_trace_is_one_line_exit_2(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "trace.parquet").write_bytes(b"PAR1" + b"\x00" * 64 + b"PAR1")
    r = _cli("plot", str(run))
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "trace.parquet" in lines[0], lines
