"""Image datasets (diffregimes.images): the resizing conventions, nested training sets, Λ of a
set with a known covariance (channel 0 and all channels), and errors for people. The file
readers are tested in tests/test_image_files.py."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffregimes import image_files as files
from diffregimes import images as im
from diffregimes import store
from diffregimes.data import law
from diffregimes.theory import covariance_spectrum

DIGITS = {"kind": "digits", "test_size": 100}


# ---------------------------------------------------------------------------- resizing


@pytest.mark.parametrize("side, upscale", [(3, "pad"), (5, "pad"), (11, "resize"), (16, "resize")])
def test_preprocess_matches_pil_per_image(side, upscale):
    x = np.random.default_rng(12).random((3, 2, 8, 8)).astype(np.float32)
    method = Image.Resampling.BOX if side < 8 else Image.Resampling.BILINEAR
    ref = np.stack(
        [
            [
                np.asarray(Image.fromarray(x[i, c]).resize((side, side), resample=method))
                for c in (0, 1)
            ]
            for i in range(3)
        ]
    )
    out = im.preprocess(x, side, upscale)
    assert out.shape == (3, 2, side, side) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=1e-6)


def test_preprocess_box_pad_and_errors():
    x = np.random.default_rng(13).random((2, 3, 6, 6)).astype(np.float32)
    blocks = im.preprocess(x, 2, "pad")
    np.testing.assert_allclose(blocks[1, 2, 1, 0], x[1, 2, 3:6, 0:3].mean(), rtol=1e-6)
    padded = im.preprocess(x, 9, "pad")  # margin 3: 1 before, 2 after
    np.testing.assert_array_equal(padded[:, :, 1:7, 1:7], x)
    assert padded[:, :, 0].max() == 0 and padded[:, :, 7:].max() == 0 and padded[..., 0].max() == 0
    np.testing.assert_array_equal(im.preprocess(x, 6, "pad"), x)
    with pytest.raises(ValueError, match="not square"):
        im.preprocess(np.zeros((1, 1, 4, 5)), 2, "pad")
    with pytest.raises(ValueError, match="upscale"):
        im.preprocess(x, 8, "stretch")


# ---------------------------------------------------------------------------- digits end to end


def test_digits_stores_layout_and_attrs(tmp_path):
    train, test = im.make_image_data({**DIGITS, "balanced": False}, "digits", 8, 64, 0)
    assert train.x.shape == (64, 64) and test.x.shape == (100, 64)
    assert train.x.dtype == np.float32 and train.label.dtype == np.int64
    assert train.attrs["d"] == 64 == im.dimension(DIGITS, 8)
    assert train.attrs["image_shape"] == [1, 8, 8] and train.attrs["channels"] == 1
    assert train.attrs["classes"] == [str(k) for k in range(10)]
    assert law(train)["kind"] == "digits" and law(train)["balanced"] is False
    assert (
        "8×8" in train.attrs["preprocessing"] and "no std scaling" in train.attrs["preprocessing"]
    )
    # Pixels back in [0, 1] after adding the mean; the mean is the pool's, shared by the test set.
    pix = train.x.values + train.pixel_mean.values
    assert pix.min() >= -1e-6 and pix.max() <= 1 + 1e-6 and pix.max() > 0.99
    np.testing.assert_array_equal(test.pixel_mean, train.pixel_mean)
    pool = im.load_pool(DIGITS, "digits")
    np.testing.assert_allclose(train.pixel_mean, pool.train_images.reshape(-1, 64).mean(0), 1e-6)
    back = store.open_store(store.write(train, tmp_path / "train.zarr"))
    assert back.attrs["image_shape"] == [1, 8, 8] and back.attrs["classes"][3] == "3"


def test_digits_side4_is_the_2x2_block_mean():
    pool = im.load_pool(DIGITS, "digits")
    n = len(pool.train_labels)
    blocks = pool.train_images.reshape(n, 1, 4, 2, 4, 2).mean(axis=(3, 5))
    x, y, _, _ = im.judge_data(DIGITS, "digits", 4)
    assert x.shape == (n, 1, 4, 4)
    np.testing.assert_allclose(x, blocks - blocks.mean(axis=0), atol=1e-6)
    train, _ = im.make_image_data(DIGITS, "digits", 4, 32, 0)
    assert train.attrs["d"] == 16 and "box averaging" in train.attrs["preprocessing"]
    # Each stored row is the block mean of one pool image (order is the seeded one).
    pix = (train.x.values + train.pixel_mean.values).astype(np.float64)
    dist = ((pix[:, None, :] - blocks.reshape(n, 16)[None]) ** 2).sum(-1)
    assert dist.min(axis=1).max() < 1e-10


def test_digits_padded_to_12_is_centred_zeros():
    train, _ = im.make_image_data({**DIGITS, "upscale": "pad"}, "digits", 12, 32, 0)
    x = train.x.values.reshape(32, 12, 12)
    mean = train.pixel_mean.values.reshape(12, 12)
    border = np.ones((12, 12), bool)
    border[2:10, 2:10] = False
    # Border pixels are 0 in every image, so their mean is 0 and the centred value 0 − 0.
    assert (mean[border] == 0).all() and (x[:, border] == 0).all()
    pool = im.load_pool(DIGITS, "digits").train_images.reshape(-1, 64)
    inner = (x[:, 2:10, 2:10] + mean[2:10, 2:10]).reshape(32, 64)
    dist = ((inner[:, None, :] - pool[None]) ** 2).sum(-1)
    assert dist.min(axis=1).max() < 1e-10


def test_digits_balanced_classes_equal_counts():
    spec = {**DIGITS, "classes": [1, 8], "balanced": True, "test_size": 50}
    train, test = im.make_image_data(spec, "digits", 8, 100, 0)
    assert train.attrs["classes"] == ["1", "8"]
    labels = train.label.values
    assert set(labels.tolist()) == {0, 1} and set(test.label.values.tolist()) <= {0, 1}
    ones = np.cumsum(labels == 0)
    prefix = np.arange(1, 101)
    assert np.abs(2 * ones - prefix).max() <= 1  # every prefix balanced within one
    assert ones[-1] == 50
    unbalanced, _ = im.make_image_data({**spec, "balanced": False}, "digits", 8, 100, 0)
    assert np.abs(2 * np.cumsum(unbalanced.label.values == 0) - prefix).max() > 1


def test_digits_nested_training_sets_and_fixed_test_set():
    small, test_small = im.make_image_data(DIGITS, "digits", 8, 64, 3)
    big, test_big = im.make_image_data(DIGITS, "digits", 8, 256, 3)
    np.testing.assert_array_equal(small.x, big.x[:64])
    np.testing.assert_array_equal(small.label, big.label[:64])
    np.testing.assert_array_equal(small.pixel_mean, big.pixel_mean)
    np.testing.assert_array_equal(test_small.x, test_big.x)
    other, _ = im.make_image_data(DIGITS, "digits", 8, 64, 4)
    assert not np.array_equal(other.x, small.x)
    again, _ = im.make_image_data(DIGITS, "digits", 8, 64, 3)
    np.testing.assert_array_equal(again.x, small.x)


def test_digits_errors_name_the_key():
    with pytest.raises(ValueError, match=r"datasets\.digits\.n: n = 5000 .*1438 training images"):
        im.make_image_data(DIGITS, "digits", 8, 5000, 0)
    with pytest.raises(ValueError, match=r"datasets\.digits\.classes: 'cow' .*available: 0, 1"):
        im.make_image_data({**DIGITS, "classes": [1, "cow"]}, "digits", 8, 10, 0)
    with pytest.raises(ValueError, match=r"datasets\.digits\.n: .*2 classes × \d+ images"):
        im.make_image_data({**DIGITS, "classes": [1, 8], "balanced": True}, "digits", 8, 400, 0)
    with pytest.raises(ValueError, match=r"datasets\.digits\.test_size: 5000 .*holds 359"):
        im.make_image_data({**DIGITS, "test_size": 5000}, "digits", 8, 10, 0)
    with pytest.raises(ValueError, match=r"datasets\.digits\.sizes"):
        im.make_image_data(DIGITS, "digits", 0, 10, 0)
    with pytest.raises(ValueError, match=r"datasets\.digits\.upscale"):
        im.make_image_data({**DIGITS, "upscale": "stretch"}, "digits", 12, 10, 0)
    with pytest.raises(ValueError, match=r"datasets\.digits\.kind"):
        im.load_pool({"kind": "gmm"}, "digits")


# ---------------------------------------------------------------------------- Fashion-MNIST


def test_fashion_mnist_missing_folder_says_what_to_install(tmp_path):
    spec = {"kind": "fashion_mnist", "path": str(tmp_path / "none")}
    with pytest.raises(FileNotFoundError, match=r"datasets\.fm\.path: .*dataset-fashion-mnist"):
        im.load_pool(spec, "fm")


def require_fashion_mnist():
    """Skip without Debian's files, unless DIFFREGIMES_FASHION_MNIST=required (as in CI)."""
    if Path(files.FASHION_MNIST_PATH).is_dir():
        return
    why = (
        f"Fashion-MNIST not installed at {files.FASHION_MNIST_PATH} "
        "(apt-get install dataset-fashion-mnist)"
    )
    if os.environ.get("DIFFREGIMES_FASHION_MNIST") == "required":
        pytest.fail(why)
    pytest.skip(why)


def test_fashion_mnist_real_files_side7():
    require_fashion_mnist()
    spec = {"kind": "fashion_mnist", "classes": ["Trouser", 8], "test_size": 50}
    x, y, xt, yt = im.judge_data(spec, "fm", 7)
    assert x.shape == (12000, 1, 7, 7) and xt.shape == (2000, 1, 7, 7)
    assert np.bincount(y).tolist() == [6000, 6000] and np.bincount(yt).tolist() == [1000, 1000]
    np.testing.assert_allclose(x.mean(axis=0), 0, atol=1e-5)  # centred by the pool mean
    train, test = im.make_image_data({**spec, "balanced": True}, "fm", 7, 64, 0)
    assert train.attrs["classes"] == ["Trouser", "Bag"] and train.attrs["d"] == 49
    assert np.bincount(train.label.values).tolist() == [32, 32] and test.x.shape == (50, 49)
    assert "28×28 → 7×7 by box averaging" in train.attrs["preprocessing"]


# ---------------------------------------------------------------------------- Λ


def test_top_eigenvalue_of_a_known_covariance(tmp_path):
    """Pixels 0.5 + s g v + τ ε (v a unit 8×8 pattern, g, ε standard normal), in (0, 1) so the
    [0, 1] scaling is the identity: the covariance is s² v vᵀ + τ² I, so Λ = s² + τ².

    With N = 8000 training images the sample Λ has relative standard error √(2/N) ≈ 1.6 %; the
    tolerance is 6 %, about four standard errors. At side 4 (2×2 box averaging, a linear map B
    with B Bᵀ = I/4) the law of the images says Λ = s² |B v|² + τ²/4."""
    rng = np.random.default_rng(14)
    s, tau, total = 0.1, 0.01, 10000
    v = rng.standard_normal(64)
    v /= np.linalg.norm(v)
    pixels = 0.5 + s * rng.standard_normal((total, 1)) * v + tau * rng.standard_normal((total, 64))
    assert 0 < pixels.min() and pixels.max() < 1
    path = tmp_path / "known.npz"
    np.savez(path, x=pixels.reshape(total, 8, 8).astype(np.float32))
    spec = {"kind": "npz", "path": str(path), "test_size": 10}
    n = 8000
    train, _ = im.make_image_data(spec, "known", 8, n, 0)
    ev = covariance_spectrum(train.x.values)
    assert ev[0] == pytest.approx(s**2 + tau**2, rel=0.06)
    # The rest is isotropic noise: inside a widened Marchenko–Pastur bulk of τ².
    edge = tau**2 * (1 + np.sqrt(64 / n)) ** 2
    assert ev[1] < 1.2 * edge and ev[-1] > 0.5 * tau**2 * (1 - np.sqrt(64 / n)) ** 2
    # Uncentred or std-scaled data would give a very different Λ; check the store is centred.
    np.testing.assert_allclose(train.x.values.mean(axis=0), 0, atol=3 * tau / np.sqrt(n) + 2e-3)
    np.testing.assert_allclose(train.pixel_mean.values, 0.5, atol=5e-3)

    small, _ = im.make_image_data(spec, "known", 4, n, 0)
    bv = v.reshape(4, 2, 4, 2).mean(axis=(1, 3)).ravel()
    expected = s**2 * bv @ bv + tau**2 / 4
    assert covariance_spectrum(small.x.values)[0] == pytest.approx(expected, rel=0.06)
    assert (
        "Λ" in im.top_eigenvalue_convention() and "no std scaling" in im.top_eigenvalue_convention()
    )


def test_lambda_on_channel_0_and_on_all_channels_of_rgb_data(tmp_path):
    """RGB pixels 0.5 + s_c g_c v + τ ε per channel c (independent g_c, one unit 8×8 pattern
    v): channel 0's covariance has Λ₀ = s₀² + τ², all channels together max_c s_c² + τ². The
    authors' Table 1 takes channel 0 (pitfall 3): Λ and t_S = ½ log Λ use it, and both are
    stored, named for what they are. Tolerance 6 % (four relative SEs √(2/N) at N = 8000)."""
    from diffregimes.theory_store import theory_store

    rng = np.random.default_rng(15)
    s, tau, total, n = np.array([0.06, 0.12, 0.09]), 0.01, 10000, 8000
    v = rng.standard_normal(64)
    v /= np.linalg.norm(v)
    g = rng.standard_normal((total, 3, 1))
    pixels = 0.5 + s[None, :, None] * g * v + tau * rng.standard_normal((total, 3, 64))
    assert 0 < pixels.min() and pixels.max() < 1
    path = tmp_path / "rgb.npz"
    np.savez(path, x=pixels.reshape(total, 3, 8, 8).transpose(0, 2, 3, 1).astype(np.float32))
    train, _ = im.make_image_data(
        {"kind": "npz", "path": str(path), "test_size": 10}, "rgb", 8, n, 0
    )
    assert train.attrs["channels"] == 3 and train.sizes["feature"] == 192
    th = theory_store(train, np.array([0.5, 1.0]), 16, 0, 2**24)
    assert float(th.Lambda_channel0) == pytest.approx(s[0] ** 2 + tau**2, rel=0.06)
    assert float(th.Lambda_all_channels) == pytest.approx(s.max() ** 2 + tau**2, rel=0.06)
    assert float(th.Lambda) == float(th.Lambda_channel0)
    assert float(th.t_S_theory) == pytest.approx(0.5 * np.log(float(th.Lambda_channel0)))
    assert "channel 0" in th.Lambda.attrs["channels_used"]
    # one channel: a single Λ; synthetic data have no channel 0
    grey, _ = im.make_image_data(
        {"kind": "npz", "path": str(path), "test_size": 10, "grayscale": True}, "rgb", 8, 2000, 0
    )
    th1 = theory_store(grey, np.array([0.5, 1.0]), 16, 0, 2**24)
    assert float(th1.Lambda) == float(th1.Lambda_channel0) == float(th1.Lambda_all_channels)
