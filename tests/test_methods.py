"""Every registered method, automatically: build tiny, one step, finite loss, gradients flow."""

import pytest
import torch

from raysl import config as C
from raysl import methods, registry
from raysl.methods.base import build_method

del methods  # registers them
TINY = ["model.width=8", "model.small_stem=true", "data.channels=3", "data.image_size=32"]


@pytest.mark.parametrize("name", registry.names("method"))
def test_every_method_trains_one_step(name):
    cfg = C.load(None, [*TINY, f"method.name={name}"])
    torch.manual_seed(0)
    method = build_method(cfg)
    assert method.paper and method.summary and method.Config is type(cfg.method)
    views = [torch.rand(4, 3, 32, 32) for _ in range(method.num_views)]
    out = method(views, progress=0.0)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    online = [p for p in method.parameters() if p.requires_grad]
    assert online and all(p.grad is not None for p in online)
    assert any(p.grad.abs().sum() > 0 for p in method.encoder.parameters())


@pytest.mark.parametrize("name", registry.names("method"))
def test_every_method_has_a_shipped_config(name):
    from pathlib import Path

    shipped = [p for p in Path("pipelines/configs").glob("*.yaml")
               if C.load(p).method.name == name]
    assert shipped, f"no pipelines/configs/*.yaml for method {name}"


def test_unknown_method_lists_known():
    with pytest.raises(KeyError, match="known: \\['simclr'"):
        registry.get("method", "byoll")
