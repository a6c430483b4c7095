"""Readers of the image file formats: sklearn's digits, IDX (Fashion-MNIST, MNIST), npz,
CIFAR-10's python pickles and folders of PNG/JPEG files, each into a `Raw` (images as in the
files, labels, class names, the official split where there is one). Pixels, splits and stores
are `images`' business.

Only files on the user's own disk are read (CIFAR-10's pickles through an unpickler that admits
numpy arrays and nothing else); nothing is downloaded. A missing or malformed file is an error
that names the config key and the file.
"""

from __future__ import annotations

import functools
import gzip
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))


@dataclass
class Raw:
    """What a loader read: images (N, C, H, W) uint8 or float, labels as in the files."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray | None  # None: no official split
    test_y: np.ndarray | None
    names: dict[int, str]  # label value in the files -> class name
    source: str
    scale: float  # pixel value of white (255 for uint8)


def image_kind(spec, name="<name>"):
    kind = spec.get("kind")
    if kind not in IMAGE_KINDS:
        raise ValueError(
            f"datasets.{name}.kind: {kind!r} is not an image kind; one of {', '.join(IMAGE_KINDS)}"
        )
    return kind


def data_path(spec, name, what):
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
    return Raw(
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
    return _load_idx_folder(data_path(spec, name, what), name)


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
    return Raw(
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


def npz_header_shape(path: Path, key: str, name) -> tuple:
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


def npz_layout(shape, path, name):
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
    path = data_path(spec, name, "an .npz file with arrays x (images) and y (labels, optional)")
    npz_header_shape(path, "x", name)  # a clear error for a missing x before reading pixels
    with np.load(path, allow_pickle=False) as z:
        x = z["x"]
        y = z["y"] if "y" in z.files else None
    layout, _ = npz_layout(x.shape, path, name)
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
    return Raw(x, y, None, None, names, str(path), scale)


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
    path = data_path(spec, name, "the extracted cifar-10-batches-py folder")
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
    return Raw(
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

    path = data_path(spec, name, "a folder with one subfolder of PNG/JPEG images per class")
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
    return Raw(
        np.stack(images),
        np.asarray(labels, dtype=np.int64),
        None,
        None,
        {k: p.name for k, p in enumerate(classes)},
        f"{path} ({len(images)} images in {len(classes)} class folders)",
        255.0,
    )


LOADERS = {
    "digits": _load_digits,
    "fashion_mnist": _load_fashion_mnist,
    "idx": _load_idx,
    "npz": _load_npz,
    "cifar10": _load_cifar10,
    "image_folder": _load_image_folder,
}


def read_raw(spec: dict, name: str) -> Raw:
    """What the dataset's files hold, by its `kind` (see `LOADERS`)."""
    return LOADERS[image_kind(spec, name)](spec, name)
