"""Shared fixtures: one thread for in-process torch work, and one tiny end-to-end run of the
workflow per test session."""

from __future__ import annotations

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
    """The tiny config (tests/config/tiny.yaml) run end to end in a temporary directory."""
    workdir = tmp_path_factory.mktemp("tiny")
    snakemake(workdir)
    return workdir
