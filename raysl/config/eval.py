"""Evaluation of frozen and fine-tuned features (``eval``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from raysl import catalog
from raysl.config.source import SourceConfig
from raysl.errors import check


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation of frozen and fine-tuned features on a labeled split.

    Runs after pretraining (``protocols``), from ``raysl evaluate``, and optionally during
    pretraining (``online_*``). Every protocol also reports the random-init encoder and raw pixels
    (``baselines``) on the same split.
    """

    enabled: bool = True
    # The labeled bank; its path empty = the training data itself (labels needed: without them,
    # evaluation is skipped with a line saying how to name a labeled split). `limit` images of
    # it, a seeded subset (0 = all).
    bank: SourceConfig = field(
        default_factory=lambda: SourceConfig(path="", split="train", limit=10000))
    # The queries scored; its path empty = `holdout` of the bank, stratified.
    query: SourceConfig = field(default_factory=lambda: SourceConfig(path="", split="t10k"))
    holdout: float = 0.2
    # Run after pretraining, by registered name (`raysl protocols`); "finetune" too.
    protocols: tuple[str, ...] = ("knn", "linear")
    baselines: bool = True  # also report random-init encoder and raw pixels on the same split
    batch_size: int = 512  # images per feature-extraction batch
    feature_actors: int = 0  # feature-extraction tasks at once; 0 = one per GPU, else per CPU
    # The linear probe gathers the bank's features on the driver up to this size (its exact,
    # stratified search); a larger bank is streamed from the object store, every setting trained
    # in the same passes. kNN always runs block by block where the features are.
    gather_gb: float = 2.0
    # Online kNN during pretraining runs on rank 0 on at most this many bank images and as many
    # queries (seeded subsets of the eval split, held in memory).
    online_limit: int = 10000
    # kNN (Wu et al. 2018). 0 = auto: 200 as in the common CIFAR protocol for banks of up to
    # 100,000 images, 20 above (DINO's ImageNet protocol).
    knn_k: int = 0
    knn_temperature: float = 0.1
    # Linear probe on frozen, standardised features: SGD + cosine, no augmentation. The lr and
    # epochs are picked on a stratified validation split of the bank, then the probe is retrained
    # on the whole bank with them and scored on the queries.
    linear_lrs: tuple[float, ...] = (1.0, 0.3, 0.1, 0.03)
    linear_epochs: tuple[int, ...] = (20, 60)
    linear_batch_size: int = 256
    linear_val_fraction: float = 0.1
    # Few-label fine-tuning (SimCLR's semi-supervised protocol, appendix B.5): the whole encoder +
    # a linear head on stratified, seeded label subsets of the bank, vs the same architecture from
    # scratch. SimCLR: 60 epochs on 1%, 30 on 10%, Nesterov SGD at 0.05 per 256, no weight decay.
    finetune_fractions: tuple[float, ...] = (0.01, 0.1)
    # One per fraction, or one for all; empty = SimCLR's: 60 for <= 1% of the labels, else 30.
    finetune_epochs: tuple[int, ...] = ()
    finetune_min_steps: int = 100  # tiny subsets get at least this many optimizer steps
    finetune_lr: float = 0.05  # SGD with Nesterov momentum, per 256 images (linear scaling)
    finetune_batch_size: int = 64
    finetune_weight_decay: float = 0.0
    # Layer-wise lr decay: depth d of the encoder gets lr x decay^(top - d) (ViT blocks,
    # ResNet stages; the head is top). 1 = one lr for all; MAE fine-tunes a ViT-B with 0.75.
    # For the pretrained encoder only: the same network trained from scratch gets one lr.
    finetune_layer_decay: float = 1.0
    # Online evaluation during pretraining (logged as eval/online_* per epoch).
    online_knn_every: int = 0  # kNN on the held-out split every N epochs (and the last); 0 = off
    online_probe: bool = False  # a stop-gradient linear head on the training features
    online_probe_lr: float = 0.1
    # Label-free monitors during pretraining, with no labels needed: RankMe and LiDAR of the
    # exported encoder's (and projector's) embeddings of a fixed sample of the training images,
    # each seen through `monitor_views` fixed augmentations (LiDAR's classes), every N epochs and
    # the last; 0 = off. The sample should have at least as many images as the embedding has
    # dimensions (RankMe can be at most that): 1024 covers ResNet-18 (512) and ViT-S (384);
    # raise it for ResNet-50 (2048). Logged as eval/rankme, eval/lidar (+ _projector).
    monitor_every: int = 1
    monitor_samples: int = 1024
    monitor_views: int = 4
    # Dimensional collapse: RankMe below this fraction of min(samples, dimensions) after warm-up.
    # Trained and random-init networks measured 4-25%, a collapsing SimSiam 0.7% (BENCHMARKS.md).
    collapse_rank_fraction: float = 0.02
    plots: bool = True  # embedding (t-SNE), confusion matrix and per-class accuracy
    plot_points: int = 2000  # points in the embedding plot (a stratified sample of the queries)

    def __post_init__(self) -> None:
        check(self.knn_k >= 0, "knn_k", self.knn_k, "must be >= 1, or 0 (auto)")
        check(self.knn_temperature > 0, "knn_temperature", self.knn_temperature, "must be > 0")
        check(0 < self.holdout < 1, "holdout", self.holdout, "is a fraction in (0, 1)")
        check(self.batch_size >= 1, "batch_size", self.batch_size, "must be >= 1")
        check(self.feature_actors >= 0, "feature_actors", self.feature_actors, ">= 0 (0 = auto)")
        check(self.gather_gb >= 0, "gather_gb", self.gather_gb, ">= 0 (0 = always stream)")
        check(self.online_limit >= 1, "online_limit", self.online_limit, ">= 1")
        known = catalog.names("protocol")
        for i, name in enumerate(self.protocols):
            check(name in known, f"protocols[{i}]", name, f"must be one of {known}")
        check(len(self.protocols) == len(set(self.protocols)), "protocols", self.protocols,
              f"a list of distinct protocols out of {known}")
        check(bool(self.linear_lrs) and all(lr > 0 for lr in self.linear_lrs), "linear_lrs",
              self.linear_lrs, "a non-empty list of learning rates > 0")
        check(bool(self.linear_epochs) and all(e >= 1 for e in self.linear_epochs),
              "linear_epochs", self.linear_epochs, "a non-empty list of epoch counts >= 1")
        check(self.linear_batch_size >= 1, "linear_batch_size", self.linear_batch_size, ">= 1")
        check(0 < self.linear_val_fraction < 1, "linear_val_fraction", self.linear_val_fraction,
              "is a fraction in (0, 1)")
        check(bool(self.finetune_fractions) and all(0 < f <= 1 for f in self.finetune_fractions),
              "finetune_fractions", self.finetune_fractions,
              "a non-empty list of label fractions in (0, 1], e.g. [0.01, 0.1]")
        check(all(e >= 1 for e in self.finetune_epochs)
              and len(self.finetune_epochs) in (0, 1, len(self.finetune_fractions)),
              "finetune_epochs", self.finetune_epochs,
              f"epochs >= 1, one for every eval.finetune_fractions {self.finetune_fractions} "
              "or one for all")
        check(self.finetune_min_steps >= 0, "finetune_min_steps", self.finetune_min_steps, ">= 0")
        check(self.finetune_lr > 0, "finetune_lr", self.finetune_lr, "must be > 0")
        check(self.finetune_batch_size >= 2, "finetune_batch_size", self.finetune_batch_size,
              ">= 2 (BatchNorm needs more than one image)")
        check(self.finetune_weight_decay >= 0, "finetune_weight_decay",
              self.finetune_weight_decay, ">= 0")
        check(0 < self.finetune_layer_decay <= 1, "finetune_layer_decay",
              self.finetune_layer_decay, "in (0, 1] (1 = no layer-wise decay; MAE: 0.75)")
        check(self.online_knn_every >= 0, "online_knn_every", self.online_knn_every,
              ">= 0 (0 = off)")
        check(self.online_probe_lr > 0, "online_probe_lr", self.online_probe_lr, "must be > 0")
        check(self.monitor_every >= 0, "monitor_every", self.monitor_every, ">= 0 (0 = off)")
        check(self.monitor_samples >= 2, "monitor_samples", self.monitor_samples,
              ">= 2 images (>= the embedding's dimensions for a faithful RankMe)")
        check(self.monitor_views >= 2, "monitor_views", self.monitor_views,
              ">= 2 views of each image: LiDAR's within-image scatter needs two")
        check(0 <= self.collapse_rank_fraction < 1, "collapse_rank_fraction",
              self.collapse_rank_fraction, "is a fraction in [0, 1)")
        check(self.plot_points >= 10, "plot_points", self.plot_points, ">= 10")

    def finetune_epochs_for(self, i: int) -> int:
        """Fine-tuning epochs of the ``i``-th label fraction."""
        if not self.finetune_epochs:
            return 60 if self.finetune_fractions[i] <= 0.01 else 30
        return self.finetune_epochs[i if len(self.finetune_epochs) > 1 else 0]

    @property
    def gather_bytes(self) -> int:
        """``gather_gb`` in bytes."""
        return int(self.gather_gb * 2**30)

    def knn_k_for(self, bank_size: int) -> int:
        """Neighbours used for a bank of ``bank_size`` images (``knn_k``, or the auto rule)."""
        return self.knn_k or (200 if bank_size <= 100_000 else 20)

    @property
    def online(self) -> bool:
        """Whether anything is evaluated on labels during pretraining."""
        return self.online_knn_every > 0 or self.online_probe

