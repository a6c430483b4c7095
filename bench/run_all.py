"""`make bench`: run bench/kernels.py and bench/train_loop.py, echo their tables, and print one
merged JSON object (the keys of issue 7) as the last line."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
KEYS = (
    "empirical_score_vs_matmul",
    "neighbours_vs_faiss",
    "peak_rss_ratio_65536_vs_4096",
    "sampling_cost_exponent_in_n",
    "dry_run_10k_jobs_s",
    "train_vs_bare_loop",
)


def run(script: str, *args: str) -> dict:
    """Run one benchmark, echo its lines as they come (a run takes minutes) but the JSON line,
    return that JSON line parsed."""
    print(f"== bench/{script} {' '.join(args)}".rstrip(), flush=True)
    cmd = [sys.executable, "-u", str(HERE / script), *args]  # -u: unbuffered
    last = None
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, bufsize=1) as proc:
        for line in proc.stdout:
            if last is not None:
                print(last, end="", flush=True)
            last = line
    if proc.returncode:
        raise SystemExit(f"bench/{script} failed with exit code {proc.returncode}")
    return json.loads(last)


def main():
    start = time.perf_counter()
    kernels = run("kernels.py", *sys.argv[1:])
    print()
    train = run("train_loop.py")
    merged = {key: None for key in KEYS}
    merged.update(kernels)
    merged["train_vs_bare_loop"] = train.pop("train_vs_bare_loop")
    merged["train_loop"] = train
    merged["bench_wall_s"] = time.perf_counter() - start
    print("\nSummary (goals: score/matmul ≥ 0.9, nearest/faiss ≤ 1.0, RSS ratio ≈ 1, exponent ≈ 1,")
    print("dry run ≤ 30 s, train/bare ≥ 2.5; WARNING lines above flag a slow reference)")
    for key in KEYS:
        value = merged[key]
        print(f"  {key:<32}{'n/a' if value is None else f'{value:.3f}':>10}")
    print(json.dumps(merged))


if __name__ == "__main__":
    main()
