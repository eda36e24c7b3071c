import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from raysl import cli

PIPELINE = Path(__file__).resolve().parents[1] / "pipelines" / "pretrain.py"


def test_methods_lists_simclr_in_a_fresh_process():
    # A subprocess: in-process, other tests may already have imported (registered) the methods.
    raysl_cmd = Path(sys.executable).parent / "raysl"
    out = subprocess.run([str(raysl_cmd), "methods"], capture_output=True, text=True, check=True)
    assert "simclr" in out.stdout and "arXiv:2002.05709" in out.stdout


def test_config_prints_effective_yaml(capsys):
    assert cli.main(["config", "--set", "optim.base_lr=0.7"]) == 0
    assert "base_lr: 0.7" in capsys.readouterr().out


@pytest.mark.parametrize(("args", "message"), [
    (["--set", "optim.base_lr=-1"], "optim.base_lr=-1.0: must be > 0"),
    (["--set", "data.source.path=/no/such/dir"], "data.source.path='/no/such/dir': does not exist"),
    (["--config", "/no/such.yaml"], "No such file"),
])
def test_user_errors_exit_2_with_one_clear_line(capsys, args, message, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["pretrain", *args, "--set", f"train.storage_path={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_pipeline_entrypoint_smoke_test(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(PIPELINE), "--smoke-test", "--set",
                                      f"train.storage_path={tmp_path / 'runs'}"])
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(PIPELINE), run_name="__main__")
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "raysl pretrain: summary" in out and "models:/raysl-simclr-resnet18/1" in out
    assert (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_demo_falls_back_to_generated_data_when_fmnist_is_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # the demo reads pipelines/configs
    monkeypatch.setattr(cli, "FASHION_MNIST_DIR", str(tmp_path / "not-installed"))
    code = cli.main(["demo", "--set", "data.source.limit=256", "--set", "train.epochs=1",
                     "--set", "eval.bank.limit=300", "--set", f"train.storage_path={tmp_path}",
                     "--set", f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"])
    assert code == 0
    out = capsys.readouterr().out
    assert "Fashion-MNIST is not installed" in out and "generated shapes" in out
    assert "same encoder, random init" in out
