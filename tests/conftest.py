"""Shared fixtures: one thread for in-process torch work, and one tiny end-to-end run of the
workflow per test session."""

from __future__ import annotations

import json
import re
import time

import pytest
import torch
from workflow_helpers import snakemake


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread for in-process torch work: the tensors in tests are small, extra
    threads only add contention (10× slower on a loaded 2-core machine), and one thread makes
    runs bitwise reproducible (the resume test compares weights exactly)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The tiny config (tests/config/tiny.yaml) run end to end in a temporary directory; its
    job count and wall time are in `timing.json` there (the SLURM test prints them)."""
    workdir = tmp_path_factory.mktemp("tiny")
    start = time.monotonic()
    proc = snakemake(workdir)
    seconds = time.monotonic() - start
    jobs = int(re.findall(r"^\d+ of (\d+) steps", proc.stdout + proc.stderr, flags=re.M)[-1])
    (workdir / "timing.json").write_text(json.dumps({"jobs": jobs, "seconds": seconds}))
    return workdir
