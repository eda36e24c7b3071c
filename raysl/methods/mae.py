"""MAE: a ViT sees a random quarter of each image's patches; a small decoder paints the rest."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor, nn

from raysl.catalog import register
from raysl.config import Config as RunConfig
from raysl.config import MethodConfig
from raysl.errors import check
from raysl.losses import masked_patch_mse, patchify
from raysl.methods.base import NO_TARGETS, LossOutput, Progress, SSLMethod, Targets
from raysl.nn.backbones import Encoder
from raysl.nn.vit import Block, VisionTransformer, sincos_pos_embed


@dataclass(frozen=True)
class MAEConfig(MethodConfig):
    """MAE hyperparameters (defaults: arXiv:2111.06377, table 1 and appendix A.1).

    The paper's other settings are not the method's: AdamW with betas (0.9, 0.95)
    (``optim.adam_betas``) and fixed sin-cos positions (``model.pos_embed: sincos``) are set by
    ``pipelines/configs/mae_fmnist.yaml``; ``method.name=mae`` alone keeps raysl's defaults.
    """

    name: str = "mae"
    mask_ratio: float = 0.75  # fraction of patches hidden from the encoder, per sample
    # The decoder is used only in pretraining; the paper's default is 8 blocks of width 512
    # (16 heads). Its depth matters for linear probing, hardly for fine-tuning (table 1a-b).
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    # Predict each patch's pixels standardised by the patch's own mean and std (table 1c:
    # +0.5 fine-tuning, +1.0 linear on ImageNet); false = the raw (normalised) pixels.
    norm_pix_loss: bool = True

    def __post_init__(self) -> None:
        check(0.0 < self.mask_ratio < 1.0, "mask_ratio", self.mask_ratio,
              "a fraction in (0, 1) of patches to mask (the paper: 0.75)")
        for name in ("decoder_dim", "decoder_depth", "decoder_heads"):
            check(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")
        check(self.decoder_dim % self.decoder_heads == 0, "decoder_dim", self.decoder_dim,
              f"must be divisible by decoder_heads ({self.decoder_heads})")
        check(self.decoder_dim % 4 == 0, "decoder_dim", self.decoder_dim,
              "a multiple of 4 (its fixed sin-cos position embeddings)")


def random_masking(b: int, n: int, visible: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """An independent random subset of ``visible`` of ``n`` patches for each of ``b`` samples.

    As MAE: argsort of uniform noise is a uniform random permutation per sample; its first
    ``visible`` entries are kept.

    Returns:
        ``keep`` (b, visible) int64 indices of the visible patches, and ``mask`` (b, n) float,
        1 where a patch is masked and 0 where visible.
    """
    order = torch.rand(b, n, device=device).argsort(dim=1)
    keep = order[:, :visible]
    mask = torch.ones(b, n, device=device)
    mask.scatter_(1, keep, 0.0)
    return keep, mask


class MAEDecoder(nn.Module):
    """MAE's lightweight decoder: visible latents and mask tokens -> every patch's pixels.

    The encoder's tokens are projected to ``dim``; a shared, learned mask token stands in for
    each hidden patch; all get fixed sin-cos positions; transformer blocks; a linear map to the
    pixels of a patch.

    Args:
        encoder_dim: width D of the encoder's tokens.
        dim, depth, heads: the decoder's width, blocks and attention heads.
        grid: patches per side of the training images.
        patch_pixels: p * p * C values per patch.
    """

    pos_embed: Tensor

    def __init__(self, encoder_dim: int, dim: int, depth: int, heads: int, grid: int,
                 patch_pixels: int) -> None:
        super().__init__()
        self.embed = nn.Linear(encoder_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos_embed", sincos_pos_embed(dim, grid, grid))
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pred = nn.Linear(dim, patch_pixels)
        nn.init.normal_(self.mask_token, std=0.02)
        # MAE's decoder initialisation: Xavier-uniform linear maps, zero biases. (The encoder
        # keeps raysl's ViT initialisation, truncated normal 0.02 as DINO and timm, where MAE
        # uses Xavier-uniform there too.)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, latent: Tensor, keep: Tensor, n: int) -> Tensor:
        """Predicted pixels of all ``n`` patches.

        Args:
            latent: (B, 1 + k, D) the encoder's [CLS] and visible tokens.
            keep: (B, k) the visible patches' indices, in ``latent``'s order.
            n: patches per image N.

        Returns:
            (B, N, p * p * C), patches in row-major order.
        """
        x = self.embed(latent)  # (B, 1 + k, d)
        b, d = x.shape[0], x.shape[-1]
        tokens = self.mask_token.to(x.dtype).expand(b, n, d).clone()
        tokens.scatter_(1, keep.unsqueeze(-1).expand(-1, -1, d), x[:, 1:])  # visible in place
        z = torch.cat([x[:, :1], tokens], dim=1) + self.pos_embed
        for block in self.blocks:
            z = block(z)
        out: Tensor = self.pred(self.norm(z))[:, 1:]
        return out


@register("method", "mae")
class MAE(SSLMethod):
    """Masked autoencoder [0]: reconstruct the pixels of the patches the encoder did not see.

    Each sample hides its own random ``mask_ratio`` of patches, drawn on the device inside the
    forward (the data path stays one lightly augmented view). The encoder runs on the visible
    patches only, which is what makes MAE cheap: at 0.75 a quarter of the tokens. The loss is
    a mean over masked patches, equal in number on every rank, so DDP's gradient average is the
    global batch's. The registered encoder is the ViT without the decoder, run on whole images.

    - [0]: He et al., Masked Autoencoders Are Scalable Vision Learners, CVPR 2022,
      https://arxiv.org/abs/2111.06377
    """

    Config = MAEConfig
    summary = "predictive: ViT on 25% of the patches, a light decoder reconstructs the rest"
    paper = "He et al. 2021, arXiv:2111.06377"
    collapse_hint = ("a learning rate too high for AdamW (MAE: base_lr 1.5e-4 per 256 images) "
                     "or too short a run; MAE's features are known to be weak under linear "
                     "probing, stronger after fine-tuning")
    default_preset = "mae"
    global_views = 1
    vit_only = True
    encodes_whole_views = False  # a quarter of the patches

    def __init__(self, encoder: Encoder, cfg: MethodConfig) -> None:
        super().__init__(encoder)
        assert isinstance(cfg, MAEConfig)
        vit = encoder.backbone
        if not isinstance(vit, VisionTransformer):
            raise TypeError(f"MAE needs a ViT encoder, got {type(vit).__name__}")
        self.cfg = cfg
        self.visible = max(1, int(vit.grid**2 * (1 - cfg.mask_ratio)))  # MAE's len_keep
        self.decoder = MAEDecoder(encoder.num_features, cfg.decoder_dim, cfg.decoder_depth,
                                  cfg.decoder_heads, vit.grid,
                                  vit.patch_size ** 2 * encoder.in_channels)

    @property
    def vit(self) -> VisionTransformer:
        """The encoder's ViT (a property: a second attribute would save its weights twice)."""
        return cast(VisionTransformer, self.encoder.backbone)

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        """Patches that tile the images (each is reconstructed whole)."""
        p = cfg.model.effective_patch_size
        check(cfg.data.image_size % p == 0, "data.image_size", cfg.data.image_size,
              f"a multiple of model.patch_size ({p}) for mae: each patch is reconstructed whole")

    def forward(self, views: list[Tensor], progress: Progress,
                targets: Targets = NO_TARGETS) -> LossOutput:
        """Mask, encode the visible patches, decode all, MSE on the masked ones."""
        x = self.encoder.normalise(views[0])  # (B, C, S, S): MAE's target is normalised pixels
        tokens = self.vit.patch_tokens(x)  # (B, N, D)
        b, n, d = tokens.shape
        keep, mask = random_masking(b, n, self.visible, x.device)
        visible = torch.gather(tokens, 1, keep.unsqueeze(-1).expand(-1, -1, d))
        pred = self.decoder(self.vit.transform(visible), keep, n)  # (B, N, p * p * C)
        target = patchify(x, self.vit.patch_size)
        loss = masked_patch_mse(pred.float(), target.float(), mask, self.cfg.norm_pix_loss)
        return LossOutput(loss)
