"""A plain Vision Transformer (Dosovitskiy et al. 2020, arXiv:2010.11929) for SSL.

Why our own instead of torchvision's ``VisionTransformer``: that one fixes the input size, and
multi-crop methods (DINO, SwAV) feed global and local crops of different sizes to the same
network, so the position embeddings must be interpolated to each crop's grid (as DINO's
``interpolate_pos_encoding`` does). Everything else follows the standard pre-norm ViT.

Letters in shape comments: B images, N patches, D embedding dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sincos_pos_embed(dim: int, h: int, w: int) -> Tensor:
    """Fixed 2-D sine-cosine position embeddings, with a zero row for the [CLS] token.

    MAE's (arXiv:2111.06377, after "Attention is all you need"): half the channels encode the
    patch's row, half its column, each as ``[sin(pos * omega), cos(pos * omega)]`` with
    ``omega_k = 1 / 10000^(k / (dim / 4))``.

    Returns:
        (1, 1 + h * w, dim), patches in row-major order (as ``patch_embed`` flattens them).
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embeddings need a dim divisible by 4, got {dim}")
    # On the CPU explicitly: a fixed table has values even where the module is built on the
    # "meta" device to count its parameters.
    f64, cpu = torch.float64, torch.device("cpu")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=f64, device=cpu) / (dim // 4))
    rows, cols = torch.meshgrid(torch.arange(h, dtype=f64, device=cpu),
                                torch.arange(w, dtype=f64, device=cpu), indexing="ij")

    def encode(pos: Tensor) -> Tensor:  # (N,) -> (N, dim / 2)
        angles = pos.flatten()[:, None] * omega[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    table = torch.cat([encode(rows), encode(cols)], dim=1)  # (h * w, dim)
    return torch.cat([torch.zeros(1, dim, dtype=f64, device=cpu), table]).float().unsqueeze(0)


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): drop a residual branch for whole samples.

    Each sample's branch is zeroed with probability ``p`` and the survivors scaled by 1/(1-p),
    so the expectation is unchanged. Active only in a training forward that builds a graph:
    a no-grad pass (an EMA teacher, a momentum encoder, feature extraction) sees the whole
    network, as DINO builds its teacher without drop path.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        """(B, ...) -> (B, ...)."""
        if self.p == 0.0 or not self.training or not torch.is_grad_enabled():
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x)).

    ``drop_path``: probability of skipping each residual branch per sample (stochastic depth).
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        """(B, N, D) -> (B, N, D)."""
        h = self.norm1(x)
        x = x + self.drop_path(self.attn(h, h, h, need_weights=False)[0])
        out: Tensor = x + self.drop_path(self.mlp(self.norm2(x)))
        return out


class VisionTransformer(nn.Module):
    """ViT backbone returning the final [CLS] token.

    Args:
        image_size: side the position embeddings are laid out for (other sizes interpolate).
        patch_size: side of the square patches; inputs should be multiples of it.
        in_channels: 3 for RGB, 1 for grayscale.
        dim: embedding dimension D.
        depth: number of blocks.
        heads: attention heads (``dim`` must be divisible by it).
        drop_path_rate: stochastic depth of the last block, rising linearly from 0 at the first
            (DINO's ViT-S: 0.1).
        pos_embed: ``"learned"`` (a trained table, as DINO and MoCo v3) or ``"sincos"`` (fixed
            2-D sine-cosine, as MAE: a buffer, computed for any grid instead of interpolated).

    Output: (B, D) features (``num_features = dim``).
    """

    def __init__(self, image_size: int, patch_size: int, in_channels: int, dim: int, depth: int,
                 heads: int, drop_path_rate: float = 0.0, pos_embed: str = "learned") -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        self.patch_size = patch_size
        self.grid = image_size // patch_size
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.fixed_pos_embed = pos_embed == "sincos"
        self.pos_embed: Tensor
        if self.fixed_pos_embed:
            self.register_buffer("pos_embed", sincos_pos_embed(dim, self.grid, self.grid))
        else:
            self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid**2, dim))
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        # linspace(0, rate, depth) in plain Python: the module may be built on the meta device.
        rates = [drop_path_rate * i / max(1, depth - 1) for i in range(depth)]
        self.blocks = nn.ModuleList(Block(dim, heads, drop_path=r) for r in rates)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.num_features = dim
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        # As DINO and timm: truncated normal (std 0.02) for the linear maps. The fused q/k/v
        # projection keeps torch's Xavier-uniform, close to MoCo v3's (Xavier per projection):
        # with DINO's std 0.02 there, a width-16 ViT's attention starts uniform and its DINO
        # loss stayed on the log(out_dim) plateau for a whole short run (BENCHMARKS.md).
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def pos_embed_for(self, h: int, w: int) -> Tensor:
        """Position embeddings for an (h, w) patch grid: (1, 1 + h * w, D).

        The trained (grid, grid) table is resized bicubically when the grid differs.
        """
        if h == w == self.grid:
            return self.pos_embed
        if self.fixed_pos_embed:
            return sincos_pos_embed(self.pos_embed.shape[-1], h, w).to(self.pos_embed.device)
        cls, patches = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        d = patches.shape[-1]
        table = patches.reshape(1, self.grid, self.grid, d).permute(0, 3, 1, 2)
        table = F.interpolate(table, size=(h, w), mode="bicubic", align_corners=False)
        return torch.cat([cls, table.permute(0, 2, 3, 1).reshape(1, h * w, d)], dim=1)

    def patch_tokens(self, x: Tensor) -> Tensor:
        """(B, C, H, W) normalised images -> (B, N, D) patch embeddings plus their positions."""
        if min(x.shape[-2:]) < self.patch_size:
            raise ValueError(f"input {tuple(x.shape[-2:])} is smaller than a "
                             f"{self.patch_size}px patch")
        tokens = self.patch_embed(x)  # (B, D, H/p, W/p)
        h, w = tokens.shape[-2:]
        out: Tensor = tokens.flatten(2).transpose(1, 2) + self.pos_embed_for(h, w)[:, 1:]
        return out

    def transform(self, patches: Tensor, cls_only: bool = False) -> Tensor:
        """The [CLS] token and ``patches`` (B, n, D) through the blocks and the final norm.

        ``patches`` may be any subset of :meth:`patch_tokens`' (MAE's visible patches).

        Returns:
            (B, 1 + n, D) tokens, [CLS] first; (B, D) with ``cls_only`` (only it is normed).
        """
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(patches.shape[0], -1, -1)
        z = torch.cat([cls, patches], dim=1)
        for block in self.blocks:
            z = block(z)
        out: Tensor = self.norm(z[:, 0] if cls_only else z)
        return out

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) normalised images -> (B, D) [CLS] features."""
        return self.transform(self.patch_tokens(x), cls_only=True)
