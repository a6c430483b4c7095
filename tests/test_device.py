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


@pytest.fixture
def clean_gpu_env(monkeypatch):
    """No scheduler variables: each test sets the ones it needs."""
    slurm = ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "SLURM_GPUS_ON_NODE", "SLURM_GPUS")
    for name in ("CUDA_VISIBLE_DEVICES", *slurm):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_granted_gpu_without_working_cuda_stops_with_what_to_do(clean_gpu_env):
    """SLURM granted a GPU on a node with the NVIDIA driver, but torch cannot use it: an
    error naming the grant, the failure and the way out, not a silent CPU run."""
    clean_gpu_env.setenv("SLURM_JOB_GPUS", "3")
    clean_gpu_env.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(RuntimeError) as err:
        device.pick_device(1, cuda_available=False, nvidia_driver=True)
    text = str(err.value)
    assert "granted a GPU (gpu resource 1, SLURM_JOB_GPUS=3, CUDA_VISIBLE_DEVICES=0)" in text
    assert "torch.cuda.is_available() is False" in text
    assert "nvidia-smi" in text and "--set-resources train:gpu=0" in text


def test_granted_gpu_whose_initialisation_fails_stops(clean_gpu_env):
    clean_gpu_env.setenv("CUDA_VISIBLE_DEVICES", "GPU-1234")
    clean_gpu_env.setattr(torch.cuda, "is_available", lambda: True)
    clean_gpu_env.setattr(torch.cuda, "device_count", lambda: 1)
    clean_gpu_env.setattr(device, "_cuda_error", lambda i: "RuntimeError: CUDA-capable device busy")
    with pytest.raises(
        RuntimeError, match="initialising cuda:0 failed: RuntimeError: CUDA-capable"
    ):
        device.pick_device(1, nvidia_driver=True)
    # not granted by a scheduler (a local run, where gpu=1 is only a request): the CPU
    clean_gpu_env.delenv("CUDA_VISIBLE_DEVICES")
    dev, why = device.pick_device(1, nvidia_driver=True)
    assert dev == torch.device("cpu") and "initialising cuda:0 failed" in why


def test_fake_gpus_without_a_driver_and_local_requests_fall_back(clean_gpu_env):
    """tests/slurm's fake GPUs (a grant, no NVIDIA driver) and a local run's gpu=1 request run
    on the CPU, saying why."""
    assert device.pick_device(1, cuda_available=False, nvidia_driver=True)[0].type == "cpu"
    clean_gpu_env.setenv("SLURM_GPUS_ON_NODE", "1")
    clean_gpu_env.setenv("CUDA_VISIBLE_DEVICES", "0")
    dev, why = device.pick_device(1, cuda_available=False, nvidia_driver=False)
    assert dev.type == "cpu" and "no NVIDIA driver" in why


def test_gpu_locks_name_the_physical_gpu(tmp_path, clean_gpu_env):
    """Job A sees GPUs "1,0" and takes its cuda:0 (physical GPU 1); job B sees "0,1": its
    cuda:0 (physical GPU 0) is free. Locks named by the visible index would send B to its
    cuda:1, physical GPU 1, A's."""
    clean_gpu_env.setenv("CUDA_VISIBLE_DEVICES", "1,0")
    assert device.pick_device(1, True, 2, tmp_path)[0] == torch.device("cuda:0")
    clean_gpu_env.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert device.pick_device(1, True, 2, tmp_path)[0] == torch.device("cuda:0")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu-0.lock", "gpu-1.lock"]
    # both physical GPUs are now held: a third job with either order waits
    with pytest.raises(TimeoutError):
        device.claim_gpu(2, tmp_path, poll=0.01, timeout=0.05, names=["1", "0"])


def test_job_device_forces_ieee_fp32_products():
    """TF32 (10 mantissa bits) would cost the empirical score digits at small t: a job's
    device choice switches it off for matrix products and cuDNN convolutions."""
    import logging

    old = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.get_float32_matmul_precision(),
    )
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.set_float32_matmul_precision("high")
        assert device.job_device(logging.getLogger("test"), 1, 0) == torch.device("cpu")
        assert not torch.backends.cuda.matmul.allow_tf32
        assert not torch.backends.cudnn.allow_tf32
        assert torch.get_float32_matmul_precision() == "highest"
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old[:2]
        torch.set_float32_matmul_precision(old[2])


def test_judge_asks_for_no_gpu_and_runs_on_the_cpu(tmp_path):
    """The judge's `gpu` resource is 0, which job_device reads as "stay on the CPU": the
    scheduler and the job agree (a judge that took a GPU it did not ask for would share it
    with the GPU job the scheduler put there)."""
    import re

    from workflow_helpers import ROOT, snakemake

    out = snakemake(tmp_path, "-n", config=ROOT / "tests" / "config" / "images.yaml").stdout
    judges = re.findall(r"^rule judge:\n(?:    .*\n)*?    resources: (.*)$", out, flags=re.M)
    assert judges and all(re.search(r"\bgpu=0\b", r) for r in judges), judges
    assert device.pick_device(0)[0] == torch.device("cpu")
