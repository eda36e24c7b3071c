"""A registered version's weights are its own: a tag someone changes later moves nothing."""

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

import raysl
from raysl import config as C
from raysl.checkpoint import save_checkpoint
from raysl.errors import ModelNotFoundError
from raysl.nn.backbones import build_encoder
from raysl.tracking.mlflow import ensure_experiment
from raysl.tracking.model_registry import WEIGHTS_TAG, log_and_register, log_weights

pytestmark = pytest.mark.slow

SIZE = 32


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                 b.state_dict().values(), strict=True))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One run with two logged checkpoints; version 1 registered from the first."""
    root = tmp_path_factory.mktemp("version-weights")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    cfg = C.load(None, ["data.source.format=generated", f"data.image_size={SIZE}",
                        "data.channels=1", "model.width=8", "model.small_stem=true"])
    client = MlflowClient(uri)
    run_id = client.create_run(ensure_experiment(client, "weights", uri)).info.run_id
    encoders, dirs = [], []
    for epoch in (0, 1):
        torch.manual_seed(epoch)
        encoder = build_encoder(cfg.model, 1, SIZE).eval()
        checkpoint = root / f"checkpoint{epoch}"
        save_checkpoint(checkpoint, encoder, encoder, torch.optim.SGD(encoder.parameters(), 0.1),
                        {"epoch": epoch, "step": 1, "config": cfg.to_dict()})
        encoders.append(encoder)
        dirs.append(log_weights(client, run_id, checkpoint))
    log_and_register(encoders[0], cfg, run_id, uri, "own-weights", "v1", {WEIGHTS_TAG: dirs[0]})
    return {"uri": uri, "run_id": run_id, "encoders": encoders, "dirs": dirs, "client": client}


@pytest.mark.parametrize("tag", ["second", "../../elsewhere", "deleted"])
def test_the_version_loads_its_own_weights_whatever_its_tag_says(store, tag):
    client, (first, second) = store["client"], store["encoders"]
    assert not _same(first, second)
    if tag == "deleted":
        client.delete_model_version_tag("own-weights", "1", WEIGHTS_TAG)
    else:  # the run's other checkpoint, or a path out of the run
        value = store["dirs"][1] if tag == "second" else tag
        client.set_model_version_tag("own-weights", "1", WEIGHTS_TAG, value)
    encoder = raysl.load_encoder("models:/own-weights/1", store["uri"])
    assert _same(encoder, first)


def test_a_pickle_format_version_follows_only_a_checkpoint_tag_of_its_run(store):
    """Before raysl registered pyfunc models a version held a pickle: never read; its tag is."""
    mlflow.set_tracking_uri(store["uri"])
    with mlflow.start_run(run_id=store["run_id"]):
        info = mlflow.pytorch.log_model(store["encoders"][0], name="old",
                                        serialization_format="pickle",
                                        registered_model_name="pickle-format",
                                        pip_requirements=["torch"])  # none inferred: faster
    version, client = str(info.registered_model_version), store["client"]
    client.set_model_version_tag("pickle-format", version, WEIGHTS_TAG, store["dirs"][1])
    encoder = raysl.load_encoder(f"models:/pickle-format/{version}", store["uri"])
    assert _same(encoder, store["encoders"][1])
    for outside in ("../../elsewhere", "checkpoint/epoch_0001/../../x",
                    "checkpoint/epoch_0001\n", ""):
        client.set_model_version_tag("pickle-format", version, WEIGHTS_TAG, outside)
        with pytest.raises(ModelNotFoundError, match="names no checkpoint/epoch_NNNN"):
            raysl.load_encoder(f"models:/pickle-format/{version}", store["uri"])
