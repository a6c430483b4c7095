"""Logging for workflow jobs: every job logs what it does, long work shows a progress bar."""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

from .device import job_device


def start_log(path: str, stage: str) -> logging.Logger:
    """Send this job's log records and Python warnings to `path` (the rule's `log:` file)."""
    handler = logging.FileHandler(path, mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    log = logging.getLogger(f"diffregimes.{stage}")
    log.info("python %s", sys.version.split()[0])

    def log_the_error(kind, value, tb):  # the error in the job's log too, not only on stderr
        # the message only: the traceback goes to stderr once (Snakemake also shows the log)
        log.error("%s: %s", kind.__name__, value)
        sys.__excepthook__(kind, value, tb)

    sys.excepthook = log_the_error
    return log


@dataclass(frozen=True)
class Job:
    """What every job starts with: its log, its device and its kernels' memory budget."""

    log: logging.Logger
    device: torch.device
    budget: int | None  # bytes, from the rule's `budget_mb` resource (None where it has none)


def start_job(log_path: str, stage: str, threads: int, resources) -> Job:
    """Start a job's log (`start_log`), pick its device from its `gpu` resource and thread
    count (`device.job_device`) and read its memory budget (`budget_mb`, which by design never
    changes results, so it is a resource and not a param)."""
    log = start_log(log_path, stage)
    budget_mb = resources.get("budget_mb")
    budget = None if budget_mb is None else int(budget_mb) * 2**20
    return Job(log, job_device(log, threads, resources.get("gpu")), budget)


def progress_bar(total: int, desc: str, log_path: str | None = None):
    """A tqdm bar written into the job's log file (updated at most every 2 s)."""
    stream = open(log_path, "a") if log_path else sys.stderr  # noqa: SIM115 (closed by tqdm)
    return tqdm(total=total, desc=desc, file=stream, mininterval=2.0, ascii=True)


class Timer:
    """Context manager that logs the wall time of a block."""

    def __init__(self, log: logging.Logger, what: str):
        self.log, self.what = log, what

    def __enter__(self):
        self.start = time.perf_counter()
        self.log.info("%s ...", self.what)
        return self

    def __exit__(self, kind, *exc):
        took = time.perf_counter() - self.start
        if kind is None:
            self.log.info("%s: done in %.2f s", self.what, took)
        else:
            self.log.info("%s: failed after %.2f s", self.what, took)


def cell_of(wildcards) -> dict:
    """The attrs naming a job's cell, from its wildcards: dataset, d, n, seed, and the score or
    model where the rule has one."""
    out = dict(
        dataset=wildcards.dataset, d=int(wildcards.d), n=int(wildcards.n), seed=int(wildcards.seed)
    )
    out.update({k: wildcards[k] for k in ("score", "model") if k in wildcards.keys()})
    return out
