"""One sampling job with the exact empirical score, run in its own process by bench/kernels.py.

Draws n training points in d dimensions, runs `generate.sample_trajectories` (the sample rule's
computation, without the store write) and prints one JSON line: the wall time of the sampling
call, the process's peak resident memory (VmHWM, else `resource.getrusage` ru_maxrss) and
the RSS before the
training set was drawn (the interpreter and torch alone).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch

from diffregimes import generate, process
from diffregimes.scores import EmpiricalScore


def max_rss_bytes() -> int:
    """Peak RSS of this process. ru_maxrss (kilobytes on Linux) survives exec, so a job started
    by a large parent reports the parent's peak; VmHWM in /proc/self/status is this address
    space's own high-water mark, used where it exists."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--d", type=int, required=True)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--clone-times", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--budget-mb", type=float, default=256)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    base_rss = max_rss_bytes()
    train = torch.randn(args.n, args.d, generator=torch.Generator().manual_seed(0))
    score = EmpiricalScore(train, budget_bytes=int(args.budget_mb * 2**20))
    time_cfg = {"T": 6.0, "t_min": 1e-3, "steps": args.steps, "spacing": "log_snr", "saved": 6}
    sampler_cfg = {"name": "euler_maruyama", "samples": args.samples}
    clone_cfg = {"times": args.clone_times, "pairs": args.pairs, "t_lo": 0.05}
    start = time.perf_counter()
    ds = generate.sample_trajectories(
        score, args.d, process.TimeGrid.from_settings(time_cfg), sampler_cfg, clone_cfg, seed=0
    )
    wall = time.perf_counter() - start
    assert bool(torch.isfinite(torch.as_tensor(ds["x"].values)).all())
    print(
        json.dumps(
            {
                "n": args.n,
                "d": args.d,
                "wall_s": wall,
                "max_rss_bytes": max_rss_bytes(),
                "base_rss_bytes": base_rss,
                "train_bytes": train.numel() * train.element_size(),
                "threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
