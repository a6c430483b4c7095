"""Reading and writing the pipeline's xarray stores on Zarr v3.

Writes are atomic: the store is written beside its target under a hidden temporary name and
renamed into place, so a killed job never leaves a store that opens. Metadata is consolidated
on write and read (zarr v3 keeps it in the root zarr.json).
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import xarray as xr
import zarr

COMPRESSOR = zarr.codecs.ZstdCodec(level=3)
# Consolidated metadata is how xarray opens a store in one read; zarr 3 warns that it is not
# yet in the v3 spec. We write and read it consistently, so the warning is noise in job logs.
warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)


def _clean_attrs(attrs: dict) -> dict:
    """Zarr attrs are JSON: numpy scalars become Python numbers, dicts become JSON text."""
    out = {}
    for key, value in attrs.items():
        if isinstance(value, dict):
            out[key] = json.dumps(value, sort_keys=True, default=float)
        elif isinstance(value, np.generic):
            out[key] = value.item()
        elif value is None:
            out[key] = "none"
        else:
            out[key] = value
    return out


def _chunks(var: xr.Variable, target_bytes: int = 16 * 2**20):
    """Chunk along the first dimension so that each chunk is about `target_bytes`."""
    if var.ndim == 0:
        return None
    row = max(1, var.dtype.itemsize * int(np.prod(var.shape[1:], dtype=np.int64)))
    first = max(1, min(var.shape[0], target_bytes // row))
    return (first, *var.shape[1:])


def write(ds: xr.Dataset, path: str | os.PathLike) -> Path:
    """Write `ds` to the Zarr v3 store `path` atomically (write beside, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    ds = ds.copy()
    ds.attrs = _clean_attrs(ds.attrs)
    encoding = {}
    for name, var in ds.variables.items():
        var.attrs = _clean_attrs(var.attrs)
        if var.dtype.kind in "fiub" and var.ndim > 0:
            encoding[name] = {"compressors": (COMPRESSOR,), "chunks": _chunks(var)}
    try:
        ds.to_zarr(tmp, mode="w", zarr_format=3, consolidated=True, encoding=encoding)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(f"could not write the store {path}: {err}") from err
    if path.exists():  # Snakemake removed outputs already; this covers direct library use
        shutil.rmtree(path)
    os.replace(tmp, path)
    return path


def open_store(path: str | os.PathLike, load: bool = True) -> xr.Dataset:
    """Open a store written by `write`; a missing or broken one gets an error naming it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"store {path} does not exist: run the workflow that makes it")
    try:
        ds = xr.open_zarr(path, consolidated=True, zarr_format=3)
    except Exception as err:  # zarr raises several types for corrupt metadata
        raise OSError(
            f"store {path} cannot be opened ({type(err).__name__}: {err}); "
            "it is incomplete or corrupted: delete it and rerun the workflow"
        ) from err
    return ds.load() if load else ds


def settings(ds: xr.Dataset, key: str = "settings") -> dict:
    """The JSON settings a stage stored in its attrs."""
    return json.loads(ds.attrs.get(key, "{}"))


def load_checkpoint(path: str | os.PathLike, device="cpu") -> dict:
    """torch.load with ``weights_only=True``; a file that is not a tensor file is refused."""
    import torch  # here, not at the top: most jobs that read stores never load a checkpoint

    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # pickle, zip and format errors all mean the same to a user
        raise OSError(
            f"checkpoint {path} is not a tensor checkpoint this workflow wrote "
            f"({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
            "delete it (and its model folder's other checkpoints if they are stale) and rerun"
        ) from err


def save_atomic(obj, path):
    """torch.save beside the target, then rename: a killed job never leaves half a file."""
    import torch

    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)
