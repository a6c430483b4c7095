"""What a job costs before it runs: FLOP, element-steps and memory of each heavy rule from its
settings, turned into `mem_mb`, `runtime` and the device by reference rates, so that every job
of a grid (config/paper.yaml included) asks for what it needs. A dry run prints the total per
rule (`report`), in CPU- and GPU-hours.

The rates are one CPU thread and one GPU of the kinds the workflow runs on; `make bench`
prints this machine's (kernels: matmul and the empirical score's GFLOP/s). The estimates are
upper-end on purpose (a job that asks for too little is killed by its scheduler): runtime gets
a factor 2 and 10 minutes of margin, memory 1.5× and 1 GB for the interpreter and torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Rates:
    """Reference rates, on the slow side of what `make bench` reports: CPU, one thread of an
    AVX-512 machine with torch's CPU build; GPU, an A100/H100-class device. A sampler step is
    memory-bound (drawing the noise is a large part of it), hence its own rate."""

    cpu_f32: float = 80e9
    cpu_f64: float = 40e9
    cpu_element_s: float = 15e-9  # one sampler step on one coordinate
    gpu_f32: float = 15e12
    gpu_f64: float = 8e12
    gpu_element_s: float = 0.05e-9


RATES = Rates()
GPU_RULES = ("train", "sample", "training_axis", "theory")


@dataclass
class Cost:
    flops32: float = 0.0
    flops64: float = 0.0
    elements: float = 0.0  # sampler element-steps
    bytes: float = 0.0

    def seconds(self, gpu: bool, rates: Rates = RATES) -> float:
        if gpu:
            return (
                self.flops32 / rates.gpu_f32
                + self.flops64 / rates.gpu_f64
                + self.elements * rates.gpu_element_s
            )
        return (
            self.flops32 / rates.cpu_f32
            + self.flops64 / rates.cpu_f64
            + self.elements * rates.cpu_element_s
        )

    def mem_mb(self) -> int:
        return int(math.ceil((1.5 * self.bytes + 2**30) / 2**20))


def runtime_min(seconds: float) -> int:
    return int(math.ceil(2 * seconds / 60 + 10))


def network_flops(arch: dict, d: int, side: int = 0) -> float:
    """Forward FLOP of one sample through a network of the `models` entry `arch` (matrix and
    convolution products only): 2 × weights for an MLP; for a U-Net 2 × weights × the pixels
    a weight sees (side² at the top level, a quarter per level down, counted per level)."""
    if arch["arch"] == "mlp":
        w, depth, emb = arch.get("width", 256), arch.get("depth", 3), arch.get("embedding", 64)
        return 2.0 * (2 * d * w + depth * 2 * w * w + emb * w)
    widths = arch.get("widths", [32, 64])
    blocks = arch.get("res_blocks", 1)
    side = side or int(math.isqrt(d))
    total, cin = 0.0, widths[0]
    for level, w in enumerate(widths):
        pixels = (side / 2**level) ** 2
        convs = (2 * blocks + 1) * 2  # down and up blocks, two 3×3 convs each
        total += 2.0 * pixels * convs * 9 * (cin * w + w * w) / 2
        cin = w
    return total


def sample_cost(
    d: int,
    n: int,
    score: str,
    time_cfg: dict,
    sampler_cfg: dict,
    cloning: dict,
    saved: int,
    clone_steps: int,
    arch: dict | None = None,
    side: int = 0,
    clone_times: int = 0,
    budget: int = 256 * 2**20,
) -> Cost:
    """A sample job: the main run of max(samples, pairs) trajectories over the grid, and
    `clone_steps` = Σ over the `clone_times` of the steps left, for one (stochastic sampler) or
    two new copies per pair; the nearest training point of every clone's x̂₀. Memory: the main
    batch and one wave of the clones' growing batch with their temporaries, the kept states
    and branch states, the stored clone end points and their x̂₀, the training set and the
    kernels' budget. `score` is the score's
    name or a baseline's kind (smoothed, local), `arch` the model's or the baseline's entry."""
    samples, pairs = sampler_cfg["samples"], cloning["pairs"]
    steps = time_cfg["steps"]
    copies = 1 if sampler_cfg["name"] in ("euler_maruyama", "ddpm", "ddpm_posterior") else 2
    evals = max(samples, pairs) * steps + copies * pairs * clone_steps
    if score in ("empirical", "smoothed"):
        per_eval = 4.0 * n * d
    elif score == "local":  # a (C·P²)-long patch per pixel against every training image
        spec = arch or {}
        per_eval = 4.0 * n * d * spec.get("patch", 1) ** 2
        if spec.get("equivariant"):  # ... at every position
            per_eval *= side * side
    elif score == "population":
        per_eval = 0.0
    elif score == "gaussian":
        per_eval = 4.0 * d * d  # into C's eigenbasis and back
    else:
        per_eval = network_flops(arch or {"arch": "mlp"}, d, side)
    nearest = 2.0 * n * d * 2 * pairs * clone_times
    batch = max(samples, pairs)
    stored = cloning.get("stored_pairs") or pairs
    # the clones' growing batch: waves of at most max(one branch's rows, budget / (32 d)) rows
    # (generate.CLONE_ROW_BYTES), and the branch states the main run keeps for them
    wave = min(copies * pairs * max(clone_times, 1), max(copies * pairs, budget // (32 * d)))
    memory = 4.0 * d * (8 * batch + 8 * wave + pairs * clone_times + samples * saved + n)
    memory += 4.0 * d * 2 * 2 * stored * clone_times
    if score == "local" and (arch or {}).get("equivariant"):  # ELS keeps every patch unfolded
        memory += 4.0 * n * d * arch.get("patch", 1) ** 2
    return Cost(flops32=evals * per_eval + nearest, elements=evals * d, bytes=memory + budget)


def theory_cost(d: int, n: int, times: int, entropy_samples: int, budget: int) -> Cost:
    """A theory job: the covariance spectrum (n d² + d³) and the Monte Carlo f^e, float64:
    2 n d per sample and time."""
    return Cost(
        flops64=2.0 * n * d * d + 10.0 * d**3 + 2.0 * times * entropy_samples * n * d,
        bytes=8.0 * (2 * n * d + 2 * d * d) + budget,
    )


def train_cost(arch: dict, d: int, side: int = 0) -> Cost:
    """A training job: forward and backward (3 × forward) per point per step."""
    flops = 3.0 * network_flops(arch, d, side) * arch.get("batch_size", 256) * arch.get("steps", 1)
    return Cost(flops32=flops, bytes=4.0 * 64 * arch.get("batch_size", 256) * max(d, 4096))


def metrics_cost(d: int, n: int, samples: int, saved: int, budget: int) -> Cost:
    """A metrics job: the nearest training point of every trajectory at every saved time."""
    return Cost(
        flops32=2.0 * samples * saved * n * d, bytes=4.0 * (samples * saved * d + n * d) + budget
    )


def report(estimates: dict[str, list[tuple[float, bool, int]]]) -> str:
    """The dry run's table: per rule, jobs, CPU-hours, GPU-hours and the largest mem_mb, from
    (seconds, on a GPU, mem_mb) per job."""
    lines = [
        "Estimated cost of the planned jobs (diffregimes.resources; runtime asks 2× + 10 min):",
        "  (GPU-hours: jobs that run on a GPU where one is granted, else on the CPU)",
        f"  {'rule':<16}{'jobs':>6}{'CPU-hours':>12}{'GPU-hours':>12}{'max mem_mb':>12}",
    ]
    for rule, jobs in sorted(estimates.items()):
        cpu = sum(s for s, gpu, _ in jobs if not gpu) / 3600
        gpu = sum(s for s, g, _ in jobs if g) / 3600
        mem = max(m for *_, m in jobs)
        lines.append(f"  {rule:<16}{len(jobs):>6}{cpu:>12.2f}{gpu:>12.2f}{mem:>12}")
    return "\n".join(lines)
