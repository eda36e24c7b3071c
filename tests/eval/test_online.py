"""The online probe reads view-0 features of every method without touching the SSL gradients."""

import copy
import dataclasses

import pytest
import torch

from raysl import catalog
from raysl.errors import ConfigError
from raysl.eval.online import OnlineProbe
from raysl.methods.base import Progress, build_method
from raysl.train.optim import build_optimizer
from raysl.train.step import train_step
from tests.test_methods import NAMES, start_epoch, tiny_batch, tiny_config, tiny_views


def _probe(method, classes=3, lr=0.1):
    return OnlineProbe(method, method.encoder, method.encoder.num_features, classes, lr)


@pytest.mark.parametrize("name", NAMES)
def test_probe_sees_view0_features_of_every_method(name):
    if not catalog.get("method", name).encodes_whole_views:  # MAE: the probe is refused
        with pytest.raises(ConfigError, match=r"eval\.online_probe"):
            tiny_config(name, extra=("eval.online_probe=true",))
        return
    # Eval mode: BatchNorm uses running statistics, so features are per-image and comparable.
    cfg = tiny_config(name)
    torch.manual_seed(0)
    method = build_method(cfg).eval()
    probe = _probe(method)
    views, targets = tiny_batch(cfg)
    start_epoch(method, cfg)  # DeepCluster's clustering: encoder calls the probe must not see
    with torch.no_grad():
        method(views, Progress(0, 100, 10), targets)
        expected = method.encoder(views[0])
    captured = torch.cat(probe._captured[0])[:len(views[0])]
    torch.testing.assert_close(captured, expected)


@pytest.mark.parametrize("name", ["simclr", "byol", "moco_v2", "dino"])
def test_probe_does_not_change_the_ssl_gradients_or_weights(name):
    cfg = tiny_config(name)
    torch.manual_seed(0)
    plain = build_method(cfg)
    probed = copy.deepcopy(plain)
    probe = _probe(probed)
    grads = {}

    def keep(tag, method):
        def hook(progress):
            grads[tag] = {n: p.grad.clone() for n, p in method.named_parameters()
                          if p.grad is not None}
        return hook

    results = {}
    for tag, method in (("plain", plain), ("probed", probed)):
        method.on_after_backward = keep(tag, method)  # type: ignore[method-assign]
        opt = build_optimizer(method, dataclasses.replace(cfg.optim, name="sgd"), lr=0.1)
        torch.manual_seed(1)  # the same random draws inside the methods (MoCo's shuffle...)
        results[tag] = train_step(method, [tiny_views(cfg)], opt, Progress(0, 100, 10))
    logs = probe.step([torch.randint(0, 3, (8,))])

    assert results["plain"].loss == results["probed"].loss
    assert grads["plain"].keys() == grads["probed"].keys()
    for n, g in grads["plain"].items():
        assert torch.equal(g, grads["probed"][n]), n
    for (n, a), (_, b) in zip(plain.state_dict().items(), probed.state_dict().items(),
                              strict=True):
        assert torch.equal(a, b), n
    assert set(logs) == {"online_probe_loss", "online_probe_acc"}
    assert all(p.grad is not None for p in probe.head.parameters())
    # Its own backward left the encoder's gradients exactly as the SSL loss made them.
    for n, p in probed.named_parameters():
        if n in grads["probed"]:
            assert torch.equal(p.grad, grads["probed"][n]), n


def test_probe_learns_labels_carried_by_the_features():
    torch.manual_seed(0)
    cfg = tiny_config("simclr")
    method = build_method(cfg)
    probe = _probe(method, classes=2, lr=0.5)
    g = torch.Generator().manual_seed(0)
    accs = []
    for _ in range(30):
        y = torch.randint(0, 2, (8,), generator=g)
        x0 = (y[:, None, None, None] * 255).to(torch.uint8).expand(8, 3, 32, 32).contiguous()
        with torch.no_grad():
            method([x0, x0], Progress(0, 100, 10))
        accs.append(probe.step([y])["online_probe_acc"])
    assert sum(accs[-5:]) / 5 == 1.0  # black vs white images: trivially separable


def test_probe_rejects_a_label_count_that_does_not_match_the_forwards():
    method = build_method(tiny_config("simclr"))
    probe = _probe(method)
    with pytest.raises(RuntimeError, match="captured 0 forward"):
        probe.step([torch.zeros(8, dtype=torch.long)])
