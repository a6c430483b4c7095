"""Where a job runs: on CUDA when the scheduler granted a GPU and CUDA works, else on the CPU."""

from __future__ import annotations

import os

import torch


def pick_device(gpus_granted: int | None = None) -> tuple[torch.device, str]:
    """Return (device, reason). `gpus_granted` is the job's `gpu` resource (None: unknown)."""
    if gpus_granted == 0:
        return torch.device("cpu"), "no GPU was granted to this job"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return torch.device("cpu"), "CUDA_VISIBLE_DEVICES hides every GPU"
    if not torch.cuda.is_available():
        asked = "a GPU was granted but " if gpus_granted else ""
        return torch.device("cpu"), f"{asked}CUDA is not available here"
    return torch.device("cuda"), f"CUDA device {torch.cuda.get_device_name(0)}"
