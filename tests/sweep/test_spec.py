"""Sweep files: parsing, and every invalid space refused before any trial starts."""

from pathlib import Path

import pytest

from raysl import catalog
from raysl.errors import ConfigError
from raysl.sweep.spec import Sweep, load_sweep

ROOT = Path(__file__).resolve().parents[2]
TUNING = ROOT / "tuning"


def _write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(f"base: {ROOT / 'pipelines/configs/demo.yaml'}\n" + body)
    return path


def _error(tmp_path: Path, body: str, *overrides: str) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        load_sweep(_write(tmp_path, body), list(overrides))
    return e.value


def test_shipped_simclr_sweep_is_valid():
    sweep = load_sweep(TUNING / "simclr_temperature.yaml")
    assert sweep.name == "simclr-temperature"
    assert sweep.fields == ["method.temperature", "data.batch_size_global", "optim.base_lr"]
    assert sweep.num_trials == 2 * sweep.settings.num_samples  # the batch-size grid x samples
    assert sweep.settings.scheduler.name == "asha"


@pytest.mark.parametrize("path", sorted(p.name for p in TUNING.glob("*.yaml")))
def test_every_shipped_sweep_loads(path):
    sweep = load_sweep(TUNING / path, method="simclr" if path == "lr.yaml" else None)
    assert sweep.fields and sweep.num_trials >= 2


def test_a_method_knob_sweeps_like_any_field():
    sweep = load_sweep(TUNING / "mae_mask_ratio.yaml")
    assert sweep.base.method.name == "mae" and sweep.fields[0] == "method.mask_ratio"
    assert sweep.num_trials == 3 * sweep.settings.num_samples


@pytest.mark.parametrize("method", catalog.names("method"))
def test_per_method_lr_sweep_is_valid_for_every_method_with_a_fashion_mnist_recipe(method):
    if not (ROOT / "pipelines/configs" / f"{method}_fmnist.yaml").exists():
        # Colorization needs colour data, so has no Fashion-MNIST recipe: a clear error.
        with pytest.raises(ConfigError) as e:
            load_sweep(TUNING / "lr.yaml", method=method)
        assert e.value.field == "base" and f"{method}_fmnist.yaml does not exist" in str(e.value)
        return
    sweep = load_sweep(TUNING / "lr.yaml", method=method)
    assert sweep.name == f"lr-{method}" and sweep.base.method.name == method
    assert "optim.base_lr" in sweep.fields


def test_lr_sweep_without_a_method_names_the_missing_field():
    with pytest.raises(ConfigError) as e:
        load_sweep(TUNING / "lr.yaml")
    assert e.value.field == "method" and "--method" in str(e.value)


def test_set_routes_sweep_fields_to_the_sweep_and_others_to_the_base(tmp_path):
    path = _write(tmp_path, "space: {optim.base_lr: {choice: [0.1, 0.2]}}\n")
    sweep = load_sweep(path, ["num_samples=5", "scheduler.grace_period=2", "train.epochs=7"])
    assert sweep.settings.num_samples == 5 and sweep.settings.scheduler.grace_period == 2
    assert sweep.base.train.epochs == 7
    assert sweep.name == "sweep"  # the file's stem by default


def test_trial_config_applies_params_and_the_sweeps_own_settings(tmp_path):
    sweep = load_sweep(_write(tmp_path, "space: {method.temperature: {uniform: [0.1, 0.9]}}\n"))
    cfg = sweep.trial_config({"method.temperature": 0.37}, "abcde_00003",
                             {"tracking.register": False, "eval.online_knn_every": 1})
    assert cfg.method.temperature == 0.37  # type: ignore[attr-defined]
    assert cfg.train.run_name == "sweep-abcde_00003"
    assert not cfg.tracking.register and cfg.eval.online_knn_every == 1
    assert Sweep.from_dict(sweep.to_dict()) == sweep


def test_grid_and_samples_multiply(tmp_path):
    body = ("space:\n  optim.base_lr: {grid: [0.1, 0.2, 0.4]}\n"
            "  method.temperature: {choice: [0.1, 0.5]}\nnum_samples: 2\n")
    assert load_sweep(_write(tmp_path, body)).num_trials == 6
    assert load_sweep(_write(tmp_path, body + "search: grid\n")).num_trials == 12


def test_fingerprint_follows_the_definition(tmp_path):
    a = load_sweep(_write(tmp_path, "space: {optim.base_lr: {choice: [0.1, 0.2]}}\n"))
    assert a.fingerprint() == load_sweep(tmp_path / "sweep.yaml").fingerprint()
    b = load_sweep(_write(tmp_path, "space: {optim.base_lr: {choice: [0.1, 0.3]}}\n"))
    assert a.fingerprint() != b.fingerprint()
    c = load_sweep(tmp_path / "sweep.yaml", ["train.epochs=9"])  # the base is part of it
    assert c.fingerprint() != b.fingerprint()


@pytest.mark.parametrize(("body", "field", "words"), [
    ("space: {loss.temperature: {choice: [0.1]}}\n", "space.loss.temperature",
     "unknown config field"),
    ("space: {method.temprature: {choice: [0.1]}}\n", "space.method.temprature",
     "unknown config field"),
    ("space: {optim.base_lr: {choice: []}}\n", "space.optim.base_lr.choice", "non-empty"),
    ("space: {method.temperature: {uniform: [-0.1, 0.5]}}\n", "space.method.temperature",
     "must be > 0"),
    ("space: {optim.base_lr: {loguniform: [0.0, 1.0]}}\n", "space.optim.base_lr.loguniform",
     "0 < low < high"),
    ("space: {optim.base_lr: {uniform: [1.0, 0.5]}}\n", "space.optim.base_lr.uniform",
     "low < high"),
    ("space: {optim.base_lr: {normal: [1.0, 0.5]}}\n", "space.optim.base_lr.normal", "kind"),
    ("space: {optim: {choice: [1]}}\n", "space.optim", "is a section"),
    ("space: {data.batch_size_global: {grid: [128, 129]}}\n", "space.data.batch_size_global",
     "divisible"),
    ("space: {train.run_name: {choice: [a, b]}}\n", "space.train.run_name", "cannot be swept"),
    ("space: {tracking.experiment: {choice: [a, b]}}\n", "space.tracking.experiment",
     "cannot be swept"),
    ("space: {method.name: {choice: [simclr, byol]}}\n", "space.method.name", "one method"),
    ("space: {}\n", "space", "non-empty"),
    ("space: {optim.base_lr: {choice: [0.1]}}\nmetric: train/loss\n", "metric",
     "losses do not compare"),
    ("space: {optim.base_lr: {loguniform: [0.1, 1]}}\nsearch: grid\n", "space.optim.base_lr",
     "search=grid"),
    ("space: {optim.base_lr: {grid: [0.1, 1]}}\nsearch: optuna\n", "space.optim.base_lr",
     "choice instead of grid"),
    ("space: {optim.base_lr: {choice: [0.1]}}\nscheduler: {grace_period: 9}\n",
     "scheduler.grace_period", "<= train.epochs"),
    ("space: {optim.base_lr: {choice: [0.1]}}\nscheduler: {name: pbt}\n", "scheduler.name",
     "one of"),
    ("space: {optim.base_lr: {choice: [0.1]}}\nnum_sample: 3\n", "num_sample", "unknown field"),
    ("space: {optim.base_lr: {choice: [0.1]}}\nset: {train.checkpoint_every_steps: 50}\n",
     "train.checkpoint_every_steps", "schedulers stop and resume trials in"),
    ("space: {train.checkpoint_every_steps: {choice: [0, 50]}}\n",
     "space.train.checkpoint_every_steps", "cannot be swept"),
    ("space: {optim.base_lr: {choice: [0.1]}}\nset: {train.min_workers: 1}\n",
     "train.min_workers", "fixed share of the cluster"),
])
def test_invalid_sweeps_fail_naming_the_field(tmp_path, body, field, words):
    e = _error(tmp_path, body)
    assert e.field == field, str(e)
    assert words in str(e) and "sweep.yaml" in str(e)


def test_a_missing_base_config_is_named(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("base: nowhere.yaml\nspace: {optim.base_lr: {choice: [0.1]}}\n")
    with pytest.raises(ConfigError) as e:
        load_sweep(path)
    assert e.value.field == "base" and "does not exist" in str(e.value)


def test_smoke_turns_grids_into_choices_and_drops_batch_sizes(tmp_path):
    body = ("space:\n  optim.base_lr: {grid: [0.1, 0.2, 0.4]}\n"
            "  data.batch_size_global: {grid: [256, 512]}\n")
    sweep = load_sweep(_write(tmp_path, body), smoke=True)
    assert [(d.field, d.kind) for d in sweep.space] == [("optim.base_lr", "choice")]


@pytest.mark.parametrize(("body", "field", "words"), [
    ("space: {data.batch_size_global: {uniform: [64, 256]}}\n",
     "space.data.batch_size_global.uniform", "integer"),
    ("space: {data.batch_size_global: {randint: [64, 70]}}\n", "space.data.batch_size_global",
     "divisible"),
    ("space: {train.epochs: {choice: [2, 4]}}\n", "space.train.epochs", "cannot be swept"),
    ("space: {train.num_workers: {choice: [2, 4]}}\n", "space.train.num_workers",
     "cannot be swept"),
    ("space: {data.source.limit: {choice: [100, 200]}}\n", "space.data.source.limit",
     "cannot be swept"),
    ("space: {optim.base_lr: {choice: [0.1]}}\nchampion: {alias: latest}\n", "champion.alias",
     "reserves"),
])
def test_values_that_would_fail_in_a_trial_fail_now(tmp_path, body, field, words):
    e = _error(tmp_path, body)
    assert e.field == field, str(e)
    assert words in str(e)


def test_combinations_of_listed_values_are_checked_together(tmp_path):
    # Each alone is fine on the base (2 workers, accumulation 1); 68 with 4 micro-batches is not.
    body = ("space:\n  data.batch_size_global: {grid: [64, 68]}\n"
            "  train.grad_accumulation: {choice: [1, 4]}\n")
    e = _error(tmp_path, body)
    assert "data.batch_size_global" in e.field and "train.grad_accumulation=4" in str(e)


def test_method_fields_on_the_command_line_set_the_base_config(tmp_path):
    path = _write(tmp_path, "space: {optim.base_lr: {choice: [0.1, 0.2]}}\n")
    sweep = load_sweep(path, ["method.temperature=0.3"])
    assert sweep.base.method.temperature == 0.3  # type: ignore[attr-defined]


def test_smoke_sweeps_have_their_own_name_and_registered_model(tmp_path):
    sweep = load_sweep(_write(tmp_path, "space: {optim.base_lr: {choice: [0.1]}}\n"), smoke=True)
    assert sweep.name == "sweep-smoke"
    assert sweep.base.tracking.registered_model == "raysl-demo-simclr-fmnist-smoke"
