"""Rule `summary`: every run's metrics stacked into one store over the grid."""

from __future__ import annotations

import numpy as np
import xarray as xr

from .data import law

RUN_KEYS = ("dataset", "d", "n", "seed", "score")


def stack_summary(stores: list[xr.Dataset]) -> xr.Dataset:
    """Stack per-run metrics stores along `run`, with the run's keys as coordinates."""
    parts = []
    for ds in stores:
        keys = {k: ds.attrs[k] for k in RUN_KEYS}
        keys["sampler"] = ds.attrs.get("sampler", "")
        spec = law(ds)
        keys["kind"] = spec.get("kind", "")
        gmm = spec.get("kind") == "gmm"
        keys["sigma"] = float(spec.get("sigma", np.nan)) if gmm else np.nan  # GMM σ, mu
        keys["mu"] = float(spec.get("mu", np.nan)) if gmm else np.nan
        keys["blur"] = float(ds.attrs.get("theory_blur_sigma", 0.0))  # a smoothed baseline's σ_s
        part = ds.drop_attrs(deep=False).expand_dims(run=1)
        parts.append(part.assign_coords({k: ("run", [v]) for k, v in keys.items()}))
    out = xr.concat(
        parts,
        dim="run",
        join="outer",
        combine_attrs="drop_conflicts",
        data_vars="all",
        coords="different",
        compat="equals",
    )
    for key in ("dataset", "score", "sampler", "kind"):
        out[key] = out[key].astype(object)
    out = out.assign_coords(run=np.arange(out.sizes["run"]))
    out.attrs["description"] = (
        "every per-run metric, stacked over runs (dataset, d, n, seed, score)"
    )
    return out
