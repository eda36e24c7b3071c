"""Trial resources and concurrency: whole trials only, and a clear error when none fits."""

from pathlib import Path

import pytest

from raysl.errors import ConfigError
from raysl.sweep.plan import plan_trials, trial_overrides
from raysl.sweep.spec import load_sweep

DEMO = Path(__file__).resolve().parents[2] / "pipelines/configs/demo.yaml"


def _sweep(tmp_path: Path, *overrides: str):
    path = tmp_path / "s.yaml"
    path.write_text(f"base: {DEMO}\nspace: {{optim.base_lr: {{grid: [0.1, 0.2, 0.4, 0.8]}}}}\n")
    return load_sweep(path, list(overrides))


def test_one_cpu_per_worker_and_as_many_trials_as_fit(tmp_path):
    plan = plan_trials(_sweep(tmp_path), cluster_cpus=16, cluster_gpus=0)
    # 2 workers x 1 CPU + 1 for Ray Data + 0.25 for the trial's driver.
    assert plan.cpus_per_worker == 1.0 and plan.cpus == 3.25 and plan.concurrent == 4
    assert plan_trials(_sweep(tmp_path), 8, 0).concurrent == 2
    assert plan_trials(_sweep(tmp_path, "max_concurrent_trials=1"), 16, 0).concurrent == 1


def test_a_small_machine_shares_its_cpus_with_one_trial(tmp_path):
    plan = plan_trials(_sweep(tmp_path), cluster_cpus=2, cluster_gpus=0)
    assert plan.concurrent == 1 and plan.cpus <= 2 and plan.cpus_per_worker == 0.37


def test_gpus_bound_the_concurrency(tmp_path):
    sweep = _sweep(tmp_path, "train.use_gpu=true", "train.cpus_per_worker=4")
    plan = plan_trials(sweep, cluster_cpus=64, cluster_gpus=4)
    assert plan.gpus == 2 and plan.concurrent == 2


def test_no_trial_fits_names_the_field(tmp_path):
    with pytest.raises(ConfigError) as e:
        plan_trials(_sweep(tmp_path, "train.cpus_per_worker=4"), cluster_cpus=4, cluster_gpus=0)
    assert e.value.field == "train.num_workers" and "needs 9.25 CPU" in str(e.value)


def test_trials_get_absolute_paths_and_online_evaluation(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep = _sweep(tmp_path, "data.source.path=images", "eval.bank.path=labeled")
    plan = plan_trials(sweep, 8, 0)
    out = trial_overrides(sweep, plan, "/store", "sqlite:////x/mlflow.db")
    assert out["data.source.path"] == str(tmp_path / "images")
    assert out["eval.bank.path"] == str(tmp_path / "labeled")
    assert out["eval.online_knn_every"] == 1 and out["tracking.register"] is False
    assert out["train.cpus_per_worker"] == plan.cpus_per_worker


def test_trials_in_their_own_process_hold_their_workers_cpus_and_say_so(tmp_path):
    sweep = _sweep(tmp_path, "train.num_workers=1")
    group, own = plan_trials(sweep, 8, 0), plan_trials(sweep, 8, 0, in_process=True)
    assert own.cpus == group.cpus and own.concurrent == group.concurrent  # the same budget
    # A worker group asks for its worker's CPUs itself; a trial training in its own process
    # asks Tune for them with its driver's.
    assert group.trial_process_resources(sweep) == {"CPU": 0.25}
    assert own.trial_process_resources(sweep) == {"CPU": 0.25 + own.cpus_per_worker}
    gpu = _sweep(tmp_path, "train.num_workers=1", "train.use_gpu=true")
    assert plan_trials(gpu, 8, 2, in_process=True).trial_process_resources(gpu)["GPU"] == 1
    assert "GPU" not in plan_trials(gpu, 8, 2).trial_process_resources(gpu)  # the group's
    assert "in the trial's own process" in own.describe(sweep)
    assert "own process" not in group.describe(sweep)
    overrides = {p.in_process: trial_overrides(sweep, p, "/store", "sqlite:////x/mlflow.db")
                 for p in (group, own)}
    assert overrides[True]["train.local_mode"] == "on"
    assert overrides[False]["train.local_mode"] == "off"
