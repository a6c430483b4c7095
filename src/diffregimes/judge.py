"""The class judge: a small CNN trained on the real labelled images, which labels the end points
of the clones in the speciation measurement φ(t) = P(two clones end in the same class)
(SCIENCE.md §3).

Its held-out accuracy caps φ(0) below 1, so it is stored with the weights, together with its
held-out confusion matrix, from which `judge_correction` undoes the judge's pull of φ toward
chance. Inputs are images in the data stage's coordinates (pixels in [0, 1] minus the
per-pixel training mean), either flattened (N, C·side·side) as the stores hold them or as
(N, C, side, side). Labels may be any integers: they are mapped to 0..K−1 for training and back
on prediction (`Judge.classes`).
"""

from __future__ import annotations

import logging
import math
import os
import time

import torch
from torch import nn
from torch.nn import functional as F

from .store import load_checkpoint, save_atomic

JUDGE_KEYS = {"state", "config", "accuracy", "info"}


def _groups(channels: int) -> int:
    return math.gcd(channels, 8) or 1


class Judge(nn.Module):
    """conv3x3 → GroupNorm → SiLU blocks, 2×2 max-pooling between them while the feature map
    stays at least 2×2 (so sides 4 to 64 all work), then a global average pool and a linear
    layer to one logit per class. GroupNorm, not BatchNorm: the output of one image does not
    depend on the rest of its batch, in training or evaluation."""

    def __init__(self, channels: int, side: int, classes, widths=(32, 64, 128)):
        super().__init__()
        classes = torch.as_tensor(classes, dtype=torch.int64).flatten()
        if len(classes) < 2 or len(torch.unique(classes)) != len(classes):
            raise ValueError(f"a judge needs at least two distinct classes, got {classes.tolist()}")
        if side < 1 or channels < 1:
            raise ValueError(f"image shape ({channels}, {side}, {side}) is not an image shape")
        self.shape = (int(channels), int(side), int(side))
        self.widths = tuple(int(w) for w in widths)
        self.register_buffer("classes", classes)  # original label of each output index
        blocks, cin = [], channels
        for w in self.widths:
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(cin, w, 3, padding=1), nn.GroupNorm(_groups(w), w), nn.SiLU()
                )
            )
            cin = w
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(cin, len(classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, K) for images flattened (N, C·side·side) or shaped (N, C, side, side)."""
        h = x.reshape(-1, *self.shape)
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i < len(self.blocks) - 1 and h.shape[-1] >= 4:
                h = F.max_pool2d(h, 2)
        return self.head(h.mean(dim=(-2, -1)))


def _as_images(x, shape) -> torch.Tensor:
    x = torch.as_tensor(x, dtype=torch.float32)
    size = math.prod(shape)
    if x.dim() < 2 or x[0].numel() != size:
        raise ValueError(
            f"images of shape {tuple(x.shape)} do not match the judge's {shape}: pass "
            f"(N, {size}) or (N, {', '.join(map(str, shape))})"
        )
    return x.reshape(len(x), size)


def train_judge(
    x_train,
    y_train,
    x_test,
    y_test,
    channels: int,
    side: int,
    seed: int,
    steps: int = 600,
    batch_size: int = 128,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    widths=(32, 64, 128),
    device="cpu",
    log: logging.Logger | None = None,
) -> tuple[Judge, float, dict]:
    """Train a judge with AdamW (cosine-decayed lr) on (x_train, y_train) and measure its
    accuracy on (x_test, y_test).

    Initialisation and batches come from `seed` alone, so on the CPU a rerun gives the same
    weights. Returns the judge in eval mode, the held-out accuracy and an info dict: steps,
    final_loss (mean training loss of the last 10 % of steps), seconds, n_train, n_test,
    batch_size, lr, seed, and for the correction of φ (SCIENCE.md §3, `judge_correction`)
    confusion (held-out counts, rows the true class index 0..K−1 in the order of
    `Judge.classes`, columns the predicted one), class_counts_test (its row sums) and
    class_counts_train. The accuracy is the confusion matrix's trace over its total (NaN
    without test images). Every test label must occur among the training labels."""
    device = torch.device(device)
    shape = (channels, side, side)
    x_train, x_test = _as_images(x_train, shape), _as_images(x_test, shape)
    y_train = torch.as_tensor(y_train, dtype=torch.int64).flatten()
    y_test = torch.as_tensor(y_test, dtype=torch.int64).flatten()
    if len(y_train) != len(x_train) or len(y_test) != len(x_test):
        raise ValueError(
            f"{len(x_train)} training images with {len(y_train)} labels, "
            f"{len(x_test)} test images with {len(y_test)} labels: counts must match"
        )
    classes, target = torch.unique(y_train, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"the training labels hold one class only ({classes.tolist()})")
    unseen = sorted(set(torch.unique(y_test).tolist()) - set(classes.tolist()))
    if unseen:  # the judge could never predict them, and they have no row in the confusion
        raise ValueError(
            f"test labels {unseen} never occur in the training labels {classes.tolist()}: "
            "the judge cannot learn them"
        )
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the global RNG
        torch.manual_seed(seed)
        judge = Judge(channels, side, classes, widths)
    judge = judge.to(device)
    gen = torch.Generator().manual_seed(seed)  # CPU draws: the same batches on any device
    opt = torch.optim.AdamW(judge.parameters(), lr=lr, weight_decay=weight_decay)
    x_dev, target = x_train.to(device), target.to(device)
    batch_size = min(batch_size, len(x_train))
    order, pos = torch.randperm(len(x_train), generator=gen), 0
    tail = max(1, steps // 10)
    losses: list[float] = []
    start = time.perf_counter()
    judge.train()
    for step in range(steps):
        if pos + batch_size > len(order):  # a new epoch: a fresh permutation
            order, pos = torch.randperm(len(x_train), generator=gen), 0
        idx = order[pos : pos + batch_size].to(device)
        pos += batch_size
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        loss = F.cross_entropy(judge(x_dev[idx]), target[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step >= steps - tail:
            losses.append(float(loss.detach()))
        if log is not None and (step + 1) % max(1, steps // 5) == 0:
            log.info("judge step %d/%d: training loss %.4g", step + 1, steps, float(loss))
    judge.eval()
    seconds = time.perf_counter() - start
    confusion = confusion_matrix(classes, y_test, judge_classes(judge, x_test))
    correct, total = sum(confusion[k][k] for k in range(len(classes))), len(y_test)
    accuracy = correct / total if total else float("nan")
    info = {
        "steps": int(steps),
        "final_loss": float(sum(losses) / len(losses)) if losses else float("nan"),
        "seconds": float(seconds),
        "n_train": len(x_train),
        "n_test": len(x_test),
        "batch_size": int(batch_size),
        "lr": float(lr),
        "seed": int(seed),
        "confusion": confusion,
        "class_counts_test": [sum(row) for row in confusion],
        "class_counts_train": torch.bincount(target.cpu(), minlength=len(classes)).tolist(),
    }
    if log is not None:
        log.info(
            "judge: held-out accuracy %.4f on %d images (%d classes, %.1f s); confusion "
            "(rows true, columns predicted, classes %s): %s",
            accuracy,
            len(x_test),
            len(classes),
            seconds,
            classes.tolist(),
            confusion,
        )
    return judge, accuracy, info


def confusion_matrix(classes, y_true, y_pred) -> list[list[int]]:
    """Counts C[i][j] of images of true label classes[i] given label classes[j], as a K×K list
    of lists of ints (plain containers: a judge file stays loadable with ``weights_only``).

    Every label in y_true and y_pred must be one of `classes`."""
    classes = torch.as_tensor(classes, dtype=torch.int64).flatten()
    y_true = torch.as_tensor(y_true, dtype=torch.int64).flatten()
    y_pred = torch.as_tensor(y_pred, dtype=torch.int64).flatten()
    k = len(classes)
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} true labels but {len(y_pred)} predicted ones")
    if not (torch.isin(y_true, classes).all() and torch.isin(y_pred, classes).all()):
        raise ValueError(f"labels outside the classes {classes.tolist()}")
    true, pred = ((y[:, None] == classes[None, :]).int().argmax(1) for y in (y_true, y_pred))
    flat = true * k + pred
    return torch.bincount(flat, minlength=k * k).reshape(k, k).tolist()


@torch.no_grad()
def judge_classes(judge: Judge, x, batch_size: int = 1024) -> torch.Tensor:
    """The original labels (int64, on the CPU) the judge gives to images x, flattened
    (N, C·side·side) or (N, C, side, side); evaluated in batches on the judge's device."""
    x = _as_images(x, judge.shape)
    device = judge.classes.device
    was_training = judge.training
    judge.eval()
    out = [judge.classes[judge(xb.to(device)).argmax(dim=1)].cpu() for xb in x.split(batch_size)]
    judge.train(was_training)
    return torch.cat(out) if out else torch.empty(0, dtype=torch.int64)


def save_judge(path: str | os.PathLike, judge: Judge, accuracy: float, info: dict) -> None:
    """Write the judge (weights, shape, classes), its accuracy and info atomically, as tensors,
    plain numbers and lists/dicts of them only, so `load_judge` can read it with
    ``weights_only=True``."""
    config = {"channels": judge.shape[0], "side": judge.shape[1], "widths": list(judge.widths)}
    state = {k: v.detach().cpu() for k, v in judge.state_dict().items()}
    save_atomic(
        {"state": state, "config": config, "accuracy": float(accuracy), "info": dict(info)}, path
    )


def save_no_classes(path: str | os.PathLike, reason: str) -> None:
    """The judge file of a dataset without labels: no network, the reason φ is undefined
    (`load_judge` gives it back)."""
    save_atomic({"no_classes": str(reason)}, path)


def load_judge(path: str | os.PathLike, device="cpu") -> tuple[Judge | None, float, dict]:
    """Read `save_judge`'s file: (judge in eval mode on `device`, accuracy, info); for a file of
    `save_no_classes`, (None, NaN, {"no_classes": reason}).

    Files written before the confusion matrix was stored load too: their info has no
    "confusion" (nor "class_counts_test"), which `judge_correction.correctable` reports as a
    judge that cannot be corrected.

    A file that is not a tensor file, or not a judge, is refused with an error naming it."""
    obj = load_checkpoint(path, device)
    if isinstance(obj, dict) and set(obj) == {"no_classes"}:
        return None, float("nan"), {"no_classes": str(obj["no_classes"])}
    if not isinstance(obj, dict) or not JUDGE_KEYS <= set(obj):
        raise OSError(
            f"{path} is a tensor file but not a judge this workflow wrote (keys "
            f"{sorted(obj) if isinstance(obj, dict) else type(obj).__name__}); "
            "delete it and rerun"
        )
    try:
        cfg = obj["config"]
        judge = Judge(cfg["channels"], cfg["side"], obj["state"]["classes"], cfg["widths"])
        judge.load_state_dict(obj["state"])
    except (KeyError, RuntimeError, ValueError) as err:  # written by other code
        raise OSError(
            f"judge {path} does not match this code ({err}); delete it and rerun"
        ) from err
    return judge.to(device).eval(), float(obj["accuracy"]), dict(obj["info"])
