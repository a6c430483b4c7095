"""The class judge of the speciation measurement (SCIENCE.md §3), on sklearn's 8×8 digits."""

from __future__ import annotations

import math
import os
import pickle

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from diffregimes.judge import (
    Judge,
    confusion_matrix,
    judge_classes,
    load_judge,
    save_judge,
    train_judge,
)
from diffregimes.judge_correction import correctable


@pytest.fixture(scope="module")
def digits():
    """(x_train, y_train, x_test, y_test): values/16, centred per pixel by the training mean,
    a fixed permutation split into 1 497 training and 300 held-out images."""
    datasets = pytest.importorskip("sklearn.datasets")
    bunch = datasets.load_digits()  # shipped inside scikit-learn: no download
    x, y = bunch.data.astype(np.float32) / 16, bunch.target.astype(np.int64)
    perm = np.random.default_rng(0).permutation(len(x))
    train, test = perm[:1497], perm[1497:]
    mean = x[train].mean(axis=0)
    return x[train] - mean, y[train], x[test] - mean, y[test]


def _only(digits, labels):
    x_tr, y_tr, x_te, y_te = digits
    keep_tr, keep_te = np.isin(y_tr, labels), np.isin(y_te, labels)
    return x_tr[keep_tr], y_tr[keep_tr], x_te[keep_te], y_te[keep_te]


def test_judge_learns_the_digits(digits):
    """Held-out accuracy measured 0.9967 (299/300) after 300 steps, 6 s on one thread
    (0.9933 after 200 steps; 600, the default, also 0.9967)."""
    judge, accuracy, info = train_judge(*digits, channels=1, side=8, seed=0, steps=300)
    assert accuracy >= 0.90
    assert not judge.training
    assert info["steps"] == 300 and info["n_train"] == 1497 and info["n_test"] == 300
    assert info["final_loss"] < 0.1 and info["seconds"] > 0
    pred = judge_classes(judge, torch.as_tensor(digits[2]).reshape(-1, 1, 8, 8), batch_size=64)
    assert float((pred == torch.as_tensor(digits[3])).double().mean()) == accuracy
    conf = info["confusion"]  # rows: true class index, columns: predicted (SCIENCE.md §3)
    assert len(conf) == 10 and all(len(row) == 10 for row in conf)
    assert all(type(v) is int for row in conf for v in row)
    assert sum(map(sum, conf)) == info["n_test"] == 300
    assert sum(conf[k][k] for k in range(10)) / 300 == accuracy
    assert info["class_counts_test"] == np.bincount(digits[3], minlength=10).tolist()
    assert info["class_counts_train"] == np.bincount(digits[1], minlength=10).tolist()
    for i, j in zip(digits[3], pred.tolist(), strict=True):  # counts of (true, predicted)
        conf[i][j] -= 1
    assert not any(map(any, conf))


def test_arbitrary_labels_come_back_as_given(digits):
    x_tr, y_tr, x_te, y_te = _only(digits, [1, 8])
    judge, accuracy, info = train_judge(x_tr, y_tr, x_te, y_te, 1, 8, seed=1, steps=60)
    assert judge.classes.tolist() == [1, 8]
    pred = judge_classes(judge, x_te)
    assert set(pred.unique().tolist()) <= {1, 8}
    assert accuracy > 0.8  # measured 1.0 (60 steps)
    # confusion rows/columns follow judge.classes: index 0 is label 1, index 1 label 8
    assert info["class_counts_test"] == [int(np.sum(y_te == 1)), int(np.sum(y_te == 8))]
    assert sum(map(sum, info["confusion"])) == len(y_te)
    assert (info["confusion"][0][0] + info["confusion"][1][1]) / len(y_te) == accuracy


def test_confusion_matrix_of_unsorted_classes():
    conf = confusion_matrix([9, 2, 5], [9, 9, 2, 5, 5, 5], [9, 2, 2, 5, 9, 5])
    assert conf == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    with pytest.raises(ValueError, match="outside the classes"):
        confusion_matrix([0, 1], [0, 2], [0, 1])
    with pytest.raises(ValueError, match="never occur in the training labels"):
        train_judge(torch.zeros(4, 64), [0, 1] * 2, torch.zeros(2, 64), [0, 3], 1, 8, 0, steps=1)


def test_same_seed_same_judge(digits):
    x_tr, y_tr, x_te, y_te = _only(digits, [3, 5, 9])
    runs = [train_judge(x_tr, y_tr, x_te, y_te, 1, 8, seed=7, steps=40) for _ in range(2)]
    assert runs[0][1] == runs[1][1]
    x = torch.as_tensor(digits[2])
    logits = [judge(x) for judge, _, _ in runs]
    torch.testing.assert_close(logits[0], logits[1], rtol=0, atol=0)
    assert torch.equal(judge_classes(runs[0][0], x), judge_classes(runs[1][0], x))


def test_save_and_load_give_the_same_predictions(digits, tmp_path):
    x_tr, y_tr, x_te, y_te = _only(digits, [0, 6])
    judge, accuracy, info = train_judge(x_tr, y_tr, x_te, y_te, 1, 8, seed=2, steps=30)
    path = tmp_path / "judge.pt"
    save_judge(path, judge, accuracy, info)
    back, back_accuracy, back_info = load_judge(path)
    assert back_accuracy == accuracy and back_info == info
    assert back.classes.tolist() == [0, 6] and not back.training
    x = torch.as_tensor(digits[2])
    assert torch.equal(judge_classes(back, x), judge_classes(judge, x))
    assert [p.name for p in tmp_path.iterdir()] == ["judge.pt"]  # no partial file left
    assert back_info["confusion"] == info["confusion"]  # plain lists survive weights_only


def test_a_judge_file_without_confusion_still_loads(digits, tmp_path):
    """Judge files written before the confusion matrix was stored: they load, and the
    correction of φ says it cannot use them."""
    x_tr, y_tr, x_te, y_te = _only(digits, [0, 6])
    judge, accuracy, info = train_judge(x_tr, y_tr, x_te, y_te, 1, 8, seed=2, steps=5)
    new_keys = ("confusion", "class_counts_test", "class_counts_train")
    old = {k: v for k, v in info.items() if k not in new_keys}
    save_judge(tmp_path / "old.pt", judge, accuracy, old)
    _, back_accuracy, back_info = load_judge(tmp_path / "old.pt")
    assert back_accuracy == accuracy and "confusion" not in back_info
    assert "no confusion matrix" in correctable(back_info.get("confusion"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_a_file_that_is_not_a_judge_is_refused(tmp_path):
    pickled = tmp_path / "judge_evil.pt"
    with open(pickled, "wb") as f:
        pickle.dump({"payload": os.getcwd}, f)  # arbitrary objects are refused (weights_only)
    with pytest.raises(OSError, match=r"judge_evil\.pt.*delete it"):
        load_judge(pickled)
    other = tmp_path / "model.pt"
    torch.save({"ema": {}, "step": torch.tensor(3)}, other)  # a tensor file, not a judge
    with pytest.raises(OSError, match=r"model\.pt.*not a judge.*delete it"):
        load_judge(other)


@pytest.mark.parametrize("side", [4, 16])
def test_other_sides(digits, side):
    """Side 4: 2×2 box averages of the digits; side 16: the digits zero-padded by 4."""
    x_tr, y_tr, x_te, y_te = _only(digits, [0, 1, 7])

    def resize(x):
        img = torch.as_tensor(x).reshape(-1, 1, 8, 8)
        img = F.avg_pool2d(img, 2) if side == 4 else F.pad(img, (4, 4, 4, 4))
        return img.reshape(len(x), -1)

    judge, accuracy, _ = train_judge(
        resize(x_tr), y_tr, resize(x_te), y_te, 1, side, seed=3, steps=60
    )
    assert judge(resize(x_te)).shape == (len(x_te), 3)
    assert accuracy > 0.8  # three well-separated digits; measured 1.0 at both sides


def test_judge_shapes_and_errors():
    judge = Judge(3, 64, [2, 5, 9], widths=(8, 16, 16))
    assert judge(torch.randn(2, 3 * 64 * 64)).shape == (2, 3)
    assert judge_classes(judge, torch.randn(5, 3, 64, 64)).dtype == torch.int64
    with pytest.raises(ValueError, match="do not match"):
        judge_classes(judge, torch.randn(5, 64))
    with pytest.raises(ValueError, match="two distinct classes"):
        Judge(1, 8, [4])
    with pytest.raises(ValueError, match="one class only"):
        train_judge(torch.zeros(4, 64), [1] * 4, torch.zeros(2, 64), [1, 1], 1, 8, 0, steps=1)


def test_a_dataset_without_labels_gets_a_judge_file_that_says_why(tmp_path):
    """The judge rule's output for unlabelled images: load_judge gives (None, NaN, reason)."""
    from diffregimes.judge import save_no_classes

    save_no_classes(tmp_path / "judge.pt", "x has no labels")
    net, accuracy, info = load_judge(tmp_path / "judge.pt")
    assert net is None and math.isnan(accuracy) and info == {"no_classes": "x has no labels"}
