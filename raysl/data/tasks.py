"""The functions Ray Data's plans name: importing this module imports no torch.

A Ray Data plan holds its functions by reference (module and name), and every process that
unpickles the plan imports their module: the Train controller and Ray Data's dataset manager
and split coordinator, which only plan, and sit on the way to the first step. Named here, the
plan costs them this module; the augmentation tasks, which run the functions, import the work
(:mod:`raysl.data.views`: torch and torchvision, ~2.7 s a process) when first called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from raysl.config import DataConfig


def augment_batch(batch: dict[str, np.ndarray], cfg: DataConfig) -> dict[str, np.ndarray]:
    """:func:`raysl.data.views.augment_batch`, imported when first called."""
    from raysl.data import views

    return views.augment_batch(batch, cfg)


def whole_images(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """:func:`raysl.data.views.whole_images`, imported when first called."""
    from raysl.data import views

    return views.whole_images(batch, size)
