"""Jigsaw: tell which of a fixed set of permutations shuffled an image's tiles (a pretext task)."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from raysl.catalog import register
from raysl.config import Config as RunConfig
from raysl.config import MethodConfig
from raysl.errors import check
from raysl.methods.base import NO_TARGETS, LossOutput, Progress, SSLMethod, Targets, target
from raysl.nn.backbones import Encoder, unit_float


@dataclass(frozen=True)
class JigsawConfig(MethodConfig):
    """Context-free network hyperparameters (Noroozi & Favaro 2016, arXiv:1603.09246).

    The number of permutations (classes) and the grid are data settings, since the data path
    shuffles the tiles: ``data.views.jigsaw_permutations`` (raysl: 100; the paper's final
    model: 1000, chosen for maximal Hamming distance) and ``data.views.jigsaw_grid`` (3).
    """

    name: str = "jigsaw"
    tile_dim: int = 1024  # fc6: each tile's features, by a layer shared across tiles
    hidden_dim: int = 4096  # fc7, on the concatenation of all tiles' fc6
    # Standardise each tile by its own mean and std (section 3.2: so the network cannot match
    # tiles by their low-level statistics); false = the dataset normalisation of the encoder.
    normalize_tiles: bool = True

    def __post_init__(self) -> None:
        for name in ("tile_dim", "hidden_dim"):
            check(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")


def standardize_tiles(tiles: Tensor, eps: float = 1e-5) -> Tensor:
    """Each tile minus its mean, over its std (over its channels and pixels).

    Args:
        tiles: (N, C, t, t) float.
        eps: added to the std, so a flat tile stays finite.

    Returns:
        (N, C, t, t) with zero mean and unit std per tile (a flat tile stays near 0).
    """
    mean = tiles.mean(dim=(1, 2, 3), keepdim=True)
    std = tiles.std(dim=(1, 2, 3), keepdim=True)
    return (tiles - mean) / (std + eps)


@register("method", "jigsaw")
class Jigsaw(SSLMethod):
    """Context-free network [0]: a shared trunk per tile, a classifier over the permutations.

    Each tile goes through the same encoder (the trunk) and a shared ``fc6``; the tiles'
    ``fc6`` outputs are concatenated in their shuffled order, so the classifier (``fc7``,
    ``fc8``) must tell where each tile belongs. The loss is the cross-entropy over the
    permutations, a mean over samples, so DDP's average is the global batch's. The registered
    encoder is the trunk, applied to whole images.

    - [0]: Noroozi & Favaro, Unsupervised Learning of Visual Representations by Solving Jigsaw
      Puzzles, ECCV 2016, https://arxiv.org/abs/1603.09246
    """

    Config = JigsawConfig
    summary = "predictive: shared trunk per tile, classify which permutation shuffled the tiles"
    paper = "Noroozi & Favaro 2016, arXiv:1603.09246"
    collapse_hint = ("a learning rate too high; a puzzle whose accuracy stays at chance "
                     "(1 / data.views.jigsaw_permutations) has not started to learn")
    default_preset = "jigsaw"
    global_views = 1
    pretext = "jigsaw"
    target_columns = ("jigsaw",)
    encodes_whole_views = False  # it encodes tiles; the online probe would see tile features

    def __init__(self, encoder: Encoder, cfg: MethodConfig, tiles: int, classes: int) -> None:
        super().__init__(encoder)
        assert isinstance(cfg, JigsawConfig)
        self.cfg = cfg
        self.tile_head = nn.Sequential(nn.Linear(encoder.num_features, cfg.tile_dim),
                                       nn.ReLU(inplace=True))  # fc6, shared by the tiles
        self.classifier = nn.Sequential(  # fc7, fc8
            nn.Linear(tiles * cfg.tile_dim, cfg.hidden_dim), nn.ReLU(inplace=True),
            nn.Linear(cfg.hidden_dim, classes))

    @classmethod
    def from_config(cls, encoder: Encoder, cfg: RunConfig) -> Jigsaw:
        """The classes and tiles come from the data settings that cut the puzzle."""
        views = cfg.data.views
        return cls(encoder, cfg.method, views.jigsaw_grid ** 2, views.jigsaw_permutations)

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        """A ViT trunk must fit a patch in a tile (a ResNet takes any tile size).

        Pixels past the last whole patch of a tile are not seen (the patch convolution's
        stride), as for any image that is not a multiple of the patch size.
        """
        if not cfg.model.is_vit:
            return
        tile, patch = cfg.data.jigsaw_tile_size, cfg.model.effective_patch_size
        grid = cfg.data.views.jigsaw_grid
        check(tile >= patch, "data.image_size", cfg.data.image_size,
              f"an image size whose {grid}x{grid} jigsaw tiles ({tile} px) hold at least one "
              f"model.patch_size={patch} patch (or a smaller patch_size, or a smaller "
              f"data.views.jigsaw_grid)")

    def tile_features(self, tiles: Tensor) -> Tensor:
        """(B, T, C, t, t) tiles -> (B, T * tile_dim), each tile through trunk and fc6."""
        b, t = tiles.shape[:2]
        x = unit_float(tiles.flatten(0, 1))  # (B * T, C, t, t)
        x = standardize_tiles(x) if self.cfg.normalize_tiles else self.encoder.normalise(x)
        features: Tensor = self.tile_head(self.encoder.backbone(x))  # (B * T, tile_dim)
        return features.view(b, t * features.shape[-1])

    def forward(self, views: list[Tensor], progress: Progress,
                targets: Targets = NO_TARGETS) -> LossOutput:
        """Cross-entropy of the permutation classifier (section 3 of the paper)."""
        permutation = target(targets, "jigsaw")
        logits = self.classifier(self.tile_features(views[0]))  # (B, permutations)
        loss = F.cross_entropy(logits.float(), permutation)
        accuracy = (logits.argmax(dim=1) == permutation).float().mean().item()
        return LossOutput(loss, {"jigsaw_acc": accuracy})
