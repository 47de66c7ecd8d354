"""The GPU check script runs (against the CPU here), so a lent GPU's minutes are not lost to it."""

from __future__ import annotations

import sys

import pytest

from bench import cuda_check


def test_cuda_check_passes_against_the_cpu(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["cuda_check.py", "--device", "cpu"])
    assert cuda_check.main() == 0
    out = capsys.readouterr().out
    assert "0 failure(s)" in out and "FAIL" not in out
    assert out.count("ok  ") == 2 * 11  # every check of both cells ran


def test_cuda_check_without_cuda_says_so(monkeypatch, capsys):
    if cuda_check.torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    monkeypatch.setattr(sys, "argv", ["cuda_check.py"])
    assert cuda_check.main() == 0
    assert "no CUDA device" in capsys.readouterr().out
