"""Linear probe: a linear classifier trained on frozen features (pure tensors, no Ray).

The protocol of the SSL papers (SimCLR, MoCo, DINO) on precomputed features: no augmentation,
features standardised with the training statistics (MAE's BatchNorm without affine), SGD with
momentum and a cosine schedule. The learning rate and number of epochs are chosen on a
stratified validation split of the *training* features, never on the test queries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raysl.config import EvalConfig
from raysl.eval.protocols.base import FeatureProtocol, Features, Scores, topk_accuracy
from raysl.eval.splits import stratified_holdout
from raysl.registry import register
from raysl.schedules import cosine, set_lr


@dataclass
class LinearProbeResult:
    """Test accuracy of the probe retrained on all training features with the chosen settings."""

    top1: float  # in [0, 1]
    top5: float  # top-min(5, classes)
    lr: float
    epochs: int
    predictions: Tensor  # (M,) predicted labels of the queries
    search: list[tuple[float, int, float]] = field(default_factory=list)  # (lr, epochs, val top-1)


class StandardizedLinear(nn.Module):
    """``(x - mean) / std`` then a linear layer: (B, D) -> (B, C) logits."""

    mean: Tensor
    std: Tensor

    def __init__(self, mean: Tensor, std: Tensor, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.fc = nn.Linear(mean.numel(), num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """(B, D) features -> (B, C) logits."""
        out: Tensor = self.fc((x - self.mean) / self.std)
        return out


def train_linear(x: Tensor, y: Tensor, num_classes: int, lr: float, epochs: int,
                 batch_size: int = 256, seed: int = 0) -> StandardizedLinear:
    """A probe trained on features ``x`` (N, D) with labels ``y`` (N,)."""
    x = x.float()
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    probe = StandardizedLinear(x.mean(0), x.std(0).clamp_min(1e-6), num_classes)
    nn.init.zeros_(probe.fc.weight)  # deterministic start; a convex problem needs no symmetry break
    nn.init.zeros_(probe.fc.bias)
    opt = torch.optim.SGD(probe.parameters(), lr=lr, momentum=0.9)
    steps_per_epoch = math.ceil(len(x) / batch_size)
    total = epochs * steps_per_epoch
    step = 0
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size]
            set_lr(opt, cosine(step / total, lr, 0.0))
            loss = F.cross_entropy(probe(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            step += 1
    return probe.eval()


def linear_probe(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor,
                 num_classes: int, lrs: tuple[float, ...], epochs: tuple[int, ...],
                 batch_size: int = 256, val_fraction: float = 0.1, seed: int = 0
                 ) -> LinearProbeResult:
    """Search (lr, epochs) on a validation split of the training features, retrain, test.

    Args:
        train_x: (N, D) frozen features of the labeled bank.
        train_y: (N,) their labels.
        test_x: (M, D) features of the queries.
        test_y: (M,) their labels.
        num_classes: C.
        lrs: learning rates searched.
        epochs: epoch counts searched (every (lr, epochs) pair is trained on the reduced bank).
        batch_size: features per SGD step.
        val_fraction: share of the bank held out (stratified) to choose the setting.
        seed: seeds the validation split, the shuffling and the initialisation.
    """
    keep, val = stratified_holdout(train_y.numpy(), val_fraction, seed)
    keep_t, val_t = torch.from_numpy(keep), torch.from_numpy(val)
    search = []
    for lr in lrs:
        for n_epochs in epochs:
            probe = train_linear(train_x[keep_t], train_y[keep_t], num_classes, lr, n_epochs,
                                 batch_size, seed)
            with torch.no_grad():
                acc = topk_accuracy(probe(train_x[val_t].float()), train_y[val_t], 1)
            search.append((lr, n_epochs, acc))
    # Best validation accuracy; ties go to fewer epochs, then the larger lr (listed first).
    best_lr, best_epochs, _ = max(search, key=lambda r: (r[2], -r[1]))
    probe = train_linear(train_x, train_y, num_classes, best_lr, best_epochs, batch_size, seed)
    with torch.no_grad():
        logits = probe(test_x.float())
    return LinearProbeResult(topk_accuracy(logits, test_y, 1), topk_accuracy(logits, test_y, 5),
                             best_lr, best_epochs, logits.argmax(1), search)


@register("protocol", "linear")
class Linear(FeatureProtocol):
    """Linear probe top-1 and top-5, its lr and epochs chosen on a validation split of the bank."""

    name = "linear"
    title = "linear probe"
    summary = "linear probe on frozen, standardised features; lr and epochs picked on validation"
    prediction_rank = 2

    def score(self, features: Features, cfg: EvalConfig, seed: int) -> Scores:
        """``linear_top1`` and ``linear_top5``; a note says which setting won."""
        f = features
        lin = linear_probe(f.bank, f.bank_labels, f.queries, f.query_labels, f.num_classes,
                           cfg.linear_lrs, cfg.linear_epochs, cfg.linear_batch_size,
                           cfg.linear_val_fraction, seed)
        note = (f"lr {lin.lr:g}, {lin.epochs} epochs (best validation top-1 of "
                f"{len(lin.search)} settings)")
        return Scores({"linear_top1": lin.top1, "linear_top5": lin.top5}, lin.predictions, [note])
