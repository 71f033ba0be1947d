"""Measuring the machine (first run only: then cached) leaves the global RNG alone, so a run's
seed gives the same initial weights whether or not the measurement ran before them."""

import torch

from rmlab import hardware


def test_measuring_does_not_move_the_global_rng(tmp_path, monkeypatch):
    monkeypatch.setenv("RMLAB_CACHE", str(tmp_path))  # nothing cached: both measurements run
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    hardware.cpu_bf16_speedup()
    hardware.matmul_peak_flops("cpu", "float32", fresh=True)
    assert torch.equal(torch.rand(3), expected)
