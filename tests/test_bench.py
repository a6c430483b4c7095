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
    result = run_json("kernels.py", "--only", "score", "--batch", "8")
    assert result["threads"] >= 1
    assert is_number(result["empirical_score_vs_matmul"])
    shapes = {(r["d"], r["n"]) for r in result["empirical_score_shapes"]}
    assert shapes == {(d, n) for d in (256, 1024, 3072) for n in (4096, 32768)}
    ratios = [r["ratio"] for r in result["empirical_score_shapes"]]
    assert result["empirical_score_vs_matmul"] == min(ratios)  # the worst case


@pytest.mark.slow
def test_kernel_bench_times_the_local_score_against_the_empirical_one():
    result = run_json("kernels.py", "--only", "local", "--local-batch", "4", "--repeats", "1")
    assert is_number(result["local_score_over_empirical"])
    rows = result["local_score_shapes"]
    assert [(r["side"], r["n"]) for r in rows] == [(8, 256), (14, 2048), (28, 2048)]
    assert all(is_number(r["local_gflops"]) and r["local_gflops"] > 0 for r in rows)


@pytest.mark.slow
def test_sampling_bench_fits_an_exponent_and_a_memory_ratio():
    result = run_json(
        "kernels.py",
        *("--only", "sampling"),
        *("--sample-d", "8", "--sample-n", "4096", "65536", "--sample-repeats", "1"),
    )
    assert is_number(result["sampling_cost_exponent_in_n"])
    assert is_number(result["peak_rss_ratio_65536_vs_4096"])
    assert [r["n"] for r in result["sampling_jobs"]] == [4096, 65536]


@pytest.mark.slow
def test_kernel_bench_times_a_metrics_job_and_shows_its_references():
    result = run_json(
        "kernels.py",
        *("--only", "metrics", "--metrics-n", "300", "--metrics-d", "16"),
        *("--metrics-shape", "8", "5", "3", "20", "4"),
    )
    assert is_number(result["metrics_job_s"]) and result["metrics_job_s"] > 0
    assert 0 < result["metrics_nearest_share"] < 1
    assert result["metrics_job"]["nearest_calls"] == 5 + 1  # once per saved time, once for x̂₀
    refs = result["references"]
    assert "get_num_threads" in refs["torch_parallel_info"] and isinstance(refs["pools"], list)
    assert "empirical_score_vs_matmul" not in result  # --only


@pytest.mark.slow
def test_train_loop_bench_compares_the_pipeline_with_bare_loops():
    result = run_json("train_loop.py", "--steps", "30", "--repeats", "1", "--width", "32")
    keys = ("train_vs_bare_loop", "train_eager_vs_bare_loop", "pipeline_steps_per_s")
    for key in (*keys, "pipeline_vs_matmul", "matmul_bound_vs_bare_loop", "compile_s_first"):
        assert is_number(result[key]) and result[key] > 0, key
    assert 0 <= result["loss_max_rel_diff"] < 1e-4  # compiled and eager: the same loss curve


def _bench_gpu_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_bench_models_are_the_configs_models():
    """bench/gpu.py carries the default MLP and the paper's U-Net as constants (a GPU machine
    may have no YAML reader): they must be the config files' entries."""
    import yaml

    gpu = _bench_gpu_module()
    root = BENCH.parent
    mlp = yaml.safe_load((root / "config" / "config.yaml").read_text())["models"]["mlp"]
    unet = yaml.safe_load((root / "config" / "paper.yaml").read_text())["models"]["unet"]
    for bench_cfg, cfg in ((gpu.MLP, mlp), (gpu.UNET, unet)):
        shared = set(bench_cfg) & set(cfg)
        assert {"arch", "batch_size", "lr", "ema", "embedding"} <= shared
        assert {k: bench_cfg[k] for k in shared} == {k: cfg[k] for k in shared}
    assert gpu.UNET["batch_size"] == 128 and gpu.MLP["batch_size"] == 256


def test_gpu_bench_imports_no_workflow_packages():
    """A GPU machine may hold torch, numpy and scipy only: bench/gpu.py must start without
    Snakemake, zarr or xarray (each blocked here)."""
    code = (
        "import runpy, sys\n"
        "for name in ('snakemake', 'zarr', 'xarray', 'yaml'): sys.modules[name] = None\n"
        f"sys.argv = ['gpu.py', '--help']\nrunpy.run_path({str(BENCH / 'gpu.py')!r}, "
        "run_name='__main__')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and "--size" in proc.stdout, proc.stderr[-2000:]


@pytest.mark.slow
def test_gpu_bench_runs_on_the_cpu_at_a_tiny_size():
    """bench/gpu.py --size tiny on the CPU: every rate is a positive finite number, nothing
    failed, and the checks hold (the U-Net's compiled modes are left out for time: the MLP's
    cover the compiled and bf16 paths of train.train)."""
    result = run_json("gpu.py", "--size", "tiny", "--skip", "unet.compiled", "unet.bf16")
    assert result["errors"] == {}, result["errors"]
    assert set(result["skipped"]) == {"unet.compiled", "unet.bf16"}
    assert result["device"] == "cpu" and result["size"] == "tiny"
    for key in ("matmul_fp32_flops", "matmul_bf16_flops"):
        assert is_number(result[key]) and result[key] > 0
    runs = [result["train"]["mlp"][m] for m in ("eager", "compiled", "bf16")]
    runs.append(result["train"]["unet"]["eager"])
    runs += [result[k] for k in ("empirical_score", "nearest", "sampling")]
    for run in runs:
        for key in ("flops", "vs_matmul"):
            assert is_number(run[key]) and run[key] > 0, (key, run)
    for model in ("mlp", "unet"):
        # forward and backward: about 3× the forward's matrix products
        assert 2.5 < result["train"][model]["fwd_bwd_over_fwd"] < 3.5
    assert result["train"]["mlp"]["eager"]["steps_per_s"] > 0
    assert result["sampling"]["finite"] and result["sampling"]["steps_per_s"] > 0
    clones = result["clones"]  # the growing batch is the one-branch runs, to round-off
    assert clones["finite"] and clones["batch_vs_serial"] > 0
    assert clones["max_abs_diff"] < 1e-4
    assert 0 < result["empirical_score"]["rel_err_small_t"] < 1e-4
    assert result["checks"]["ieee_fp32"] is True
    assert result["checks"]["log_window_mean_max_rel_diff"] < 1e-6
