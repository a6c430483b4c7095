"""Training and held-out sets of the synthetic laws (SCIENCE.md §2).

Draws are made with numpy's SeedSequence streams, one per role (labels, noise, test), so the
training set of size n is the first n rows of the one of size n' > n for the same
(dataset, d, seed): a grid over n studies nested training sets, as in the paper.
"""

from __future__ import annotations

import json

import numpy as np
import xarray as xr

from .seeds import job_seed

SYNTHETIC_KINDS = ("gmm", "gaussian")


def cell_attrs(name: str, kind: str, d: int, n: int, seed: int, seed_job: int) -> dict:
    """The attrs every data store carries: its cell and the seed its job drew from."""
    return dict(dataset=name, kind=kind, d=int(d), n=int(n), seed=int(seed), seed_job=seed_job)


def gmm_mean(d: int, mu: float, direction: str, seed: int) -> np.ndarray:
    """m with |m|² = d μ̃²: ones(d)·μ̃, or a uniformly random direction of that norm."""
    if direction == "ones":
        return np.full(d, mu, dtype=np.float64)
    v = np.random.default_rng(seed).standard_normal(d)
    return v / np.linalg.norm(v) * mu * np.sqrt(d)


def gaussian_spectrum(d: int, lambda_max: float, decay: float) -> np.ndarray:
    """Power-law covariance eigenvalues λ_i = λ_max · i^{−decay}, i = 1..d (axis-aligned)."""
    return lambda_max * np.arange(1, d + 1, dtype=np.float64) ** (-decay)


def _draw(spec: dict, d: int, count: int, streams, m=None):
    """`count` points of the law in `spec` from the (label, noise) numpy generators."""
    label_rng, noise_rng = streams
    z = noise_rng.standard_normal((count, d))
    if spec["kind"] == "gmm":
        label = (label_rng.random(count) < 0.5).astype(np.int64)  # 1 ↔ +m, 0 ↔ −m
        x = (2 * label - 1)[:, None] * m[None, :] + spec["sigma"] * z
        return x, label
    lam = gaussian_spectrum(d, spec["lambda_max"], spec["decay"])
    return z * np.sqrt(lam)[None, :], np.full(count, -1, dtype=np.int64)


def make_synthetic(spec: dict, name: str, d: int, n: int, seed: int):
    """(train, test) xarray Datasets with x(item, feature) float32 and label(item).

    `spec` is the dataset's config entry. Attributes record the law and every setting."""
    if spec["kind"] not in SYNTHETIC_KINDS:
        raise ValueError(f"datasets.{name}.kind: {spec['kind']!r} is not a synthetic kind")
    root = np.random.SeedSequence(job_seed("data", name, d, seed))
    train_streams, test_streams = root.spawn(2)
    m = None
    if spec["kind"] == "gmm":
        m = gmm_mean(d, spec["mu"], spec["direction"], job_seed("mean", name, d, seed))
    stores = []
    for streams, count in ((train_streams, n), (test_streams, spec["test_size"])):
        gens = [np.random.default_rng(s) for s in streams.spawn(2)]
        x, label = _draw(spec, d, count, gens, m)
        stores.append(_as_dataset(x, label, spec, name, d, n, seed, m))
    return tuple(stores)


def _as_dataset(x, label, spec, name, d, n, seed, m):
    ds = xr.Dataset(
        {
            "x": (("item", "feature"), x.astype(np.float32)),
            "label": (("item",), label),
        },
        coords={"item": np.arange(len(x)), "feature": np.arange(d)},
    )
    if m is not None:
        ds["m"] = (("feature",), m)
        ds["m"].attrs["description"] = "mixture mean: components N(±m, σ²I)"
    ds["label"].attrs["description"] = (
        "component of origin (1: +m, 0: −m)" if m is not None else "no classes (-1)"
    )
    ds.attrs.update(
        cell_attrs(name, spec["kind"], d, n, seed, job_seed("data", name, d, seed)),
        preprocessing="none (synthetic law, raw coordinates)",
    )
    ds.attrs["law"] = law_attr(spec)
    return ds


def law_attr(spec: dict) -> str:
    """The law (or image set) a data store is made from, as its one JSON attr `law`: the
    dataset entry's keys, with the values JSON can hold."""
    keep = {k: v for k, v in spec.items() if isinstance(v, bool | int | float | str | list)}
    return json.dumps(keep, sort_keys=True)


def law(ds: xr.Dataset) -> dict:
    """The settings of the law (or image set) a store was made from (its `law` attr, written by
    `law_attr`; metrics stores carry their training set's)."""
    return json.loads(ds.attrs.get("law", "{}"))


def population_top_eigenvalue(spec: dict, d: int) -> float:
    """Λ of the law itself: σ² + d μ̃² for the GMM, λ_max for the power-law Gaussian."""
    if spec["kind"] == "gmm":
        return spec["sigma"] ** 2 + d * spec["mu"] ** 2
    return float(spec["lambda_max"])
