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

from raysl.catalog import register
from raysl.config import EvalConfig
from raysl.eval.protocols.base import Bank, FeatureProtocol, Features, Scores, topk_accuracy
from raysl.eval.splits import stratified_holdout
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


def bank_linear_probe(bank: Bank, test_x: Tensor, test_y: Tensor, num_classes: int,
                      lrs: tuple[float, ...], epochs: tuple[int, ...], batch_size: int = 256,
                      val_fraction: float = 0.1, seed: int = 0, gather_bytes: int = 2**31
                      ) -> LinearProbeResult:
    """:func:`linear_probe` on a bank: gathered here when at most ``gather_bytes``, else streamed.

    Streamed (:func:`streamed_probe`), the same search runs in passes over the bank's blocks:
    every (lr, epochs) setting trains in the same pass, and the validation rows are drawn by row
    id instead of stratified per class.
    """
    if bank.nbytes <= gather_bytes:
        x, y = bank.gather()
        return linear_probe(x, y, test_x, test_y, num_classes, lrs, epochs, batch_size,
                            val_fraction, seed)
    return streamed_probe(bank, test_x, test_y, num_classes, lrs, epochs, batch_size,
                          val_fraction, seed)


def is_validation(ids: Tensor, fraction: float, seed: int) -> Tensor:
    """(n,) bool: a fixed pseudo-random ``fraction`` of row ids (Knuth's multiplicative hash)."""
    return ((ids.long() * 2654435761 + 97 * seed) % 2**32) < fraction * 2**32


def streamed_probe(bank: Bank, test_x: Tensor, test_y: Tensor, num_classes: int,
                   lrs: tuple[float, ...], epochs: tuple[int, ...], batch_size: int = 256,
                   val_fraction: float = 0.1, seed: int = 0) -> LinearProbeResult:
    """The linear probe's search and retraining in passes over a bank too large to gather.

    One pass computes the standardisation; then every (lr, epochs) setting trains at once on
    the non-validation rows (one pass per epoch, each setting on its own cosine schedule), one
    pass scores them on the validation rows, and the best is retrained on all rows.
    """
    mean, std, n_train = _moments(bank, val_fraction, seed)
    settings = [(lr, e) for lr in lrs for e in epochs]
    probes = _train_streamed(bank, mean, std, num_classes, settings, n_train, batch_size,
                             seed, holdout=val_fraction)
    correct = torch.zeros(len(settings))
    seen = 0
    with torch.no_grad():
        for x, y, ids in bank.batches(4096, seed):
            val = is_validation(ids, val_fraction, seed)
            seen += int(val.sum())
            for i, probe in enumerate(probes):
                correct[i] += (probe(x[val].float()).argmax(1) == y[val]).sum()
    search = [(lr, e, float(c) / max(1, seen)) for (lr, e), c in zip(settings, correct,
                                                                        strict=True)]
    best_lr, best_epochs, _ = max(search, key=lambda r: (r[2], -r[1]))
    probe = _train_streamed(bank, mean, std, num_classes, [(best_lr, best_epochs)],
                            bank.num_rows, batch_size, seed, holdout=0.0)[0]
    with torch.no_grad():
        logits = probe(test_x.float())
    return LinearProbeResult(topk_accuracy(logits, test_y, 1), topk_accuracy(logits, test_y, 5),
                             best_lr, best_epochs, logits.argmax(1), search)


def _moments(bank: Bank, val_fraction: float, seed: int) -> tuple[Tensor, Tensor, int]:
    """Mean and (unbiased) std of all rows, and the number of training (non-validation) rows."""

    def block(x: Tensor, y: Tensor, ids: Tensor) -> tuple[Tensor, Tensor, int, int]:
        x = x.double()
        return x.sum(0), (x * x).sum(0), len(x), int(is_validation(ids, val_fraction, seed).sum())

    total, squares, n, n_val = torch.zeros(bank.dim, dtype=torch.float64), None, 0, 0
    for s, sq, rows, val in bank.map_blocks(block):
        total, n, n_val = total + s, n + rows, n_val + val
        squares = sq if squares is None else squares + sq
    assert squares is not None
    mean = total / n
    var = (squares - n * mean * mean) / max(1, n - 1)
    return mean.float(), var.clamp_min(0).sqrt().float().clamp_min(1e-6), n - n_val


def _train_streamed(bank: Bank, mean: Tensor, std: Tensor, num_classes: int,
                    settings: list[tuple[float, int]], rows: int, batch_size: int, seed: int,
                    holdout: float) -> list[StandardizedLinear]:
    """Train one probe per (lr, epochs) on the same passes; rows held out (``holdout``) skipped."""
    torch.manual_seed(seed)
    probes, opts = [], []
    for lr, _ in settings:
        probe = StandardizedLinear(mean, std, num_classes)
        nn.init.zeros_(probe.fc.weight)
        nn.init.zeros_(probe.fc.bias)
        probes.append(probe)
        opts.append(torch.optim.SGD(probe.parameters(), lr=lr, momentum=0.9))
    steps_per_epoch = math.ceil(rows / batch_size)
    step = 0
    for epoch in range(max(e for _, e in settings)):
        for x, y, ids in bank.batches(batch_size, seed + epoch):
            if holdout:
                keep = ~is_validation(ids, holdout, seed)
                x, y = x[keep], y[keep]
            if not len(x):
                continue
            for (lr, n_epochs), probe, opt in zip(settings, probes, opts, strict=True):
                if epoch >= n_epochs:
                    continue
                set_lr(opt, cosine(min(1.0, step / (n_epochs * steps_per_epoch)), lr, 0.0))
                loss = F.cross_entropy(probe(x.float()), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
            step += 1
    return [p.eval() for p in probes]


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
        lin = bank_linear_probe(f.bank, f.queries, f.query_labels, f.num_classes,
                                cfg.linear_lrs, cfg.linear_epochs, cfg.linear_batch_size,
                                cfg.linear_val_fraction, seed, cfg.gather_bytes)
        note = (f"lr {lin.lr:g}, {lin.epochs} epochs (best validation top-1 of "
                f"{len(lin.search)} settings)")
        return Scores({"linear_top1": lin.top1, "linear_top5": lin.top5}, lin.predictions, [note])
