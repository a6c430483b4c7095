"""`make bench`'s scripts run and print the issue's JSON keys as numbers (small sizes; no
timing is asserted: ratios are for people to read, see docs/design.md#benchmarks)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def run_json(script, *args):
    out = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def is_number(value):
    return isinstance(value, int | float) and math.isfinite(value)


@pytest.mark.slow
def test_kernel_bench_prints_the_score_ratio_per_shape():
    result = run_json("kernels.py", "--skip", "sampling", "faiss", "dry_run", "--batch", "8")
    assert result["threads"] >= 1
    assert is_number(result["empirical_score_vs_matmul"])
    shapes = {(r["d"], r["n"]) for r in result["empirical_score_shapes"]}
    assert shapes == {(d, n) for d in (256, 1024, 3072) for n in (4096, 32768)}
    ratios = [r["ratio"] for r in result["empirical_score_shapes"]]
    assert result["empirical_score_vs_matmul"] == min(ratios)  # the worst case


@pytest.mark.slow
def test_sampling_bench_fits_an_exponent_and_a_memory_ratio():
    result = run_json(
        "kernels.py",
        *("--skip", "score", "faiss", "dry_run"),
        *("--sample-d", "8", "--sample-n", "4096", "65536", "--sample-repeats", "1"),
    )
    assert is_number(result["sampling_cost_exponent_in_n"])
    assert is_number(result["peak_rss_ratio_65536_vs_4096"])
    assert [r["n"] for r in result["sampling_jobs"]] == [4096, 65536]


@pytest.mark.slow
def test_train_loop_bench_compares_the_pipeline_with_bare_loops():
    result = run_json("train_loop.py", "--steps", "30", "--repeats", "1", "--width", "32")
    for key in ("train_vs_bare_loop", "train_vs_bare_loop_foreach", "pipeline_steps_per_s"):
        assert is_number(result[key]) and result[key] > 0
