"""benchmarks/gpu_checks.py, the script a GPU session runs, on this machine's CPU: its torchrun
twin check passes with gloo, and it refuses --device cuda where there is no CUDA."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import gpu_checks


@pytest.mark.slow
def test_the_torchrun_check_passes_on_cpu_and_writes_its_figures(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "gpu_checks.json"
    assert gpu_checks.main(["--device", "cpu", "--checks", "torchrun", "--no-text", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    check = result["torchrun"]
    assert check["passed"] and check["backend"] == "gloo"
    assert check["epoch_losses"]["in_process"] == pytest.approx(check["epoch_losses"]["torchrun"], rel=1e-3)
    assert len(check["epoch_losses"]["in_process"]) == 3 and check["largest_weight_difference"] <= 1e-2
    assert result["torch"] == torch.__version__ and "--checks torchrun" in result["command"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_it_refuses_cuda_without_a_cuda_device(tmp_path, capsys):
    assert gpu_checks.main(["--device", "cuda", "--out", str(tmp_path / "x.json")]) == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
