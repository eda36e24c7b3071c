"""DINOv2: DINO on the class token, iBOT on masked patch tokens, KoLeo, Sinkhorn-Knopp centring."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raysl import distributed, schedules
from raysl.catalog import register
from raysl.config import MethodConfig
from raysl.errors import check
from raysl.losses import (
    ema_center,
    ibot_patch_loss,
    koleo,
    self_distillation,
    sinkhorn_knopp,
)
from raysl.methods.base import (
    NO_TARGETS,
    LossOutput,
    Progress,
    SSLMethod,
    Targets,
    encode_views,
    full_precision,
    head_over_views,
)
from raysl.methods.dino import DINOConfig
from raysl.nn.backbones import Encoder
from raysl.nn.ema import ema_update, frozen_copy
from raysl.nn.heads import DINOHead
from raysl.nn.vit import VisionTransformer

Centering = Literal["sinkhorn_knopp", "ema"]


@dataclass(frozen=True)
class DINOv2Config(DINOConfig):
    """DINOv2 hyperparameters (defaults: arXiv:2304.07193, Sec. 4, and its reference config).

    The reference is ``ssl_default_config.yaml``; the DINO knobs (head, temperatures, teacher
    momentum, frozen last layer) are :class:`~raysl.methods.dino.DINOConfig`'s.

    Where the paper and the reference configuration differ we follow the paper: it unties the
    DINO and iBOT heads ("untying head weights ... improves performance at both scales") and
    centres the teacher with Sinkhorn-Knopp; the reference config shares the head
    (``ibot.separate_head: false``) and uses DINO's EMA centring (``train.centering``). Both
    are options here (``ibot_separate_head``, ``centering``).
    """

    name: str = "dinov2"
    momentum_start: float = 0.992  # the reference's momentum_teacher, cosine-ramped to 1
    # The reference head learns its last layer's scale (weight_norm with g set to 1, trained).
    norm_last_layer: bool = False
    # "sinkhorn_knopp": SwAV's batch normalisation of the teacher, 3 iterations at the teacher
    # temperature (the paper); "ema": DINO's centring by a running mean (center_momentum).
    centering: Centering = "sinkhorn_knopp"
    sinkhorn_iterations: int = 3
    # iBOT: its own head (the paper) or the DINO head shared (iBOT's and the reference default).
    ibot_separate_head: bool = True
    ibot_out_dim: int = 65536
    ibot_hidden_dim: int = 2048
    ibot_bottleneck_dim: int = 256
    ibot_weight: float = 1.0
    # A random mask_probability of the global crops are masked, each its own fraction of
    # patches, stratified over [min, max] (the reference's collate: linspace bins).
    mask_probability: float = 0.5
    mask_ratio: tuple[float, float] = (0.1, 0.5)
    koleo_weight: float = 0.1  # on the student's class tokens of each global crop, summed

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("ibot_out_dim", "ibot_hidden_dim", "ibot_bottleneck_dim"):
            check(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")
        check(self.sinkhorn_iterations >= 1, "sinkhorn_iterations", self.sinkhorn_iterations,
              "must be >= 1 (the paper: 3)")
        for name in ("ibot_weight", "koleo_weight"):
            check(getattr(self, name) >= 0, name, getattr(self, name),
                  "a loss weight >= 0 (the paper: ibot 1.0, koleo 0.1)")
        check(0 < self.mask_probability <= 1, "mask_probability", self.mask_probability,
              "a fraction in (0, 1] of the global crops to mask (the paper: 0.5)")
        lo, hi = self.mask_ratio
        check(0 < lo <= hi < 1, "mask_ratio", self.mask_ratio,
              "[min, max] fractions of patches with 0 < min <= max < 1 (the paper: [0.1, 0.5])")


def ibot_masks(b: int, n: int, probability: float, ratio: tuple[float, float],
               device: torch.device) -> Tensor:
    """Which patches of ``b`` global crops of ``n`` patches the student sees as mask tokens.

    As the reference's collate: ``max(1, int(b * probability))`` crops (at least one, so the
    iBOT head always has a target) drawn at random are masked, the i-th of them a fraction
    drawn uniformly from the i-th of ``linspace(min, max)``'s bins. Within a crop the patches
    are a uniform random subset: the DINOv2 paper says "we randomly mask some of the input
    patches given to the student"; its code uses BEiT's blockwise masking instead.

    Returns:
        (b, n) bool, True where masked; every masked crop has at least one masked patch.
    """
    masked = min(b, max(1, int(b * probability)))
    bounds = torch.linspace(ratio[0], ratio[1], masked + 1, device=device)
    fractions = bounds[:-1] + (bounds[1:] - bounds[:-1]) * torch.rand(masked, device=device)
    counts = (fractions * n).long().clamp(min=1)  # (masked,)
    ranks = torch.rand(masked, n, device=device).argsort(dim=1).argsort(dim=1)
    mask = torch.zeros(b, n, dtype=torch.bool, device=device)
    mask[torch.randperm(b, device=device)[:masked]] = ranks < counts[:, None]
    return mask


@register("method", "dinov2")
class DINOv2(SSLMethod):
    """DINOv2 [0]: DINO's image-level loss, iBOT's patch-level loss [1] and KoLeo, on a ViT.

    The teacher (EMA of the student) sees the 2 global crops whole. The student sees the
    global crops with some patches replaced by a learned mask token, and the local crops
    whole. Loss = DINO's cross-entropy between the teacher's and the student's class-token
    outputs over all (global teacher crop, other student crop) pairs + ``ibot_weight`` x the
    cross-entropy between the teacher's and the student's outputs at the masked patches (global
    crops only) + ``koleo_weight`` x KoLeo of the student's class tokens of each global crop
    (over the global batch). The teacher's outputs are centred by Sinkhorn-Knopp (over every
    worker's rows; the masked patches' count is summed over workers) or by running means
    (``centering``), then sharpened by the teacher temperature. The teacher's backbone is
    exported, as DINO.

    - [0]: Oquab et al., DINOv2: Learning Robust Visual Features without Supervision, 2023,
      https://arxiv.org/abs/2304.07193
    - [1]: Zhou et al., iBOT: Image BERT Pre-Training with Online Tokenizer, 2021,
      https://arxiv.org/abs/2111.07832
    """

    Config = DINOv2Config
    summary = "DINO + iBOT masked patches + KoLeo, Sinkhorn-Knopp teacher, multi-crop, ViT only"
    paper = "Oquab et al. 2023, arXiv:2304.07193"
    collapse_hint = ("a teacher temperature too high, too few Sinkhorn iterations or a "
                     "koleo_weight too small (uniform or one-prototype collapse), or a learning "
                     "rate too high for AdamW")
    default_preset = "dino"
    multicrop = True
    vit_only = True
    # The student's global crops are masked, and its first encoder call is on the local crops:
    # the online probe would learn from those, not from whole global views.
    encodes_whole_views = False

    center: Tensor
    patch_center: Tensor

    def __init__(self, encoder: Encoder, cfg: MethodConfig) -> None:
        super().__init__(encoder)
        assert isinstance(cfg, DINOv2Config)
        if not isinstance(encoder.backbone, VisionTransformer):
            raise TypeError(f"DINOv2 needs a ViT encoder, got {type(encoder.backbone).__name__}")
        self.cfg = cfg
        d = encoder.num_features
        heads = {"dino": DINOHead(d, cfg.hidden_dim, cfg.bottleneck_dim, cfg.out_dim,
                                  cfg.head_layers, cfg.norm_last_layer, cfg.use_bn_in_head)}
        if cfg.ibot_separate_head:
            heads["ibot"] = DINOHead(d, cfg.ibot_hidden_dim, cfg.ibot_bottleneck_dim,
                                     cfg.ibot_out_dim, cfg.head_layers, cfg.norm_last_layer,
                                     cfg.use_bn_in_head)
        self.head = nn.ModuleDict(heads)
        # Stands in for each masked patch embedding, before the position embeddings are added
        # (the reference keeps it in the backbone; here it is the method's: the exported
        # encoder stays a plain ViT).
        self.mask_token = nn.Parameter(torch.zeros(1, d))
        self.teacher_encoder = cast(Encoder, frozen_copy(encoder))
        self.teacher_head = cast(nn.ModuleDict, frozen_copy(self.head))
        self.register_buffer("center", torch.zeros(1, cfg.out_dim))
        patch_dim = cfg.ibot_out_dim if cfg.ibot_separate_head else cfg.out_dim
        self.register_buffer("patch_center", torch.zeros(1, patch_dim))

    def masks(self, b: int, n: int, device: torch.device) -> Tensor:
        """(b, n) bool: the patches of this step's ``b`` global crops the student sees masked."""
        return ibot_masks(b, n, self.cfg.mask_probability, self.cfg.mask_ratio, device)

    @staticmethod
    def _vit(encoder: Encoder) -> VisionTransformer:
        return cast(VisionTransformer, encoder.backbone)

    def _masked_tokens(self, x: Tensor, mask: Tensor) -> Tensor:
        """(B, N, D) patch embeddings of ``x`` (normalised), the mask token where ``mask``."""
        vit = self._vit(self.encoder)
        emb = vit.patch_embed(x)  # (B, D, h, w)
        h, w = emb.shape[-2:]
        emb = emb.flatten(2).transpose(1, 2)  # (B, N, D)
        emb = torch.where(mask.unsqueeze(-1), self.mask_token.to(emb.dtype), emb)
        out: Tensor = emb + vit.pos_embed_for(h, w)[:, 1:]
        return out

    def forward(self, views: list[Tensor], progress: Progress,
                targets: Targets = NO_TARGETS) -> LossOutput:
        """DINO on class tokens + iBOT on masked patches + KoLeo; see the class docstring."""
        c = self.cfg
        glob = torch.cat(views[:2])  # (2B, C, S, S): both global crops in one pass, as DINOv2
        x = self.encoder.normalise(glob)
        p = self._vit(self.encoder).patch_size
        mask = self.masks(x.shape[0], (x.shape[-2] // p) * (x.shape[-1] // p), x.device)
        tokens = self._vit(self.encoder).transform(self._masked_tokens(x, mask))  # (2B, 1+N, D)
        cls_global = tokens[:, 0]
        student = head_over_views(self.head["dino"],
                                  [*cls_global.chunk(2), *encode_views(self.encoder, views[2:])])
        student_patches = self._ibot(self.head)(tokens[:, 1:][mask])  # (M, K'): masked, in order
        with torch.no_grad():
            t_vit = self._vit(self.teacher_encoder)
            t_tokens = t_vit.transform(t_vit.patch_tokens(self.teacher_encoder.normalise(glob)))
            teacher = self.teacher_head["dino"](t_tokens[:, 0])  # (2B, K)
            teacher_patches = self._ibot(self.teacher_head)(t_tokens[:, 1:][mask])  # (M, K')
        temp = c.teacher_temp_at(progress.epoch)
        with full_precision(cls_global):
            cls_targets, patch_targets = self._targets(teacher.float(), teacher_patches.float(),
                                                       temp)
            dino = self_distillation([s.float() for s in student], list(cls_targets.chunk(2)),
                                     c.student_temp)
            ibot = ibot_patch_loss(student_patches.float(), patch_targets, mask, c.student_temp)
            # Per global crop, summed, as the reference: two crops of one image are not
            # pushed apart.
            spread = torch.stack([koleo(f.float()) for f in cls_global.chunk(2)]).sum()
        loss = dino + c.ibot_weight * ibot + c.koleo_weight * spread
        return LossOutput(loss, {"dinov2/dino": float(dino.detach()),
                                 "dinov2/ibot": float(ibot.detach()),
                                 "dinov2/koleo": float(spread.detach()),
                                 "dinov2/teacher_temp": temp,
                                 "dinov2/masked_patches": float(mask.sum()) / mask.shape[0]})

    @staticmethod
    def _ibot(heads: nn.ModuleDict) -> nn.Module:
        """The iBOT head of ``heads`` (the student's or the teacher's): its own or DINO's."""
        return heads["ibot"] if "ibot" in heads else heads["dino"]

    @torch.no_grad()
    def _targets(self, teacher: Tensor, patches: Tensor, temp: float) -> tuple[Tensor, Tensor]:
        """The teacher's centred, sharpened targets: class tokens (2B, K), masked patches (M, K').

        With ``centering: ema`` the running centres are updated too.
        """
        c = self.cfg
        # Ranks mask different numbers of patches: Sinkhorn's and the centre's means run over
        # the count summed over workers.
        patches_global = int(distributed.all_reduce_sum(
            torch.tensor(patches.shape[0], device=patches.device)))
        if c.centering == "sinkhorn_knopp":
            return (sinkhorn_knopp(teacher, temp, c.sinkhorn_iterations),
                    sinkhorn_knopp(patches, temp, c.sinkhorn_iterations, patches_global))
        cls_targets = F.softmax((teacher - self.center) / temp, dim=1)
        patch_targets = F.softmax((patches - self.patch_center) / temp, dim=1)
        self.center.copy_(ema_center(self.center, teacher, c.center_momentum))
        # The patch centre moves towards the mean of the teacher's outputs over every masked
        # patch of every worker, what one process on the whole batch computes (the running
        # mean over "the batch" of DINO and iBOT). DINOv2's iBOTPatchLoss averages each
        # worker's own mean instead, which weighs a patch by 1 / its worker's count.
        self.patch_center.copy_(ema_center(self.patch_center, patches, c.center_momentum,
                                           patches_global))
        return cls_targets, patch_targets

    def exported_encoder(self) -> nn.Module:
        """The teacher's backbone (DINOv2 evaluates the teacher), or the student's."""
        return self.teacher_encoder if self.cfg.export_teacher else self.encoder

    def exported_projector(self) -> nn.Module:
        """The MLP of the exported network's DINO head, up to its bottleneck."""
        head = self.teacher_head if self.cfg.export_teacher else self.head
        return cast(DINOHead, head["dino"]).mlp

    def on_after_backward(self, progress: Progress) -> None:
        """No update of the heads' last layers for ``freeze_last_layer_epochs``, as DINOv2."""
        if progress.epoch < self.cfg.freeze_last_layer_epochs:
            for head in self.head.values():
                for p in cast(DINOHead, head).last_layer.parameters():
                    p.grad = None

    def on_step_end(self, progress: Progress) -> None:
        """EMA of the student into the teacher (backbone and heads)."""
        m = schedules.cosine(progress.fraction, self.cfg.momentum_start, self.cfg.momentum_end)
        ema_update(self.teacher_encoder, self.encoder, m)
        ema_update(self.teacher_head, self.head, m)
