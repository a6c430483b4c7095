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
import gzip
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr

from .seeds import job_seed

IMAGE_KINDS = ("digits", "fashion_mnist", "idx", "npz", "cifar10", "image_folder")
FASHION_MNIST_PATH = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
# Share of a dataset without an official split (digits, npz, image folders) held out for test.
HOLDOUT_FRACTION = 0.2
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))


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


@dataclass
class _Raw:
    """What a loader read: images (N, C, H, W) uint8 or float, labels as in the files."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray | None  # None: no official split
    test_y: np.ndarray | None
    names: dict[int, str]  # label value in the files -> class name
    source: str
    scale: float  # pixel value of white (255 for uint8)


# ---------------------------------------------------------------------------- public API


def channels(spec: dict) -> int:
    """Channels of the dataset's stored images: 1 for grey kinds or `grayscale: true`."""
    kind = _kind(spec)
    if kind in ("digits", "fashion_mnist", "idx") or spec.get("grayscale", False):
        return 1
    if kind in ("cifar10", "image_folder"):
        return 3
    if spec.get("channels"):  # npz: declared in the config (checked when the file is read)
        return int(spec["channels"])
    # npz: read only the header of x.npy inside the archive, not the pixels.
    path = _folder(spec, "<name>", "an .npz file with arrays x (images) and y (labels, optional)")
    shape = _npz_header_shape(path, "x", "<name>")
    return _npz_layout(shape, path, "<name>")[1]


def dimension(spec: dict, side: int) -> int:
    """d = channels × side² of the flattened images at resolution `side`."""
    return channels(spec) * int(side) ** 2


def load_pool(spec: dict, name: str) -> Pool:
    """Read the dataset's files once: train and test pools in [0, 1], classes and grayscale
    applied, no resizing (see the module docstring for the splits)."""
    kind = _kind(spec, name)
    raw = _LOADERS[kind](spec, name)
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
        dataset=name,
        kind=spec["kind"],
        d=int(d),
        n=int(n),
        seed=int(seed),
        seed_job=job_seed("data", name, side, seed),
        channels=int(c),
        side=int(side),
        image_shape=[int(c), int(side), int(side)],
        classes=list(pool.class_names),
        source=pool.source,
        preprocessing=text,
        lambda_convention=top_eigenvalue_convention(),
    )
    # law_* mirrors data.make_synthetic, so code reading the law's settings keeps working.
    for k, v in spec.items():
        if isinstance(v, bool):
            ds.attrs[f"law_{k}"] = str(v)
        elif isinstance(v, int | float | str):
            ds.attrs[f"law_{k}"] = v
    return ds


# ---------------------------------------------------------------------------- splits, classes


def _hold_out(raw: _Raw, name: str) -> _Raw:
    """Fixed test set of a dataset without an official split: seeded by the name alone."""
    n_all = len(raw.train_y)
    perm = np.random.default_rng(job_seed("holdout", name)).permutation(n_all)
    n_test = int(round(HOLDOUT_FRACTION * n_all))
    test, train = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    return _Raw(
        raw.train_x[train],
        raw.train_y[train],
        raw.train_x[test],
        raw.train_y[test],
        raw.names,
        raw.source + f" (no official split: {n_test} of {n_all} held out, seeded by the name)",
        raw.scale,
    )


def _select_classes(spec, name, raw: _Raw):
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


# ---------------------------------------------------------------------------- loaders


def _kind(spec, name="<name>"):
    kind = spec.get("kind")
    if kind not in IMAGE_KINDS:
        raise ValueError(
            f"datasets.{name}.kind: {kind!r} is not an image kind; one of {', '.join(IMAGE_KINDS)}"
        )
    return kind


def _folder(spec, name, what):
    if not spec.get("path"):
        raise ValueError(f"datasets.{name}.path: required for kind {spec['kind']} ({what})")
    path = Path(spec["path"]).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"datasets.{name}.path: {path} does not exist; it should be {what}")
    return path


@functools.lru_cache(maxsize=1)
def _digits_arrays():
    # sklearn ships the 1797 UCI 8×8 digits inside the package: nothing is downloaded.
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images.astype(np.float32), bunch.target.astype(np.int64)


def _load_digits(spec, name):
    images, target = _digits_arrays()
    return _Raw(
        images[:, None],
        target,
        None,
        None,
        {k: str(k) for k in range(10)},
        "sklearn.datasets.load_digits (UCI optical digits, 1797 images 8×8, values 0..16)",
        16.0,
    )


def _load_fashion_mnist(spec, name):
    path = Path(spec.get("path") or FASHION_MNIST_PATH).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"datasets.{name}.path: Fashion-MNIST folder {path} not found; install Debian's "
            "package dataset-fashion-mnist (apt-get install dataset-fashion-mnist), which puts "
            f"it in {FASHION_MNIST_PATH}, or set datasets.{name}.path to a folder with the four "
            "IDX files"
        )
    raw = _load_idx_folder(path, name)
    raw.names = {k: FASHION_MNIST_CLASSES[k] for k in raw.names if 0 <= k < 10}
    return raw


def _load_idx(spec, name):
    what = (
        "a folder with train-images-idx3-ubyte, train-labels-idx1-ubyte, "
        "t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (each optionally .gz)"
    )
    return _load_idx_folder(_folder(spec, name, what), name)


def _load_idx_folder(path: Path, name):
    files = {}
    for role, base in IDX_FILES.items():
        found = [p for p in (path / base, path / f"{base}.gz") if p.is_file()]
        if not found:
            raise FileNotFoundError(
                f"datasets.{name}.path: {path / base} (or {base}.gz) is missing; the folder "
                "must hold the four MNIST-format IDX files"
            )
        files[role] = found[0]
    arrays = {role: _read_idx(f, name, images=role.endswith("images")) for role, f in files.items()}
    for split in ("train", "test"):
        ni, nl = len(arrays[f"{split}_images"]), len(arrays[f"{split}_labels"])
        if ni != nl:
            raise ValueError(
                f"datasets.{name}.path: {files[f'{split}_images']} holds {ni} images but "
                f"{files[f'{split}_labels']} holds {nl} labels"
            )
    labels = np.union1d(arrays["train_labels"], arrays["test_labels"])
    return _Raw(
        arrays["train_images"][:, None],
        arrays["train_labels"].astype(np.int64),
        arrays["test_images"][:, None],
        arrays["test_labels"].astype(np.int64),
        {int(k): str(int(k)) for k in labels},
        ", ".join(str(f) for f in files.values()),
        255.0,
    )


def _read_idx(path: Path, name, images: bool) -> np.ndarray:
    """An IDX file of unsigned bytes (MNIST format): magic 0x00000803 (N, H, W) images or
    0x00000801 (N,) labels, big-endian uint32 dimensions, then the bytes."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
        opener = gzip.open if head == b"\x1f\x8b" else open
        with opener(path, "rb") as f:
            data = f.read()
    except (EOFError, gzip.BadGzipFile, OSError) as err:
        raise ValueError(
            f"datasets.{name}.path: {path} is truncated or corrupt ({err}); "
            "replace it with a complete copy"
        ) from None
    expected_magic, ndim = (0x00000803, 3) if images else (0x00000801, 1)
    kind = "images" if images else "labels"
    magic = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
    if magic != expected_magic:
        got = "fewer than 4 bytes" if magic is None else f"magic 0x{magic:08x}"
        raise ValueError(
            f"datasets.{name}.path: {path} is not an IDX file of {kind} ({got}, expected "
            f"0x{expected_magic:08x}); the folder must hold MNIST-format IDX files"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(
            f"datasets.{name}.path: {path} is truncated: expected at least {header} bytes of "
            f"header, found {len(data)}; replace it with a complete copy"
        )
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(np.prod(dims))
    if len(data) != expected:
        problem = "is truncated" if len(data) < expected else "is too long"
        raise ValueError(
            f"datasets.{name}.path: {path} {problem}: expected {expected} bytes "
            f"(dimensions {' × '.join(map(str, dims))}), found {len(data)}; "
            "replace it with a complete copy"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _npz_header_shape(path: Path, key: str, name) -> tuple:
    """Shape of array `key` in an .npz from its .npy header, without reading the data."""
    if not path.is_file():
        raise FileNotFoundError(f"datasets.{name}.path: {path} does not exist (an .npz file)")
    try:
        with zipfile.ZipFile(path) as zf, zf.open(f"{key}.npy") as f:
            version = np.lib.format.read_magic(f)
            read = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            return read(f)[0]
    except KeyError:
        raise ValueError(f"datasets.{name}.path: {path} has no array {key!r}") from None
    except (zipfile.BadZipFile, ValueError) as err:
        raise ValueError(f"datasets.{name}.path: {path} is not a readable .npz ({err})") from None


def _npz_layout(shape, path, name):
    """('first' | 'last' | 'grey', channels) of an images array x of this shape."""
    if len(shape) == 3:
        return "grey", 1
    if len(shape) == 4:
        first, last = shape[1] in (1, 3), shape[3] in (1, 3)
        if first and (not last or shape[2] == shape[3]):
            return "first", shape[1]
        if last:
            return "last", shape[3]
    raise ValueError(
        f"datasets.{name}.path: {path}: array 'x' has shape {tuple(shape)}; expected "
        "(N, H, W), (N, H, W, C) or (N, C, H, W) with C = 1 or 3"
    )


def _load_npz(spec, name):
    path = _folder(spec, name, "an .npz file with arrays x (images) and y (labels, optional)")
    _npz_header_shape(path, "x", name)  # a clear error for a missing x before reading pixels
    with np.load(path, allow_pickle=False) as z:
        x = z["x"]
        y = z["y"] if "y" in z.files else None
    layout, _ = _npz_layout(x.shape, path, name)
    if layout == "grey":
        x = x[:, None]
    elif layout == "last":
        x = x.transpose(0, 3, 1, 2)
    if x.dtype == np.uint8:
        scale = 255.0
    elif np.issubdtype(x.dtype, np.floating):
        lo, hi = float(np.min(x)), float(np.max(x))
        if not (np.isfinite(lo) and np.isfinite(hi) and lo >= 0.0 and hi <= 1.0):
            raise ValueError(
                f"datasets.{name}.path: {path}: array 'x' is float with values in "
                f"[{lo}, {hi}]; float pixels must lie in [0, 1] (or store uint8 0..255)"
            )
        scale = 1.0
    else:
        raise ValueError(
            f"datasets.{name}.path: {path}: array 'x' has dtype {x.dtype}; use uint8 "
            "(0..255) or float (0..1)"
        )
    if y is None:
        y, names = np.full(len(x), -1, dtype=np.int64), {}
    else:
        if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(
                f"datasets.{name}.path: {path}: array 'y' has shape {y.shape} and dtype "
                f"{y.dtype}; expected integer labels of shape ({len(x)},), one per image in x"
            )
        y = y.astype(np.int64)
        names = {int(k): str(int(k)) for k in np.unique(y)}
    return _Raw(x, y, None, None, names, str(path), scale)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """CIFAR-10's batches are pickles: admit the few globals that rebuild numpy arrays (and
    the bytes of protocol-2 pickles), refuse everything else, so a file cannot run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module.startswith("numpy.core."):  # numpy ≥ 2 moved numpy.core to numpy._core
            module = "numpy._core." + module.removeprefix("numpy.core.")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path, name):
    if not path.is_file():
        raise FileNotFoundError(
            f"datasets.{name}.path: {path} is missing; the folder must be the extracted "
            "cifar-10-batches-py of the CIFAR-10 python version (data_batch_1..5, test_batch)"
        )
    try:
        with open(path, "rb") as f:
            batch = _NumpyOnlyUnpickler(f, encoding="bytes").load()
        data = np.asarray(batch[b"data"])
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as err:
        raise ValueError(
            f"datasets.{name}.path: {path} is not a CIFAR-10 python batch ({err!r}); expected "
            "a pickled dict with b'data' (N, 3072) uint8 and b'labels'"
        ) from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.dtype != np.uint8:
        raise ValueError(
            f"datasets.{name}.path: b'data' of {path} has shape {data.shape} and dtype "
            f"{data.dtype}; expected (N, 3072) uint8"
        )
    if labels.shape != (len(data),):
        raise ValueError(
            f"datasets.{name}.path: {path} has {len(data)} images but {labels.size} labels"
        )
    return data.reshape(-1, 3, 32, 32), labels  # rows are channel-major: R plane, G, B


def _load_cifar10(spec, name):
    path = _folder(spec, name, "the extracted cifar-10-batches-py folder")
    parts = [_read_cifar_batch(path / b, name) for b in CIFAR10_TRAIN_BATCHES]
    test_x, test_y = _read_cifar_batch(path / "test_batch", name)
    names = list(CIFAR10_CLASSES)
    meta = path / "batches.meta"
    if meta.is_file():
        try:
            with open(meta, "rb") as f:
                found = _NumpyOnlyUnpickler(f, encoding="bytes").load()[b"label_names"]
            names = [v.decode() if isinstance(v, bytes) else str(v) for v in found]
        except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as err:
            raise ValueError(
                f"datasets.{name}.path: {meta} is not a CIFAR-10 batches.meta ({err!r})"
            ) from None
    files = [*CIFAR10_TRAIN_BATCHES, "test_batch"] + (["batches.meta"] if meta.is_file() else [])
    return _Raw(
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]),
        test_x,
        test_y,
        dict(enumerate(names)),
        f"{path}/{{{','.join(files)}}}",
        255.0,
    )


def _load_image_folder(spec, name):
    from PIL import Image

    path = _folder(spec, name, "a folder with one subfolder of PNG/JPEG images per class")
    classes = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(
            f"datasets.{name}.path: {path} has no subfolders; put each class's images in a "
            "subfolder named after the class"
        )
    images, labels, size, first = [], [], None, None
    for label, folder in enumerate(classes):
        files = sorted(
            p
            for p in folder.iterdir()
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
        )
        if not files:
            raise ValueError(
                f"datasets.{name}.path: class folder {folder} holds no .png/.jpg/.jpeg file"
            )
        for f in files:
            try:
                with Image.open(f) as im:
                    im = im.convert("RGB")
            except OSError as err:
                raise ValueError(f"datasets.{name}.path: cannot read image {f} ({err})") from None
            if size is None:
                size, first = im.size, f
            elif im.size != size:
                raise ValueError(
                    f"datasets.{name}.path: {f} is {im.size[0]}×{im.size[1]} but {first} is "
                    f"{size[0]}×{size[1]}; all images must have the same size"
                )
            images.append(np.asarray(im, dtype=np.uint8).transpose(2, 0, 1))
            labels.append(label)
    return _Raw(
        np.stack(images),
        np.asarray(labels, dtype=np.int64),
        None,
        None,
        {k: p.name for k, p in enumerate(classes)},
        f"{path} ({len(images)} images in {len(classes)} class folders)",
        255.0,
    )


_LOADERS = {
    "digits": _load_digits,
    "fashion_mnist": _load_fashion_mnist,
    "idx": _load_idx,
    "npz": _load_npz,
    "cifar10": _load_cifar10,
    "image_folder": _load_image_folder,
}


@functools.lru_cache(maxsize=32)
def _pil_weights(size_in: int, size_out: int, method: str) -> np.ndarray:
    """(size_out, size_in) matrix of PIL's 1-D resampling, read off by resizing basis images:
    row j of an identity image is e_j, and its resized row is column j of the matrix."""
    from PIL import Image

    resample = {"box": Image.Resampling.BOX, "bilinear": Image.Resampling.BILINEAR}[method]
    eye = Image.fromarray(np.eye(size_in, dtype=np.float32))  # mode F
    out = np.asarray(eye.resize((size_out, size_in), resample=resample), dtype=np.float64)
    return out.T.copy()
