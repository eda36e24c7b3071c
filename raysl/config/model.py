"""The encoder that is pretrained and exported (``model``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from raysl.errors import check

Backbone = Literal["resnet18", "resnet34", "resnet50", "vit_tiny", "vit_small"]

# ViT sizes: (embedding dim, blocks) as in DeiT and DINO; heads = one per 64 channels.
VIT_SIZES: dict[str, tuple[int, int]] = {"vit_tiny": (192, 12), "vit_small": (384, 12)}
VIT_HEAD_DIM = 64


@dataclass(frozen=True)
class ModelConfig:
    """The encoder that is pretrained and exported: a ResNet (torchvision's layout) or a ViT."""

    backbone: Backbone = "resnet18"
    # ResNet: channels of the first stage (64 = torchvision's; 16 runs on a laptop).
    # ViT: the embedding dimension. 0 = the standard size (64, or 192 / 384 for ViT-Tiny/Small).
    width: int = 0
    small_stem: bool = False  # ResNet only: 3x3 stride-1 stem, no max-pool, for inputs <= 64 px
    depth: int = 0  # ViT only: number of blocks; 0 = 12
    patch_size: int = 0  # ViT only: patch side; 0 = 16 (use 4 for 28-32 px images)
    drop_path_rate: float = 0.0  # ViT only: stochastic depth of the last block (DINO ViT-S: 0.1)
    # ViT only: "learned" position embeddings (DINO, MoCo v3) or fixed 2-D "sincos" (MAE).
    pos_embed: Literal["learned", "sincos"] = "learned"
    # Continued pretraining: start the encoder from these weights instead of random ones. A
    # registry URI (models:/NAME@ALIAS, models:/NAME/VERSION), a run (runs:/RUN_ID), a raysl
    # checkpoint directory, or a local torchvision- or timm-layout state-dict file (.pt, .pth);
    # never a download. Loaded strictly; the method's heads start fresh unless the source is a
    # checkpoint of the same method. "" = random initialisation.
    init_from: str = ""

    def __post_init__(self) -> None:
        check(self.init_from == self.init_from.strip(), "init_from", self.init_from,
              "a URI or path without surrounding spaces")
        check("://" not in self.init_from or self.init_from.startswith(("models:/", "runs:/")),
              "init_from", self.init_from,
              "a registry URI (models:/NAME@ALIAS), runs:/RUN_ID or a local path; weights are "
              "never downloaded: copy the file here first")
        if self.is_vit:
            check(not self.small_stem, "small_stem", self.small_stem,
                  f"is a ResNet option; {self.backbone} takes model.patch_size for small images")
            check(self.depth >= 0, "depth", self.depth, ">= 0 (0 = 12 blocks)")
            check(self.patch_size >= 0, "patch_size", self.patch_size, ">= 0 (0 = 16)")
            check(0 <= self.drop_path_rate < 1, "drop_path_rate", self.drop_path_rate,
                  "a probability in [0, 1) (0 = off; DINO's ViT-S uses 0.1)")
            w = self.effective_width
            check(w % self.heads == 0, "width", self.width,
                  f"a ViT embedding dim divisible by its {self.heads} heads (one per 64)")
            check(self.pos_embed == "learned" or w % 4 == 0, "width", self.width,
                  "a multiple of 4 with pos_embed='sincos' (a sin and a cos per row and column)")
        else:
            check(self.width == 0 or (self.width >= 4 and self.width % 4 == 0), "width",
                  self.width, "must be 0 (standard: 64) or a multiple of 4 and >= 4")
            for name in ("depth", "patch_size", "drop_path_rate"):
                check(getattr(self, name) == 0, name, getattr(self, name),
                      f"is a ViT option; leave it 0 for {self.backbone}")
            check(self.pos_embed == "learned", "pos_embed", self.pos_embed,
                  f"is a ViT option; leave it 'learned' for {self.backbone}")

    @property
    def is_vit(self) -> bool:
        """Whether the backbone is a Vision Transformer."""
        return self.backbone.startswith("vit")

    @property
    def effective_width(self) -> int:
        """First-stage channels (ResNet) or embedding dim (ViT) actually built."""
        return self.width or (VIT_SIZES[self.backbone][0] if self.is_vit else 64)

    @property
    def effective_depth(self) -> int:
        """ViT blocks actually built."""
        return self.depth or VIT_SIZES.get(self.backbone, (0, 12))[1]

    @property
    def effective_patch_size(self) -> int:
        """ViT patch side actually used."""
        return self.patch_size or 16

    @property
    def heads(self) -> int:
        """ViT attention heads."""
        return max(1, self.effective_width // VIT_HEAD_DIM)

