"""Running the workflow from tests: snakemake in a temporary working directory."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile")]
TINY = ROOT / "tests" / "config" / "tiny.yaml"


def command(
    workdir: Path, *args: str, config: Path | None = TINY, snakefile: Path | None = None
) -> list[str]:
    """The one snakemake command line of the tests: `snakefile` (default the repository's) in
    `workdir` on `config` (None: the Snakefile's default), 2 cores, then `args` (flags and
    targets; --configfile comes first, as it takes every value up to the next flag)."""
    cmd = [*SNAKEMAKE[:-1], str(snakefile or ROOT / "Snakefile"), "--directory", str(workdir)]
    if config is not None:
        cmd += ["--configfile", str(config)]
    return [*cmd, "--cores", "2", *args]


def snakemake(
    workdir: Path,
    *args: str,
    config: Path | None = TINY,
    check=True,
    snakefile: Path | None = None,
    timeout: float | None = None,
):
    proc = subprocess.run(
        command(workdir, *args, config=config, snakefile=snakefile),
        capture_output=True,
        text=True,
        cwd=workdir,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def planned_jobs(workdir: Path, config: Path | None = TINY, *extra: str) -> dict[str, int]:
    """Job counts per rule of a dry run (the 'Job stats' table)."""
    out = snakemake(workdir, "-n", *extra, config=config).stdout
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", out, flags=re.M))
    counts.pop("total", None)
    return {rule: int(c) for rule, c in counts.items()}
