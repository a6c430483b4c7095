"""Rule `theory`: what a training set alone predicts, computed once per data cell and shared
by every score of that cell: the covariance spectrum, Λ (channel 0 and all channels), both t_S
references, the DDPM-quantised t_S, the excess entropy (theory and Monte Carlo f^e) and the
collapse times read off it (SCIENCE.md §3, §4).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
import xarray as xr

from . import metrics, process, theory
from .data import SYNTHETIC_KINDS, gaussian_spectrum, law, population_top_eigenvalue
from .store import estimate

log = logging.getLogger(__name__)


def top_eigenvalues(train: xr.Dataset, x: np.ndarray, eig: np.ndarray):
    """(Λ for t_S, Λ over channel 0, Λ over all channels, which one t_S uses).

    The authors' Table 1 takes Λ on channel 0 only for RGB data (pitfall 3); one channel or
    synthetic data have a single Λ."""
    lam_all = float(eig[0])
    channels = int(train.attrs.get("channels", 0))
    if channels == 0:  # synthetic data: raw coordinates, no channels
        return lam_all, float("nan"), lam_all, "all coordinates"
    lam0 = lam_all if channels == 1 else theory.top_eigenvalue(x[:, : x.shape[1] // channels])
    used = "the single channel" if channels == 1 else "channel 0 only (the authors' Table 1)"
    return lam0, lam0, lam_all, used


def theory_store(
    train: xr.Dataset,
    times: np.ndarray,
    entropy_samples: int,
    seed: int,
    budget_bytes: int,
    device="cpu",
    entropy_fraction: float = 0.1,
    entropy_z: float = 2.0,
    n_boot: int = 200,
    progress=None,
    blur: float = 0.0,
) -> xr.Dataset:
    """Spectrum, Λ, both t_S references, the excess entropy (theory and Monte Carlo f^e) at
    `times` and the collapse times read off it.

    With `blur` = σ_s > 0, the store of the smoothed baseline (SCIENCE.md §7): every excess
    entropy (f^e by the same Monte Carlo, f of the law and of the training spectrum) and every
    t_C read off one is that of the training set blurred by N(0, σ_s² I) (Δ_t → Γ_t =
    Δ_t + σ_s² e^{−2t}), and so are the t_S references (Λ + σ_s², GMM σ² + σ_s²); the spectrum
    and the Λ variables are the training set's."""
    x = train["x"].values.astype(np.float64)
    n, d = x.shape
    spec = law(train)
    alpha = math.log(n) / d
    eig = theory.covariance_spectrum(x)
    lam, lam0, lam_all, lam_used = top_eigenvalues(train, x, eig)
    known_law = spec["kind"] in SYNTHETIC_KINDS
    lam_pop = population_top_eigenvalue(spec, d) if known_law else float("nan")
    # the speciation references of the law the run samples: the blurred set's covariance is
    # Ĉ + σ_s² I (Λ + σ_s²) and, for the GMM, each cluster's variance σ² + σ_s²
    lam_s = lam + blur**2
    k_s, t_s_ddpm = theory.speciation_step_ddpm(lam_s, process.alphas_bar("linear", 1000))
    t_s_gmm = float("nan")
    if spec["kind"] == "gmm":
        sigma_s = math.hypot(spec["sigma"], blur)
        t_s_gmm = float(theory.speciation_time_gmm(float((train["m"].values ** 2).sum()), sigma_s))

    if not known_law:  # real data: the Gaussian-spectrum f(t) of the training covariance
        f_theory = theory.excess_entropy_spectrum(times, alpha, eig, d, blur=blur)
        fine = np.geomspace(1e-4, 20.0, 4000)
        t_c = theory.collapse_time_from_curve(
            fine, theory.excess_entropy_spectrum(fine, alpha, eig, d, clip=False, blur=blur)
        )
        t_c_how = "zero of the Gaussian-spectrum f(t) of the training covariance (no known law)"
    elif spec["kind"] == "gmm":
        f_theory = theory.excess_entropy_gmm(times, alpha, spec["sigma"], blur=blur)
        t_c = theory.collapse_time_gmm(n, d, spec["sigma"], blur=blur)
        t_c_how = (
            "GMM closed form ½ log(1 + σ²/(n^{2/d} − 1) − σ_s²)"
            if blur
            else ("GMM closed form ½ log(1 + σ²/(n^{2/d} − 1))")
        )
    else:
        pop = gaussian_spectrum(d, spec["lambda_max"], spec["decay"])
        f_theory = theory.excess_entropy_spectrum(times, alpha, pop, d, blur=blur)
        fine = np.geomspace(1e-4, 20.0, 4000)
        t_c = theory.collapse_time_from_curve(
            fine, theory.excess_entropy_spectrum(fine, alpha, pop, d, clip=False, blur=blur)
        )
        t_c_how = "zero of the Gaussian-spectrum f(t) of the law's covariance"
    if blur:
        t_c_how += f", of the training set blurred by N(0, {blur:g}² I); 0: it never collapses"
        t_c = 0.0 if np.isnan(t_c) else t_c  # f > 0 down to t → 0: no zero
    f_spectrum = theory.excess_entropy_spectrum(times, alpha, eig, d, blur=blur)

    log.info(
        "f^e Monte Carlo: %d samples at %d times, n=%d, d=%d", entropy_samples, len(times), n, d
    )
    gen = torch.Generator(device=device).manual_seed(seed)
    a = torch.as_tensor(x, dtype=torch.float64, device=device)
    f_e, f_e_se = metrics.excess_entropy_empirical(
        a, times, entropy_samples, gen, budget_bytes, progress=progress, blur=blur
    )
    t_c_e, t_c_e_se = metrics.collapse_time_entropy(
        times, f_e, f_e_se, entropy_z, n_boot, np.random.default_rng(seed)
    )

    level = metrics.collapse_time_entropy_level(times, f_e, alpha, entropy_fraction)
    ds = xr.Dataset(
        dict(
            eigenvalue=(("component",), eig),
            **estimate("f_excess", "time", f_e, se=f_e_se),
            f_theory=(("time",), f_theory),
            f_spectrum=(("time",), f_spectrum),
            Lambda=lam,
            Lambda_channel0=lam0,
            Lambda_all_channels=lam_all,
            Lambda_population=lam_pop,
            alpha=alpha,
            t_S_theory=theory.speciation_time(lam_s),
            t_S_gmm=t_s_gmm,
            t_S_ddpm=t_s_ddpm,
            k_S_ddpm=k_s,
            t_C_theory=t_c,
            **estimate("t_C_entropy", (), t_c_e, se=t_c_e_se),
            t_C_entropy_level=level,
        ),
        coords={"time": times, "component": np.arange(len(eig))},
    )
    ds["eigenvalue"].attrs["description"] = "covariance spectrum of the centred training data"
    of_what = "the training set" + (f" blurred by N(0, {blur:g}² I)" if blur else "")
    ds["f_excess"].attrs["description"] = f"Monte Carlo excess entropy f^e(t) of {of_what}"
    ds["f_theory"].attrs["description"] = "excess entropy f(t) of the law (clipped at 0)"
    ds["f_spectrum"].attrs["description"] = "Gaussian-spectrum f(t) from the training covariance"
    convention = train.attrs.get("lambda_convention", train.attrs.get("preprocessing", ""))
    ds["Lambda"].attrs.update(
        description=f"top eigenvalue of the covariance of the centred training data ({lam_used})",
        channels_used=lam_used,
        convention=convention,
        preprocessing=train.attrs.get("preprocessing", ""),
    )
    ds["Lambda_channel0"].attrs["description"] = "Λ over the pixels of channel 0 only"
    ds["Lambda_all_channels"].attrs["description"] = "Λ over every coordinate (all channels)"
    if not train.attrs.get("channels"):
        ds["Lambda_channel0"].attrs["not_applicable"] = "synthetic data have no channels"
    ds["Lambda_population"].attrs["description"] = "top eigenvalue of the law's covariance"
    if not known_law:
        ds["Lambda_population"].attrs["not_applicable"] = "real data: no known law"
    blurred = f", of the set blurred by N(0, {blur:g}² I): Λ + σ_s², σ² + σ_s²" if blur else ""
    ds["t_S_theory"].attrs["description"] = f"½ log Λ (the paper's), Λ over {lam_used}" + blurred
    ds["t_S_gmm"].attrs["description"] = (
        "exact 0.7752 crossing of the GMM's φ(t): ½ log(|m|² + 1 − σ²)" + blurred
    )
    if spec["kind"] != "gmm":
        ds["t_S_gmm"].attrs["not_applicable"] = "not a two-cluster GMM"
    ds["k_S_ddpm"].attrs["description"] = (
        "first step k of the linear 1000-step DDPM schedule with ᾱ_k < 1/Λ (the paper's Table 1)"
    )
    ds["t_S_ddpm"].attrs["description"] = "DDPM-quantised t_S = −½ log ᾱ_{k_S}"
    ds["t_C_theory"].attrs["description"] = t_c_how
    ds["t_C_entropy"].attrs["description"] = (
        f"largest t where the measured f^e(t) of {of_what} is within {entropy_z} SE of 0 (its zero)"
    )
    ds["t_C_entropy_se"].attrs["description"] = "bootstrap SE of t_C_entropy (Monte Carlo error)"
    ds["t_C_entropy_level"].attrs["description"] = (
        f"largest t where the measured f^e(t) falls to the level {entropy_fraction}·α "
        "(a point of the finite-d crossover, above the zero)"
    )
    ds["alpha"].attrs["description"] = "ln(n)/d"
    ds.attrs.update(
        entropy_samples=int(entropy_samples),
        entropy_collapse_fraction=float(entropy_fraction),
        entropy_zero_se=float(entropy_z),
        seed_job=int(seed),
        blur_sigma=float(blur),
    )
    return ds
