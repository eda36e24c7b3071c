"""The pretraining data pipeline: an image source -> a stream of augmented views."""

from __future__ import annotations

import ray.data
from ray.data import RandomSeedConfig

from raysl.config import DataConfig
from raysl.data.source import ImageSource, uncounted_read
from raysl.data.tasks import augment_batch, whole_images  # no torch: see the module


def view_stream(source: ImageSource, cfg: DataConfig, max_tasks: int,
                resources: dict[str, float] | None = None, seed: int = 0) -> ray.data.Dataset:
    """Augmented views of ``source``, re-drawn every epoch.

    Held sources (arrays, ``data.cache: memory``) shuffle their block order on every pass
    (cheap, seeded per pass); a streamed source reads its units in a new seeded order every
    epoch instead (a block shuffle would wait for the whole epoch to be decoded). The train
    workers add a local shuffle buffer.
    Augmentation runs in Ray Data tasks (``data.augment_cpus`` each, up to ``max_tasks`` at once)
    on whichever nodes have CPU, or only where ``resources`` (custom resources, e.g. a data-node
    marker) are, so views arrive as uint8 (B, C, S, S) tensors ready for the model.

    Returns:
        Dataset with columns ``view0`` .. ``view{n-1}``, n = ``cfg.views.global_views +
        cfg.views.local_crops``: the global views at ``cfg.image_size``, then the local crops at
        ``cfg.effective_local_size`` (the order of ``Config.view_sizes``); a pretext preset adds
        its target column (``views.make_columns``), and ``label`` is kept when the images have
        one.
    """
    # The transform reads only "image" (+ "label") and emits only the views: no select_columns()
    # before it, which would be one more operator competing for the few CPUs beside training.
    dataset = source.dataset
    if source.cache != "none":
        dataset = dataset.randomize_block_order(seed=RandomSeedConfig(seed))
    return dataset.map_batches(augment_batch,  # type: ignore[arg-type]  # Ray's stub: one argument
        fn_kwargs={"cfg": cfg}, batch_size=cfg.augment_batch_size, batch_format="numpy",
        compute=ray.data.TaskPoolStrategy(size=max_tasks), num_cpus=cfg.augment_cpus,
        resources=resources or None, udf_modifying_row_count=False)


def whole_image_stream(source: ImageSource, cfg: DataConfig, max_tasks: int,
                       resources: dict[str, float] | None = None) -> ray.data.Dataset:
    """Every image of ``source`` once, un-augmented, at the view size.

    A method's pass over the whole training set: DeepCluster's features before each
    clustering. Resized in Ray Data tasks like the views (same CPUs, same node pinning).

    Returns:
        Dataset with columns ``image`` (C, S, S) uint8, ``index``, and ``label`` when labeled.
    """
    # A streamed source is decoded once more for this pass, its bad files counted only once.
    dataset = uncounted_read(source, cfg.augment_cpus, resources)
    return dataset.map_batches(whole_images,  # type: ignore[arg-type]  # Ray's stub
        fn_kwargs={"size": cfg.image_size}, batch_size=cfg.augment_batch_size,
        batch_format="numpy", compute=ray.data.TaskPoolStrategy(size=max_tasks),
        num_cpus=cfg.augment_cpus, resources=resources or None, udf_modifying_row_count=False)
