"""The views a method trains on, and the Ray Data task functions that make them.

A preset (``VIEW_PRESETS`` in raysl/config/presets.py) picks a method family's recipe:

- SimCLR, MoCo v2, BYOL: two global views, which may be augmented asymmetrically (BYOL and DINO
  blur the first view more and solarize only the second).
- Multi-crop (SwAV, DINO): the two global views, then smaller local views.
- MAE: one lightly augmented view (crop and flip); the masking happens in the model.
- Pretext tasks, one view and a target column (:mod:`raysl.data.pretext`): ``rotation``,
  ``jigsaw`` and ``colorization``.

:func:`make_views` builds the views from the augmentation ops of :mod:`raysl.data.augment`,
:func:`make_columns` the views and any pretext target, and :func:`monitor_views` the fixed views
the label-free monitors embed. In Ray Data, :func:`augment_batch` (a task function, fresh
randomness per call) or :class:`MultiViewTransform` (one seeded generator) maps a batch of
images to those columns, and :func:`whole_images` passes the images un-augmented at the view
size.

Letters in shape comments: B images, C channels, H/W input size, S output size (L for the
multi-crop local views), T jigsaw tiles of side t.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from raysl.config import DataConfig
from raysl.data.augment import augment, global_view
from raysl.data.decode import square_images
from raysl.data.pretext import PRETEXTS


def make_views(x: Tensor, cfg: DataConfig, gen: torch.Generator) -> list[Tensor]:
    """Every view of each image a method trains on, in the order of ``Config.view_sizes``.

    ``global_views`` (2, or 1 for MAE) global views at ``cfg.image_size``, the first with
    ``blur_p[0]`` and ``solarize_p[0]``, the second with ``blur_p[1]`` and ``solarize_p[1]``;
    then ``local_crops`` local views at ``cfg.effective_local_size``, cropped with
    ``local_crop_scale`` and blurred with ``local_blur_p``, never solarized (DINO's
    ``DataAugmentationDINO``). Pretext presets also have a target: see :func:`make_columns`.

    Args:
        x: (B, C, H, W) uint8 images.
        cfg: view size and augmentation settings.
        gen: source of randomness.

    Returns:
        ``global_views + local_crops`` uint8 tensors: (B, C, S, S) global, then (B, C, L, L)
        local views.

    Raises:
        ValueError: if ``cfg.views.pretext`` is set (the views alone would lose their target).
    """
    v = cfg.views
    if v.pretext != "none":
        raise ValueError(f"make_views: data.views.pretext={v.pretext!r} has a target; "
                         f"use make_columns")
    views = [global_view(x, cfg, gen, i) for i in range(v.global_views)]
    views += [augment(x, v, cfg.effective_local_size, gen, scale=v.local_crop_scale,
                      blur_p=v.local_blur_p) for _ in range(v.local_crops)]
    return views


MONITOR_CHUNK = 128  # images whose monitor views come from one seeded generator


def monitor_views(images: np.ndarray, cfg: DataConfig, views: int, seed: int, start: int,
                  stop: int) -> Tensor:
    """Fixed augmented views of ``images[start:stop]``, the same whichever rows are asked for.

    The label-free monitors embed every image of a fixed sample through ``views`` global views
    (view i with the blur and solarize probabilities of global view i mod ``global_views``), the
    same views every epoch, so their values move only with the model. The views of image j
    depend only on ``seed`` and j (a generator per chunk of ``MONITOR_CHUNK`` images), so
    workers that each make their own rows get the views one process would make for all.

    Args:
        images: (N, H, W, C) uint8, the whole sample.
        cfg: the run's view settings.
        views: q, views per image.
        seed: seeds every chunk's generator.
        start: the first row wanted.
        stop: one past the last row wanted.

    Returns:
        (stop - start, q, C, S, S) uint8.
    """
    v, out = cfg.views, []
    if start >= stop:
        return torch.empty(0, views, images.shape[-1], cfg.image_size, cfg.image_size,
                           dtype=torch.uint8)
    for chunk in range(start // MONITOR_CHUNK, (stop - 1) // MONITOR_CHUNK + 1):
        lo = chunk * MONITOR_CHUNK
        x = torch.from_numpy(np.array(images[lo:lo + MONITOR_CHUNK])).permute(0, 3, 1, 2)
        gen = torch.Generator().manual_seed(seed * 1_000_003 + chunk)
        made = torch.stack([augment(x, v, cfg.image_size, gen,
                                    blur_p=v.blur_p[i % v.global_views],
                                    solarize_p=v.solarize_p[i % v.global_views])
                            for i in range(views)], dim=1)  # (chunk, q, C, S, S)
        out.append(made[max(start - lo, 0):stop - lo])
    return torch.cat(out)


def make_columns(x: Tensor, cfg: DataConfig, gen: torch.Generator) -> dict[str, Tensor]:
    """The columns a method trains on: ``view0`` .. ``view{n-1}`` and any pretext target.

    Without a pretext, the views of :func:`make_views`. With ``cfg.views.pretext``, one
    ``view0`` and the target: ``rotation`` (B,) int64, ``jigsaw`` (B,) int64 (``view0`` holds
    the tiles, (B, T, C, t, t)) or ``target`` (B, 3, S, S) uint8 (``view0`` is (B, 1, S, S)).

    Args:
        x: (B, C, H, W) uint8 images.
        cfg: view size and augmentation settings.
        gen: source of randomness.
    """
    if cfg.views.pretext == "none":
        return {f"view{i}": v for i, v in enumerate(make_views(x, cfg, gen))}
    pretext, column = PRETEXTS[cfg.views.pretext]
    view, target = pretext(x, cfg, gen)
    return {"view0": view, column: target}


def views_of_batch(batch: dict[str, np.ndarray], cfg: DataConfig, gen: torch.Generator
                   ) -> dict[str, np.ndarray]:
    """``{"image": (B, H, W, C) uint8}`` -> the columns of :func:`make_columns` as arrays.

    ``view0`` .. ``view{n-1}``, n = ``global_views + local_crops``: (B, C, S, S) uint8 global
    views, then (B, C, L, L) local crops, ready for the model (the encoder normalises); or, for a
    pretext preset, ``view0`` and its target column. ``label`` is passed through when present.
    """
    # A copy: Ray hands out read-only views of the object store, and torch warns on those.
    x = torch.from_numpy(np.array(batch["image"], copy=True)).permute(0, 3, 1, 2)  # (B,C,H,W)
    out = {k: v.numpy() for k, v in make_columns(x, cfg, gen).items()}
    return {**out, **_passed_through(batch)}


def _passed_through(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The row's ``label`` (the online probe) and ``index`` (DeepCluster's pseudo-label key)."""
    return {k: batch[k] for k in ("label", "index") if k in batch}


def whole_images(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """Ray Data task function: un-augmented images at the view size, for reading the whole set.

    DeepCluster clusters these (as the paper's feature pass, no random crop or flip): the
    decoded image taken to ``size`` as evaluation takes it (:func:`square_images`).

    Returns:
        ``{"image": (B, C, S, S) uint8}`` with the batch's ``index`` (and ``label``).
    """
    x = square_images(np.asarray(batch["image"]), size)
    return {"image": np.ascontiguousarray(x.transpose(0, 3, 1, 2)), **_passed_through(batch)}


def augment_batch(batch: dict[str, np.ndarray], cfg: DataConfig) -> dict[str, np.ndarray]:
    """Ray Data task function: :func:`views_of_batch` with fresh OS randomness per call.

    A task, not an actor: Ray Data builds a new actor pool on every execution, i.e. every
    epoch, which cost 3-6 s per epoch here (a process, torch imports); tasks reuse warm
    worker processes (``BENCHMARKS.md``, data throughput).
    """
    torch.set_num_threads(1)  # one core per task; Ray schedules the tasks
    gen = torch.Generator()
    gen.manual_seed(int(np.random.SeedSequence().generate_state(1)[0]))
    return views_of_batch(batch, cfg, gen)


class MultiViewTransform:
    """:func:`views_of_batch` with one seeded generator across calls (reproducible views).

    Args:
        cfg: view size and augmentation settings.
        seed: seeds the generator; ``None`` draws one from the OS.
    """

    def __init__(self, cfg: DataConfig, seed: int | None = None) -> None:
        torch.set_num_threads(1)
        self.cfg = cfg
        self.gen = torch.Generator()
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0])
        self.gen.manual_seed(seed)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Views of a batch of images."""
        return views_of_batch(batch, self.cfg, self.gen)
