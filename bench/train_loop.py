"""Benchmark: the training loop's steps/s against a bare eager torch loop on the same model.

The bare loop is the least an eager DSM step can do (draw a batch, noise it, forward, MSE,
backward, AdamW step). The pipeline's loop adds time sampling in log-SNR, warm-up, gradient
clipping, EMA, the NaN check, logging and checkpoints. It runs twice: eager (`compile: false`)
and compiled (`compile: true`: on the CPU the whole step, forward to EMA, as two Inductor
graphs; train._CompiledCPUStep). All three run interleaved, on the same device, thread count,
model (the default MLP: width 128, depth 3, embedding 32, batch 256) and data; the best of
`--repeats` is kept, so a loaded machine penalises all alike. `train_vs_bare_loop` is the
compiled pipeline against the bare loop (goal ≥ 2.5). The compiled rate leaves out the compile
(`compile_s`, reported on its own: the first run pays Inductor's cold cache unless an earlier
process filled it, the later ones only Dynamo's tracing). Also printed: the training step's
achieved FLOP rate (forward and backward matrix products, counted with FlopCounterMode) as a
fraction of the same run's fp32 matmul rate, the ceiling that rate puts on any loop of this
model against the bare one (`matmul_bound_vs_bare_loop`: all the step's FLOPs at the 2048²
product's rate), and the largest relative difference between the compiled and eager loss
curves (same seed, logged window means). Prints a table and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from diffregimes import nets, train
from diffregimes.device import pick_device


def bare_loop(net, data, steps, batch, lr, device, foreach=None):
    opt = torch.optim.AdamW(net.parameters(), lr=lr, foreach=foreach)
    gen = torch.Generator(device=device).manual_seed(0)
    n, d = data.shape
    for _ in range(steps):
        idx = torch.randint(0, n, (batch,), generator=gen, device=device)
        t = torch.rand(batch, generator=gen, device=device) * 3 + 1e-3
        z = torch.randn(batch, d, generator=gen, device=device)
        x = data[idx] * torch.exp(-t)[:, None] + torch.sqrt(-torch.expm1(-2 * t))[:, None] * z
        loss = (net(x, t) - z).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_flops(cfg, d, batch, device) -> float:
    """FLOP of one training step's forward and backward (matrix products), counted."""
    net = nets.build_network(cfg, d).to(device)
    x = torch.randn(batch, d, device=device)
    t = torch.rand(batch, device=device) + 0.01
    with FlopCounterMode(display=False) as counter:
        (net(x, t) - x).pow(2).mean().backward()
    return float(counter.get_total_flops())


def matmul_rate(device, size=2048, reps=5) -> float:
    """fp32 FLOP/s of a square matrix product (one run of `reps` products)."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    a @ b
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2.0 * size**3 * reps / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=int, default=32)
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--embedding", type=int, default=32)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device, why = pick_device()
    cfg = dict(
        arch="mlp",
        width=args.width,
        depth=3,
        embedding=args.embedding,
        steps=args.steps,
        batch_size=args.batch,
        lr=1e-3,
        weight_decay=0.0,
        warmup=100,
        ema=0.999,
        grad_clip=1.0,
        checkpoints=10,
        log_every=100,
    )
    time_cfg = {"T": 6.0, "t_min": 1e-3}
    data = torch.randn(args.n, args.d, device=device)
    flops = step_flops(cfg, args.d, args.batch, device)
    rates = {"bare": [], "pipeline_eager": [], "pipeline": [], "matmul": []}
    compile_s, loss_diff = [], 0.0
    for rep in range(args.repeats):  # interleaved, best of each: robust to a noisy machine
        rates["matmul"].append(matmul_rate(device))
        torch.manual_seed(rep)
        net = nets.build_network(cfg, args.d).to(device)
        start = time.perf_counter()
        bare_loop(net, data, args.steps, args.batch, cfg["lr"], device)
        rates["bare"].append(args.steps / (time.perf_counter() - start))
        losses = {}
        for key, compile_ in (("pipeline_eager", False), ("pipeline", True)):
            torch.manual_seed(rep)
            net = nets.build_network(cfg, args.d)
            with tempfile.TemporaryDirectory() as folder:
                run_cfg = {**cfg, "compile": compile_}
                start = time.perf_counter()
                res = train.train(net, data, run_cfg, time_cfg, rep, folder, "bench", device)
                wall = time.perf_counter() - start - res["compile_s"]
            rates[key].append(args.steps / wall)
            losses[key] = np.asarray(res["history"]["loss"])
            if compile_:
                compile_s.append(res["compile_s"])
        rel = np.abs(losses["pipeline"] - losses["pipeline_eager"]) / losses["pipeline_eager"]
        loss_diff = max(loss_diff, float(rel.max()))
    best = {k: max(v) for k, v in rates.items()}
    result = {
        "train_vs_bare_loop": best["pipeline"] / best["bare"],
        "train_eager_vs_bare_loop": best["pipeline_eager"] / best["bare"],
        "pipeline_steps_per_s": best["pipeline"],
        "pipeline_eager_steps_per_s": best["pipeline_eager"],
        "bare_steps_per_s": best["bare"],
        "flops_per_step": flops,
        "matmul_fp32_flops": best["matmul"],
        "pipeline_vs_matmul": best["pipeline"] * flops / best["matmul"],
        "pipeline_eager_vs_matmul": best["pipeline_eager"] * flops / best["matmul"],
        "bare_vs_matmul": best["bare"] * flops / best["matmul"],
        # the most any fp32 loop of this model could reach against the bare one on this machine:
        # every FLOP of the step at the large-matmul rate, nothing else
        "matmul_bound_vs_bare_loop": best["matmul"] / (best["bare"] * flops),
        "loss_max_rel_diff": loss_diff,
        "compile_s_first": compile_s[0],
        "compile_s_warm": min(compile_s[1:]) if len(compile_s) > 1 else compile_s[0],
        "device": str(device),
        "threads": torch.get_num_threads(),
        "shape": {
            "d": args.d,
            "n": args.n,
            "width": args.width,
            "embedding": args.embedding,
            "batch": args.batch,
        },
    }
    print(
        f"device {device} ({why}), {torch.get_num_threads()} threads, MLP width {args.width}, "
        f"embedding {args.embedding}, batch {args.batch}, d {args.d}, "
        f"{args.steps} steps × {args.repeats}; {flops / 1e6:.1f} MFLOP a step, "
        f"fp32 matmul {best['matmul'] / 1e9:.1f} GFLOP/s"
    )
    print(f"{'loop':<16}{'steps/s (best)':>16}{'of matmul':>12}")
    for key in ("bare", "pipeline_eager", "pipeline"):
        print(f"{key:<16}{best[key]:>16.1f}{best[key] * flops / best['matmul']:>12.3f}")
    print(
        f"ratio compiled pipeline/bare: {result['train_vs_bare_loop']:.3f} (goal ≥ 2.5; the "
        f"matmul-bound ceiling is {result['matmul_bound_vs_bare_loop']:.2f})"
    )
    print(f"ratio eager pipeline/bare: {result['train_eager_vs_bare_loop']:.3f}")
    print(
        f"compile: {result['compile_s_first']:.1f} s first, {result['compile_s_warm']:.1f} s "
        f"warm; compiled vs eager loss curves: max relative difference {loss_diff:.2e}"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
