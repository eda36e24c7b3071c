"""The real pipeline end to end: Ray Data -> 2 Ray Train workers -> kNN -> MLflow registry."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

import raysl
from raysl import config as C
from raysl.config import FASHION_MNIST_DIR
from raysl.errors import DataError, RepresentationCollapsed
from raysl.pretrain import RANDOM_INIT, TRAINED, pretrain
from raysl.train.in_process import IN_PROCESS_MARK

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_session")]
CONFIGS = Path(__file__).resolve().parents[1] / "pipelines/configs"
DEMO_CONFIG = CONFIGS / "demo.yaml"


def _shared(tmp_path: Path, epochs: int, run_name: str) -> list[str]:
    """Tiny data, 2 workers, tracking in tmp_path: the settings every e2e run here shares."""
    fmnist = (Path(FASHION_MNIST_DIR) / "train-images-idx3-ubyte.gz").exists()
    data = ([f"data.source.path={FASHION_MNIST_DIR}", "eval.bank.limit=600", "eval.query.limit=300"]
            if fmnist else  # the same code path on generated images when the package is absent
            ["data.source.format=generated", "eval.bank.format=generated", "eval.bank.limit=600",
             "eval.query.path=''", "data.image_size=28"])
    return [*data, "data.source.limit=384", "data.batch_size_global=64", "model.width=8",
            f"train.epochs={epochs}", "train.num_workers=2", f"train.run_name={run_name}",
            f"train.storage_path={tmp_path / 'ray_results'}", "eval.knn_k=20",
            f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}", "tracking.experiment=e2e",
            "tracking.registered_model=e2e-encoder", "optim.warmup_epochs=0",
            "eval.monitor_samples=256",  # >= the 64-d encoder and 128-d SimCLR projector
            "eval.protocols=knn,linear"]  # the demo's fine-tuning headline only where asked


def _config(tmp_path: Path, epochs: int, run_name: str, extra: tuple[str, ...] = ()
            ) -> C.Config:
    return C.load(DEMO_CONFIG, [*_shared(tmp_path, epochs, run_name), *extra])


# Every evaluation protocol, tiny, plus online kNN every epoch and the online probe.
FULL_EVAL = ("eval.protocols=knn,linear,finetune", "eval.linear_lrs=[0.1]",
             "eval.linear_epochs=[10]", "eval.finetune_fractions=[0.1]", "eval.finetune_epochs=1",
             "eval.finetune_min_steps=5", "eval.finetune_batch_size=16", "eval.online_knn_every=1",
             "eval.online_probe=true", "eval.plot_points=100")


def test_pretrain_end_to_end_and_resume(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # artifacts land in ./mlartifacts
    cfg = _config(tmp_path, epochs=3, run_name="e2e-run", extra=FULL_EVAL)
    result = pretrain(cfg)
    client = MlflowClient(result.tracking_uri)

    # Loss decreased over the epochs (history from MLflow, logged by rank 0 every epoch).
    losses = [m.value for m in sorted(client.get_metric_history(result.mlflow_run_id, "train/loss"),
                                      key=lambda m: m.step)]
    assert len(losses) == 3 and losses[-1] < losses[0]

    # A complete checkpoint with the effective config inside.
    ckpt = Path(result.checkpoint_path)
    files = {p.name for p in ckpt.iterdir()}
    assert {"encoder.pt", "method.pt", "optimizer.pt", "state.json"} <= files
    state = json.loads((ckpt / "state.json").read_text())
    assert state["epoch"] == 2 and C.Config.from_dict(state["config"]) == cfg

    # The MLflow run: params, per-epoch and eval metrics, config artifact, finished.
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["method.temperature"] == str(cfg.method.temperature)  # type: ignore[attr-defined]
    for key in ("train/loss", "train/lr", "train/images_per_s", "eval/knn_top1",
                "eval/knn_top1_random_init", "eval/knn_top1_raw_pixels", "data/images"):
        assert key in run.data.metrics, key
    assert run.data.metrics["data/images"] == 384
    # Where the time went: 2 workers communicate (gradient all-reduce, SimCLR's gathered
    # negatives); the three fractions cover the epoch.
    split = [run.data.metrics[f"train/{k}_fraction"] for k in ("data_wait", "comm", "compute")]
    assert split[1] > 0 and abs(sum(split) - 1) < 1e-6 and min(split) >= 0, split
    assert "time per step  " in result.summary()
    assert "config.yaml" in [a.path for a in client.list_artifacts(result.mlflow_run_id)]
    assert set(result.knn) == {TRAINED, RANDOM_INIT, "raw_pixels"}
    assert all(0.0 <= v <= 1.0 for v in result.knn.values())

    # Every protocol, its baselines and figures; the encoder's weights beside config.yaml.
    for key in ("eval/linear_top1", "eval/linear_top5_raw_pixels", "eval/finetune_10pct_top1",
                "eval/finetune_10pct_top1_random_init", "train/online_probe_loss",
                "eval/online_probe_top1", "eval/online_knn_top1_best"):
        assert key in run.data.metrics, key
    eval_files = {a.path for a in client.list_artifacts(result.mlflow_run_id, "eval")}
    assert {"eval/embedding.png", "eval/confusion_matrix.png", "eval/per_class_accuracy.md",
            "eval/results.json"} <= eval_files
    assert [a.path for a in client.list_artifacts(result.mlflow_run_id, "checkpoint")] == [
        "checkpoint/epoch_0003"]
    # Online kNN every epoch; the summary gives the final AND the best epoch.
    online = client.get_metric_history(result.mlflow_run_id, "eval/online_knn_top1")
    assert sorted(m.step for m in online) == [1, 2, 3]
    assert result.online["final_epoch"] == 3 and 1 <= result.online["best_epoch"] <= 3
    assert result.online["best"] == max(m.value for m in online)
    assert "online kNN     final" in result.summary() and "linear_top1" in result.summary()
    assert "headline       with " in result.summary() and "from scratch" in result.summary()
    # The label-free monitors every epoch, on the encoder (64-d) and SimCLR's projector (128-d).
    for key, dims in (("eval/rankme", 64), ("eval/lidar", 64), ("eval/rankme_projector", 128),
                      ("eval/lidar_projector", 128)):
        history = client.get_metric_history(result.mlflow_run_id, key)
        assert sorted(m.step for m in history) == [1, 2, 3], key
        assert all(1 <= m.value <= dims for m in history), (key, history)
    assert "monitors       RankMe" in result.summary()

    # The registered model: description carries the kNN result, tags its lineage; it loads
    # (weights-only) and embeds images.
    assert result.model is not None and result.model.model_uri == "models:/e2e-encoder/1"
    # The first version is the champion, so models:/NAME@champion loads from the first run on.
    assert result.alias == "champion" and "alias champion" in result.summary()
    assert str(client.get_model_version_by_alias("e2e-encoder", "champion").version) == "1"
    version = client.get_model_version("e2e-encoder", "1")
    assert "kNN top-1" in version.description and "random init" in version.description
    for tag in ("raysl.commit", "data.fingerprint", "config.sha256", "input.channels",
                "input.size", "input.normalisation", "output.dim", "method"):
        assert version.tags.get(tag), tag
    assert version.tags["data.fingerprint"].startswith("sha256:")
    assert version.tags["input.channels"] == "1" and version.tags["output.dim"] == "64"
    encoder = raysl.load_encoder(result.model.model_uri, result.tracking_uri)
    images = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    with torch.no_grad():
        feats = encoder(images)
    assert feats.shape == (5, 64) and torch.isfinite(feats).all()

    # Nothing but the URI, in a fresh process that refuses to unpickle anything.
    code = ("import mlflow.pyfunc, numpy as np, pandas as pd; "
            "m = mlflow.pyfunc.load_model('models:/e2e-encoder/1'); "
            "x = np.zeros((28, 28, 1), np.uint8).tolist(); "
            "print(m.predict(pd.DataFrame({'pixels': [x, x]})).shape)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "MLFLOW_TRACKING_URI": result.tracking_uri,
                              "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false"},
                         cwd="/")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("(2, 64)")

    # Same run name again with more epochs: resumes from the checkpoint, same MLflow run (its
    # training and registration are checked here, not its evaluation: that is off). With one
    # worker it trains in this process (train.local_mode=auto), from the worker group's
    # checkpoint, and commits its own beside Ray Train's.
    again = pretrain(_config(tmp_path, epochs=4, run_name="e2e-run",
                             extra=("eval.enabled=false", "eval.monitor_every=0",
                                    "train.num_workers=1")))
    assert again.resumed and again.mlflow_run_id == result.mlflow_run_id
    history = client.get_metric_history(result.mlflow_run_id, "train/loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4]  # epoch 4 only was trained
    resumed_ckpt = Path(again.checkpoint_path)
    assert json.loads((resumed_ckpt / "state.json").read_text())["epoch"] == 3
    assert (resumed_ckpt / IN_PROCESS_MARK).exists() and resumed_ckpt.parent == ckpt.parent
    # Once more, with nothing left to train (as after a crash in the evaluation): the newest
    # checkpoint is the result, in process as Ray Train's recorded one is in a worker group.
    done = pretrain(_config(tmp_path, epochs=4, run_name="e2e-run",
                            extra=("eval.enabled=false", "eval.monitor_every=0",
                                   "train.num_workers=1", "tracking.register=false")))
    assert done.checkpoint_path == again.checkpoint_path
    assert again.model is not None and again.model.version == "2"
    assert not again.alias  # only merit moves it (a sweep's champion decision)
    assert str(client.get_model_version_by_alias("e2e-encoder", "champion").version) == "1"
    assert np.isfinite(again.final_loss)

    # `raysl evaluate` with nothing but the registry URI, in a fresh process joining the
    # session's Ray cluster by RAY_ADDRESS (as a job on a cluster does; starting its own Ray
    # would cost ~15 s). Version 1 keeps its own weights after the resume registered version 2
    # from the same run: the same split and weights give exactly the kNN measured after the
    # first training.
    import ray

    out = subprocess.run([sys.executable, "-m", "raysl.cli", "evaluate", "models:/e2e-encoder/1",
                          "--protocol", "knn"], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "MLFLOW_TRACKING_URI": result.tracking_uri,
                              "RAY_ADDRESS": ray.get_runtime_context().gcs_address},
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "knn_top1" in out.stdout and "raw pixels" in out.stdout
    assert "checkpoint/epoch_0003" in out.stdout
    tags = client.get_model_version("e2e-encoder", "1").tags
    eval_run = client.get_run(tags["eval.run_id"])  # set by `raysl evaluate` only
    assert eval_run.data.tags["raysl.pretraining_run"] == result.mlflow_run_id
    assert eval_run.data.metrics["eval/knn_top1"] == pytest.approx(result.knn[TRAINED], abs=1e-6)
    assert float(tags["eval.knn_top1"]) == pytest.approx(result.knn[TRAINED], abs=1e-4)
    # The version's eval.* tags describe this evaluation only: pretraining's linear probe is gone.
    assert "eval.linear_top1" not in tags
    assert tags["eval.data"] == result.eval_data  # the same split as after training



def _image_folder(root: Path, per_class: int = 24) -> dict[str, int]:
    """Fashion-MNIST (or generated) images as PNG files in class folders, plus bad files.

    Returns the bad files written, per reason, as the reader should count them.
    """
    from PIL import Image

    from raysl.data import generated
    from raysl.data.readers.idx import parse_idx

    idx = Path(FASHION_MNIST_DIR) / "t10k-images-idx3-ubyte.gz"
    if idx.exists():
        images = parse_idx(idx.read_bytes(), idx.name)
        labels = parse_idx((idx.parent / "t10k-labels-idx1-ubyte.gz").read_bytes(), "labels")
    else:
        images, labels = generated.shapes(n=2000, size=28, seed=0)
        images = images[..., 0]
    for c in range(8):
        (root / f"class_{c}").mkdir(parents=True)
        for i in np.flatnonzero(labels == c)[:per_class]:
            Image.fromarray(images[i]).save(root / f"class_{c}" / f"{i}.png")
    (root / "class_0" / "empty.png").write_bytes(b"")
    (root / "class_1" / "notes.jpg").write_text("not an image")
    good = next((root / "class_2").iterdir()).read_bytes()
    (root / "class_2" / "cut.png").write_bytes(good[: len(good) // 2])
    Image.new("L", (1, 1)).save(root / "class_3" / "dot.png")
    return {"empty": 1, "not_an_image": 1, "truncated": 1, "too_small": 1}


def test_image_folder_with_bad_files_multicrop_ema_method_end_to_end(tmp_path: Path, monkeypatch,
                                                                      capsys):
    # Data: a folder of image files, 4 of them bad (skipped, counted, reported, logged), streamed:
    # decoded again every epoch, the bad ones counted as the stream meets them.
    # DINO: multi-crop views from Ray Data, an EMA teacher, a center kept equal across workers,
    # the last layer frozen in epoch 1, a weight-decay schedule, clipping, 2 micro-batches a step.
    monkeypatch.chdir(tmp_path)
    bad = _image_folder(tmp_path / "images")
    cfg = C.load(CONFIGS / "dino_fmnist.yaml", [
        *_shared(tmp_path, 2, "e2e-dino"), f"data.source.path={tmp_path / 'images'}",
        "data.source.limit=0", "data.cache=none", "data.image_size=28",
        "eval.bank.path=''", "eval.bank.format=auto", "eval.query.path=''",  # its own hold-out
        "data.views.local_crops=2",
        "method.out_dim=64", "method.hidden_dim=64", "method.bottleneck_dim=32",
        "train.grad_accumulation=2", "optim.weight_decay_schedule=cosine",
        "optim.weight_decay_end=0.01", "optim.clip_grad=3.0", "tracking.registered_model=e2e-dino",
        "eval.baselines=false", "eval.plots=false"])  # the trained kNN only is checked
    assert cfg.view_sizes == [28, 28, 12, 12] and cfg.micro_batch_size == 16
    result = pretrain(cfg)
    client = MlflowClient(result.tracking_uri)
    metrics = client.get_run(result.mlflow_run_id).data.metrics
    assert result.skipped == bad and metrics["data/images"] == 8 * 24
    assert {k: v for k, v in metrics.items() if k.startswith("data/skipped_")} == {
        f"data/skipped_{reason}": n for reason, n in bad.items()}
    listed = client.download_artifacts(result.mlflow_run_id, "data/skipped.txt", str(tmp_path))
    assert "class_1/notes.jpg: not_an_image" in Path(listed).read_text()
    assert "skipped 4: " in result.summary() and "data/skipped.txt" in result.summary()
    for key in ("train/loss", "train/grad_norm", "train/weight_decay", "train/dino/teacher_temp",
                "eval/knn_top1"):
        assert key in metrics, key
    assert np.isfinite(result.final_loss)
    # No eval split named: the training folder's labels, 20% held out as queries, stratified.
    assert result.eval_data == ("the training data, 192 images of " + result.data
                                + ", 20% held out as queries (stratified)")

    # The checkpoint holds the whole method (teacher and center too); the EMA teacher moved away
    # from its initial copy of the student, and the center left zero.
    method_state = torch.load(Path(result.checkpoint_path) / "method.pt", weights_only=True)
    assert method_state["center"].abs().sum() > 0
    student = {k[len("encoder."):]: v for k, v in method_state.items() if k.startswith("encoder.")}
    teacher = {k[len("teacher_encoder."):]: v for k, v in method_state.items()
               if k.startswith("teacher_encoder.")}
    assert student.keys() == teacher.keys()
    assert any(not torch.equal(student[k], teacher[k]) for k in student)
    assert result.model is not None and result.model.model_uri == "models:/e2e-dino/1"


def test_unlabeled_data_skips_evaluation_and_a_mostly_bad_stream_stops_training(
        tmp_path: Path, monkeypatch, capsys):
    # A flat folder has no labels and no eval split is named: evaluation is skipped, said in one
    # line before training, rather than scored on some other dataset.
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    images = tmp_path / "mostly_bad"
    images.mkdir()
    for i in range(40):
        Image.new("L", (16, 16), color=i).save(images / f"{i}.png")
    for i in range(40):
        (images / f"broken{i}.png").write_bytes(b"not an image")
    cfg = C.load(DEMO_CONFIG, [
        *_shared(tmp_path, 1, "e2e-bad-stream"), f"data.source.path={images}",
        "data.source.limit=0", "data.cache=none", "data.batch_size_global=8",
        "eval.bank.path=''", "eval.bank.format=auto", "eval.query.path=''",
        "data.image_size=16", "train.num_workers=1"])  # in process: its error is Ray Data's own
    with pytest.raises(DataError, match=r"data.max_bad_fraction=0.1: 40 of the 80 .*of the "
                                        r"stream"):
        pretrain(cfg)
    out = capsys.readouterr().out.splitlines()
    skipped = [line for line in out if line.startswith("[raysl] evaluation skipped")]
    assert len(skipped) == 1 and "--set eval.bank.path=PATH" in skipped[0], skipped
    assert any("training in this process" in line for line in out)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("e2e").experiment_id])[0]
    assert run.info.status == "FAILED"


def test_online_probe_needs_labels_and_fails_before_training(tmp_path: Path, monkeypatch):
    # A flat folder of images has no labels: the probe has nothing to learn, said before training.
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    images = tmp_path / "unlabeled"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(80):
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(images / f"{i}.png")
    cfg = C.load(DEMO_CONFIG, [
        *_shared(tmp_path, 1, "e2e-probe"), f"data.source.path={images}",
        "data.source.format=auto", "data.source.limit=0", "eval.bank.format=generated",
        "eval.query.path=''", "eval.online_probe=true"])
    with pytest.raises(C.ConfigError, match=r"eval.online_probe=True: needs labeled training"):
        pretrain(cfg)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("e2e").experiment_id])[0]
    assert run.info.status == "FAILED"
    assert not (tmp_path / "ray_results" / "e2e-probe").exists()  # no training started


def test_a_collapsing_run_is_stopped_with_the_reason_in_mlflow(tmp_path: Path, monkeypatch):
    # SimSiam without its stop-gradient (the paper's fig. 2 ablation) collapses within a few dozen
    # steps; the monitors see it, and train.stop_on_collapse ends the run FAILED, saying why.
    monkeypatch.chdir(tmp_path)
    cfg = C.load(CONFIGS / "simsiam_fmnist.yaml", [
        *_shared(tmp_path, 6, "e2e-collapse"), "data.source.limit=768",
        "method.stop_gradient=false", "method.proj_hidden_dim=256", "method.proj_output_dim=256",
        "method.pred_hidden_dim=64", "optim.base_lr=0.5", "train.stop_on_collapse=true",
        "train.max_failures=1",  # one restart shows the note at work; each costs ~5 s
        "eval.enabled=false", "tracking.registered_model=''"])
    with pytest.raises(RepresentationCollapsed, match=r"collapse of the (encoder|projector)'s "
                       r"embeddings \(RankMe .*For simsiam this usually means a missing "
                       r"stop-gradient.*train.stop_on_collapse"):
        pretrain(cfg)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("e2e").experiment_id])[0]
    assert run.info.status == "FAILED"
    assert run.data.tags["raysl.failure"].startswith("RepresentationCollapsed: epoch ")
    projector = client.get_metric_history(run.info.run_id, "eval/rankme_projector")
    encoder = client.get_metric_history(run.info.run_id, "eval/rankme")
    assert 1 <= len(projector) < 6  # stopped early, at the epoch the monitor saw it
    assert projector[-1].value < 0.02 * 256 or encoder[-1].value < 0.02 * 64
    # train.max_failures restarted the workers, but a restart cannot undo a collapse: the
    # restarted workers re-raised the noted error before training any further.
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert sorted(steps) == sorted(set(steps)) == [m.step for m in projector]
    assert (tmp_path / "ray_results" / "e2e-collapse" / "raysl_permanent_error.json").exists()


# The predictive family through the whole path, each with what makes it different: a target
# column carried from Ray Data to the loss (jigsaw, whose view is a 5-D stack of tiles), a ViT
# masked inside the model with a decoder that is not exported (MAE). Every method's exported
# encoder is checked for training-only heads in tests/test_methods.py, each predictive method's
# targets and loss in tests/methods/.
PREDICTIVE = {
    "mae": ("model.width=16", "model.depth=2", "method.decoder_dim=16", "method.decoder_depth=1",
            "method.decoder_heads=2"),
    "jigsaw": ("method.tile_dim=32", "method.hidden_dim=64"),  # 5-D tile columns from Ray Data
}


@pytest.mark.parametrize("name", sorted(PREDICTIVE))
def test_predictive_methods_end_to_end_to_a_registered_encoder(name, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = C.load(CONFIGS / f"{name}_fmnist.yaml", [
        *_shared(tmp_path, 1, f"e2e-{name}"), "data.source.limit=256", "train.num_workers=1",
        "eval.monitor_samples=64", "eval.protocols=knn", "eval.bank.limit=300",
        "eval.query.limit=150", "eval.baselines=false", "eval.plots=false",  # trained kNN only
        f"tracking.registered_model=e2e-{name}", *PREDICTIVE[name]])
    result = pretrain(cfg)
    metrics = MlflowClient(result.tracking_uri).get_run(result.mlflow_run_id).data.metrics
    assert np.isfinite(result.final_loss) and 0 < result.knn[TRAINED] <= 1
    assert "eval/rankme" in metrics and "eval/rankme_projector" not in metrics
    if name == "jigsaw":  # the target column reached the loss
        assert 0 <= metrics["train/jigsaw_acc"] <= 1
    assert result.model is not None
    encoder = raysl.load_encoder(result.model.model_uri, tracking_uri=result.tracking_uri)
    assert not any(k.startswith(("decoder", "classifier", "head")) for k in encoder.state_dict())
    images = torch.zeros(2, encoder.in_channels, encoder.image_size, encoder.image_size,
                         dtype=torch.uint8)
    assert encoder(images).shape == (2, encoder.num_features)
