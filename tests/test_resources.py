"""The cost model behind each heavy rule's mem_mb, runtime and device (diffregimes.resources),
and its table in a dry run of the paper-scale grid."""

from __future__ import annotations

import re

import pytest
from workflow_helpers import ROOT, snakemake

from diffregimes import resources


def test_sample_cost_counts_the_main_run_and_one_new_copy_per_clone():
    time_cfg = {"steps": 100}
    sampler = {"name": "euler_maruyama", "samples": 64}
    cloning = {"pairs": 256}
    cost = resources.sample_cost(32, 1000, "empirical", time_cfg, sampler, cloning, 10, 500)
    evals = 256 * 100 + 1 * 256 * 500  # max(samples, pairs) × steps + copies × pairs × Σ steps
    assert cost.flops32 == pytest.approx(evals * 4 * 1000 * 32)
    assert cost.elements == pytest.approx(evals * 32)
    ddim = resources.sample_cost(
        32, 1000, "empirical", time_cfg, {**sampler, "name": "ddim"}, cloning, 10, 500
    )
    assert ddim.elements == pytest.approx((256 * 100 + 2 * 256 * 500) * 32)
    assert (
        resources.sample_cost(32, 1000, "population", time_cfg, sampler, cloning, 10, 500).flops32
        == 0
    )


def test_theory_cost_and_the_margins():
    cost = resources.theory_cost(2048, 65536, 250, 8192, 2**28)
    # the Monte Carlo of f^e: 2 n d per sample and time, in float64 (5.5e14 FLOP): hours on a
    # CPU thread, so the theory rule asks for a GPU (gpu_of in common.smk: > 2 CPU-hours)
    assert cost.flops64 == pytest.approx(2 * 250 * 8192 * 65536 * 2048, rel=0.01)
    assert cost.seconds(gpu=False) > 2 * 3600 and cost.seconds(gpu=True) < 600
    assert cost.mem_mb() == pytest.approx((1.5 * cost.bytes + 2**30) / 2**20, abs=1)
    assert resources.runtime_min(60) == 12


def test_network_flops_of_an_mlp():
    arch = {"arch": "mlp", "width": 128, "depth": 3, "embedding": 32}
    assert resources.network_flops(arch, 16) == 2 * (2 * 16 * 128 + 3 * 2 * 128**2 + 32 * 128)


def test_paper_dry_run_prints_the_estimate_per_rule(tmp_path):
    out = snakemake(tmp_path, "-n", "--quiet", "rules", config=ROOT / "config" / "paper.yaml")
    text = out.stdout + out.stderr
    assert "Estimated cost of the planned jobs" in text
    rows = dict(re.findall(r"^\s+(sample|theory|train|metrics)\s+(\d+)\s", text, flags=re.M))
    assert set(rows) == {"sample", "theory", "train", "metrics"}, text[-2000:]
    assert int(rows["sample"]) == int(rows["metrics"]) > 500
