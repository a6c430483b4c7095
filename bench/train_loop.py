"""Benchmark: the training loop's steps/s against a bare torch loop on the same model and batch.

The bare loop is the least a DSM step can do (draw a batch, noise it, forward, MSE, backward,
AdamW step). The pipeline's loop adds time sampling in log-SNR, warm-up, gradient clipping, EMA,
the NaN check, logging and checkpoints. Both run here, one after the other, on the same device
and thread count; the ratio is what to read (goal ≥ 0.9). The pipeline's AdamW uses
foreach=True; the bare loop runs with torch's default (`train_vs_bare_loop`) and with foreach=True
too (`train_vs_bare_loop_foreach`, the pipeline's own overhead). Prints a table and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=int, default=32)
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device, why = pick_device()
    cfg = dict(
        arch="mlp",
        width=args.width,
        depth=3,
        embedding=64,
        steps=args.steps,
        batch_size=args.batch,
        lr=1e-3,
        weight_decay=0.0,
        warmup=100,
        ema=0.999,
        grad_clip=1.0,
        checkpoints=10,
        log_every=100,
        compile=False,
    )
    time_cfg = {"T": 6.0, "t_min": 1e-3}
    data = torch.randn(args.n, args.d, device=device)
    rates = {"pipeline": [], "bare": [], "bare_foreach": []}
    for rep in range(args.repeats):  # interleaved, best of each: robust to a noisy machine
        for key, foreach in (("bare", None), ("bare_foreach", True)):
            torch.manual_seed(rep)
            net = nets.build_network(cfg, args.d).to(device)
            start = time.perf_counter()
            bare_loop(net, data, args.steps, args.batch, cfg["lr"], device, foreach)
            rates[key].append(args.steps / (time.perf_counter() - start))
        torch.manual_seed(rep)
        net = nets.build_network(cfg, args.d)
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            train.train(net, data, cfg, time_cfg, rep, folder, "bench", device)
            rates["pipeline"].append(args.steps / (time.perf_counter() - start))
    best = {k: max(v) for k, v in rates.items()}
    result = {
        "train_vs_bare_loop": best["pipeline"] / best["bare"],
        "pipeline_steps_per_s": best["pipeline"],
        "bare_steps_per_s": best["bare"],
        # the pipeline uses AdamW(foreach=True); the bare loop above uses torch's default
        "train_vs_bare_loop_foreach": best["pipeline"] / best["bare_foreach"],
        "bare_foreach_steps_per_s": best["bare_foreach"],
        "device": str(device),
        "threads": torch.get_num_threads(),
        "shape": {"d": args.d, "n": args.n, "width": args.width, "batch": args.batch},
    }
    print(
        f"device {device} ({why}), {torch.get_num_threads()} threads, MLP width {args.width}, "
        f"batch {args.batch}, d {args.d}, {args.steps} steps × {args.repeats}"
    )
    print(f"{'loop':<14}{'steps/s (best)':>16}")
    for key in ("bare", "bare_foreach", "pipeline"):
        print(f"{key:<14}{best[key]:>16.1f}")
    print(f"ratio pipeline/bare: {result['train_vs_bare_loop']:.3f} (goal ≥ 0.9)")
    print(
        f"ratio pipeline/bare with AdamW(foreach=True) as the pipeline: "
        f"{result['train_vs_bare_loop_foreach']:.3f} (the pipeline's own overhead)"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
