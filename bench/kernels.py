"""Benchmark: the distance kernel (neighbours.py) against the machine's limits (issues 7, 16).

Measures, in one run on this machine, and prints tables and one JSON line:
- references: the BLAS, oneDNN and thread configuration of torch and (threadpoolctl) of faiss,
  so that a ratio cannot look good because its reference ran slowly;
- empirical_score_vs_matmul: FLOP rate of one EmpiricalScore call (4·B·n·d flops: x·aᵀ and
  weights·a) over torch.matmul's rate on the same two products (dense Gaussian operands), worst
  case over d ∈ {256, 1024, 3072} × n ∈ {4096, 32768} (goal ≥ 0.9);
- local_score_over_empirical: time of one LocalScore call (3×3 patches) over one EmpiricalScore
  call on the same images (side 8, 14, 28), worst case, with the local score's GFLOP/s (its
  cost per cell: P² more products than the empirical score's);
- neighbours_vs_faiss: time of exact top-2 `neighbours.nearest` over faiss-cpu's exact
  IndexFlatL2 search on the same float32 data, same threads, worst case (goal ≤ 1.0), with the
  indices checked identical; beside it the GFLOP/s of faiss, of torch.matmul and of torch's
  oneDNN product on x·aᵀ, and a warning when a reference runs below half the best of them;
- metrics_job_s, metrics_nearest_share: one metrics job (run_metrics.run_metrics) at
  n = 20 000, d = 1024 with the paper's trajectory counts, and the share of it in `nearest`;
- peak_rss_ratio_65536_vs_4096 (run first, while this process is small): peak RSS of a
  sampling job (bench/sample_job.py, own process)
  at n = 65536 over n = 4096, raw and less each job's training set n·d·4 bytes (goal ≈ 1);
- sampling_cost_exponent_in_n: log-log slope of the sampling job's wall time against n at fixed d
  (goal ≈ 1);
- dry_run_10k_jobs_s: `snakemake -n` on a generated ~10 000-job grid, best of
  `--dry-run-repeats` (goal ≤ 30 s).
Reference and kernel are timed interleaved, best of `--repeats`, so that a loaded machine
penalises both alike. `--only score,faiss,metrics` runs just those parts.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr
import yaml

from diffregimes import neighbours
from diffregimes.process import delta
from diffregimes.scores import EmpiricalScore, LocalScore

ROOT = Path(__file__).resolve().parent.parent
SHAPES = [(d, n) for d in (256, 1024, 3072) for n in (4096, 32768)]
PARTS = ("sampling", "score", "local", "faiss", "metrics", "dry_run")
LOCAL_SHAPES = [(8, 256), (14, 2048), (28, 2048)]  # (side, n): digits, Fashion-MNIST 14², 28²
# A reference below this fraction of the best product rate measured beside it is flagged.
SLOW_REFERENCE = 0.5


def best_times(fns, repeats):
    """Best wall time of each function, calls interleaved, after one warm-up call each."""
    for f in fns:
        f()
    best = [math.inf] * len(fns)
    for _ in range(repeats):
        for k, f in enumerate(fns):
            start = time.perf_counter()
            f()
            best[k] = min(best[k], time.perf_counter() - start)
    return best


def noised_points(train, batch, t, gen):
    """Points of the forward process at time t from random training points (the sampler's x)."""
    idx = torch.randint(train.shape[0], (batch,), generator=gen)
    z = torch.randn(batch, train.shape[1], generator=gen)
    return train[idx] * math.exp(-t) + math.sqrt(delta(t)) * z


def references():
    """The BLAS, oneDNN and thread configuration behind torch.matmul, the kernels and faiss."""
    parallel = torch.__config__.parallel_info()
    build = [
        line.strip(" -")
        for line in torch.__config__.show().splitlines()
        if any(key in line for key in ("Math Kernel", "MKL-DNN", "OpenBLAS", "CPU capability"))
    ]
    build += re.findall(r"BLAS_INFO=\w+", torch.__config__.show())
    print("torch parallel_info:")
    for line in parallel.strip().splitlines():
        print(f"  {line.strip()}")
    print("torch build: " + "; ".join(build))
    onednn = neighbours._onednn_linear() is not None
    print(f"  oneDNN fp32 product (neighbours.nearest's CPU backend) usable: {onednn}")
    pools = []
    try:
        import faiss  # noqa: F401  (loaded, so that threadpoolctl lists its libraries)
        import threadpoolctl

        pools = threadpoolctl.threadpool_info()
    except ImportError as err:
        print(f"  threadpoolctl/faiss not importable ({err.name}): faiss's BLAS not shown")
    print("thread pools (threadpoolctl.threadpool_info):")
    for pool in pools:
        owner = next(
            (p for p in ("faiss", "torch", "numpy", "scipy") if p in pool["filepath"]), "?"
        )
        extra = ", ".join(
            f"{key} {pool[key]}"
            for key in ("version", "threading_layer", "architecture")
            if pool.get(key)
        )
        print(
            f"  {owner:6s} {pool['internal_api']:9s} {pool['num_threads']} threads"
            f"{', ' + extra if extra else ''} ({Path(pool['filepath']).name})"
        )
    return dict(torch_parallel_info=parallel, torch_build=build, onednn=onednn, pools=pools)


def warn_if_slow(name, rate, against, against_rate):
    """Print a warning when a reference runs below SLOW_REFERENCE of a product rate beside it."""
    if against_rate > 0 and rate < SLOW_REFERENCE * against_rate:
        print(
            f"  WARNING: {name} runs at {rate:.0f} GFLOP/s, {rate / against_rate:.2f} of "
            f"{against} ({against_rate:.0f} GFLOP/s): a ratio against it flatters the kernel"
        )
        return True
    return False


def onednn_product(a, b_t):
    """a·b_tᵀ by torch's oneDNN product, or None where it is not usable."""
    op = neighbours._onednn_linear()
    if op is None:
        return None
    return lambda: op(a, b_t, None, "none", [], "")


def bench_score(batch, repeats, t):
    gen = torch.Generator().manual_seed(0)
    rows = []
    for d, n in SHAPES:
        train = torch.randn(n, d, generator=gen)
        x = noised_points(train, batch, t, gen)
        weights = torch.randn(batch, n, generator=gen)
        score = EmpiricalScore(train)

        def reference(x=x, train=train, weights=weights):
            return torch.matmul(x, train.T), torch.matmul(weights, train)

        fns = [reference, lambda s=score, x=x: s(x, t)]
        first, second = onednn_product(x, train), onednn_product(weights, train.T.contiguous())
        if first is not None:
            fns.append(lambda f=first, g=second: (f(), g()))
        times = best_times(fns, repeats)
        flops = 4 * batch * n * d
        row = dict(
            d=d,
            n=n,
            batch=batch,
            matmul_gflops=flops / times[0] / 1e9,
            score_gflops=flops / times[1] / 1e9,
            onednn_gflops=flops / times[2] / 1e9 if len(times) > 2 else None,
            ratio=times[0] / times[1],
        )
        rows.append(row)
        dnn = "" if row["onednn_gflops"] is None else f"  (oneDNN {row['onednn_gflops']:6.1f})"
        if row["onednn_gflops"]:
            row["vs_onednn"] = row["score_gflops"] / row["onednn_gflops"]
        print(
            f"  d={d:5d} n={n:6d}  matmul {row['matmul_gflops']:6.1f} GFLOP/s{dnn}  "
            f"score {row['score_gflops']:6.1f} GFLOP/s  ratio {row['ratio']:.2f}"
            + (f" (vs oneDNN {row['vs_onednn']:.2f})" if "vs_onednn" in row else ""),
            flush=True,
        )
        if row["onednn_gflops"]:
            row["matmul_slow"] = warn_if_slow(
                "torch.matmul", row["matmul_gflops"], "torch's oneDNN product", row["onednn_gflops"]
            )
    return rows


def bench_local(batch, repeats, t, patch, shapes=LOCAL_SHAPES):
    """One LocalScore call (grayscale side × side, P × P patches) against one EmpiricalScore
    call on the same data: the cost ratio (P² more products in theory) and the local score's
    own FLOP rate (4·B·n·side²·P² flops) and exp rate (B·n·side² softmax terms: with P² = 9
    inner products per term, the exponentials, not the products, set its cost)."""
    gen = torch.Generator().manual_seed(0)
    rows = []
    for side, n in shapes:
        train = torch.rand(n, side * side, generator=gen)
        x = noised_points(train, batch, t, gen)
        local, empirical = LocalScore(train, (1, side, side), patch), EmpiricalScore(train)
        fns = [lambda s=empirical, x=x: s(x, t), lambda s=local, x=x: s(x, t)]
        times = best_times(fns, repeats)
        flops = 4 * batch * n * side * side * patch * patch
        row = dict(
            side=side,
            n=n,
            batch=batch,
            patch=patch,
            local_s=times[1],
            empirical_s=times[0],
            local_over_empirical=times[1] / times[0],
            local_gflops=flops / times[1] / 1e9,
            # one exp per (query, image, pixel): n·side² of them per query, the bound here
            local_gexp_per_s=batch * n * side * side / times[1] / 1e9,
        )
        rows.append(row)
        ratio, rate = row["local_over_empirical"], row["local_gflops"]
        print(
            f"  side={side:3d} n={n:5d}  local {times[1] * 1e3:8.1f} ms ({rate:6.1f} GFLOP/s, "
            f"{row['local_gexp_per_s']:.2f} Gexp/s)  "
            f"empirical {times[0] * 1e3:7.1f} ms  ratio {ratio:.1f} (P² = {patch * patch})",
            flush=True,
        )
    return rows


def bench_faiss(queries, repeats):
    try:
        import faiss
    except ImportError:
        print("  faiss-cpu is not installed (pip install -e '.[bench]'): skipped")
        return []
    faiss.omp_set_num_threads(torch.get_num_threads())
    gen = torch.Generator().manual_seed(1)
    rows = []
    for d, n in SHAPES:
        train = torch.randn(n, d, generator=gen)
        x = noised_points(train, queries, 0.5, gen)
        index = faiss.IndexFlatL2(d)
        index.add(train.numpy())
        xq = x.numpy()
        fns = [
            lambda i=index, q=xq: i.search(q, 2),
            lambda x=x, a=train: neighbours.nearest(x, a, 2),
            lambda x=x, a=train: torch.matmul(x, a.T),
        ]
        product = onednn_product(x, train)
        if product is not None:
            fns.append(product)
        times = best_times(fns, repeats)
        t_faiss, t_ours = times[:2]
        rates = [2 * queries * n * d / t / 1e9 for t in times]
        _, fi = index.search(xq, 2)
        _, ours = neighbours.nearest(x, train, 2)
        ours = ours.numpy()
        mismatch = int((fi != ours).any(1).sum())
        exact_ok = True
        if mismatch:  # who is right? float64 direct distances of both answers
            rows_bad = np.nonzero((fi != ours).any(1))[0]
            xd, ad = x.double()[rows_bad], train.double()
            for mine, theirs, q in zip(ours[rows_bad], fi[rows_bad], xd, strict=True):
                dm = ((ad[mine] - q) ** 2).sum(1)
                df = ((ad[theirs] - q) ** 2).sum(1)
                exact_ok &= bool((dm <= df).all())
        row = dict(
            d=d,
            n=n,
            queries=queries,
            faiss_s=t_faiss,
            nearest_s=t_ours,
            ratio=t_ours / t_faiss,
            faiss_gflops=rates[0],
            nearest_gflops=rates[1],
            matmul_gflops=rates[2],
            onednn_gflops=rates[3] if len(rates) > 3 else None,
            index_mismatches=mismatch,
            nearest_exact_where_different=exact_ok,
        )
        rows.append(row)
        dnn = "" if row["onednn_gflops"] is None else f", oneDNN {row['onednn_gflops']:.0f}"
        print(
            f"  d={d:5d} n={n:6d}  faiss {t_faiss * 1e3:8.1f} ms  nearest {t_ours * 1e3:8.1f} ms"
            f"  ratio {t_ours / t_faiss:.2f}  rows with different indices {mismatch}\n"
            f"  {'':16s}GFLOP/s on x·aᵀ: faiss {rates[0]:.0f}, nearest {rates[1]:.0f}, "
            f"torch.matmul {rates[2]:.0f}{dnn}",
            flush=True,
        )
        row["faiss_slow"] = warn_if_slow("faiss", rates[0], "torch.matmul", rates[2])
    return rows


def metrics_inputs(n, d, samples, saved, clone_times, pairs, stored, seed=0):
    """A GMM training set, its theory store and a trajectory store of the shape a sample job
    writes (states at `saved` times, x̂₀, the clones' nearest points and classes for every pair
    and the end points of `stored` pairs), the states drawn from the forward process."""
    from diffregimes import data
    from diffregimes.process import delta as delta_t
    from diffregimes.theory_store import theory_store

    spec = {"kind": "gmm", "mu": 1.0, "sigma": 1.0, "direction": "ones", "test_size": 1}
    train, _ = data.make_synthetic(spec, "gmm", d, n, seed)
    a = torch.as_tensor(train["x"].values, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    times = np.linspace(10.0, 0.01, saved)
    mu = torch.randint(n, (samples,), generator=gen)
    x = torch.stack(
        [
            a[mu] * math.exp(-t) + math.sqrt(delta_t(t)) * torch.randn(samples, d, generator=gen)
            for t in times
        ],
        dim=1,
    )
    x_hat = a[mu] + 0.1 * torch.randn(samples, d, generator=gen)
    clone_t = np.linspace(10.0, 1.0, clone_times)
    shape = (clone_times, pairs, 2)
    traj = xr.Dataset(
        {
            "x": (("sample", "time", "feature"), x.numpy()),
            "x_hat": (("sample", "feature"), x_hat.numpy()),
            "x_hat_clone": (
                ("clone_time", "pair", "copy", "feature"),
                torch.randn(clone_times, stored, 2, d, generator=gen).numpy(),
            ),
            "clone_nearest": (
                ("clone_time", "clone_pair", "copy"),
                torch.randint(n, shape, generator=gen).numpy(),
            ),
            "clone_class": (
                ("clone_time", "clone_pair", "copy"),
                torch.randint(2, shape, generator=gen).numpy().astype(np.int8),
            ),
        },
        coords={"time": times, "clone_time": clone_t, "sample": np.arange(samples)},
    )
    theory = theory_store(train, times, 2, seed, 256 * 2**20)
    return traj, train, theory


def bench_metrics(n, d, samples, saved, clone_times, pairs, stored):
    """Wall time of one run_metrics call and the part of it spent in `nearest`."""
    from diffregimes import run_metrics as rm

    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["metrics"]
    traj, train, theory = metrics_inputs(n, d, samples, saved, clone_times, pairs, stored)
    spent, calls, original = [0.0], [0], rm.nearest

    def timed(*args, **kwargs):
        start = time.perf_counter()
        out = original(*args, **kwargs)
        spent[0] += time.perf_counter() - start
        calls[0] += 1
        return out

    rm.nearest = timed
    try:
        start = time.perf_counter()
        rm.run_metrics(traj, train, theory, cfg, 0)
        wall = time.perf_counter() - start
    finally:
        rm.nearest = original
    row = dict(
        n=n,
        d=d,
        samples=samples,
        saved_times=saved,
        clone_times=clone_times,
        pairs=pairs,
        wall_s=wall,
        nearest_s=spent[0],
        nearest_calls=calls[0],
        nearest_share=spent[0] / wall,
    )
    print(
        f"  n={n} d={d}: {samples} trajectories × {saved} saved times, {clone_times} clone "
        f"times × {pairs} pairs: {wall:.2f} s, of which nearest {spent[0]:.2f} s "
        f"({100 * row['nearest_share']:.0f} %, {calls[0]} calls)",
        flush=True,
    )
    return row


def run_sample_job(n, d, threads):
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "sample_job.py"), "--n", str(n), "--d", str(d)]
        + ["--threads", str(threads)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_sampling(sizes, d, repeats, threads):
    jobs = {n: [] for n in sizes}
    for _ in range(repeats):
        for n in sizes:
            jobs[n].append(run_sample_job(n, d, threads))
    rows = []
    for n in sizes:
        runs = jobs[n]
        rows.append(
            dict(
                n=n,
                d=d,
                wall_s=min(r["wall_s"] for r in runs),
                max_rss_mb=max(r["max_rss_bytes"] for r in runs) / 2**20,
                base_rss_mb=min(r["base_rss_bytes"] for r in runs) / 2**20,
                train_mb=runs[0]["train_bytes"] / 2**20,
            )
        )
        r = rows[-1]
        print(
            f"  n={n:6d} d={d}  wall {r['wall_s']:7.2f} s  peak RSS {r['max_rss_mb']:7.1f} MB"
            f"  (interpreter+torch {r['base_rss_mb']:.1f} MB, training set {r['train_mb']:.1f} MB)",
            flush=True,
        )
    return rows


def grid_config(target_jobs=10_000):
    """The default config with a gmm grid of about `target_jobs` jobs: 13 jobs per
    (d, n, seed) cell with scores population, empirical and mlp, plus 4 summary jobs."""
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    ds, seeds = [8, 16, 32, 64], [0, 1, 2, 3]
    cells = (target_jobs - 4) // 13
    ns = [64 + 16 * i for i in range(cells // (len(ds) * len(seeds)))]
    cfg["seeds"] = seeds
    cfg["datasets"] = {
        "gmm": dict(
            kind="gmm", mu=1.0, sigma=1.0, d=ds, n=ns, scores=["population", "empirical", "mlp"]
        )
    }
    return cfg


def dry_run(cfg):
    """Wall time and job count of `snakemake -n --quiet rules` on `cfg` in a fresh folder. The
    quiet flag only drops the printed job stanzas: every job is still built and passed through
    the dry-run executor (the job stats table counts them all)."""
    with tempfile.TemporaryDirectory() as folder:
        cfg_path = Path(folder) / "grid.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg))
        cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile")]
        cmd += ["--directory", folder, "--configfile", str(cfg_path), "-n", "--quiet", "rules"]
        start = time.perf_counter()
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=folder)
        wall = time.perf_counter() - start
    total = [line.split()[-1] for line in out.stdout.splitlines() if line.startswith("total")]
    return wall, int(total[0]) if total else -1


def bench_dry_run(repeats):
    """The ~10 000-job grid, best of `repeats` calls (as for the kernels: a shared machine's
    noise only ever adds time), and one cell of it for the fixed cost of a snakemake call
    (imports, plugin registration, parsing the Snakefile), which does not grow with the grid."""
    one = grid_config()
    one["seeds"] = [0]
    one["datasets"]["gmm"].update(d=[8], n=[64])
    start_wall, start_jobs = dry_run(one)
    walls = []
    for _ in range(repeats):
        wall, jobs = dry_run(grid_config())
        walls.append(wall)
    wall = min(walls)
    per_job = (wall - start_wall) / max(jobs - start_jobs, 1)
    runs = ", ".join(f"{w:.1f}" for w in walls)
    print(f"  snakemake -n on a {jobs}-job grid: {wall:.1f} s (best of {repeats}: {runs} s)")
    print(
        f"  on a {start_jobs}-job cell: {start_wall:.1f} s (fixed cost); "
        f"{per_job * 1e3:.2f} ms per further job"
    )
    return wall, jobs, start_wall


def slope(xs, ys):
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--local-batch", type=int, default=128)
    parser.add_argument("--local-patch", type=int, default=3)
    parser.add_argument("--faiss-queries", type=int, default=512)
    parser.add_argument("--faiss-repeats", type=int, default=2)
    parser.add_argument("--sample-d", type=int, default=128)
    parser.add_argument("--sample-n", type=int, nargs="+", default=[4096, 16384, 65536])
    parser.add_argument("--sample-repeats", type=int, default=2)
    parser.add_argument("--dry-run-repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    parser.add_argument("--metrics-n", type=int, default=20_000)
    parser.add_argument("--metrics-d", type=int, default=1024)
    parser.add_argument(
        "--metrics-shape",
        type=int,
        nargs=5,
        default=[256, 112, 19, 10_000, 64],
        metavar=("SAMPLES", "SAVED", "CLONE_TIMES", "PAIRS", "STORED"),
        help="trajectory store of the metrics job (default: the paper config's GMM cells)",
    )
    parser.add_argument("--skip", nargs="*", default=[], help=" ".join(PARTS))
    parser.add_argument(
        "--only", default="", help=f"comma-separated parts to run ({','.join(PARTS)}); default all"
    )
    args = parser.parse_args()
    only = {p for p in args.only.split(",") if p}
    unknown = (only | set(args.skip)) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}: choose from {', '.join(PARTS)}")
    skip = set(args.skip) | (set(PARTS) - only if only else set())
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"device cpu ({platform.processor() or platform.machine()}, "
        f"{torch.backends.cpu.get_cpu_capability()}), {threads} threads, torch "
        f"{torch.__version__}, float32; {os.cpu_count()} CPUs, load average {load:.1f} at start"
    )
    if load > (os.cpu_count() or 1):
        print("  note: the machine is busy with other processes; ratios are interleaved, but the")
        print("  absolute rates, and 2-thread kernels with many short ops, suffer most")
    result = {"device": "cpu", "threads": threads, "load_average_at_start": load}
    result["references"] = references()

    if "sampling" not in skip:
        sizes = sorted(set(args.sample_n) | {4096, 65536})
        print(
            f"\nSampling job with the empirical score (bench/sample_job.py, own process each: "
            f"256 samples, 40 Euler–Maruyama steps, 2 clone times × 64 pairs; d={args.sample_d})"
        )
        rows = bench_sampling(sizes, args.sample_d, args.sample_repeats, threads)
        by_n = {r["n"]: r for r in rows}
        small, large = by_n[4096], by_n[65536]
        raw = large["max_rss_mb"] / small["max_rss_mb"]
        net = (large["max_rss_mb"] - large["train_mb"]) / (small["max_rss_mb"] - small["train_mb"])
        fit = [r for r in rows if r["n"] in args.sample_n]
        exponent = slope([r["n"] for r in fit], [r["wall_s"] for r in fit])
        print(f"  peak RSS ratio n=65536/4096: raw {raw:.3f}, less the training sets {net:.3f}")
        print(f"  wall time ∝ n^{exponent:.2f} over n = {[r['n'] for r in fit]} (goal ≈ 1)")
        result["peak_rss_ratio_65536_vs_4096"] = raw
        result["peak_rss_ratio_65536_vs_4096_less_train"] = net
        result["sampling_cost_exponent_in_n"] = exponent
        result["sampling_jobs"] = rows

    if "score" not in skip:
        print(
            f"\nEmpiricalScore call vs torch.matmul (x·aᵀ (B×d)(d×n) + w·a (B×n)(n×d), "
            f"B={args.batch}, t=0.5, best of {args.repeats}; goal ≥ 0.9)"
        )
        rows = bench_score(args.batch, args.repeats, 0.5)
        result["empirical_score_vs_matmul"] = min(r["ratio"] for r in rows)
        result["empirical_score_shapes"] = rows

    if "local" not in skip:
        print(
            f"\nLocalScore (Kamb & Ganguli, {args.local_patch}×{args.local_patch} patches) vs "
            f"EmpiricalScore, one call, B={args.local_batch}, t=0.5, best of {args.repeats}"
        )
        rows = bench_local(args.local_batch, args.repeats, 0.5, args.local_patch)
        result["local_score_over_empirical"] = max(r["local_over_empirical"] for r in rows)
        result["local_score_shapes"] = rows

    if "faiss" not in skip:
        print(
            f"\nExact top-2 neighbours.nearest vs faiss IndexFlatL2.search ({args.faiss_queries} "
            f"queries, float32, best of {args.faiss_repeats}; goal ≤ 1.0, identical indices)"
        )
        rows = bench_faiss(args.faiss_queries, args.faiss_repeats)
        if rows:
            result["neighbours_vs_faiss"] = max(r["ratio"] for r in rows)
            result["neighbours_identical_indices"] = all(r["index_mismatches"] == 0 for r in rows)
            result["neighbours_shapes"] = rows
        else:
            result["neighbours_vs_faiss"] = None

    if "metrics" not in skip:
        print("\nOne metrics job (run_metrics.run_metrics, GMM data, synthetic trajectories)")
        row = bench_metrics(args.metrics_n, args.metrics_d, *args.metrics_shape)
        result["metrics_job_s"] = row["wall_s"]
        result["metrics_nearest_share"] = row["nearest_share"]
        result["metrics_job"] = row

    if "dry_run" not in skip:
        print("\nsnakemake -n --quiet rules on a generated gmm grid (goal ≤ 30 s)")
        wall, jobs, start_wall = bench_dry_run(args.dry_run_repeats)
        result["dry_run_10k_jobs_s"] = wall
        result["dry_run_jobs"] = jobs
        result["dry_run_one_cell_s"] = start_wall

    print(json.dumps(result))


if __name__ == "__main__":
    main()
