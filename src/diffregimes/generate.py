"""The sampling stage: backward trajectories and clones from one score, as an xarray Dataset.

Trajectories start from x_T ~ N(0, I) and follow the configured sampler down the time grid; the
states at the saved times are kept. Clones (the paper's speciation protocol) restart copies of
the first `pairs` trajectories at each clone time with independent noise.
"""

from __future__ import annotations

import functools
import logging

import numpy as np
import torch
import xarray as xr

from . import judge, process, samplers
from .scores import EmpiricalScore, GaussianScore, GMMScore, LocalScore

# A clone row's bytes in the growing batch: float32, the state and some seven temporaries of a
# step (the score, the noise, the next state, the kernels' per-row sums).
CLONE_ROW_BYTES = 4 * 8

log = logging.getLogger(__name__)


def build_score(
    score: str,
    train: xr.Dataset,
    budget_bytes: int,
    device,
    dtype=torch.float32,
    model_path=None,
    baseline: dict | None = None,
):
    """The score named `score` for the training store `train`: population, empirical,
    gaussian, the baseline `baseline` (its config entry: smoothed with sigma_s, local with
    patch, for images) or a learned
    model whose final weights are at `model_path`."""
    if model_path is not None:
        from .nets import LearnedScore, load_trained

        return LearnedScore(load_trained(model_path, device))
    if baseline:
        x = torch.as_tensor(train["x"].values, dtype=dtype, device=device)
        if baseline["kind"] == "smoothed":
            return EmpiricalScore(x, budget_bytes, blur=baseline["sigma_s"])
        if baseline["kind"] == "local":
            return LocalScore(
                x,
                train.attrs["image_shape"],
                baseline["patch"],
                budget_bytes,
                baseline.get("equivariant", False),
            )
        raise ValueError(f"baseline {score!r}: unknown kind {baseline['kind']!r}")
    if score == "empirical":
        x = torch.as_tensor(train["x"].values, dtype=dtype, device=device)
        return EmpiricalScore(x, budget_bytes)
    if score == "gaussian":
        return gaussian_fit(train["x"].values, dtype, device)
    if score != "population":
        # not config.EXACT_SCORES: importing config would make its messages a sampling input
        raise ValueError(f"score {score!r}: the exact scores are population, empirical, gaussian")
    from .data import gaussian_spectrum, law

    spec, d = law(train), train.sizes["feature"]
    kind = spec["kind"]
    if kind == "gmm":
        m = torch.as_tensor(train["m"].values, dtype=dtype, device=device)
        return GMMScore(m, spec["sigma"])
    if kind == "gaussian":
        lam = gaussian_spectrum(d, spec["lambda_max"], spec["decay"])
        eye = torch.eye(d, dtype=dtype, device=device)
        lam = torch.as_tensor(lam, dtype=dtype, device=device)
        return GaussianScore(torch.zeros(d, dtype=dtype, device=device), lam, eye)
    raise ValueError(f"no population score is known for dataset kind {kind!r}")


def gaussian_fit(x, dtype=torch.float32, device="cpu") -> GaussianScore:
    """The score of N(μ̂, Ĉ) fitted to training points x (n, d): mean and covariance (1/n) of
    the training set, eigendecomposed once in float64 (SCIENCE.md §7: the optimal linear
    denoiser; each step then costs two (batch × d) × (d × d) products, never an inverse)."""
    a = torch.as_tensor(x, dtype=torch.float64)
    mean = a.mean(0)
    cov = (a - mean).T @ (a - mean) / a.shape[0]
    lam, vec = torch.linalg.eigh(cov)
    return GaussianScore(
        mean.to(device, dtype), lam.clamp_min(0).to(device, dtype), vec.to(device, dtype)
    )


def sample_trajectories(
    score_fn,
    d: int,
    grid: process.TimeGrid,
    sampler_cfg: dict,
    clone_cfg: dict,
    seed: int,
    device="cpu",
    progress=None,
    train_x: torch.Tensor | None = None,
    classify=None,
    budget_bytes: int = 256 * 2**20,
) -> xr.Dataset:
    """Run the sampler and the clones; return the trajectory store's Dataset.

    What is kept scales with what the metrics need, not with d × trajectories: the states at
    the saved times for the first `samples` trajectories; the clones of every branch time run
    after the main run as one growing batch (`samplers.clone_branches`, in waves of at most
    `budget_bytes` / (CLONE_ROW_BYTES·d) rows); for every clone, the nearest training point
    of its x̂₀ (`clone_nearest`, against `train_x`) and its class (`clone_class`, by
    `classify`: sign(m·x̂₀) for the GMM, `gmm_classifier`, or the class judge of images); the
    clone end points themselves for the first `cloning.stored_pairs` pairs (default all).

    `progress(m)` is called as integration steps complete, m at a time (one per step of the
    main run, one per branch time a step of the clones' batch advances: `planned_steps`). A
    NaN or inf state raises FloatingPointError naming the step, its times and the run (the
    main run, or the branch time of the first clone that went bad)."""
    times, keep = grid.times, grid.saved
    gen = torch.Generator(device=device).manual_seed(seed)
    name = sampler_cfg["name"]
    samples = sampler_cfg["samples"]
    pairs = clone_cfg["pairs"]
    stored = min(pairs, clone_cfg.get("stored_pairs") or pairs)
    # Clone pairs branch from the first `pairs` trajectories of the main run, which runs
    # max(samples, pairs) of them; the store keeps the first `samples` in full.
    x_T = samplers.prior_sample(max(samples, pairs), d, gen, device=device)
    clone_sampler = name if name in samplers.STOCHASTIC else "euler_maruyama"
    noisy_last = grid.noisy_last  # then x̂₀ is the noiseless step from t_1 (below)
    idx = grid.clone_indices(clone_cfg)
    keep_at, clone_at = {int(k) for k in keep}, {int(k) for k in idx}
    t_min = float(times[-1])
    # With a stochastic sampler the main run's own continuation from a branch point is a clone
    # already (independent noise from the same state): one new copy per pair, half the cost.
    reuse_parent = clone_sampler == name
    stored_states, clones, nearest_idx, classes = {}, {}, {}, {}

    def observables(k, hat):  # hat: (copies, pairs, d) clean estimates of clone ends
        if train_x is not None:
            near, cls = clone_observables(hat.reshape(-1, d), train_x, classify, budget_bytes)
            nearest_idx[k] = near.reshape(hat.shape[:2])
            if cls is not None:
                classes[k] = cls.reshape(hat.shape[:2])

    branch_states = {}

    def observe(k, x):  # the main run keeps its saved states and the clones' branch points
        if k in keep_at:
            stored_states[k] = _kept(x[:samples])
        if k in clone_at:
            branch_states[k] = x[:pairs].clone()

    log.info("sampling %d trajectories with %s over %d steps", len(x_T), name, len(times) - 1)
    try:
        end, _ = samplers.sample(
            score_fn,
            x_T,
            times,
            name,
            gen,
            save_idx=np.union1d(keep, idx),
            callback=None if progress is None else (lambda _: progress(1)),
            noisy_last=noisy_last,
            observe=observe,
        )
    except FloatingPointError as err:
        raise FloatingPointError(f"{err} in the main run of {len(x_T)} trajectories") from err
    copies = 1 if reuse_parent else 2
    log.info("cloning %d pairs at %d times as one growing batch", pairs, len(idx))
    branch_ends = samplers.clone_branches(
        score_fn,
        branch_states,
        times,
        clone_sampler,
        gen,
        copies=copies,
        callback=progress,
        noisy_last=noisy_last,
        max_rows=max(copies * pairs, budget_bytes // (CLONE_ROW_BYTES * d)),
    )
    for k, ends in branch_ends:  # one wave's ends at a time
        hat = clean_estimate(score_fn, ends.reshape(-1, d), t_min).reshape(ends.shape)
        observables(k, hat)  # copy 1 (and 0 without reuse); copy 0 of a reuse: below
        clones[k] = (_kept(ends[:, :stored]), _kept(hat[:, :stored]))
    traj = torch.stack([stored_states[int(k)] for k in keep])
    x_hat = clean_estimate(score_fn, end[:samples], t_min)
    if reuse_parent:  # copy 0 of every clone time: the parent's end
        parent_hat = clean_estimate(score_fn, end[:pairs], t_min)
        parent = (_kept(end[:stored])[None], _kept(parent_hat[:stored])[None])
        if train_x is not None:
            near, cls = clone_observables(parent_hat, train_x, classify, budget_bytes)
        for k in idx:
            ends, hat = clones[int(k)]
            clones[int(k)] = (torch.cat([parent[0], ends]), torch.cat([parent[1], hat]))
            if train_x is not None:
                nearest_idx[int(k)] = torch.cat([near[None], nearest_idx[int(k)]])
                if cls is not None:
                    classes[int(k)] = torch.cat([cls[None], classes[int(k)]])
    order = [int(k) for k in idx]
    clones_hat = [clones[k][1] for k in order]
    nearest_idx = [nearest_idx[k] for k in order if k in nearest_idx]
    classes = [classes[k] for k in order if k in classes]
    clones = [clones[k][0] for k in order]
    # (clone_time, pair, copy, feature)
    x_clone = torch.stack(clones).permute(0, 2, 1, 3)
    x_hat_clone = torch.stack(clones_hat).permute(0, 2, 1, 3)

    data = {
        "x": (("sample", "time", "feature"), traj.permute(1, 0, 2).numpy()),
        "x_hat": (("sample", "feature"), x_hat.numpy()),
        "x_clone": (("clone_time", "pair", "copy", "feature"), x_clone.numpy()),
        "x_hat_clone": (("clone_time", "pair", "copy", "feature"), x_hat_clone.numpy()),
    }
    # (clone_time, copy, pair) → (clone_time, clone_pair, copy)
    if nearest_idx:
        data["clone_nearest"] = (
            ("clone_time", "clone_pair", "copy"),
            torch.stack(nearest_idx).permute(0, 2, 1).numpy(),
        )
    if classes:
        data["clone_class"] = (
            ("clone_time", "clone_pair", "copy"),
            torch.stack(classes).permute(0, 2, 1).numpy().astype(np.int8),
        )
    ds = xr.Dataset(
        data,
        coords={
            "sample": np.arange(samples),
            "time": times[keep],
            "feature": np.arange(d),
            "clone_time": times[idx],
            "pair": np.arange(stored),
            "clone_pair": np.arange(pairs),
            "copy": np.arange(2),
        },
    )
    ds["time"].attrs["description"] = "OU time t, descending from T to t_min"
    ds["clone_time"].attrs["description"] = "OU time at which pairs of clones branch"
    ds["x"].attrs["description"] = "state x(t) of each trajectory at the saved times"
    ds["x_hat"].attrs["description"] = (
        "the generated sample: Tweedie estimate x̂₀ = (x + Δ s(x, t_min)) e^{t_min} of the end "
        "state (SCIENCE.md §5)"
    )
    ds["x_clone"].attrs["description"] = (
        f"end states x(t_min) of the clones of the first {stored} of {pairs} pairs"
    )
    ds["x_hat_clone"].attrs["description"] = "Tweedie estimate x̂₀ of each stored clone's end"
    if nearest_idx:
        ds["clone_nearest"].attrs["description"] = (
            "index of the training point nearest to each clone's x̂₀ (every pair)"
        )
    if classes:
        ds["clone_class"].attrs["description"] = (
            "class of each clone's x̂₀ (every pair): sign(m·x̂₀) > 0 for the GMM, the class "
            "judge's label for images"
        )
    ds.attrs.update(
        sampler=name,
        clone_sampler=clone_sampler,
        clone_copy0=(
            "the parent's own continuation (the main run)" if reuse_parent else "a new clone"
        ),
        seed_job=int(seed),
        device=str(device),
        settings={"time": grid.settings, "sampler": sampler_cfg, "cloning": clone_cfg},
    )
    return ds


def _kept(x: torch.Tensor) -> torch.Tensor:
    """A float32 CPU copy of a slice: a view (`.float().cpu()` of a CPU float32 slice is one)
    would keep the whole batch it was cut from alive in host memory."""
    return x.detach().to("cpu", torch.float32, copy=True)


def clone_observables(x_hat: torch.Tensor, train_x: torch.Tensor, classify, budget_bytes: int):
    """(nearest training index, class or None) of generated points x̂₀: what φ_C and φ need
    of a clone, so that its end point need not be stored."""
    from .neighbours import nearest

    x_hat = x_hat.to(train_x.device, train_x.dtype)
    idx = nearest(x_hat, train_x, k=1, budget_bytes=budget_bytes)[1][:, 0].cpu()
    cls = None if classify is None else torch.as_tensor(classify(x_hat)).long().cpu()
    return idx, cls


def run_score(
    score: str,
    train: xr.Dataset,
    budget_bytes: int,
    device,
    model_path=None,
    judge_path=None,
    baseline: dict | None = None,
):
    """(score, classify) of one run: `build_score`, and the class of points for φ and the
    probes (`classifier`), read off the class judge at `judge_path` for images (a judge
    trained without classes gives None)."""
    judged = None
    if judge_path:
        net, _, _ = judge.load_judge(judge_path, device)
        judged = None if net is None else functools.partial(judge.judge_classes, net)
    fn = build_score(score, train, budget_bytes, device, model_path=model_path, baseline=baseline)
    return fn, classifier(train, judged)


def classifier(train: xr.Dataset, judged=None):
    """The class of points x for φ and the probes: sign(m·x) for the GMM (exact), `judged`
    (the class judge's labels of images) otherwise; None without classes."""
    if "m" in train:
        return gmm_classifier(torch.as_tensor(train["m"].values, dtype=torch.float32))
    return judged


def gmm_classifier(m: torch.Tensor):
    """The GMM's class of points x: sign(m·x) > 0 (SCIENCE.md §3), on x's device."""
    return lambda x: (x @ m.to(x) > 0).long()


def clean_estimate(score_fn, x: torch.Tensor, t: float, batch: int = 4096) -> torch.Tensor:
    """The generated samples: x̂₀ = (x + Δ_t s(x, t)) e^{t} of end states x at time t, as a
    float32 CPU tensor (SCIENCE.md §5: for the exact empirical score it is Σ_μ w_μ a^μ, a
    training point once collapsed; for a DDPM grid it is the final noiseless step)."""
    out = [samplers.denoised(score_fn, xb, t).float().cpu() for xb in x.split(batch)]
    return torch.cat(out) if out else torch.empty(0, x.shape[-1])


def planned_steps(grid: process.TimeGrid, clone_cfg: dict) -> int:
    """Integration steps one sampling job takes (main run plus every clone run), for a bar."""
    idx = grid.clone_indices(clone_cfg)
    return (len(grid) - 1) + int(sum(len(grid) - 1 - k for k in idx))  # one bar tick a batch
