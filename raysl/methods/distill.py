"""Distillation: a student encoder regresses the features of a frozen, registered teacher."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raysl.catalog import register
from raysl.config import Config as RunConfig
from raysl.config import MethodConfig
from raysl.errors import check
from raysl.losses import feature_distillation, standardised_targets
from raysl.methods.base import NO_TARGETS, LossOutput, Progress, SSLMethod, Targets
from raysl.nn.backbones import Encoder, unit_float
from raysl.nn.vit import VisionTransformer


@dataclass(frozen=True)
class DistillConfig(MethodConfig):
    """Feature distillation from a frozen teacher (LightlyTrain's ``distillation`` v2).

    The teacher is any encoder raysl can load: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``,
    ``runs:/RUN_ID`` or a raysl checkpoint directory. Its preprocessing (channels, size,
    normalisation) is its own, read from its config; it is never saved with the student.
    """

    name: str = "distill"
    teacher: str = ""  # required: the encoder to distill from
    # The patch term's weight when student and teacher are both ViTs (0 = class tokens only).
    patch_weight: float = 1.0
    # Regress the teacher's features standardised over the global batch (each feature zero
    # mean, unit variance: losses.standardised_targets) rather than as they are (LightlyTrain's
    # v2 regresses them raw). Measured in a 78-step run on Fashion-MNIST (a width-8 student of
    # the demo's encoder): kNN 73.8% standardised against 66.1% raw, each at its best lr.
    standardise: bool = True

    def __post_init__(self) -> None:
        check(bool(self.teacher), "teacher", self.teacher,
              "the encoder to distill from: models:/NAME@ALIAS, models:/NAME/VERSION, "
              "runs:/RUN_ID or a raysl checkpoint directory")
        check(self.patch_weight >= 0, "patch_weight", self.patch_weight,
              "a weight >= 0 (0 = the class-token term only)")


def _tokens(encoder: Encoder, x: Tensor) -> tuple[Tensor, Tensor | None]:
    """(B, C, H, W) images -> ((B, D) features, (B, D, h, w) patch features or None).

    A ViT gives its normed [CLS] token and its normed patch tokens on their grid from one pass;
    a ResNet its pooled features and no patches.
    """
    backbone = encoder.backbone
    if not isinstance(backbone, VisionTransformer):
        return encoder(x), None
    tokens = backbone.transform(backbone.patch_tokens(encoder.normalise(x)))  # (B, 1 + N, D)
    h, w = (side // backbone.patch_size for side in x.shape[-2:])
    patches = tokens[:, 1:].transpose(1, 2).reshape(x.shape[0], -1, h, w)
    return tokens[:, 0], patches


@register("method", "distill")
class Distill(SSLMethod):
    """Feature distillation [0, 1]: the student's projected features regress the teacher's.

    Student and teacher see the same view; the teacher sees it resized to the size it was
    pretrained at, normalised as it was. A linear projection maps the student's features to the
    teacher's dimension and the loss is their mean squared error, as LightlyTrain's
    ``distillation`` (v2) computes it, with the teacher's features standardised over the global
    batch first (``method.standardise``; raw, as LightlyTrain, when false). When both are ViTs,
    the student's patch features are projected by a second linear layer, resized to the
    teacher's patch grid and regressed onto the teacher's (standardised) patch tokens as well,
    weighted by ``patch_weight``. The teacher runs in inference mode and is not a submodule: it
    is neither trained, checkpointed nor exported.

    - [0]: Hinton et al., Distilling the Knowledge in a Neural Network, 2015,
      https://arxiv.org/abs/1503.02531; feature regression: Romero et al., FitNets, 2015,
      https://arxiv.org/abs/1412.6550
    - [1]: Oquab et al., DINOv2, 2023, Sec. 5 (distilling ViT-g into smaller models),
      https://arxiv.org/abs/2304.07193; LightlyTrain's ``distillation`` method.
    """

    Config = DistillConfig
    summary = "regress a frozen registered teacher's features (class token and patches)"
    paper = "Hinton et al. 2015, arXiv:1503.02531; Romero et al. 2015, arXiv:1412.6550"
    takes_teacher = True
    collapse_hint = "a teacher whose own features have collapsed, or a learning rate too high"

    def __init__(self, encoder: Encoder, cfg: MethodConfig, teacher: Encoder) -> None:
        super().__init__(encoder)
        assert isinstance(cfg, DistillConfig)
        self.cfg = cfg
        # A tuple keeps the teacher out of the module tree: out of state_dict (checkpoints),
        # parameters (optimizer, DDP), train() and the exported encoder.
        self._teacher = (teacher.eval().requires_grad_(False),)
        self.head = nn.Linear(encoder.num_features, teacher.num_features)
        both_vit = encoder.is_vit and teacher.is_vit
        self.patch_head = (nn.Linear(encoder.num_features, teacher.num_features)
                           if both_vit and cfg.patch_weight > 0 else None)

    @classmethod
    def from_config(cls, encoder: Encoder, cfg: RunConfig) -> SSLMethod:
        """Refused: the teacher is needed (:func:`~raysl.methods.base.build_method` gives it)."""
        raise TypeError("distill is built with its teacher: build_method(cfg, teacher=...)")

    @classmethod
    def with_teacher(cls, encoder: Encoder, cfg: RunConfig, teacher: Encoder) -> SSLMethod:
        """The student ``encoder`` learning from ``teacher``."""
        return cls(encoder, cfg.method, teacher)

    @property
    def teacher(self) -> Encoder:
        """The frozen teacher, on the student's device."""
        teacher = self._teacher[0]
        device = self.head.weight.device
        if teacher.mean.device != device:
            self._teacher = (teacher.to(device),)
        return self._teacher[0]

    def exported_projector(self) -> nn.Module:
        """The projection onto the teacher's features (the label-free monitors read it)."""
        return self.head

    @torch.no_grad()
    def teacher_features(self, view: Tensor) -> tuple[Tensor, Tensor | None]:
        """The teacher's (B, Dt) features and (B, Dt, h, w) patch features of ``view``."""
        teacher = self.teacher
        x = unit_float(view)
        if x.shape[-1] != teacher.image_size or x.shape[-2] != teacher.image_size:
            x = F.interpolate(x.float(), size=(teacher.image_size, teacher.image_size),
                              mode="bilinear", antialias=True, align_corners=False)
        return _tokens(teacher, x)

    def targets(self, view: Tensor) -> tuple[Tensor, Tensor | None]:
        """What the student regresses: the teacher's features, standardised if configured."""
        target, patches = self.teacher_features(view)
        if not self.cfg.standardise:
            return target, patches
        if patches is not None and self.patch_head is not None:  # else left unused
            patches = standardised_targets(patches)
        return standardised_targets(target), patches

    def forward(self, views: list[Tensor], progress: Progress,
                targets: Targets = NO_TARGETS) -> LossOutput:
        """The mean over views of the class-token (and patch) regression."""
        terms: dict[str, list[Tensor]] = {"global": [], "patch": []}
        for view in views:
            target, target_patches = self.targets(view)
            features, patches = _tokens(self.encoder, view)
            terms["global"].append(feature_distillation(self.head(features), target))
            if self.patch_head is not None and patches is not None and target_patches is not None:
                terms["patch"].append(self._patch_loss(patches, target_patches))
        means = {name: torch.stack(t).mean() for name, t in terms.items() if t}
        loss = means["global"] + self.cfg.patch_weight * means.get("patch", 0.0)
        return LossOutput(loss, {f"distill/{k}": float(v.detach()) for k, v in means.items()})

    def _patch_loss(self, patches: Tensor, target: Tensor) -> Tensor:
        """Student (B, Ds, h, w) patches projected, resized to the teacher's grid, regressed."""
        assert self.patch_head is not None
        projected = self.patch_head(patches.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        if projected.shape[-2:] != target.shape[-2:]:
            projected = F.interpolate(projected, size=target.shape[-2:], mode="bilinear",
                                      align_corners=False)
        return feature_distillation(projected, target)
