"""Pretraining learns: a short fixed run beats its own random initialisation on kNN.

The e2e tests elsewhere check that the path runs and that accuracies are accuracies; this one
checks that the representation improves. Measured before choosing the margin (BENCHMARKS.md,
"How many steps before pretraining beats random init?", `benchmarks/short_run_learns.py`):
this run (the demo's SimCLR recipe at width 8, 4,096 Fashion-MNIST images, 8 epochs = 256
steps, one worker in process) gave trained - random-init kNN margins of 8.9, 5.5, 5.5, 6.0, 3.2
and 6.6 points in 6 runs over seeds 0-2 (mean 6.0, sd 1.8); seed 0, the test's, gave 8.9 and
6.0. The random init is fixed by the seed; the trained side moved by up to 2.9 points between
two runs of one seed (Ray Data's order and draws). The test asks for 2 points: below every run
measured, and 2.2 standard deviations of the margin below its mean.
"""

from pathlib import Path

import pytest

from raysl import config as C
from raysl.pretrain import RANDOM_INIT, TRAINED, pretrain

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_session")]
DEMO_CONFIG = Path(__file__).resolve().parents[1] / "pipelines/configs/demo.yaml"
MARGIN = 0.02


def test_a_short_run_beats_its_random_init_well_above_seed_noise(tmp_path: Path, monkeypatch,
                                                                  fmnist_dir: Path):
    monkeypatch.chdir(tmp_path)
    cfg = C.load(DEMO_CONFIG, [
        f"data.source.path={fmnist_dir}", "data.source.limit=4096", "model.width=8",
        "train.epochs=8", "train.num_workers=1", "train.cpus_per_worker=2", "train.seed=0",
        f"eval.bank.path={fmnist_dir}", "eval.bank.limit=5000", f"eval.query.path={fmnist_dir}",
        "eval.query.limit=5000", "eval.protocols=knn", "eval.knn_k=20", "eval.plots=false",
        "eval.monitor_every=0", "tracking.register=false",
        f"train.storage_path={tmp_path / 'runs'}",
        f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"])
    assert cfg.train.epochs * (4096 // cfg.data.batch_size_global) == 256  # the steps measured
    result = pretrain(cfg, log=lambda line: None)
    trained, random_init = result.knn[TRAINED], result.knn[RANDOM_INIT]
    assert trained - random_init >= MARGIN, (trained, random_init)
