"""Where a job runs: on CUDA when the scheduler granted a GPU and CUDA works, else on the CPU.

On a machine with several GPUs, concurrent local jobs each claim a different device through a
lock file per physical GPU (`claim_gpu`), instead of all landing on GPU 0. Under SLURM the job
sees only the GPUs it was granted (CUDA_VISIBLE_DEVICES), usually one, and no lock is needed.

A job that a scheduler granted a GPU (its `gpu` resource ≥ 1, and CUDA_VISIBLE_DEVICES or
SLURM's GPU variables set) on a node with the NVIDIA driver, where CUDA then does not work,
stops with an error: falling back would run a GPU-sized job on one CPU thread until its time
limit. Where the node has no NVIDIA driver at all (a cluster's fake GPUs, as in
tests/slurm), or nothing says a GPU was granted (a local run: the rules' `gpu=1` is only a
request there), the job falls back to the CPU and logs why.

Every job that picks its device here also gets IEEE float32 matrix products and convolutions
(`force_ieee_fp32`): TF32 keeps 10 mantissa bits, and the empirical score at small t divides
differences of nearly equal logits by Δ_t, so it would lose about two decimal digits there.
"""

from __future__ import annotations

import fcntl
import glob
import logging
import os
import re
import tempfile
import time
import warnings
from pathlib import Path

import torch

log = logging.getLogger(__name__)
_HELD: list = []  # lock files kept open for the life of the process
# Variables SLURM sets in a job that holds GPUs (sbatch --gpus / --gres=gpu).
SLURM_GPU_VARS = ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "SLURM_GPUS_ON_NODE", "SLURM_GPUS")


def force_ieee_fp32() -> None:
    """float32 matrix products and cuDNN convolutions in IEEE float32, never TF32 (whatever a
    library or Inductor's advice switched on before)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")


def gpu_names(count: int, query: bool = True) -> list[str]:
    """A name per visible CUDA index that every job on this machine gives the same GPU: its
    UUID (from torch, when `query` and CUDA works), else its CUDA_VISIBLE_DEVICES entry (an
    index into the machine's GPUs or a UUID, the same in every job), else the index itself
    (no CUDA_VISIBLE_DEVICES: every job sees every GPU in the same order)."""
    if query and torch.cuda.is_available() and torch.cuda.device_count() >= count:
        try:
            return [f"GPU-{torch.cuda.get_device_properties(i).uuid}" for i in range(count)]
        except (RuntimeError, AttributeError):  # no UUID from this driver or build
            pass
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")]
    if len(visible) >= count and all(visible[:count]):
        return visible[:count]
    return [str(i) for i in range(count)]


def _lock_name(gpu: str) -> str:
    return "gpu-" + re.sub(r"[^A-Za-z0-9._-]", "_", gpu) + ".lock"


def claim_gpu(
    count: int,
    lock_dir: str | os.PathLike | None = None,
    poll: float = 1.0,
    timeout: float | None = None,
    names: list[str] | None = None,
) -> tuple[int, object]:
    """Claim one of `count` visible GPUs: an exclusive flock on the lock file of its physical
    GPU (`names`, default `gpu_names`: two jobs with different CUDA_VISIBLE_DEVICES still
    agree on which file is which GPU), held while the returned handle stays open (the OS
    releases it when the process ends, even if killed). Returns (visible index, handle).

    Waits (polling) while every device is taken; raises TimeoutError after `timeout` s."""
    folder = Path(
        lock_dir
        or os.environ.get("DIFFREGIMES_GPU_LOCKS", Path(tempfile.gettempdir()) / "diffregimes-gpus")
    )
    folder.mkdir(parents=True, exist_ok=True)
    names = gpu_names(count) if names is None else names
    start = time.monotonic()
    while True:
        for i in range(count):
            handle = open(folder / _lock_name(names[i]), "a")  # noqa: SIM115 (held on purpose)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            return i, handle
        if timeout is not None and time.monotonic() - start > timeout:
            raise TimeoutError(f"all {count} GPUs stayed busy for {timeout} s ({folder})")
        time.sleep(poll)


def _granted(gpus_granted: int | None) -> str | None:
    """What says a scheduler granted this job a GPU, in words, or None: the `gpu` resource ≥ 1
    and CUDA_VISIBLE_DEVICES or one of SLURM's GPU variables set."""
    if not gpus_granted:
        return None
    seen = [
        f"{v}={os.environ[v]}" for v in SLURM_GPU_VARS if os.environ.get(v, "0") not in ("", "0")
    ]
    if os.environ.get("CUDA_VISIBLE_DEVICES"):
        seen.append(f"CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']}")
    return f"gpu resource {gpus_granted}, {', '.join(seen)}" if seen else None


def _nvidia_driver() -> bool:
    """The node has the NVIDIA kernel driver (its /proc entry or a device file)."""
    return os.path.exists("/proc/driver/nvidia/version") or bool(glob.glob("/dev/nvidia[0-9]*"))


def _cuda_error(index: int) -> str | None:
    """Why CUDA device `index` cannot run a kernel (initialising it and allocating on it), or
    None when it can."""
    try:
        torch.cuda.init()
        torch.zeros(1, device=f"cuda:{index}").add_(1)
        torch.cuda.synchronize(index)
    except Exception as err:  # any failure here means the same: no working GPU
        return f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err) else ''}"
    return None


def _unavailable_reason(said: list[str]) -> str:
    build = torch.version.cuda
    why = "torch.cuda.is_available() is False"
    if build is None:
        why += f" (torch {torch.__version__} is a CPU-only build)"
    else:
        why += f" (torch {torch.__version__}, built for CUDA {build})"
    return why + (f": {'; '.join(said)}" if said else "")


def _broken_gpu_error(granted: str, failure: str) -> RuntimeError:
    return RuntimeError(
        f"this job was granted a GPU ({granted}) but CUDA does not work here: {failure}. "
        "On the CPU it would run on a few threads until its time limit, so it stops instead. "
        "Check `nvidia-smi` on this node and that torch is a CUDA build for its driver "
        "(pip install torch from the CUDA index matching `nvidia-smi`'s CUDA version), or "
        "rerun on a node whose GPU works; to run this rule on the CPU knowingly, give it no GPU "
        "(e.g. snakemake --set-resources train:gpu=0)."
    )


def pick_device(
    gpus_granted: int | None = None,
    cuda_available: bool | None = None,
    device_count: int | None = None,
    lock_dir=None,
    nvidia_driver: bool | None = None,
) -> tuple[torch.device, str]:
    """Return (device, reason). `gpus_granted` is the job's `gpu` resource (None: unknown).

    `cuda_available`, `device_count` and `nvidia_driver` default to torch's and the node's
    answers (tests pass fakes; with a fake `device_count` no kernel is run on the device).
    Raises RuntimeError where a scheduler granted a GPU that does not work (module doc)."""
    if gpus_granted == 0:
        return torch.device("cpu"), "no GPU was granted to this job"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return torch.device("cpu"), "CUDA_VISIBLE_DEVICES hides every GPU"
    granted = _granted(gpus_granted)
    if nvidia_driver is None:
        nvidia_driver = _nvidia_driver()
    if cuda_available is None:
        with warnings.catch_warnings(record=True) as said:  # e.g. "driver too old"
            warnings.simplefilter("always")
            cuda_available = torch.cuda.is_available()
    else:
        said = []
    if not cuda_available:
        reason = _unavailable_reason([str(w.message).strip() for w in said])
        if granted and nvidia_driver:
            raise _broken_gpu_error(granted, reason)
        if granted:
            return torch.device("cpu"), (
                f"a GPU was granted ({granted}) but this node has no NVIDIA driver and "
                f"CUDA is not available here ({reason})"
            )
        asked = "a GPU was asked for but " if gpus_granted else ""
        return torch.device("cpu"), f"{asked}CUDA is not available here"
    probe = device_count is None
    count = torch.cuda.device_count() if device_count is None else device_count
    index, handle = 0, None
    if count > 1:
        index, handle = claim_gpu(count, lock_dir, names=gpu_names(count, query=probe))
    if probe and (failure := _cuda_error(index)):
        if handle is not None:
            handle.close()
        failure = f"initialising cuda:{index} failed: {failure}"
        if granted:
            raise _broken_gpu_error(granted, failure)
        return torch.device("cpu"), f"CUDA is available but {failure}"
    if handle is not None:
        _HELD.append(handle)
        return torch.device(
            f"cuda:{index}"
        ), f"CUDA device {index} of {count} (locked for this job)"
    name = torch.cuda.get_device_name(0) if probe else "cuda:0"
    return torch.device("cuda:0"), f"CUDA device {name}"


def job_device(log: logging.Logger, threads: int, gpus_granted: int | None) -> torch.device:
    """Set the job's CPU threads and IEEE float32 products, pick its device and log which and
    why (train, sample, theory, judge and training-axis jobs start this way)."""
    torch.set_num_threads(threads)
    force_ieee_fp32()
    device, why = pick_device(gpus_granted)
    fell_back = why.startswith("a GPU was granted") or why.startswith("CUDA is available but")
    level = logging.WARNING if fell_back else logging.INFO
    log.log(level, "device: %s (%s); %d CPU threads", device, why, threads)
    return device
