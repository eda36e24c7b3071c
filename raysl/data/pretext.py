"""Pretext tasks: one augmented view of each image and a target to predict from it.

``rotation`` (RotNet: the view rotated by a random quarter turn, the label its index),
``jigsaw`` (the view cut into shuffled tiles, the label the permutation's index) and
``colorization`` (the view's luminance, the target its colours). Each task is a function
``(images, cfg, gen) -> (input, target)`` in :data:`PRETEXTS`, with the column its target goes
to; :func:`raysl.data.views.make_columns` runs the one ``data.views.pretext`` names. The
building blocks are :func:`rotate90`, :func:`cut_tiles` and :func:`jigsaw_permutations`; the
view itself is :func:`raysl.data.augment.global_view`.

Letters in shape comments: B images, C channels, S view size, T jigsaw tiles of side t.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable

import torch
from torch import Tensor

from raysl.config import DataConfig
from raysl.data.augment import global_view, grayscale


def rotate90(x: Tensor, k: Tensor) -> Tensor:
    """Rotate each image by its own number of quarter turns, counter-clockwise.

    Args:
        x: (B, C, S, S) square images.
        k: (B,) int quarter turns in 0..3 (as ``torch.rot90(img, k, dims=(-2, -1))``).

    Returns:
        (B, C, S, S), same dtype.
    """
    out = x.clone()
    for turns in range(1, 4):
        idx = torch.nonzero(k == turns).flatten()
        if idx.numel():
            out[idx] = torch.rot90(x[idx], turns, dims=(-2, -1))
    return out


def rotation_pretext(x: Tensor, cfg: DataConfig, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """RotNet's input and label (Gidaris et al. 2018, arXiv:1803.07728).

    One view per image, rotated by 0, 90, 180 or 270 degrees drawn per image. RotNet instead
    feeds all four rotations of every image in the same mini-batch; a method that wants that
    can add the other three with :func:`rotate90` (labels ``(k + j) % 4``, no further
    randomness), at four times the cost per image.

    Returns:
        (B, C, S, S) uint8 rotated views and (B,) int64 labels: quarter turns counter-clockwise.
    """
    view = global_view(x, cfg, gen, 0)
    k = torch.randint(0, 4, (x.shape[0],), generator=gen)
    return rotate90(view, k), k


_PERMUTATION_POOL = 100_000  # candidates sampled when a grid has too many permutations to list


@functools.lru_cache(maxsize=8)
def _permutations(n: int, grid: int, seed: int) -> Tensor:
    t = grid * grid
    gen = torch.Generator().manual_seed(seed)
    if t <= 9:  # 9! = 362880 permutations: list them all
        cand = torch.tensor(list(itertools.permutations(range(t))), dtype=torch.int8)
        cand = cand[torch.randperm(len(cand), generator=gen)]  # the seed breaks the ties
    else:
        cand = torch.argsort(torch.rand(_PERMUTATION_POOL, t, generator=gen), dim=1)
        cand = cand.to(torch.int8)
    chosen = [0]
    d = (cand != cand[0]).sum(dim=1)  # (N,): Hamming distance to the first choice
    closest, total = d, d.clone()
    for _ in range(n - 1):
        # Chosen candidates have closest == 0, so are never picked again.
        j = int(torch.argmax(closest * (n * t + 1) + total))  # max closest, then max total
        chosen.append(j)
        d = (cand != cand[j]).sum(dim=1)
        closest, total = torch.minimum(closest, d), total + d
    return cand[chosen].long()


def jigsaw_permutations(n: int, grid: int = 3, seed: int = 0) -> Tensor:
    """The jigsaw task's classes: ``n`` tile orders far apart in Hamming distance.

    Chosen greedily as in Noroozi & Favaro's Algorithm 1 (arXiv:1603.09246), but each next
    permutation maximises its *minimum* distance to those already chosen (ties: the larger total
    distance), where the paper maximises the total, which can leave two classes 2 tiles apart.
    For 100 permutations of 9 tiles any two differ in at least 6 tiles. The seed orders the
    candidates, so the set is the same on every worker and in every run; it is cached.

    Args:
        n: number of permutations (classes), at most ``(grid * grid)!``.
        grid: tiles per side; grids above 3 choose among 100,000 random permutations.
        seed: fixes the set.

    Returns:
        (n, T) int64, T = grid * grid: row i lists, for each output position, the cell whose
        tile goes there.
    """
    return _permutations(n, grid, seed).clone()


def cut_tiles(x: Tensor, grid: int, tile: int, gen: torch.Generator) -> Tensor:
    """Cut each image into ``grid x grid`` cells and one ``tile``-sided tile from each cell.

    Each tile sits at a random place in its cell, drawn per image and tile, so neighbouring
    tiles are separated by a random gap: Noroozi & Favaro take a 64 px tile in a 75 px cell, so
    the network cannot solve the puzzle by continuing edges and textures across tiles. The
    cells cover the centre ``grid * (S // grid)`` pixels.

    Args:
        x: (B, C, S, S) images.
        grid: cells per side.
        tile: tile side t, at most ``S // grid``.
        gen: source of randomness.

    Returns:
        (B, T, C, t, t), T = grid * grid, cells in row-major order.
    """
    b, _, h, w = x.shape
    t = grid * grid
    cell_h, cell_w = h // grid, w // grid
    dy = torch.randint(0, cell_h - tile + 1, (b, t), generator=gen)
    dx = torch.randint(0, cell_w - tile + 1, (b, t), generator=gen)
    cells = torch.arange(t)
    top = (h - grid * cell_h) // 2 + cells // grid * cell_h + dy  # (B, T)
    left = (w - grid * cell_w) // 2 + cells % grid * cell_w + dx
    r = torch.arange(tile)
    rows = (top[..., None] + r)[..., :, None]  # (B, T, t, 1)
    cols = (left[..., None] + r)[..., None, :]  # (B, T, 1, t)
    img = torch.arange(b).view(b, 1, 1, 1)
    tiles = x.permute(0, 2, 3, 1)[img, rows, cols]  # (B, T, t, t, C)
    return tiles.permute(0, 1, 4, 2, 3).contiguous()  # (B, T, C, t, t)


def jigsaw_pretext(x: Tensor, cfg: DataConfig, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """The jigsaw puzzle's input and label (Noroozi & Favaro 2016, arXiv:1603.09246).

    One view per image, cut into ``jigsaw_grid ** 2`` tiles (:func:`cut_tiles`) and shuffled
    by one permutation of :func:`jigsaw_permutations`, drawn per image. Output position p shows
    the tile of cell ``perms[label, p]``, so ``tiles[perms[label].argsort()]`` puts them back.
    The paper also normalises each tile on its own: a float step left to the model.

    Returns:
        (B, T, C, t, t) uint8 tiles, t = ``cfg.jigsaw_tile_size``, and (B,) int64 labels.
    """
    v = cfg.views
    view = global_view(x, cfg, gen, 0)
    perms = jigsaw_permutations(v.jigsaw_permutations, v.jigsaw_grid)  # (N, T)
    label = torch.randint(0, len(perms), (x.shape[0],), generator=gen)
    tiles = cut_tiles(view, v.jigsaw_grid, cfg.jigsaw_tile_size, gen)  # (B, T, C, t, t)
    return tiles[torch.arange(x.shape[0])[:, None], perms[label]], label


def colorization_pretext(x: Tensor, cfg: DataConfig,
                         gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Colorization's input and target (Zhang et al. 2016, arXiv:1603.08511).

    The target is a colour view; the input is its luminance (ITU-R 601-2, as :func:`grayscale`),
    computed from the uint8 target so the two agree exactly. The paper predicts the ab channels
    of Lab from L: converting the RGB target is float work for the model.

    Returns:
        (B, 1, S, S) uint8 luminance and (B, 3, S, S) uint8 RGB target.
    """
    if x.shape[1] != 3:
        raise ValueError(f"colorization needs RGB images (data.channels=3), got {x.shape[1]} "
                         f"channel(s)")
    target = global_view(x, cfg, gen, 0)
    gray = grayscale(target.float()).round_().clamp_(0, 255).to(torch.uint8)
    return gray, target


PretextFn = Callable[[Tensor, DataConfig, torch.Generator], tuple[Tensor, Tensor]]
# Each pretext task, and the column its target goes to beside "view0".
PRETEXTS: dict[str, tuple[PretextFn, str]] = {
    "rotation": (rotation_pretext, "rotation"),
    "jigsaw": (jigsaw_pretext, "jigsaw"),
    "colorization": (colorization_pretext, "target"),
}

