"""DeepCluster: k-means on the network's own features gives the pseudo-labels it learns from."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raysl import distributed
from raysl.catalog import register
from raysl.clustering import (
    Clustering,
    gathered_table,
    kmeans,
    normalized_mutual_info,
    pca_whiten,
)
from raysl.config import Config as RunConfig
from raysl.config import MethodConfig
from raysl.errors import ConfigError, check
from raysl.methods.base import (
    NO_TARGETS,
    EpochData,
    EpochStart,
    LossOutput,
    Progress,
    SSLMethod,
    Targets,
    target,
)
from raysl.nn.backbones import Encoder
from raysl.nn.heads import MLP, mlp_dims

# The buffers whose length is the number of images (set at the first clustering, not known
# when the method is built): a checkpoint's are taken at their saved length.
_PER_IMAGE_BUFFERS = ("assignment",)


@dataclass(frozen=True)
class DeepClusterConfig(MethodConfig):
    """DeepCluster hyperparameters (Caron et al. 2018, arXiv:1807.05520)."""

    name: str = "deepcluster"
    # k. The paper over-segments: 10000 clusters for ImageNet's 1000 classes (~130 images per
    # cluster; table/figure 3: more clusters than classes is better). Here 10x the classes.
    num_clusters: int = 100
    # PCA dimensions before whitening and L2 (the paper: 256).
    pca_dim: int = 256
    # The MLP between trunk and classifier whose output is clustered (the paper clusters
    # AlexNet's second 4096-d fully connected layer, before its ReLU).
    head_dim: int = 512
    kmeans_iters: int = 20  # Lloyd iterations (the paper's faiss setting)
    recluster_every: int = 1  # epochs between re-assignments (the paper: every epoch)
    # Each image's loss weighted by the inverse of its cluster's size: the paper's sampling
    # "based on a uniform distribution over the pseudo-labels", which it notes is equivalent
    # (section 3.3). Without it, one huge cluster makes a trivial classifier.
    balance_clusters: bool = True

    def __post_init__(self) -> None:
        check(self.num_clusters >= 2, "num_clusters", self.num_clusters, ">= 2 clusters")
        for name in ("pca_dim", "head_dim", "kmeans_iters", "recluster_every"):
            check(getattr(self, name) >= 1, name, getattr(self, name), ">= 1")
        check(self.pca_dim <= self.head_dim, "pca_dim", self.pca_dim,
              f"<= head_dim ({self.head_dim}): PCA reduces the head's output")


@register("method", "deepcluster")
class DeepCluster(SSLMethod):
    """DeepCluster [0]: cluster the features, learn to predict the clusters, repeat.

    Before each epoch (every ``recluster_every``), every worker extracts the features of its
    share of the training set (no augmentation, the model in eval mode), then the workers
    cluster all of them together (:mod:`raysl.clustering`: PCA-whitening and L2 as the paper,
    k-means with all-reduced updates, empty clusters re-seeded) and each image's cluster
    becomes its pseudo-label. The classifier on top is re-initialised at each re-assignment
    (its optimizer state dropped: the clusters are renamed every time) and the whole network
    is trained to predict the pseudo-labels of augmented views, each image weighted by the
    inverse of its cluster's size (the paper's uniform sampling over pseudo-labels).

    The pseudo-labels are looked up by each row's ``index`` (the data path carries it) in a
    table kept as a buffer, so the assignment travels with the checkpoint and a resumed run
    trains on the clusters it had. Not done: the paper's fixed Sobel filter in front of AlexNet
    (it removes colour, which the augmentation here can do; the encoder stays the one other
    methods train) and dropout in the MLP.

    - [0]: Caron et al., Deep Clustering for Unsupervised Learning of Visual Features,
      ECCV 2018, https://arxiv.org/abs/1807.05520
    """

    Config = DeepClusterConfig
    summary = "clustering: k-means pseudo-labels of the network's own features, every epoch"
    paper = "Caron et al. 2018, arXiv:1807.05520"
    collapse_hint = ("clusters that swallow the data: keep method.balance_clusters=true, or "
                     "lower the learning rate")
    default_preset = "deepcluster"
    global_views = 1
    target_columns = ("index",)
    reads_training_set = True

    def __init__(self, encoder: Encoder, cfg: MethodConfig) -> None:
        super().__init__(encoder)
        assert isinstance(cfg, DeepClusterConfig)
        self.cfg = cfg
        # Linear, ReLU, Linear: its output is clustered, and a ReLU goes before the classifier.
        self.projector = MLP(mlp_dims(encoder.num_features, cfg.head_dim, cfg.head_dim, 2),
                             hidden_norm=False)
        self.classifier = nn.Linear(cfg.head_dim, cfg.num_clusters)
        self.register_buffer("assignment", torch.empty(0, dtype=torch.long))  # index -> cluster
        self.register_buffer("cluster_weights", torch.ones(cfg.num_clusters))
        self.register_buffer("assigned_epoch", torch.tensor(-1))  # of the current assignment
        self.assignment: Tensor
        self.cluster_weights: Tensor
        self.assigned_epoch: Tensor

    @classmethod
    def check_training_set(cls, cfg: RunConfig, num_images: int) -> None:
        """At least one image per cluster."""
        assert isinstance(cfg.method, DeepClusterConfig)
        k = cfg.method.num_clusters
        if num_images < k:
            raise ConfigError("method.num_clusters", k,
                              f"at most the {num_images} training images (k-means needs an "
                              "image per cluster)")

    def forward(self, views: list[Tensor], progress: Progress,
                targets: Targets = NO_TARGETS) -> LossOutput:
        """Weighted cross-entropy of the classifier against each image's pseudo-label."""
        if int(self.assigned_epoch) < 0:
            raise RuntimeError("DeepCluster has no pseudo-labels yet: on_epoch_start clusters "
                               "the training set before the first step")
        index = target(targets, "index").long()
        known = index < len(self.assignment)
        labels = torch.where(known, self.assignment[index.clamp(max=len(self.assignment) - 1)],
                             -1)
        logits = self.classifier(F.relu(self.projector(self.encoder(views[0]))))
        loss = weighted_cross_entropy(logits.float(), labels, self.cluster_weights)
        hits = (logits.argmax(1) == labels)[labels >= 0].float()
        return LossOutput(loss, {"cluster_acc": float(hits.mean()) if len(hits) else 0.0})

    def on_epoch_start(self, data: EpochData) -> EpochStart:
        """Re-cluster the training set when due (every ``recluster_every`` epochs, and first)."""
        due = data.epoch % self.cfg.recluster_every == 0
        if int(self.assigned_epoch) >= 0 and not due:
            return EpochStart()  # a resumed run keeps the checkpoint's assignment too
        if int(self.assigned_epoch) == data.epoch:
            # Resumed inside this epoch (train.checkpoint_every_steps): its clustering is done,
            # and the classifier has trained on it since; clustering again would undo both.
            return EpochStart()
        started = time.perf_counter()
        features, index, labels = self._extract(data)
        try:
            clustering = kmeans(pca_whiten(features, self.cfg.pca_dim), index,
                                self.cfg.num_clusters, self.cfg.kmeans_iters,
                                seed=data.seed * 1_000_003 + data.epoch)
        except ValueError as e:  # fewer images than clusters, e.g. once bad files are skipped
            raise ConfigError("method.num_clusters", self.cfg.num_clusters, str(e)) from None
        previous = self.assignment
        self._assign(clustering, data)
        logs = cluster_logs(clustering, previous, _label_table(index, labels))
        logs["time/cluster_s"] = time.perf_counter() - started
        return EpochStart(logs, list(self.classifier.parameters()),
                          {"cluster_sizes": clustering.sizes}, _summary(clustering, logs))

    @torch.no_grad()
    def _extract(self, data: EpochData) -> tuple[Tensor, Tensor, Tensor | None]:
        """This worker's (n, head_dim) features, (n,) indices and (n,) labels (if any).

        On the model's device, where the clustering runs (NCCL's collectives need it).
        """
        was_training, device = self.training, self.cluster_weights.device
        self.eval()  # BatchNorm's running statistics, as the paper's compute_features
        features, index, labels = [], [], []
        try:
            for batch in data.images():
                features.append(self.projector(self.encoder(batch["image"])).float())
                index.append(batch["index"].long().to(device))
                if "label" in batch:
                    labels.append(batch["label"].long().to(device))
        finally:
            self.train(was_training)
        dim = self.cfg.head_dim
        return (torch.cat(features) if features else torch.empty(0, dim, device=device),
                torch.cat(index) if index else torch.empty(0, dtype=torch.long, device=device),
                torch.cat(labels) if labels else None)

    def _assign(self, clustering: Clustering, data: EpochData) -> None:
        """Take the new pseudo-labels, their weights, and a fresh classifier."""
        device = self.cluster_weights.device
        self.assignment = clustering.assignment.to(device)
        self.cluster_weights.copy_(cluster_weights(clustering.sizes, self.cfg.balance_clusters))
        self.assigned_epoch.fill_(data.epoch)
        # The same initial weights on every worker: a generator of the seed and epoch.
        gen = torch.Generator().manual_seed(data.seed * 1_000_003 + data.epoch)
        weight = torch.randn(self.classifier.weight.shape, generator=gen) * 0.01  # the paper's
        self.classifier.weight.data.copy_(weight)
        self.classifier.bias.data.zero_()

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any,
                              **kwargs: Any) -> None:
        """Take per-image buffers at the checkpoint's length (unknown when built)."""
        for name in _PER_IMAGE_BUFFERS:
            saved = state_dict.get(prefix + name)
            if isinstance(saved, Tensor):
                setattr(self, name, torch.empty_like(saved, device=self.cluster_weights.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def weighted_cross_entropy(logits: Tensor, labels: Tensor, weights: Tensor) -> Tensor:
    """Mean over the batch of each image's cross-entropy times its cluster's weight.

    Images without a pseudo-label (label -1: no worker saw them when clustering) count 0.

    Args:
        logits: (B, k) float.
        labels: (B,) int64 in [-1, k).
        weights: (k,) float, per cluster.
    """
    known = labels >= 0
    safe = labels.clamp_min(0)
    per_image = F.cross_entropy(logits, safe, reduction="none") * weights[safe] * known
    return per_image.sum() / len(labels)


def cluster_weights(sizes: Tensor, balance: bool) -> Tensor:
    """(k,) loss weight of an image in each cluster: ``n / (k' * size)``, k' = non-empty ones.

    Over the whole training set the weights average 1, and every non-empty cluster weighs as
    much as any other. Without ``balance``, all ones.
    """
    if not balance:
        return torch.ones(len(sizes))
    present = sizes > 0
    weights = torch.zeros(len(sizes))
    weights[present] = float(sizes.sum()) / (int(present.sum()) * sizes[present].float())
    return weights


def cluster_logs(clustering: Clustering, previous: Tensor, truth: Tensor | None
                 ) -> dict[str, float]:
    """What a clustering is logged as: its shape, and NMI with the previous one and the labels.

    Args:
        clustering: the new clustering.
        previous: (N',) the previous assignment table (empty at the first clustering).
        truth: (N'',) the true label of every index (-1: unknown), or None without labels.
    """
    sizes = clustering.sizes
    logs = {"cluster/images": float(clustering.images),
            "cluster/empty": float((sizes == 0).sum()),
            "cluster/reseeded": float(clustering.reseeded),
            "cluster/largest_fraction": float(sizes.max()) / max(1, clustering.images),
            "cluster/inertia": clustering.inertia}
    if len(previous):
        logs["cluster/nmi_previous"] = normalized_mutual_info(*_aligned(clustering.assignment,
                                                                        previous))
    if truth is not None:
        logs["cluster/nmi_labels"] = normalized_mutual_info(*_aligned(clustering.assignment,
                                                                      truth))
    return logs


def _aligned(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Two index-tables cut to their common length."""
    n = min(len(a), len(b))
    return a[:n], b[:n]


def _label_table(index: Tensor, labels: Tensor | None) -> Tensor | None:
    """(max index + 1,) the true label of each index over all workers, or None.

    Whether there are labels is agreed between the workers (a collective), so that a worker
    whose share happened to be empty still joins the gathers.
    """
    flag = torch.tensor(int(labels is not None), device=index.device)
    if not int(distributed.all_reduce_max(flag)):
        return None
    mine = labels if labels is not None else torch.empty(0, dtype=torch.long,
                                                         device=index.device)
    return gathered_table(index, mine)


def _summary(clustering: Clustering, logs: dict[str, float]) -> str:
    """``k-means: 20000 images in 100 clusters (largest 3.1%) in 4.2s; NMI ...``."""
    line = (f"k-means: {clustering.images} images in {len(clustering.sizes)} clusters "
            f"(largest {100 * logs['cluster/largest_fraction']:.1f}%, "
            f"{int(logs['cluster/reseeded'])} re-seeded) in {logs['time/cluster_s']:.1f}s")
    nmi = [f"{what} {logs[key]:.3f}" for key, what in
           (("cluster/nmi_previous", "previous"), ("cluster/nmi_labels", "labels"))
           if key in logs]
    return line + (f"; NMI with the {' / '.join(nmi)}" if nmi else "")
