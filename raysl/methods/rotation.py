"""RotNet: predict by how many quarter turns each image was rotated (a pretext task)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raysl.catalog import register
from raysl.config import MethodConfig
from raysl.errors import check
from raysl.methods.base import NO_TARGETS, LossOutput, Progress, SSLMethod, Targets, target
from raysl.nn.backbones import Encoder
from raysl.nn.heads import MLP, mlp_dims

ROTATIONS = 4  # 0, 90, 180 and 270 degrees


@dataclass(frozen=True)
class RotationConfig(MethodConfig):
    """RotNet hyperparameters (Gidaris et al. 2018, arXiv:1803.07728)."""

    name: str = "rotation"
    # Each image in all four rotations in the same batch, the paper's best setting (section
    # 3.2.1: "significant improvement"); false = the one random rotation of the data path.
    # All four costs four forward passes per image.
    all_rotations: bool = True
    # 0 = a linear classifier on the encoder's features (as RotNet's ResNet and AlexNet
    # variants); > 0 = a two-layer MLP head of that width, so the encoder's last layer is less
    # specialised to the pretext task.
    head_hidden_dim: int = 0

    def __post_init__(self) -> None:
        check(self.head_hidden_dim >= 0, "head_hidden_dim", self.head_hidden_dim,
              ">= 0 (0 = a linear classifier)")


def with_all_rotations(x: Tensor, turns: Tensor) -> tuple[Tensor, Tensor]:
    """Each image in all four rotations, and each copy's label.

    ``x`` already shows each image turned by ``turns`` quarter turns; turning it by j more
    gives the image turned by ``(turns + j) % 4``, so the other three need no new randomness.

    Args:
        x: (B, C, S, S) square images.
        turns: (B,) int64 quarter turns counter-clockwise of each image.

    Returns:
        (4B, C, S, S) images and (4B,) labels: copy j of the whole batch, for j = 0..3.
    """
    images = torch.cat([torch.rot90(x, j, dims=(-2, -1)) for j in range(ROTATIONS)])
    labels = torch.cat([(turns + j) % ROTATIONS for j in range(ROTATIONS)])
    return images, labels


@register("method", "rotation")
class Rotation(SSLMethod):
    """RotNet [0]: a classifier on the encoder's features names each image's rotation.

    To tell which way is up the network has to recognise objects, their parts and pose. The
    loss is the cross-entropy over the four rotations (eq. 2-3 of the paper), a mean over
    samples, so DDP's gradient average is the global batch's. The registered encoder is the
    trunk without the classifier.

    - [0]: Gidaris et al., Unsupervised Representation Learning by Predicting Image Rotations,
      ICLR 2018, https://arxiv.org/abs/1803.07728
    """

    Config = RotationConfig
    summary = "predictive: classify each image's rotation (0/90/180/270), all four per batch"
    paper = "Gidaris et al. 2018, arXiv:1803.07728"
    collapse_hint = ("a learning rate too high; a rotation classifier whose accuracy stays at "
                     "25% has not started to learn")
    default_preset = "rotation"
    global_views = 1
    pretext = "rotation"
    target_columns = ("rotation",)

    def __init__(self, encoder: Encoder, cfg: MethodConfig) -> None:
        super().__init__(encoder)
        assert isinstance(cfg, RotationConfig)
        self.cfg = cfg
        self.classifier: nn.Module = (
            MLP(mlp_dims(encoder.num_features, cfg.head_hidden_dim, ROTATIONS, 2))
            if cfg.head_hidden_dim else nn.Linear(encoder.num_features, ROTATIONS))

    def forward(self, views: list[Tensor], progress: Progress,
                targets: Targets = NO_TARGETS) -> LossOutput:
        """Cross-entropy of the rotation classifier on the view (and its other rotations)."""
        x, turns = views[0], target(targets, "rotation")
        if self.cfg.all_rotations:
            x, turns = with_all_rotations(x, turns)
        logits = self.classifier(self.encoder(x))  # (B or 4B, 4)
        loss = F.cross_entropy(logits.float(), turns)
        accuracy = (logits.argmax(dim=1) == turns).float().mean().item()
        return LossOutput(loss, {"rotation_acc": accuracy})
