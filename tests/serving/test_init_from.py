"""model.init_from resolved on the driver: every kind of source, and every way it cannot fit."""

from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from raysl import config as C
from raysl.checkpoint import save_checkpoint
from raysl.errors import CheckpointError, ConfigError, ModelNotFoundError
from raysl.methods.base import build_method
from raysl.serving.init_from import describe, resolve_init
from tests.serving.registered import NAME, SIZE, register_tiny_encoder

TINY = ["data.source.format=generated", f"data.image_size={SIZE}", "data.channels=1",
        "model.width=8", "model.small_stem=true"]


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return register_tiny_encoder(tmp_path_factory.mktemp("init_from"))


def _same(state: dict, encoder: nn.Module) -> bool:
    return all(torch.equal(state[k], v) for k, v in encoder.state_dict().items())


@pytest.mark.parametrize("spec", [f"models:/{NAME}@champion", f"models:/{NAME}/1", "runs:/{run}",
                                  "{run}", "{root}/checkpoint"])
def test_every_kind_of_source_gives_the_registered_weights(registered, spec):
    spec = spec.format(run=registered["run_id"], root=registered["root"])
    cfg = C.load(None, [*TINY, f"model.init_from={spec}"])
    init = resolve_init(cfg, registered["uri"])
    assert init is not None and _same(dict(init.encoder), registered["encoder"])
    assert init.method is None  # a version, a run or a bare encoder carries no SimCLR heads
    assert "heads fresh" in describe(init)
    # The workers' side: the method is built around those weights.
    method = build_method(cfg, init)
    assert _same(dict(init.encoder), method.encoder)


def test_no_init_from_is_random_init(registered):
    assert resolve_init(C.load(None, TINY), registered["uri"]) is None


def test_a_raysl_source_of_another_architecture_says_what_to_set(registered):
    cfg = C.load(None, ["data.source.format=generated", f"data.image_size={SIZE}",
                        "data.channels=1", f"model.init_from=models:/{NAME}@champion"])
    with pytest.raises(ConfigError) as error:
        resolve_init(cfg, registered["uri"])
    text = str(error.value)
    assert "model.init_from" in text and "--set model.width=8 model.small_stem=True" in text


def test_a_name_that_is_not_registered_is_not_found(registered):
    cfg = C.load(None, [*TINY, "model.init_from=models:/nothing@champion"])
    with pytest.raises(ModelNotFoundError, match="nothing@champion"):
        resolve_init(cfg, registered["uri"])


def test_a_checkpoint_of_the_same_method_brings_its_heads(tmp_path: Path):
    cfg = C.load(None, TINY)
    torch.manual_seed(3)
    method = build_method(cfg)
    save_checkpoint(tmp_path / "checkpoint_000001", method, method.encoder,
                    torch.optim.SGD(method.parameters(), lr=0.1),
                    {"epoch": 0, "config": cfg.to_dict()})
    init = resolve_init(C.load(None, [*TINY, f"model.init_from={tmp_path}"]), "")
    assert init is not None and init.method is not None and "with its heads" in describe(init)
    rebuilt = build_method(cfg, init)
    assert all(torch.equal(a, b) for a, b in zip(rebuilt.state_dict().values(),
                                                 method.state_dict().values(), strict=True))
    # Other head sizes: the encoder comes along, the heads start fresh.
    other = C.load(None, [*TINY, "method.proj_output_dim=32", f"model.init_from={tmp_path}"])
    init = resolve_init(other, "")
    assert init is not None and init.method is None and _same(dict(init.encoder), method.encoder)


def test_a_torchvision_file_loads_and_a_pickled_module_is_refused(tmp_path: Path):
    file = tmp_path / "resnet18.pth"
    reference = torchvision.models.resnet18()
    torch.save(reference.state_dict(), file)
    cfg = C.load(None, ["data.source.format=generated", "data.image_size=32",
                        "model.backbone=resnet18", f"model.init_from={file}"])
    init = resolve_init(cfg, "")
    assert init is not None and "torchvision layout" in init.source
    assert torch.equal(init.encoder["backbone.layer1.0.conv1.weight"],
                       reference.state_dict()["layer1.0.conv1.weight"])
    # One channel: the first convolution does not fit, and the error says so by name.
    gray = C.load(None, ["data.source.format=generated", "data.image_size=32", "data.channels=1",
                         f"model.init_from={file}"])
    with pytest.raises(CheckpointError, match=r"backbone.conv1.weight: \(64, 3, 7, 7\)"):
        resolve_init(gray, "")
    # A whole pickled module would run code on load: refused, never unpickled.
    pickled = tmp_path / "module.pt"
    torch.save(reference, pickled)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        resolve_init(C.load(None, ["data.source.format=generated", "data.image_size=32",
                                   f"model.init_from={pickled}"]), "")


def test_a_download_url_is_a_config_error():
    with pytest.raises(ConfigError, match=r"model.init_from.*never downloaded"):
        C.load(None, ["model.init_from=https://example.com/resnet18.pth"])
