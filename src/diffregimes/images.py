"""Real image datasets as training and held-out sets of flattened pixels.

Conventions (the paper's, Biroli et al. 2024, Nat. Commun. 15, 9957, and SCIENCE.md §3, pitfall 3:
Λ depends on them, so every store records them in its `preprocessing` attr):

- Pixels are scaled to [0, 1] (uint8 / 255; sklearn's digits 0..16 / 16; floats must already
  be in [0, 1]). `grayscale: true` maps RGB to the ITU-R 601 luma 0.299 R + 0.587 G + 0.114 B.
- Resolution `side` (images are square): downscaling by box averaging when the size divides
  (exact block means), else area interpolation (PIL's BOX filter); upscaling by centred zero
  padding (`upscale: pad`, pixel value 0) or bilinear interpolation (`upscale: resize`).
- Centring: the per-pixel mean of the whole training pool at that resolution is subtracted, from
  the training and the test set alike. Not the mean of the n-point subset: then the training sets
  of a grid over n are nested (the set of size n is the first n rows of the set of size n' > n)
  and the centring does not depend on n. No std scaling.
- d = channels × side². Λ (the top eigenvalue of the covariance of the centred training data)
  is then the paper's; `top_eigenvalue_convention()` is the label to print with it.

Splits: IDX (Fashion-MNIST, MNIST) and CIFAR-10 files have an official test split, which is
used. digits, npz and image folders have none: a permutation seeded by the dataset name alone
holds out a fixed fifth, the same for every n, side and seed. `classes` selects a subset (labels
are then the index into the store's `classes` attr); `balanced: true` orders the training pool
round-robin over classes so every prefix has equal counts (±1).

Only files on the user's own disk are read (CIFAR-10's python pickles through an unpickler
that admits numpy arrays and nothing else); nothing is downloaded.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import xarray as xr

from .data import cell_attrs, law_attr
from .image_files import (
    Raw,
    data_path,
    image_kind,
    npz_header_shape,
    npz_layout,
    read_raw,
)
from .seeds import job_seed

# Share of a dataset without an official split (digits, npz, image folders) held out for test.
HOLDOUT_FRACTION = 0.2
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601


@dataclass
class Pool:
    """Every image of a dataset after `classes` and `grayscale`, before resizing.

    Images are (N, C, H, W) float32 in [0, 1]; labels int64 index `class_names` (-1: no label).
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: list[str] = field(default_factory=list)
    source: str = ""


# ---------------------------------------------------------------------------- public API


def channels(spec: dict) -> int:
    """Channels of the dataset's stored images: 1 for grey kinds or `grayscale: true`."""
    kind = image_kind(spec)
    if kind in ("digits", "fashion_mnist", "idx") or spec.get("grayscale", False):
        return 1
    if kind in ("cifar10", "image_folder"):
        return 3
    if spec.get("channels"):  # npz: declared in the config (checked when the file is read)
        return int(spec["channels"])
    # npz: read only the header of x.npy inside the archive, not the pixels.
    path = data_path(spec, "<name>", "an .npz file with arrays x (images) and y (labels, optional)")
    shape = npz_header_shape(path, "x", "<name>")
    return npz_layout(shape, path, "<name>")[1]


def dimension(spec: dict, side: int) -> int:
    """d = channels × side² of the flattened images at resolution `side`."""
    return channels(spec) * int(side) ** 2


def load_pool(spec: dict, name: str) -> Pool:
    """Read the dataset's files once: train and test pools in [0, 1], classes and grayscale
    applied, no resizing (see the module docstring for the splits)."""
    raw = read_raw(spec, name)
    if raw.test_x is None:
        raw = _hold_out(raw, name)
    label_map, class_names = _select_classes(spec, name, raw)
    pool = []
    for x, y in ((raw.train_x, raw.train_y), (raw.test_x, raw.test_y)):
        if label_map is not None:
            keep = np.isin(y, list(label_map))
            x, y = x[keep], y[keep]
            y = np.array([label_map[int(v)] for v in y], dtype=np.int64)
        # Convert after the class filter: a two-class subset of CIFAR-10 never holds all 60000
        # images as float32.
        x = np.asarray(x, dtype=np.float32)
        if raw.scale != 1.0:
            x = x / np.float32(raw.scale)
        if spec.get("grayscale", False) and x.shape[1] == 3:
            x = np.tensordot(np.asarray(LUMA, dtype=np.float32), x, axes=([0], [1]))[:, None]
        pool += [np.ascontiguousarray(x, dtype=np.float32), np.asarray(y, dtype=np.int64)]
    return Pool(*pool, class_names=class_names, source=raw.source)


def preprocess(images, side: int, upscale: str = "pad") -> np.ndarray:
    """(N, C, H, H) in [0, 1] -> (N, C, side, side) float32.

    side < H: box averaging when H % side == 0 (exact block means), else area interpolation
    (PIL BOX); side > H: `upscale` "pad" (zeros, centred; an odd margin puts the extra row and
    column at the bottom and right) or "resize" (PIL bilinear); side == H: unchanged."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W); got shape {images.shape}")
    n, c, h, w = images.shape
    if h != w:
        raise ValueError(f"images are {h}×{w}, not square: resizing assumes square images")
    side = int(side)
    if side < 1:
        raise ValueError(f"side must be a positive integer, got {side}")
    if side == h:
        return images.copy()
    if side < h and h % side == 0:
        f = h // side
        return (
            images.reshape(n, c, side, f, side, f)
            .mean(axis=(3, 5), dtype=np.float64)
            .astype(np.float32)
        )
    if side > h and upscale == "pad":
        lo = (side - h) // 2
        out = np.zeros((n, c, side, side), dtype=np.float32)
        out[:, :, lo : lo + h, lo : lo + h] = images
        return out
    if side > h and upscale != "resize":
        raise ValueError(f"upscale must be 'pad' or 'resize', got {upscale!r}")
    # PIL's resampling is linear and separable: the same 1-D weights along rows and columns of
    # a square image, so one small matrix per axis does the whole batch at once.
    weights = _pil_weights(h, side, "box" if side < h else "bilinear")
    out = np.einsum("ih,nchw,jw->ncij", weights, images.astype(np.float64), weights)
    return out.astype(np.float32)


def make_image_data(spec: dict, name: str, side: int, n: int, seed: int):
    """(train, test) xarray Datasets: x(item, feature) float32 centred pixels, label(item),
    pixel_mean(feature) (add it back to display an image), in the layout of
    `data.make_synthetic`, with the preprocessing convention in attrs."""
    side = _check_side(spec, name, side)
    pool = load_pool(spec, name)
    upscale = spec.get("upscale", "pad")
    x_pool, mean, shape = _centred(pool.train_images, side, upscale, spec, name)
    root = np.random.SeedSequence(job_seed("data", name, side, seed))
    train_ss, test_ss = root.spawn(2)
    order = _training_order(pool, spec, name, n, train_ss)
    test_size = int(spec.get("test_size", 1024))
    n_test = len(pool.test_labels)
    if test_size > n_test:
        raise ValueError(
            f"datasets.{name}.test_size: {test_size} test images asked for, but the test pool "
            f"of {pool.source} holds {n_test}{_classes_note(pool)}; set test_size ≤ {n_test}"
        )
    test_idx = np.random.default_rng(test_ss).permutation(n_test)[:test_size]
    x_test = preprocess(pool.test_images[test_idx], side, upscale).reshape(test_size, -1) - mean
    c = shape[0]
    text = _convention(pool, spec, side, upscale)
    sets = (
        (x_pool[order[:n]], pool.train_labels[order[:n]]),
        (x_test, pool.test_labels[test_idx]),
    )
    return tuple(_as_dataset(x, y, mean, spec, name, side, n, seed, c, pool, text) for x, y in sets)


def judge_data(spec: dict, name: str, side: int):
    """The full pools at resolution `side`, centred like the stores, for a class judge:
    (x_train (N, C, side, side) float32, y_train, x_test, y_test)."""
    side = _check_side(spec, name, side)
    pool = load_pool(spec, name)
    upscale = spec.get("upscale", "pad")
    x_train, mean, shape = _centred(pool.train_images, side, upscale, spec, name)
    x_test = preprocess(pool.test_images, side, upscale).reshape(len(pool.test_images), -1)
    x_test = x_test - mean
    return (
        x_train.reshape(-1, *shape),
        pool.train_labels,
        x_test.reshape(-1, *shape).astype(np.float32),
        pool.test_labels,
    )


def top_eigenvalue_convention() -> str:
    """The label that goes with Λ (and t_S = ½ log Λ) of an image dataset."""
    return (
        "Λ: top eigenvalue of the covariance of pixels in [0, 1], per-pixel centred by the "
        "training-pool mean, no std scaling (Biroli et al. 2024)"
    )


# ---------------------------------------------------------------------------- stores


def _check_side(spec, name, side):
    if int(side) != side or side < 1:
        raise ValueError(f"datasets.{name}.sizes: {side!r} is not a positive integer side")
    return int(side)


def _centred(images, side, upscale, spec, name):
    """Flattened pool at `side` minus its per-pixel mean (float64 sum, float32 result)."""
    if upscale not in ("pad", "resize"):
        raise ValueError(f"datasets.{name}.upscale: {upscale!r} is not 'pad' or 'resize'")
    try:
        x = preprocess(images, side, upscale)
    except ValueError as err:
        raise ValueError(f"datasets.{name}.sizes: side {side}: {err}") from None
    shape = x.shape[1:]
    x = x.reshape(len(x), -1)
    mean = x.mean(axis=0, dtype=np.float64).astype(np.float32)
    return x - mean, mean, shape


def _training_order(pool, spec, name, n, seed_seq):
    """One seeded ordering of the training pool; the training set of size n is its first n
    items, so the sets are nested over n for a given (dataset, side, seed)."""
    labels = pool.train_labels
    rng = np.random.default_rng(seed_seq)
    if spec.get("balanced", False):
        if len(pool.class_names) == 0:
            raise ValueError(
                f"datasets.{name}.balanced: {pool.source} has no labels to balance; "
                "set balanced: false or give the images labels"
            )
        classes = np.arange(len(pool.class_names))
        members = [np.flatnonzero(labels == k) for k in classes]
        m = min(len(idx) for idx in members)
        if m == 0:
            empty = pool.class_names[int(np.argmin([len(i) for i in members]))]
            raise ValueError(f"datasets.{name}.classes: class {empty!r} has no training image")
        # Each class in its own random order; rounds of one image per class, in a fresh class
        # order each round, so every prefix holds equal counts (±1) and no class always leads.
        table = np.stack([rng.permutation(idx)[:m] for idx in members])  # (k, m)
        rounds = np.stack([rng.permutation(len(classes)) for _ in range(m)])  # (m, k)
        order = table[rounds, np.arange(m)[:, None]].reshape(-1)
        available = f"{len(classes)} classes × {m} images of the smallest class = {len(order)}"
    else:
        order = rng.permutation(len(labels))
        available = f"{len(order)} training images"
    if n > len(order):
        raise ValueError(
            f"datasets.{name}.n: n = {n} is larger than the {available} available in "
            f"{pool.source}{_classes_note(pool)}; lower n"
            + (" or set balanced: false" if spec.get("balanced", False) else "")
        )
    return order


def _classes_note(pool):
    return f" (classes {', '.join(pool.class_names)})" if pool.class_names else ""


def _convention(pool, spec, side, upscale):
    """The exact preprocessing as a sentence for the store's attrs."""
    c, h = pool.train_images.shape[1], pool.train_images.shape[2]
    steps = [f"pixels scaled to [0, 1] ({c} channel{'s' if c > 1 else ''})"]
    if spec.get("grayscale", False):
        steps.append("RGB → grey by ITU-R 601 luma 0.299 R + 0.587 G + 0.114 B")
    if side < h:
        how = "box averaging" if h % side == 0 else "area interpolation (PIL BOX)"
    elif side > h:
        how = "zero padding, centred" if upscale == "pad" else "bilinear interpolation (PIL)"
    else:
        how = "native resolution"
    steps.append(f"{h}×{h} → {side}×{side} by {how}" if side != h else f"{h}×{h}, {how}")
    steps.append(
        f"per-pixel mean of the training pool ({len(pool.train_labels)} images) subtracted "
        "(centred)"
    )
    steps.append("no std scaling (paper convention)")
    return "; ".join(steps)


def _as_dataset(x, label, mean, spec, name, side, n, seed, c, pool, text):
    d = c * side * side
    ds = xr.Dataset(
        {
            "x": (("item", "feature"), np.ascontiguousarray(x, dtype=np.float32)),
            "label": (("item",), np.asarray(label, dtype=np.int64)),
            "pixel_mean": (("feature",), mean.astype(np.float32)),
        },
        coords={"item": np.arange(len(x)), "feature": np.arange(d)},
    )
    ds["label"].attrs["description"] = (
        "class index into attrs['classes']" if pool.class_names else "no classes (-1)"
    )
    ds["pixel_mean"].attrs["description"] = (
        "per-pixel mean of the training pool, subtracted from x; x + pixel_mean, reshaped to "
        "image_shape, is the image in [0, 1]"
    )
    ds.attrs.update(
        cell_attrs(name, spec["kind"], d, n, seed, job_seed("data", name, side, seed)),
        channels=int(c),
        side=int(side),
        image_shape=[int(c), int(side), int(side)],
        classes=list(pool.class_names),
        source=pool.source,
        preprocessing=text,
        lambda_convention=top_eigenvalue_convention(),
    )
    ds.attrs["law"] = law_attr(spec)  # as data.make_synthetic writes it
    return ds


# ---------------------------------------------------------------------------- splits, classes


def _hold_out(raw: Raw, name: str) -> Raw:
    """Fixed test set of a dataset without an official split: seeded by the name alone."""
    n_all = len(raw.train_y)
    perm = np.random.default_rng(job_seed("holdout", name)).permutation(n_all)
    n_test = int(round(HOLDOUT_FRACTION * n_all))
    test, train = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    return Raw(
        raw.train_x[train],
        raw.train_y[train],
        raw.train_x[test],
        raw.train_y[test],
        raw.names,
        raw.source + f" (no official split: {n_test} of {n_all} held out, seeded by the name)",
        raw.scale,
    )


def _select_classes(spec, name, raw: Raw):
    """({file label -> new label}, class names) for the `classes` subset, or (None, []) when
    the data has no labels. New labels index the returned names."""
    wanted = spec.get("classes")
    if not raw.names:
        if wanted:
            raise ValueError(
                f"datasets.{name}.classes: {raw.source} has no labels (no array y); "
                "remove `classes` or add labels"
            )
        return None, []
    by_name = {v: k for k, v in raw.names.items()}
    if wanted is None:
        chosen = sorted(raw.names)
    else:
        chosen = []
        for c in wanted:
            if isinstance(c, str) and c in by_name:
                label = by_name[c]
            elif isinstance(c, int | np.integer) and not isinstance(c, bool) and c in raw.names:
                label = int(c)  # a label value as in the files (CIFAR-10: 3 is "cat")
            elif str(c) in by_name:
                label = by_name[str(c)]
            else:
                names = ", ".join(raw.names[k] for k in sorted(raw.names))
                raise ValueError(
                    f"datasets.{name}.classes: {c!r} is not a class of {raw.source}; "
                    f"available: {names}"
                )
            if label in chosen:
                raise ValueError(f"datasets.{name}.classes: {c!r} is listed twice")
            chosen.append(label)
    return {label: i for i, label in enumerate(chosen)}, [raw.names[k] for k in chosen]


@functools.lru_cache(maxsize=32)
def _pil_weights(size_in: int, size_out: int, method: str) -> np.ndarray:
    """(size_out, size_in) matrix of PIL's 1-D resampling, read off by resizing basis images:
    row j of an identity image is e_j, and its resized row is column j of the matrix."""
    from PIL import Image

    resample = {"box": Image.Resampling.BOX, "bilinear": Image.Resampling.BILINEAR}[method]
    eye = Image.fromarray(np.eye(size_in, dtype=np.float32))  # mode F
    out = np.asarray(eye.resize((size_out, size_in), resample=resample), dtype=np.float64)
    return out.T.copy()
