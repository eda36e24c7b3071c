"""Our search spaces and searchers drive a real Tune run (a cheap function trainable).

The trials here are not pretraining runs (tests/sweep/test_sweep_e2e.py has those): this checks
that every kind of domain, with dotted field names, samples correctly under random and optuna
search, reproducibly under a seed, and that ASHA reads the `epoch` each report carries.
"""

import sys

import pytest
import ray.cloudpickle
import ray.tune

from raysl.sweep.plan import TrialPlan
from raysl.sweep.spec import SearchDim, load_sweep
from raysl.sweep.tuner import domain, scheduler, searcher

pytestmark = pytest.mark.usefixtures("ray_session")
# Trial processes cannot import this test module by name: ship its functions by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

SPACE = (SearchDim("optim.base_lr", "loguniform", (0.01, 1.0)),
         SearchDim("method.temperature", "uniform", (0.1, 0.5)),
         SearchDim("data.batch_size_global", "choice", (64, 128)),
         SearchDim("train.seed", "randint", (0, 3)))


def _quadratic(config: dict) -> None:
    """Accuracy peaks at lr 0.1; 4 'epochs'."""
    for epoch in range(1, 5):
        ray.tune.report({"epoch": epoch,
                         "eval/online_knn_top1": 1 - abs(config["optim.base_lr"] - 0.1) * epoch})


def _run(tmp_path, search: str, seed: int = 0) -> list[dict]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    sweep_file = tmp_path / "s.yaml"
    sweep_file.write_text(f"search: {search}\nnum_samples: 4\nset: {{train.epochs: 4, "
                          f"train.seed: {seed}}}\nspace: {{optim.base_lr: {{choice: [0.1]}}}}\n"
                          "scheduler: {grace_period: 1, reduction_factor: 2}\n")
    sweep = load_sweep(sweep_file)
    tuner = ray.tune.Tuner(
        ray.tune.with_resources(_quadratic, {"CPU": 0.1}),
        param_space={d.field: domain(d, search) for d in SPACE},
        tune_config=ray.tune.TuneConfig(
            metric="eval/online_knn_top1", mode="max", num_samples=4,
            scheduler=scheduler(sweep), search_alg=searcher(sweep, TrialPlan(1, 1, 0, 2))),
        run_config=ray.tune.RunConfig(name=f"{search}-{seed}", storage_path=str(tmp_path),
                                      verbose=0))
    grid = tuner.fit()
    assert grid.num_errors == 0
    return [grid[i].config for i in range(len(grid))]


@pytest.mark.parametrize("search", ["random", "optuna"])
def test_every_domain_samples_within_its_bounds(tmp_path, search):
    configs = _run(tmp_path, search)
    assert len(configs) == 4
    for c in configs:
        assert 0.01 <= c["optim.base_lr"] <= 1.0 and 0.1 <= c["method.temperature"] <= 0.5
        assert c["data.batch_size_global"] in (64, 128) and c["train.seed"] in (0, 1, 2)


def test_random_search_is_reproducible_under_the_seed(tmp_path):
    lrs = [c["optim.base_lr"] for c in _run(tmp_path / "a", "random", seed=3)]
    assert lrs == [c["optim.base_lr"] for c in _run(tmp_path / "b", "random", seed=3)]
    assert lrs != [c["optim.base_lr"] for c in _run(tmp_path / "c", "random", seed=4)]
