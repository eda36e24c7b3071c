import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from raysl import cli

PIPELINE = Path(__file__).resolve().parents[1] / "pipelines" / "pretrain.py"


def test_methods_lists_every_method_with_its_paper_in_a_fresh_process():
    # A subprocess: in-process, other tests may already have imported (registered) the methods.
    raysl_cmd = Path(sys.executable).parent / "raysl"
    out = subprocess.run([str(raysl_cmd), "methods"], capture_output=True, text=True, check=True)
    for name, arxiv in [("simclr", "2002.05709"), ("moco_v2", "2003.04297"),
                        ("moco_v3", "2104.02057"), ("byol", "2006.07733"),
                        ("simsiam", "2011.10566"), ("barlow_twins", "2103.03230"),
                        ("vicreg", "2105.04906"), ("swav", "2006.09882"), ("dino", "2104.14294")]:
        line = next(ln for ln in out.stdout.splitlines() if ln.startswith(name + " "))
        assert f"arXiv:{arxiv}" in line, line
    assert "dino, multi-crop" in out.stdout


def test_protocols_lists_every_registered_protocol_in_a_fresh_process():
    from raysl import catalog

    raysl_cmd = Path(sys.executable).parent / "raysl"
    out = subprocess.run([str(raysl_cmd), "protocols"], capture_output=True, text=True,
                         check=True)
    listed = {ln.split()[0] for ln in out.stdout.splitlines()[1:] if ln.strip()} - {"Run"}
    assert listed == set(catalog.names("protocol"))
    assert "images" in out.stdout and "features" in out.stdout


def test_method_flag_selects_the_method_and_its_preset(capsys):
    assert cli.main(["config", "--method", "byol"]) == 0
    out = capsys.readouterr().out
    assert "name: byol" in out and "preset: byol" in out and "momentum_start: 0.996" in out


def test_smoke_test_shrinks_method_heads():
    # The smoke runs themselves: every pipeline as a real job in tests/test_job_submit.py.
    cfg = cli.load_config(None, [], smoke_test=True, method="dino")
    assert cfg.method.name == "dino" and cfg.method.out_dim == cli.SMOKE_HEAD_DIM  # type: ignore[attr-defined]


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
def test_demo_falls_back_to_generated_data_when_fmnist_is_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # the demo reads pipelines/configs
    monkeypatch.setattr(cli, "FASHION_MNIST_DIR", str(tmp_path / "not-installed"))
    code = cli.main(["demo", "--set", "data.source.limit=256", "--set", "train.epochs=1",
                     "--set", "model.width=8", "--set", "eval.protocols=knn",
                     "--set", "eval.bank.limit=300", "--set", "eval.query.limit=150",
                     "--set", "eval.monitor_every=0", "--set", "eval.plots=false",
                     "--set", "tracking.register=false", "--set", f"train.storage_path={tmp_path}",
                     "--set", f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"])
    assert code == 0
    out = capsys.readouterr().out
    assert "Fashion-MNIST is not installed" in out and "generated shapes" in out
    assert "same encoder, random init" in out


@pytest.mark.parametrize(("args", "message"), [
    (["models:/no-such-model/1"], "MODEL='models:/no-such-model/1': not in the registry"),
    (["/no/such/checkpoint"], "not a checkpoint directory"),
    (["models:/m/1", "--set", "model.width=8"], "takes eval.*, tracking.* and train.address"),
])
def test_evaluate_pipeline_user_errors_exit_2_with_one_clear_line(capsys, args, message,
                                                                   monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    pipeline = PIPELINE.parent / "evaluate.py"
    monkeypatch.setattr(sys, "argv", [str(pipeline), *args])
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(pipeline), run_name="__main__")
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_evaluate_smoke_test_runs_every_protocol_on_generated_data_unless_told_otherwise():
    parse = cli._parser().parse_args
    data, protocols, sets = cli.evaluate_args(parse(["evaluate", "models:/m/1", "--smoke-test"]))
    assert (data, protocols) == ("generated", "knn,linear,finetune")
    assert "eval.linear_epochs=[2]" in sets
    data, protocols, sets = cli.evaluate_args(parse(
        ["evaluate", "models:/m/1", "--smoke-test", "--data", "/d", "--protocol", "knn",
         "--set", "eval.bank.limit=100"]))
    assert (data, protocols, sets[-1]) == ("/d", "knn", "eval.bank.limit=100")
    plain = parse(["evaluate", "models:/m/1", "--set", "eval.knn_k=5"])
    assert cli.evaluate_args(plain) == (None, None, ["eval.knn_k=5"])
