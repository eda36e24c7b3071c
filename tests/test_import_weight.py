"""What a process on the way to the first step imports: nothing it only plans or queues with.

Every Ray process imports what it unpickles, and start-up is mostly processes importing
(BENCHMARKS.md, "Start-up, phase by phase"): Ray Data's dataset manager and split coordinator
unpickle the view stream's plan, and a train worker imports the train loop. Each case imports a
module in a fresh interpreter and lists the heavy packages it pulled in.
"""

import subprocess
import sys

import numpy as np
import pytest


def _imported(module: str, heavy: tuple[str, ...]) -> list[str]:
    """The packages of ``heavy`` that ``import module`` loads in a fresh interpreter."""
    code = (f"import sys, {module}; "
            f"print(' '.join(m for m in {heavy!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    return out.split()


def test_the_functions_ray_data_plans_name_import_no_torch():
    # pipeline builds the plan; tasks is what the plan names (unpickled by Ray Data's actors)
    assert _imported("raysl.data.tasks", ("torch", "torchvision", "mlflow")) == []
    assert _imported("raysl.data.pipeline", ("torch", "torchvision", "mlflow")) == []


def test_the_train_loop_leaves_mlflow_to_the_tracker_thread():
    assert _imported("raysl.train.loop", ("mlflow",)) == []


@pytest.mark.parametrize("columns", [("image", "label", "index"), ("image", "index")])
def test_the_named_functions_are_the_views_functions(columns):
    from raysl import config as C
    from raysl.data import tasks, views

    rng = np.random.default_rng(0)
    batch = {"image": rng.integers(0, 255, (4, 20, 20, 1), dtype=np.uint8),
             "label": np.arange(4), "index": np.arange(4)}
    batch = {k: batch[k] for k in columns}
    whole = tasks.whole_images(dict(batch), 16)
    expected = views.whole_images(dict(batch), 16)
    assert whole.keys() == expected.keys()
    assert all(np.array_equal(whole[k], expected[k]) for k in whole)
    cfg = C.load(None, ["data.image_size=16", "data.channels=1"]).data
    augmented = tasks.augment_batch(dict(batch), cfg)
    reference = views.augment_batch(dict(batch), cfg)
    assert {k: v.shape for k, v in augmented.items()} == {k: v.shape for k, v in reference.items()}
