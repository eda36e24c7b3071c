"""The pretraining data pipeline: an image source -> a stream of augmented views."""

from __future__ import annotations

import ray.data

from raysl.config import DataConfig
from raysl.data.readers import ImageSource
from raysl.data.views import MultiViewTransform


def view_stream(source: ImageSource, cfg: DataConfig, max_actors: int) -> ray.data.Dataset:
    """Augmented views of ``source``, re-drawn every epoch.

    Block order is shuffled on every pass (cheap); the train workers add a local shuffle buffer.
    Augmentation runs on CPU actors of Ray Data (``data.augment_cpus`` each, up to
    ``max_actors``), so views arrive as uint8 (B, C, S, S) tensors ready for the model.

    Returns:
        Dataset with columns ``view0`` .. ``view{n-1}``, n = 2 + ``cfg.views.local_crops``: the
        two global views at ``cfg.image_size``, then the local crops at
        ``cfg.effective_local_size`` (the order of ``Config.view_sizes``).
    """
    # No select_columns() before the map: it would be a separate 1-CPU task that cannot run while
    # the actors hold the CPUs Ray Data has beside training (seen hanging on 2 cores); the
    # transform reads only "image" and emits only the views.
    return (source.dataset
            .randomize_block_order()
            .map_batches(MultiViewTransform,
                         fn_constructor_kwargs={"cfg": cfg},
                         batch_size=cfg.augment_batch_size, batch_format="numpy",
                         compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max_actors),
                         num_cpus=cfg.augment_cpus, udf_modifying_row_count=False))
