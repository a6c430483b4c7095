"""Shared fixtures: one tiny end-to-end run of the workflow per test session."""

from __future__ import annotations

import pytest
from workflow_helpers import snakemake


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The tiny config (tests/config/tiny.yaml) run end to end in a temporary directory."""
    workdir = tmp_path_factory.mktemp("tiny")
    snakemake(workdir)
    return workdir
