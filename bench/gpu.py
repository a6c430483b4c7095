"""GPU check (`make bench-gpu`): the library's training, score, neighbour and sampling kernels
against the device's own matrix-product rate, and the checks of what must be right on a GPU.

Imports only the library's science and model modules (device, nets, train, scores, neighbours,
samplers, process) with torch and numpy: a GPU machine may hold nothing else (no Snakemake, no
zarr, no network). Run from a checkout, installed or not (src/ goes on the path when the
package is not installed). Prints a table of lines, then one JSON line, the last.

Measured, each against the matmul rate of the same run (fp32, and bf16 for bf16 work):
- training steps/s of the default MLP (config/config.yaml models.mlp, batch 256) and of the
  paper's U-Net (config/paper.yaml models.unet, batch 128), through `train.train` itself, in
  three modes: eager (fp32), compiled (torch.compile, fp32) and bf16 (compiled with bf16
  autocast: the pipeline's CUDA default). FLOP per step are counted by torch's FlopCounterMode
  on one forward and backward: the matrix products, convolutions and attention of both passes
  (about 3× the forward's);
- the empirical score (4 n d FLOP per point: x·cᵀ and the weighted mean) and `nearest`
  (2 n d) at n = 65 536, d = 3072, and their float32 accuracy at small t against float64;
- one sampling run (Euler–Maruyama with the empirical score);
- the clones of several branch times as one growing batch against one branch time after
  another, with the same per-branch generators: the speed-up and the largest difference.
Checks: IEEE float32 products after `device.job_device` (no TF32); a training log entry is its
window's mean; on CUDA, checkpoints resume across device types, and the loop synchronises
about once per log window, not per step; the GPU's lock-file name.

Sizes: `--size full` (the default on CUDA: the sizes above, under 5 minutes on an H100-class
GPU, sections past `--budget-s` are skipped and listed), `small` (the default without CUDA:
the same code at CPU sizes, without the U-Net's compiled modes unless `--skip` is given bare)
and `tiny` (the test's). Each section that fails is listed under
"errors" with its message, and the rest still run.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import torch

try:
    import diffregimes  # noqa: F401
except ImportError:  # a bare checkout on a GPU machine: the package from src/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from torch.utils.flop_counter import FlopCounterMode

from diffregimes import device as devices
from diffregimes import neighbours, nets, process, samplers, scores, train

log = logging.getLogger("bench.gpu")
TIME = {"T": 5.0, "t_min": 1e-3}
# config/config.yaml models.mlp (tests/test_bench.py checks these against the YAML files)
MLP = dict(
    arch="mlp",
    width=128,
    depth=3,
    embedding=32,
    batch_size=256,
    lr=0.002,
    ema=0.995,
    weight_decay=0.0,
    warmup=100,
    grad_clip=1.0,
)
# config/paper.yaml models.unet: Ho et al.'s DDPM U-Net, batch 128 (schema defaults filled in)
UNET = dict(
    arch="unet",
    widths=[64, 128, 256, 256],
    res_blocks=2,
    attention=[16, 8],
    dropout=0.1,
    embedding=128,
    batch_size=128,
    lr=0.0001,
    ema=0.9999,
    weight_decay=0.0,
    warmup=5000,
    grad_clip=1.0,
)
SIZES = {
    "full": dict(
        mlp_d=32, mlp_steps=400, mlp_log=50, unet_side=32, unet={}, unet_steps=60, unet_log=10,
        matmul=8192, n=65536, d=3072, score_batch=1024, accuracy_batch=64,
        sample_batch=512, sample_steps=100, clone_pairs=256, clone_times=8, clone_steps=100,
        check_steps=100,
    ),
    "small": dict(
        mlp_d=32, mlp_steps=200, mlp_log=25, unet_side=16,
        unet=dict(widths=[32, 64, 128, 128], batch_size=4), unet_steps=8, unet_log=2,
        matmul=1024, n=8192, d=768, score_batch=128, accuracy_batch=32,
        sample_batch=128, sample_steps=20, clone_pairs=64, clone_times=6, clone_steps=20,
        check_steps=60,
        skip=["unet.bf16", "unet.compiled"],  # compiling the U-Net takes minutes on a CPU
    ),
    "tiny": dict(
        mlp_d=8, mlp={"batch_size": 32}, mlp_steps=20, mlp_log=5, unet_side=8,
        unet=dict(widths=[32, 32], res_blocks=1, attention=[4], batch_size=2),
        unet_steps=8, unet_log=2, matmul=256, n=1024, d=64, score_batch=16,
        accuracy_batch=8, sample_batch=16, sample_steps=10, clone_pairs=8, clone_times=4,
        clone_steps=10, check_steps=20,
    ),
}  # fmt: skip
MODES = {  # name: (compile, bf16 autocast)
    "eager": (False, False),
    "compiled": (True, False),
    "bf16": (True, True),
}
# Rough seconds of each section at full size on an H100-class GPU: a section is skipped when
# the time spent plus its estimate passes the budget (compiling the U-Net is the large part).
ESTIMATE_S = {"unet.eager": 30, "unet.bf16": 120, "unet.compiled": 120, "mlp.compiled": 60}


class Bench:
    def __init__(self, dev: torch.device, size: str, budget_s: float):
        self.dev, self.size, self.cfg = dev, size, SIZES[size]
        self.budget_s, self.start = budget_s, time.perf_counter()
        self.result: dict = {"errors": {}, "skipped": {}}

    def sync(self):
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)

    def timed(self, fn, min_s: float = 0.3, repeats: int = 2) -> float:
        """Seconds per call of fn: warm-up, then enough back-to-back calls to last min_s, the
        best of `repeats` such runs (one sync per run, not per call)."""
        fn()
        self.sync()
        t0 = time.perf_counter()
        fn()
        self.sync()
        reps = max(1, min(1000, math.ceil(min_s / max(time.perf_counter() - t0, 1e-6))))
        best = math.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            self.sync()
            best = min(best, (time.perf_counter() - t0) / reps)
        return best

    def section(self, name: str, fn, estimate_s: float = 0.0):
        """Run one part; an exception is recorded under errors (the others still run)."""
        spent = time.perf_counter() - self.start
        if spent + (estimate_s if self.size == "full" else 0.0) > self.budget_s:
            self.result["skipped"][name] = f"time budget: {spent:.0f} s of {self.budget_s:.0f}"
            print(f"{name:<22} skipped ({self.result['skipped'][name]})", flush=True)
            return None
        t0 = time.perf_counter()
        try:
            out = fn()
        except Exception as err:  # a section that fails is reported, not fatal
            self.result["errors"][name] = f"{type(err).__name__}: {err}"[:2000]
            print(f"{name:<22} FAILED: {type(err).__name__}: {err}", flush=True)
            traceback.print_exc(file=sys.stderr)
            out = None
        finally:
            if self.dev.type == "cuda":
                torch.cuda.empty_cache()
        print(f"{name:<22} done in {time.perf_counter() - t0:.1f} s", flush=True)
        return out

    # --- the device's matrix-product rate -------------------------------------------------

    def matmul(self):
        size = self.cfg["matmul"]
        for key, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            g = torch.Generator(device=self.dev).manual_seed(0)
            a = torch.randn(size, size, device=self.dev, generator=g).to(dtype)
            b = torch.randn(size, size, device=self.dev, generator=g).to(dtype)
            seconds = self.timed(lambda a=a, b=b: a @ b)
            self.result[f"matmul_{key}_flops"] = 2.0 * size**3 / seconds
        self.result["matmul_n"] = size

    def vs(self, flops: float, dtype: str = "fp32") -> float:
        return flops / self.result[f"matmul_{dtype}_flops"]

    # --- training -------------------------------------------------------------------------

    def _model(self, which: str):
        c = self.cfg
        if which == "mlp":
            cfg = {**MLP, **c.get("mlp", {})}
            d, shape = c["mlp_d"], None
            g = torch.Generator().manual_seed(0)
            signs = torch.randint(0, 2, (4096, 1), generator=g) * 2.0 - 1.0
            data = signs + torch.randn(4096, d, generator=g)  # GMM ±ones(d), σ = 1
            steps, every = c["mlp_steps"], c["mlp_log"]
        else:
            cfg = {**UNET, **c["unet"]}
            side = c["unet_side"]
            shape, d = (3, side, side), 3 * side * side
            data = torch.randn(1024, d, generator=torch.Generator().manual_seed(0))
            steps, every = c["unet_steps"], c["unet_log"]
        cfg.update(steps=steps, log_every=every, checkpoints=1)
        return cfg, d, shape, data

    def step_flops(self, cfg, d, shape) -> tuple[float, float]:
        """(forward, forward + backward) FLOP of one training batch, counted on the device."""
        torch.manual_seed(0)
        net = nets.build_network(cfg, d, shape).to(self.dev)
        b = cfg["batch_size"]
        x = torch.randn(b, d, device=self.dev)
        t = torch.rand(b, device=self.dev) + 0.01
        with FlopCounterMode(display=False) as counter:
            with torch.no_grad():
                net(x, t)
        fwd = counter.get_total_flops()
        with FlopCounterMode(display=False) as counter:
            (net(x, t) - x).pow(2).mean().backward()
        return float(fwd), float(counter.get_total_flops())

    def training(self, which: str, mode: str, out: dict):
        cfg, d, shape, data = self._model(which)
        compile_, bf16 = MODES[mode]
        cfg["compile"] = compile_
        if "flops_per_step" not in out:
            fwd, both = self.step_flops(cfg, d, shape)
            out.update(
                batch=cfg["batch_size"], d=d, flops_per_step=both, fwd_bwd_over_fwd=both / fwd
            )
            if shape is not None:
                out["image_shape"] = list(shape)
        torch.manual_seed(0)
        net = nets.build_network(cfg, d, shape)
        out["parameters"] = sum(p.numel() for p in net.parameters())
        with tempfile.TemporaryDirectory() as folder:
            t0 = time.perf_counter()
            res = train.train(net, data, cfg, TIME, 0, folder, "bench", self.dev, bf16=bf16)
            wall = time.perf_counter() - t0
        rates = res["history"]["steps_per_s"]
        rate = float(np.median(rates[1:] if len(rates) > 1 else rates))  # first: compiling
        flops = rate * out["flops_per_step"]
        out[mode] = dict(
            steps_per_s=rate,
            flops=flops,
            vs_matmul=self.vs(flops, "bf16" if bf16 else "fp32"),
            matmul_dtype="bf16" if bf16 else "fp32",
            wall_s=wall,
            final_loss=res["history"]["loss"][-1],
        )
        print(
            f"  {which} {mode:<9} {rate:10.1f} steps/s  {flops / 1e12:8.3f} TFLOP/s  "
            f"{out[mode]['vs_matmul']:6.3f} of matmul {out[mode]['matmul_dtype']}",
            flush=True,
        )

    # --- the empirical score, nearest and a sampling run ---------------------------------

    def _training_set(self):
        c = self.cfg
        g = torch.Generator(device=self.dev).manual_seed(1)
        return torch.randn(c["n"], c["d"], device=self.dev, generator=g), g

    def _noised(self, a, idx, t, g):
        z = torch.randn(len(idx), a.shape[1], device=self.dev, generator=g)
        return process.noised(a[idx], t, z)

    def empirical_score(self):
        c = self.cfg
        a, g = self._training_set()
        n, d, b = c["n"], c["d"], c["score_batch"]
        idx = torch.randint(0, n, (b,), device=self.dev, generator=g)
        x = self._noised(a, idx, 0.3, g)
        score = scores.EmpiricalScore(a)
        seconds = self.timed(lambda: score(x, 0.3))
        flops = 4.0 * b * n * d / seconds
        out = dict(n=n, d=d, batch=b, flops=flops, vs_matmul=self.vs(flops))
        if self.dev.type != "cpu":  # the budget-sized blocks against the CPU's cache-sized ones
            sized = neighbours.block_sizes
            neighbours.block_sizes = lambda *args, **kw: sized(*args[:5], device_type="cpu")
            try:
                cpu_blocks = self.timed(lambda: score(x, 0.3))
            finally:
                neighbours.block_sizes = sized
            out["cpu_block_sizes_s"] = cpu_blocks
            out["budget_blocks_speedup"] = cpu_blocks / seconds
        # float32 accuracy at small t, where the softmax is nearly one-hot: against float64
        t = 1e-2
        xs = self._noised(a, idx[: c["accuracy_batch"]], t, g)
        exact = scores.EmpiricalScore(a.double())(xs.double(), t)

        def rel_err():
            s = score(xs, t).double()
            return float((s - exact).norm() / exact.norm())

        out["rel_err_small_t"] = rel_err()
        if self.dev.type == "cuda":  # what TF32 would cost (restored at once)
            torch.backends.cuda.matmul.allow_tf32 = True
            try:
                out["rel_err_small_t_tf32"] = rel_err()
            finally:
                devices.force_ieee_fp32()
        self.result["empirical_score"] = out
        print(f"  empirical score {flops / 1e12:8.3f} TFLOP/s  {out['vs_matmul']:.3f} of matmul")

    def nearest(self):
        c = self.cfg
        a, g = self._training_set()
        n, d, b = c["n"], c["d"], c["score_batch"]
        x = self._noised(a, torch.randint(0, n, (b,), device=self.dev, generator=g), 0.3, g)
        seconds = self.timed(lambda: neighbours.nearest(x, a, k=2))
        flops = 2.0 * b * n * d / seconds
        self.result["nearest"] = dict(n=n, d=d, batch=b, flops=flops, vs_matmul=self.vs(flops))
        print(f"  nearest         {flops / 1e12:8.3f} TFLOP/s  {self.vs(flops):.3f} of matmul")

    def sampling(self):
        c = self.cfg
        a, g = self._training_set()
        n, d, b, steps = c["n"], c["d"], c["sample_batch"], c["sample_steps"]
        grid = process.time_grid(TIME["T"], TIME["t_min"], steps)
        score = scores.EmpiricalScore(a)
        x0 = samplers.prior_sample(b, d, g, device=self.dev)
        self.sync()
        t0 = time.perf_counter()
        x, _ = samplers.sample(score, x0, grid, "euler_maruyama", g)
        self.sync()
        seconds = time.perf_counter() - t0
        flops = 4.0 * b * n * d * (len(grid) - 1) / seconds
        self.result["sampling"] = dict(
            n=n,
            d=d,
            batch=b,
            steps=len(grid) - 1,
            seconds=seconds,
            steps_per_s=(len(grid) - 1) / seconds,
            flops=flops,
            vs_matmul=self.vs(flops),
            finite=bool(torch.isfinite(x).all()),
        )
        print(f"  sampling        {(len(grid) - 1) / seconds:8.1f} steps/s  {self.vs(flops):.3f}")

    def clones(self):
        """The clones of every branch time as one growing batch (`samplers.clone_branches`)
        against one branch time after another (`samplers.clone`) with the same per-branch
        generators (`samplers.branch_generators`, on the device): branch steps/s of each, and
        the largest difference of their ends (round-off of the batched score only)."""
        c = self.cfg
        a, g = self._training_set()
        d, pairs, steps = c["d"], c["clone_pairs"], c["clone_steps"]
        grid = process.time_grid(TIME["T"], TIME["t_min"], steps)
        score = scores.EmpiricalScore(a)
        branches = np.unique(np.linspace(0, steps - 1, c["clone_times"]).astype(int)).tolist()
        starts = {k: samplers.prior_sample(pairs, d, g, device=self.dev) for k in branches}
        work = sum(steps - k for k in branches)  # branch steps, each of 2·pairs rows

        def seeded():
            return torch.Generator(device=self.dev).manual_seed(11)

        self.sync()
        t0 = time.perf_counter()
        batch = dict(samplers.clone_branches(score, starts, grid, "euler_maruyama", seeded()))
        self.sync()
        batch_s = time.perf_counter() - t0
        streams = samplers.branch_generators(seeded(), starts)
        t0 = time.perf_counter()
        one = {
            k: samplers.clone(score, starts[k], grid, k, "euler_maruyama", streams[k])
            for k in branches
        }
        self.sync()
        serial_s = time.perf_counter() - t0
        diff = max(float((batch[k] - one[k]).abs().max()) for k in branches)
        self.result["clones"] = dict(
            n=c["n"],
            d=d,
            pairs=pairs,
            branch_times=len(branches),
            branch_steps=work,
            batch_branch_steps_per_s=work / batch_s,
            serial_branch_steps_per_s=work / serial_s,
            batch_vs_serial=serial_s / batch_s,
            max_abs_diff=diff,
            finite=all(bool(torch.isfinite(x).all()) for x in batch.values()),
        )
        print(
            f"  clones          {work / batch_s:8.1f} branch steps/s as one batch, "
            f"{serial_s / batch_s:.2f}× one branch after another, max |Δ| {diff:.2e}"
        )

    # --- what must be right on a GPU (issue 14, item 6) -----------------------------------

    def _short_run(self, folder, dev, steps, every=10, checkpoints=2):
        cfg = {**MLP, "steps": steps, "log_every": every, "checkpoints": checkpoints}
        cfg["compile"] = False
        torch.manual_seed(0)
        net = nets.build_network(cfg, 8)
        data = torch.randn(256, 8, generator=torch.Generator().manual_seed(2))
        return train.train(net, data, cfg, TIME, 3, folder, "check", dev, bf16=False)

    def checks(self):
        out = self.result.setdefault("checks", {})
        out["ieee_fp32"] = not (
            torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32
        ) and (torch.get_float32_matmul_precision() == "highest")
        steps = self.cfg["check_steps"]
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            # a log entry is its window's mean: logged per step, then per 10 steps
            every = self._short_run(tmp / "every", self.dev, steps, every=1)["history"]["loss"]
            tens = self._short_run(tmp / "tens", self.dev, steps, every=10)["history"]["loss"]
            means = np.mean(np.reshape(every, (-1, 10)), axis=1)
            out["log_window_mean_max_rel_diff"] = float(np.max(np.abs(tens / means - 1)))
            if self.dev.type != "cuda":
                return
            # checkpoints resume across device types (the generator is reseeded)
            for src, dst in ((self.dev, "cpu"), ("cpu", self.dev)):
                name = f"resume_{torch.device(src).type}_to_{torch.device(dst).type}"
                folder = tmp / name
                self._short_run(folder, src, steps // 2, checkpoints=1)
                try:
                    res = self._short_run(folder, dst, steps, checkpoints=1)
                    out[name] = res["step"] == steps and math.isfinite(res["history"]["loss"][-1])
                except Exception as err:
                    out[name] = f"{type(err).__name__}: {err}"[:500]
            # host synchronisations per step of the training loop: a run twice as long with
            # the same logs and checkpoints (whose saves sync once per tensor) adds none
            syncs = []
            for total in (steps, 2 * steps):
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    with warnings.catch_warnings(record=True) as seen:
                        warnings.simplefilter("always")
                        self._short_run(tmp / f"syncs{total}", self.dev, total, total // 2, 1)
                finally:
                    torch.cuda.set_sync_debug_mode(0)
                syncs.append(sum("synchroniz" in str(w.message) for w in seen))
            out["train_syncs"] = syncs
            out["train_syncs_per_step"] = (syncs[1] - syncs[0]) / steps
            out["gpu_lock_name"] = devices.gpu_names(1)[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), help="default: full on CUDA, else small")
    parser.add_argument("--small", action="store_true", help="the same as --size small")
    parser.add_argument(
        "--budget-s", type=float, default=240.0, help="seconds; later sections are skipped"
    )
    parser.add_argument(
        "--skip",
        nargs="*",
        help="sections to leave out (e.g. unet.compiled); default: the size's (small: the "
        "U-Net's compiled modes), none with a bare --skip",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    dev = devices.job_device(log, torch.get_num_threads(), None)  # also IEEE fp32 products
    size = "small" if args.small else args.size or ("full" if dev.type == "cuda" else "small")
    bench = Bench(dev, size, args.budget_s)
    r = bench.result
    r.update(
        device=str(dev),
        device_name=torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        size=size,
        torch=torch.__version__,
        cuda=torch.version.cuda,
        threads=torch.get_num_threads(),
    )
    print(f"device {dev} ({r['device_name']}), size {size}, torch {torch.__version__}")
    r["train"] = {"mlp": {}, "unet": {}}
    plan = [
        ("matmul", bench.matmul),
        ("empirical_score", bench.empirical_score),
        ("nearest", bench.nearest),
        ("sampling", bench.sampling),
        ("clones", bench.clones),
        ("checks", bench.checks),
        *((f"mlp.{m}", lambda m=m: bench.training("mlp", m, r["train"]["mlp"])) for m in MODES),
        *(
            (f"unet.{m}", lambda m=m: bench.training("unet", m, r["train"]["unet"]))
            for m in ("eager", "bf16", "compiled")  # the pipeline's CUDA mode before fp32's
        ),
    ]
    skip = SIZES[size].get("skip", []) if args.skip is None else args.skip
    for name, fn in plan:
        if name in skip:
            r["skipped"][name] = "--skip"
            continue
        if name != "matmul" and "matmul_fp32_flops" not in r:
            r["skipped"][name] = "no matmul rate to compare with"
            continue
        bench.section(name, fn, ESTIMATE_S.get(name, 10.0))
    r["wall_s"] = time.perf_counter() - bench.start
    print(json.dumps(r, default=float))


if __name__ == "__main__":
    main()
