"""Online evaluation during pretraining: label-free monitors, a stop-gradient probe, periodic kNN.

The label-free monitors (RankMe, LiDAR) need no labels: every worker embeds its share of a fixed
sample of training images through fixed augmentations, and the embeddings of all workers are
measured together, so the values do not depend on the number of workers.

The probe (as solo-learn's and lightly's online classifiers) reads the online encoder's features
of view 0 from the same forward pass the SSL loss uses, through a forward hook, detached: it
never changes the SSL gradients, and it costs one linear layer. Pure torch, no Ray.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raysl import distributed
from raysl.config import Config
from raysl.data.views import monitor_views
from raysl.eval.features import encoder_features
from raysl.eval.monitors import Collapse, detect_collapse, embedding_std, lidar, rankme
from raysl.eval.protocols.knn import knn_top1
from raysl.eval.splits import LabeledSplit
from raysl.methods.base import SSLMethod


class OnlineProbe(nn.Module):
    """A linear classifier trained on detached features captured during the SSL forward.

    Every online-encoder call inside one forward of ``method`` is captured; concatenated in call
    order, their first B rows are the features of view 0 (every method encodes view 0 first,
    tested for each). Gradients are averaged over workers by hand (it is not inside DDP) and the
    probe has its own SGD optimizer, so the SSL optimizer, its schedule and LARS never touch it.

    Args:
        method: the SSL method (its ``forward`` delimits one capture).
        encoder: the online encoder inside ``method``.
        num_features: encoder output size D; num_classes: C; lr: the probe's constant lr.
    """

    def __init__(self, method: nn.Module, encoder: nn.Module, num_features: int,
                 num_classes: int, lr: float) -> None:
        super().__init__()
        # Standardised features (BatchNorm without affine, as MAE's linear probe), then linear.
        self.head = nn.Sequential(nn.BatchNorm1d(num_features, affine=False),
                                  nn.Linear(num_features, num_classes))
        self.optimizer = torch.optim.SGD(self.head.parameters(), lr=lr, momentum=0.9)
        self._capturing = False
        self._captured: list[list[Tensor]] = []  # one list of encoder outputs per method forward
        self._hooks = [method.register_forward_pre_hook(self._start),
                       method.register_forward_hook(self._stop),
                       encoder.register_forward_hook(self._capture)]

    def training_state(self) -> dict[str, Any]:
        """What a checkpoint keeps: the head's weights and its optimizer's momentum."""
        return {"head": self.head.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_training_state(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`training_state` (a resumed run's probe goes on learning)."""
        self.head.load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])

    def _start(self, *_: Any) -> None:
        self._capturing = True
        self._captured.append([])

    def _stop(self, *_: Any) -> None:
        self._capturing = False

    def _capture(self, _module: nn.Module, _inputs: Any, output: Tensor) -> None:
        if self._capturing:
            self._captured[-1].append(output.detach())

    def remove(self) -> None:
        """Detach the hooks from the method."""
        for h in self._hooks:
            h.remove()

    def step(self, labels: list[Tensor]) -> dict[str, float]:
        """Train on the features captured since the last step, one label tensor per forward.

        Returns:
            ``{"online_probe_loss", "online_probe_acc"}`` of this step, averaged over workers.
        """
        captured, self._captured = self._captured, []
        if len(captured) != len(labels):
            raise RuntimeError(f"online probe captured {len(captured)} forward passes for "
                               f"{len(labels)} label batches")
        feats = torch.cat([torch.cat(c)[:len(y)] for c, y in zip(captured, labels, strict=True)])
        y = torch.cat(labels).to(feats.device)
        self.head.to(feats.device).train()
        with torch.autocast(feats.device.type, enabled=False):
            logits = self.head(feats.float())
            loss = F.cross_entropy(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        for p in self.head.parameters():
            if p.grad is not None:
                p.grad.copy_(distributed.all_reduce_mean(p.grad))
        self.optimizer.step()
        acc = (logits.argmax(1) == y).float().mean()
        stats = distributed.all_reduce_mean(torch.stack([loss.detach(), acc]))
        return {"online_probe_loss": float(stats[0]), "online_probe_acc": float(stats[1])}

    @torch.no_grad()
    def predict(self, features: Tensor) -> Tensor:
        """(N, D) features -> (N,) predicted labels (BatchNorm running statistics)."""
        self.head.eval()
        dev = next(self.head.parameters()).device
        pred: Tensor = self.head(features.to(dev).float()).argmax(1).cpu()
        return pred


def online_metrics(method: SSLMethod, split: LabeledSplit, cfg: Config,
                   probe: OnlineProbe | None, device: torch.device, knn: bool = True
                   ) -> dict[str, float]:
    """``eval/online_knn_top1`` of the exported encoder on the held-out split (if ``knn``).

    With the online probe, also ``eval/online_probe_top1`` on the same queries (through the
    online encoder, whose features the probe was trained on).
    """
    size, bs = cfg.data.image_size, cfg.eval.batch_size
    query_y = torch.from_numpy(split.query_labels)
    out = {}
    queries = None
    if knn:
        encoder = method.exported_encoder()
        bank = encoder_features(encoder, split.bank_images, size, bs, device)
        queries = encoder_features(encoder, split.query_images, size, bs, device)
        out["eval/online_knn_top1"] = knn_top1(
            bank, torch.from_numpy(split.bank_labels), queries, query_y, split.num_classes,
            cfg.eval.knn_k_for(len(split.bank_labels)), cfg.eval.knn_temperature)
        if encoder is not method.encoder:
            queries = None  # the probe reads the online encoder's features
    if probe is not None:
        if queries is None:
            queries = encoder_features(method.encoder, split.query_images, size, bs, device)
        out["eval/online_probe_top1"] = float((probe.predict(queries) == query_y).float().mean())
    return out


# LiDAR inverts a D x D scatter matrix on every worker: beyond this many dimensions (Barlow
# Twins' and VICReg's 8192-d projectors) it would take longer than the epoch it measures.
LIDAR_MAX_DIM = 2048


class LabelFreeMonitor:
    """RankMe and LiDAR of the exported encoder (and projector) on a fixed sample, no labels.

    Args:
        images: (N, H, W, C) uint8, the whole sample (every worker gets the same).
        cfg: the run's config (view settings, ``eval.monitor_*``, seed).
        rank, world: this worker and the number of workers; worker r embeds the r-th of
            ``world`` near-equal contiguous parts of the sample.
    """

    def __init__(self, images: np.ndarray, cfg: Config, rank: int, world: int) -> None:
        self.sizes = [len(part) for part in np.array_split(np.arange(len(images)), world)]
        start = sum(self.sizes[:rank])
        self.views = monitor_views(images, cfg.data, cfg.eval.monitor_views, cfg.train.seed,
                                   start, start + self.sizes[rank])  # (n_r, q, C, S, S)
        self.batch_size = cfg.eval.batch_size
        self.rank_fraction = cfg.eval.collapse_rank_fraction

    @property
    def samples(self) -> int:
        """N, images in the whole sample."""
        return sum(self.sizes)

    @torch.no_grad()
    def measure(self, method: SSLMethod, device: torch.device
                ) -> tuple[dict[str, float], list[Collapse]]:
        """The monitors' values (the same on every worker) and any collapse they show.

        Returns:
            ``{"eval/rankme", "eval/lidar", "eval/embedding_std"}``, the same with a
            ``_projector`` suffix for a method with a projector (LiDAR up to
            ``LIDAR_MAX_DIM`` dimensions), and the collapses seen (empty when healthy).
        """
        return self.measure_encoder(method.exported_encoder(), method.exported_projector(),
                                    device)

    @torch.no_grad()
    def measure_encoder(self, encoder: nn.Module, projector: nn.Module | None,
                        device: torch.device) -> tuple[dict[str, float], list[Collapse]]:
        """:meth:`measure` of an encoder (and projector) outside a method (a registered one)."""
        features, projections = [], []
        flat = self.views.flatten(0, 1)  # (n_r * q, C, S, S), image-major
        with _eval_mode(encoder, projector):
            for i in range(0, len(flat), self.batch_size):
                h = encoder(flat[i:i + self.batch_size].to(device)).float()
                features.append(h)
                if projector is not None:
                    projections.append(projector(h).float())
        n_r, q = self.views.shape[:2]
        out: dict[str, float] = {}
        collapses: list[Collapse] = []
        for suffix, where, parts in (("", "encoder", features),
                                     ("_projector", "projector", projections)):
            if not parts and suffix:
                continue
            e = distributed.gather_rows(torch.cat(parts).reshape(n_r, q, -1), self.sizes).cpu()
            z = e[:, 0]  # one view of each image: RankMe's (N, D) embedding matrix
            out[f"eval/rankme{suffix}"] = rank = rankme(z)
            out[f"eval/embedding_std{suffix}"] = embedding_std(z)
            if e.shape[-1] <= LIDAR_MAX_DIM:
                out[f"eval/lidar{suffix}"] = lidar(e)
            collapse = detect_collapse(where, z, rank, self.rank_fraction)
            if collapse is not None:
                collapses.append(collapse)
        return out, collapses


@contextmanager
def _eval_mode(*modules: nn.Module | None) -> Iterator[None]:
    """``modules`` in eval mode (BatchNorm's running statistics), restored afterwards."""
    present = [m for m in modules if m is not None]
    was = [m.training for m in present]
    for m in present:
        m.eval()
    try:
        yield
    finally:
        for m, training in zip(present, was, strict=True):
            m.train(training)
