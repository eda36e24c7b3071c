"""Registered encoders as a run's start or teacher, end to end through Ray Train workers.

Continued pretraining: the workers must start from the registered weights (and so must BYOL's
EMA target, which copies the encoder when the method is built), and the new version's lineage
must name its parent. Distillation: the workers learn from the registered teacher, which is
never saved with the student, and the new version's lineage names the teacher.
"""

from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from raysl import config as C
from raysl.pretrain import pretrain
from tests.serving.registered import NAME, SIZE, register_tiny_encoder

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_session")]
CONFIGS = Path(__file__).resolve().parents[1] / "pipelines/configs"


def test_byol_continues_from_a_registered_encoder(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # artifacts land in ./mlartifacts
    parent = register_tiny_encoder(tmp_path)
    # A learning rate of ~0: after one epoch the weights are still the parent's, so any
    # difference would mean a worker started elsewhere.
    cfg = C.load(CONFIGS / "byol_fmnist.yaml", [
        "data.source.format=generated", "data.source.path=''", "data.source.limit=128",
        f"data.image_size={SIZE}", "data.channels=1", "model.width=8", "model.small_stem=true",
        "data.batch_size_global=32", "method.proj_hidden_dim=32", "method.pred_hidden_dim=32",
        "optim.base_lr=1e-9", "optim.weight_decay=0", "optim.warmup_epochs=0",
        "train.epochs=1", "train.num_workers=1", "train.run_name=continued",
        f"train.storage_path={tmp_path / 'ray_results'}", "eval.enabled=false",
        "eval.monitor_every=0", f"tracking.tracking_uri={parent['uri']}",
        "tracking.registered_model=continued", f"model.init_from=models:/{NAME}@champion"])
    result = pretrain(cfg)
    assert f"starting from models:/{NAME}/1 (run {parent['run_id']}" in capsys.readouterr().out
    method = torch.load(Path(result.checkpoint_path) / "method.pt", weights_only=True)
    for name, weight in parent["encoder"].named_parameters():
        for copy in ("encoder", "target_encoder"):
            torch.testing.assert_close(method[f"{copy}.{name}"], weight, rtol=0, atol=1e-6)
    # The new version's lineage names the parent version, resolved from the alias.
    assert result.model is not None
    tags = MlflowClient(result.tracking_uri).get_model_version("continued", "1").tags
    assert tags["parent"].startswith(f"models:/{NAME}/1 (run {parent['run_id']}")


def test_distill_learns_from_a_registered_teacher(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    teacher = register_tiny_encoder(tmp_path)  # gray, 32 px, width 8
    cfg = C.load(CONFIGS / "distill_fmnist.yaml", [
        "data.source.format=generated", "data.source.path=''", "data.source.limit=128",
        "data.image_size=24", "model.width=4",  # a smaller student, at another size
        "data.batch_size_global=32", "train.epochs=2", "train.num_workers=1",
        "train.run_name=distilled", f"train.storage_path={tmp_path / 'ray_results'}",
        "eval.enabled=false", "eval.monitor_every=0", f"tracking.tracking_uri={teacher['uri']}",
        "tracking.registered_model=distilled", f"method.teacher=models:/{NAME}@champion"])
    result = pretrain(cfg)
    assert f"teacher: models:/{NAME}/1 (run {teacher['run_id']}" in capsys.readouterr().out
    client = MlflowClient(result.tracking_uri)
    losses = [m.value for m in sorted(client.get_metric_history(result.mlflow_run_id,
                                                                "train/distill/global"),
                                      key=lambda m: m.step)]
    assert len(losses) == 2 and losses[1] < losses[0]  # the student moves towards the teacher
    method = torch.load(Path(result.checkpoint_path) / "method.pt", weights_only=True)
    assert not any("teacher" in key for key in method)  # the student's checkpoint only
    assert result.model is not None
    tags = client.get_model_version("distilled", "1").tags
    assert tags["teacher"].startswith(f"models:/{NAME}/1 (run {teacher['run_id']}")
    assert tags["output.dim"] == "32"  # the width-4 student's, not the teacher's 64
