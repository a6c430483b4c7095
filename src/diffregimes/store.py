"""Reading and writing the pipeline's xarray stores on Zarr v3.

Writes are atomic: the store is written beside its target under a hidden temporary name and
renamed into place, so a killed job never leaves a store that opens. Metadata is consolidated
on write and read (zarr v3 keeps it in the root zarr.json).
"""

from __future__ import annotations

import glob
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


def estimate(name: str, dims, value, se=None, ci=None) -> dict:
    """Data variables of one estimate, named as every store names them: `name`, and `name_se`
    (its standard error) or `name_ci_low`/`name_ci_high` (an interval), on dims `dims`."""
    dims = (dims,) if isinstance(dims, str) else tuple(dims)
    out = {name: (dims, value)}
    if se is not None:
        out[f"{name}_se"] = (dims, se)
    if ci is not None:
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = (dims, ci[0]), (dims, ci[1])
    return out


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


# Root attr of every store `write` makes: all chunks are on disk (zarr skips chunks that hold
# only the fill value unless told otherwise), so `open_store` can tell a deleted chunk, which
# zarr would silently read as NaN or 0, from an empty one.
ALL_CHUNKS = "all_chunks_written"
RERUN = "delete it and rerun snakemake, which makes it again"


def _partial(path: Path, pid: int | str) -> Path:
    return path.with_name(f".{path.name}.partial-{pid}")


def write(ds: xr.Dataset, path: str | os.PathLike) -> Path:
    """Write `ds` to the Zarr v3 store `path` atomically (write beside, then rename).

    A write that fails (read-only folder, full disk) raises OSError naming `path` and leaves
    an existing store at `path` unchanged; a killed one leaves only a hidden partial store
    beside it, which the next write of the same target removes."""
    path = Path(path)
    tmp = _partial(path, os.getpid())
    ds = ds.copy()
    ds.attrs = _clean_attrs(ds.attrs)
    ds.attrs[ALL_CHUNKS] = True
    encoding = {}
    for name, var in ds.variables.items():
        var.attrs = _clean_attrs(var.attrs)
        if var.dtype.kind in "fiub" and var.ndim > 0:
            encoding[name] = {"compressors": (COMPRESSOR,), "chunks": _chunks(var)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # one job writes a target at a time: partial stores beside it are left by killed jobs
        for stale in path.parent.glob(f".{glob.escape(path.name)}.partial-*"):
            shutil.rmtree(stale, ignore_errors=True)
        ds.to_zarr(
            tmp,
            mode="w",
            zarr_format=3,
            consolidated=True,
            encoding=encoding,
            write_empty_chunks=True,
        )
        _replace(tmp, path)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(
            f"could not write the store {path}: {err.strerror or err}"
            f"{f' ({err.filename})' if err.filename else ''}. Check that {path.parent} is a "
            "writable folder on a disk with free space, then rerun snakemake"
        ) from None  # the message holds the cause; its chain is zarr internals
    return path


def _replace(tmp: Path, path: Path) -> None:
    """Rename `tmp` to `path`. Snakemake removes outputs before a job, so `path` only exists in
    direct library use: it is moved aside first and put back if the rename fails."""
    if not path.exists():
        os.replace(tmp, path)
        return
    old = _partial(path, f"{os.getpid()}-old")
    os.replace(path, old)
    try:
        os.replace(tmp, path)
    except OSError:
        os.replace(old, path)
        raise
    if old.is_dir():
        shutil.rmtree(old)
    else:
        old.unlink()


def open_store(
    path: str | os.PathLike, what: str = "store", load: bool = True, require=()
) -> xr.Dataset:
    """Open a store written by `write`, with an error naming it and the fix when it is missing,
    unreadable, has lost a chunk or lacks one of the variables in `require`.

    `what` names the store in messages ("training set"). With `load=False` chunks are read
    later, so only the metadata and the chunk count are checked here."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist: run snakemake to make it")
    try:
        ds = xr.open_zarr(path, consolidated=True, zarr_format=3)
        if ds.attrs.pop(ALL_CHUNKS, False):
            _check_chunks(path)
        missing = [name for name in require if name not in ds.variables]
        if missing:
            raise ValueError(
                f"no variable {', '.join(map(repr, missing))}: not a store this "
                f"stage reads (it has {sorted(ds.variables)})"
            )
        return ds.load() if load else ds
    except MemoryError:
        raise
    except Exception as err:  # zarr and the codecs raise many types for a broken store
        first = str(err).splitlines()[0][:300] if str(err) else ""
        raise OSError(
            f"{what} {path} cannot be read ({type(err).__name__}: {first}); "
            f"it is incomplete, corrupted or of another format: {RERUN}"
        ) from None


def _check_chunks(path: Path) -> None:
    """Every chunk of every array is on disk (a deleted one would read as the fill value)."""
    group = zarr.open_group(path, mode="r", zarr_format=3, use_consolidated=True)
    for name, array in group.arrays():
        if array.nchunks_initialized != array.nchunks:
            raise FileNotFoundError(
                f"array {name!r} has {array.nchunks_initialized} of its {array.nchunks} chunk files"
            )


def load_checkpoint(path: str | os.PathLike, device="cpu") -> dict:
    """torch.load with ``weights_only=True``; a file that is not a tensor file is refused."""
    import torch  # here, not at the top: most jobs that read stores never load a checkpoint

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist: run snakemake to make it")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except MemoryError:
        raise
    except Exception as err:  # pickle, zip and format errors all mean the same to a user
        first = str(err).splitlines()[0][:200] if str(err) else ""
        raise OSError(
            f"checkpoint {path} is not a tensor checkpoint this workflow wrote "
            f"({type(err).__name__}: {first}); {RERUN}"
        ) from None


def save_atomic(obj, path):
    """torch.save beside the target, then rename: a killed job never leaves half a file, and a
    failed write raises OSError naming `path` and leaves an existing file there unchanged."""
    import torch

    path = Path(path)
    tmp = _partial(path, os.getpid())
    try:
        for stale in path.parent.glob(f".{glob.escape(path.name)}.partial-*"):  # killed saves
            stale.unlink(missing_ok=True)
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:  # torch's zip writer raises RuntimeError on ENOSPC
        tmp.unlink(missing_ok=True)
        reason = getattr(err, "strerror", None) or f"{type(err).__name__}: {err}".strip()
        raise OSError(
            f"could not write {path}: {reason}. Check that "
            f"{path.parent} is a writable folder on a disk with free space, then rerun snakemake"
        ) from None


def file_digest(path: str | os.PathLike) -> str:
    """A hex digest of a file's bytes (sha256, read in 16 MiB blocks)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(16 * 2**20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def checkpoint_record(folder: str | os.PathLike, names: dict[int, str]) -> dict[str, dict]:
    """What the model file records of its training checkpoints (step → file name in `folder`
    and its digest), so that a rule that reads them from the declared model file reads
    exactly the ones that training wrote."""
    folder = Path(folder)
    record = {}
    for step, name in sorted(names.items()):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"checkpoint {folder / name} is missing after training")
        record[str(step)] = {"file": name, "sha256": file_digest(folder / name)}
    return record


def recorded_checkpoints(model_path: str | os.PathLike) -> dict[int, Path]:
    """The checkpoints a model file records (beside it), each checked against its digest:
    step → path. A model file without a record, or a checkpoint missing or changed since the
    model was written, is an error that says to retrain."""
    model_path = Path(model_path)
    record = load_checkpoint(model_path).get("checkpoints")
    retrain = f"rerun its training (snakemake --forcerun train, or delete {model_path})"
    if not record:
        raise ValueError(f"{model_path} records no training checkpoints (an older file): {retrain}")
    out = {}
    for step, entry in record.items():
        path = model_path.parent / entry["file"]
        if not path.is_file():
            raise FileNotFoundError(
                f"checkpoint {path} recorded by {model_path} is gone: {retrain}"
            )
        if file_digest(path) != entry["sha256"]:
            raise ValueError(
                f"checkpoint {path} changed since {model_path} was written (its digest differs): "
                f"{retrain}"
            )
        out[int(step)] = path
    return out
