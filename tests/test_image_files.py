"""The image file readers (diffregimes.image_files through images.load_pool) on fixture files
written by the tests: IDX (gzipped or not), npz, CIFAR-10's pickles and image folders, and
the errors that name the file and the key."""

from __future__ import annotations

import gzip
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffregimes import image_files as files
from diffregimes import images as im

# ---------------------------------------------------------------------------- fixture writers


def write_idx(path: Path, array: np.ndarray, gz: bool = False, magic: int | None = None):
    """An MNIST-format IDX file of unsigned bytes."""
    array = np.asarray(array, dtype=np.uint8)
    magic = (0x800 | array.ndim) if magic is None else magic
    head = magic.to_bytes(4, "big") + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    data = head + array.tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def idx_folder(root: Path, gz: bool, rng, n_train=30, n_test=12, side=6):
    root.mkdir()
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, side, side), dtype=np.uint8),
        "train_labels": np.arange(n_train, dtype=np.uint8) % 3,
        "test_images": rng.integers(0, 256, (n_test, side, side), dtype=np.uint8),
        "test_labels": np.arange(n_test, dtype=np.uint8) % 3,
    }
    for role, array in arrays.items():
        write_idx(root / files.IDX_FILES[role], array, gz=gz)
    return arrays


def write_cifar(root: Path, rng, per_batch=20):
    """CIFAR-10 python batches: pickled dicts with bytes keys, as the real files are."""
    root.mkdir()
    batches = {}
    for b in [*files.CIFAR10_TRAIN_BATCHES, "test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        with open(root / b, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": b.encode()}, f, 2)
        batches[b] = (data, np.array(labels))
    with open(root / "batches.meta", "wb") as f:
        names = [c.encode() for c in files.CIFAR10_CLASSES]
        pickle.dump({b"label_names": names, b"num_vis": 3072}, f, 2)
    return batches


# ---------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [False, True])
def test_idx_pool_matches_files(tmp_path, gz):
    arrays = idx_folder(tmp_path / "mn", gz, np.random.default_rng(1))
    pool = im.load_pool({"kind": "idx", "path": str(tmp_path / "mn")}, "mn")
    # Official split kept as is, bytes scaled by 1/255, one channel.
    np.testing.assert_allclose(pool.train_images[:, 0], arrays["train_images"] / 255, atol=1e-7)
    np.testing.assert_allclose(pool.test_images[:, 0], arrays["test_images"] / 255, atol=1e-7)
    np.testing.assert_array_equal(pool.train_labels, arrays["train_labels"])
    np.testing.assert_array_equal(pool.test_labels, arrays["test_labels"])
    assert pool.class_names == ["0", "1", "2"]
    assert pool.train_images.dtype == np.float32 and pool.train_images.shape == (30, 1, 6, 6)
    assert ("idx3-ubyte.gz" in pool.source) == gz


def test_idx_truncated_file_names_file_and_sizes(tmp_path):
    idx_folder(tmp_path / "mn", False, np.random.default_rng(2))
    f = tmp_path / "mn" / "train-images-idx3-ubyte"
    full = f.read_bytes()
    f.write_bytes(full[:-100])
    expected = f"{f} is truncated: expected {len(full)} bytes"
    with pytest.raises(ValueError, match=re.escape(expected) + f".*found {len(full) - 100}"):
        im.load_pool({"kind": "idx", "path": str(tmp_path / "mn")}, "mn")
    with pytest.raises(ValueError, match=r"datasets\.mn\.path"):
        im.load_pool({"kind": "idx", "path": str(tmp_path / "mn")}, "mn")


def test_idx_truncated_gzip_stream(tmp_path):
    idx_folder(tmp_path / "mn", True, np.random.default_rng(3))
    f = tmp_path / "mn" / "t10k-labels-idx1-ubyte.gz"
    f.write_bytes(f.read_bytes()[:-12])  # cut inside the gzip trailer / stream
    with pytest.raises(ValueError, match=re.escape(str(f)) + " is truncated"):
        im.load_pool({"kind": "idx", "path": str(tmp_path / "mn")}, "mn")


def test_idx_wrong_magic(tmp_path):
    arrays = idx_folder(tmp_path / "mn", False, np.random.default_rng(4))
    f = tmp_path / "mn" / "train-labels-idx1-ubyte"
    write_idx(f, arrays["train_labels"], magic=0x00000803)  # an "images" magic on labels
    with pytest.raises(ValueError, match=re.escape(str(f)) + " is not an IDX file"):
        im.load_pool({"kind": "idx", "path": str(tmp_path / "mn")}, "mn")


def test_idx_missing_folder_and_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"datasets\.mn\.path: .*nowhere does not exist"):
        im.load_pool({"kind": "idx", "path": str(tmp_path / "nowhere")}, "mn")
    idx_folder(tmp_path / "mn", False, np.random.default_rng(5))
    (tmp_path / "mn" / "t10k-images-idx3-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match=r"datasets\.mn\.path: .*t10k-images-idx3-ubyte"):
        im.load_pool({"kind": "idx", "path": str(tmp_path / "mn")}, "mn")


# ---------------------------------------------------------------------------- npz


def test_npz_uint8_channels_last_and_fixed_holdout(tmp_path):
    rng = np.random.default_rng(6)
    x = rng.integers(0, 256, (50, 4, 4, 3), dtype=np.uint8)
    y = rng.integers(0, 2, 50)
    path = tmp_path / "set.npz"
    np.savez(path, x=x, y=y)
    spec = {"kind": "npz", "path": str(path)}
    assert im.channels(spec) == 3 and im.dimension(spec, 8) == 192
    assert im.channels({**spec, "grayscale": True}) == 1
    pool = im.load_pool(spec, "a")
    # No official split: a fifth held out; together train and test are every image once.
    assert len(pool.test_labels) == 10 and len(pool.train_labels) == 40
    both = np.concatenate([pool.train_images, pool.test_images])
    ref = x.transpose(0, 3, 1, 2) / 255
    order = np.lexsort(both.reshape(50, -1).T)
    np.testing.assert_allclose(both[order], ref[np.lexsort(ref.reshape(50, -1).T)], atol=1e-7)
    # The split depends on the dataset name only.
    again = im.load_pool(spec, "a")
    np.testing.assert_array_equal(again.test_images, pool.test_images)
    other = im.load_pool(spec, "b")
    assert not np.array_equal(other.test_images, pool.test_images)


def test_npz_float_channel_first_and_grayscale(tmp_path):
    rng = np.random.default_rng(7)
    x = rng.random((20, 3, 5, 5)).astype(np.float32)
    path = tmp_path / "f.npz"
    np.savez(path, x=x, y=np.zeros(20, dtype=np.int64))
    spec = {"kind": "npz", "path": str(path)}
    rgb = im.load_pool(spec, "f")
    grey = im.load_pool({**spec, "grayscale": True}, "f")
    assert rgb.train_images.shape == (16, 3, 5, 5) and grey.train_images.shape == (16, 1, 5, 5)
    r, g, b = rgb.train_images[:, 0], rgb.train_images[:, 1], rgb.train_images[:, 2]
    np.testing.assert_allclose(grey.train_images[:, 0], 0.299 * r + 0.587 * g + 0.114 * b, 1e-6)
    # Float pixels are taken as they are (already in [0, 1]): the stored values are x itself.
    assert np.isin(rgb.train_images[:, 0, 0, 0], x[:, 0, 0, 0]).all()


def test_npz_without_labels(tmp_path):
    path = tmp_path / "u.npz"
    np.savez(path, x=np.full((10, 4, 4), 7, dtype=np.uint8))
    pool = im.load_pool({"kind": "npz", "path": str(path)}, "u")
    assert pool.class_names == [] and (pool.train_labels == -1).all()
    with pytest.raises(ValueError, match=r"datasets\.u\.classes: .*has no labels"):
        im.load_pool({"kind": "npz", "path": str(path), "classes": [0]}, "u")
    with pytest.raises(ValueError, match=r"datasets\.u\.balanced"):
        im.make_image_data({"kind": "npz", "path": str(path), "balanced": True}, "u", 4, 4, 0)


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"y": np.zeros(4, dtype=np.int64)}, "has no array 'x'"),
        ({"x": np.zeros((4, 4, 4), np.uint8), "y": np.zeros(3, np.int64)}, "array 'y'"),
        ({"x": np.full((4, 4, 4), 2.0)}, r"float pixels must lie in \[0, 1\]"),
        ({"x": np.zeros((4, 4, 4, 5), np.uint8)}, r"array 'x' has shape \(4, 4, 4, 5\)"),
    ],
)
def test_npz_bad_arrays(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=r"datasets\.bad\.path: .*bad\.npz.*" + message):
        im.load_pool({"kind": "npz", "path": str(path)}, "bad")


# ---------------------------------------------------------------------------- CIFAR-10


def test_cifar10_batches(tmp_path):
    batches = write_cifar(tmp_path / "cifar-10-batches-py", np.random.default_rng(8))
    spec = {"kind": "cifar10", "path": str(tmp_path / "cifar-10-batches-py")}
    pool = im.load_pool(spec, "c")
    assert pool.train_images.shape == (100, 3, 32, 32) and pool.test_images.shape == (20, 3, 32, 32)
    assert pool.class_names == list(files.CIFAR10_CLASSES)
    # Rows are channel-major: the first 1024 bytes are the red plane, row by row.
    data, labels = batches["data_batch_2"]
    np.testing.assert_allclose(pool.train_images[20, 0, 1, :], data[0, 32:64] / 255, atol=1e-7)
    np.testing.assert_allclose(pool.train_images[20, 2, 31, 31], data[0, 3071] / 255, atol=1e-7)
    np.testing.assert_array_equal(pool.test_labels, batches["test_batch"][1])
    # Names and label values both select classes; labels become indices into class_names.
    sub = im.load_pool({**spec, "classes": ["cat", 5]}, "c")
    assert sub.class_names == ["cat", "dog"]
    all_train = np.concatenate([batches[b][1] for b in files.CIFAR10_TRAIN_BATCHES])
    assert np.bincount(sub.train_labels, minlength=2).tolist() == [
        int((all_train == 3).sum()),
        int((all_train == 5).sum()),
    ]
    grey = im.load_pool({**spec, "grayscale": True}, "c")
    expect = np.tensordot([0.299, 0.587, 0.114], pool.test_images, axes=([0], [1]))
    np.testing.assert_allclose(grey.test_images[:, 0], expect, atol=1e-6)


def test_cifar10_refuses_pickles_that_run_code(tmp_path):
    write_cifar(tmp_path / "cf", np.random.default_rng(9))
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(tmp_path / "cf" / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f, 2)
    with pytest.raises(ValueError, match=r"test_batch is not a CIFAR-10 python batch"):
        im.load_pool({"kind": "cifar10", "path": str(tmp_path / "cf")}, "c")
    assert not marker.exists()


def test_cifar10_missing_batch(tmp_path):
    write_cifar(tmp_path / "cf", np.random.default_rng(10))
    (tmp_path / "cf" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match=r"datasets\.c\.path: .*data_batch_3 is missing"):
        im.load_pool({"kind": "cifar10", "path": str(tmp_path / "cf")}, "c")


# ---------------------------------------------------------------------------- image folder


def test_image_folder(tmp_path):
    rng = np.random.default_rng(11)
    root = tmp_path / "pics"
    written = {}
    for cls, count in (("owl", 4), ("cat", 6)):
        (root / cls).mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
            suffix = ".PNG" if i == 0 else ".png"  # extensions are case-insensitive
            Image.fromarray(pixels).save(root / cls / f"{i}{suffix}")
            written[(cls, i)] = pixels
    (root / "cat" / "notes.txt").write_text("not an image")
    spec = {"kind": "image_folder", "path": str(root)}
    assert im.channels(spec) == 3
    pool = im.load_pool(spec, "p")
    assert pool.class_names == ["cat", "owl"]  # sorted folder names; labels index them
    assert len(pool.train_labels) + len(pool.test_labels) == 10
    labels = np.concatenate([pool.train_labels, pool.test_labels])
    assert np.bincount(labels).tolist() == [6, 4]
    both = np.concatenate([pool.train_images, pool.test_images])
    target = written[("owl", 0)].transpose(2, 0, 1) / 255
    assert np.isclose(both, target, atol=1e-7).all(axis=(1, 2, 3)).sum() == 1

    Image.fromarray(np.zeros((7, 6, 3), np.uint8)).save(root / "owl" / "odd.png")
    with pytest.raises(ValueError, match=r"datasets\.p\.path: .*odd\.png is 6×7 but"):
        im.load_pool(spec, "p")
