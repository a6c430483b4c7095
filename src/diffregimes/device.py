"""Where a job runs: on CUDA when the scheduler granted a GPU and CUDA works, else on the CPU.

On a machine with several GPUs, concurrent local jobs each claim a different device through a
lock file per device (`claim_gpu`), instead of all landing on GPU 0. Under SLURM the job sees
only the GPUs it was granted (CUDA_VISIBLE_DEVICES), usually one, and no lock is needed.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)
_HELD: list = []  # lock files kept open for the life of the process


def claim_gpu(
    count: int,
    lock_dir: str | os.PathLike | None = None,
    poll: float = 1.0,
    timeout: float | None = None,
) -> tuple[int, object]:
    """Claim one of `count` GPUs: an exclusive flock on `gpu{i}.lock`, held while the returned
    handle stays open (the OS releases it when the process ends, even if killed).

    Waits (polling) while every device is taken; raises TimeoutError after `timeout` s."""
    folder = Path(
        lock_dir
        or os.environ.get("DIFFREGIMES_GPU_LOCKS", Path(tempfile.gettempdir()) / "diffregimes-gpus")
    )
    folder.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    while True:
        for i in range(count):
            handle = open(folder / f"gpu{i}.lock", "a")  # noqa: SIM115 (held on purpose)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            return i, handle
        if timeout is not None and time.monotonic() - start > timeout:
            raise TimeoutError(f"all {count} GPUs stayed busy for {timeout} s ({folder})")
        time.sleep(poll)


def pick_device(
    gpus_granted: int | None = None,
    cuda_available: bool | None = None,
    device_count: int | None = None,
    lock_dir=None,
) -> tuple[torch.device, str]:
    """Return (device, reason). `gpus_granted` is the job's `gpu` resource (None: unknown).

    `cuda_available` and `device_count` default to torch's answers (tests pass fakes)."""
    if gpus_granted == 0:
        return torch.device("cpu"), "no GPU was granted to this job"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return torch.device("cpu"), "CUDA_VISIBLE_DEVICES hides every GPU"
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    if not cuda_available:
        asked = "a GPU was granted but " if gpus_granted else ""
        return torch.device("cpu"), f"{asked}CUDA is not available here"
    count = torch.cuda.device_count() if device_count is None else device_count
    if count > 1:
        index, handle = claim_gpu(count, lock_dir)
        _HELD.append(handle)
        return torch.device(
            f"cuda:{index}"
        ), f"CUDA device {index} of {count} (locked for this job)"
    name = torch.cuda.get_device_name(0) if device_count is None else "cuda:0"
    return torch.device("cuda:0"), f"CUDA device {name}"


def job_device(log: logging.Logger, threads: int, gpus_granted: int | None) -> torch.device:
    """Set the job's CPU threads, pick its device and log which and why (train, sample and
    training-axis jobs start this way)."""
    torch.set_num_threads(threads)
    device, why = pick_device(gpus_granted)
    log.info("device: %s (%s); %d CPU threads", device, why, threads)
    return device
