"""Running the workflow from tests: snakemake in a temporary working directory."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile")]
TINY = ROOT / "tests" / "config" / "tiny.yaml"


def snakemake(workdir: Path, *args: str, config: Path | None = TINY, check=True):
    cmd = [*SNAKEMAKE, "--directory", str(workdir)]
    if config is not None:
        cmd += ["--configfile", str(config)]
    cmd += ["--cores", "2"]  # after --configfile, which takes every value up to the next flag
    proc = subprocess.run([*cmd, *args], capture_output=True, text=True, cwd=workdir)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def planned_jobs(workdir: Path, config: Path | None = TINY, *extra: str) -> dict[str, int]:
    """Job counts per rule of a dry run (the 'Job stats' table)."""
    out = snakemake(workdir, "-n", *extra, config=config).stdout
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", out, flags=re.M))
    counts.pop("total", None)
    return {rule: int(c) for rule, c in counts.items()}
