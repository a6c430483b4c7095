"""Device choice: CPU fallbacks, and one GPU per concurrent job on a multi-GPU machine."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from diffregimes import device


def test_cpu_when_no_gpu_granted_or_no_cuda(monkeypatch):
    assert device.pick_device(0)[0] == torch.device("cpu")
    assert device.pick_device(1, cuda_available=False)[0] == torch.device("cpu")
    assert "CUDA is not available" in device.pick_device(1, cuda_available=False)[1]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert "hides every GPU" in device.pick_device(1, cuda_available=True)[1]


def test_concurrent_jobs_take_different_gpus(tmp_path, monkeypatch):
    """Three jobs on a fake 3-GPU machine get cuda:0, 1, 2; a fourth waits (times out here)."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    got = [device.pick_device(1, True, 3, tmp_path)[0] for _ in range(3)]
    assert got == [torch.device(f"cuda:{i}") for i in range(3)]
    with pytest.raises(TimeoutError, match="all 3 GPUs stayed busy"):
        device.claim_gpu(3, tmp_path, poll=0.01, timeout=0.05)


def test_gpu_lock_is_released_when_the_job_ends(tmp_path):
    """A job (here a process) that ends — even killed — frees its GPU for the next one."""
    code = (
        "import sys; from diffregimes import device; "
        f"i, h = device.claim_gpu(2, {str(tmp_path)!r}); print(i)"
    )
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    second = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert first.stdout.strip() == second.stdout.strip() == "0"
    index, handle = device.claim_gpu(2, tmp_path)
    held = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert index == 0 and held.stdout.strip() == "1"
    handle.close()
