import pytest
import torch
from torch import nn

from raysl.nn.ema import ema_update, frozen_copy


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def test_frozen_copy_freezes_params_and_leaves_online_trainable():
    online = _net()
    target = frozen_copy(online)
    assert target is not online
    assert all(not p.requires_grad for p in target.parameters())
    assert all(p.requires_grad for p in online.parameters())
    for (n_t, p_t), (n_o, p_o) in zip(target.named_parameters(), online.named_parameters(),
                                      strict=True):
        assert n_t == n_o
        torch.testing.assert_close(p_t, p_o)


def test_frozen_copy_is_deep():
    online = _net()
    target = frozen_copy(online)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    assert all(p_t.data_ptr() != p_o.data_ptr()
               for p_t, p_o in zip(target.parameters(), online.parameters(), strict=True))
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)
    online.train()(torch.randn(16, 4))  # updates the online BatchNorm running stats
    for k, v in target.state_dict().items():
        torch.testing.assert_close(v, before[k], msg=k)
    assert not torch.equal(online[1].running_mean, target[1].running_mean)


@pytest.mark.parametrize("momentum", [0.9, 0.996, 0.5])
def test_ema_update_matches_naive_loop(momentum):
    online, target = _net(0), frozen_copy(_net(1))
    expected = [momentum * t.clone() + (1 - momentum) * o.detach()
                for t, o in zip(target.parameters(), online.parameters(), strict=True)]
    online_before = [p.detach().clone() for p in online.parameters()]
    ema_update(target, online, momentum)
    for got, want in zip(target.parameters(), expected, strict=True):
        torch.testing.assert_close(got, want)
    for p, before in zip(online.parameters(), online_before, strict=True):
        assert torch.equal(p, before)  # the online network is read only
    assert all(not p.requires_grad for p in target.parameters())


def test_ema_update_repeated_converges_geometrically():
    online, target = _net(0), frozen_copy(_net(1))
    t0 = [p.clone() for p in target.parameters()]
    for _ in range(3):
        ema_update(target, online, 0.8)
    for got, start, o in zip(target.parameters(), t0, online.parameters(), strict=True):
        torch.testing.assert_close(got, 0.8**3 * start + (1 - 0.8**3) * o.detach())


def test_ema_update_momentum_one_keeps_target():
    online, target = _net(0), frozen_copy(_net(1))
    before = [p.clone() for p in target.parameters()]
    ema_update(target, online, 1.0)
    for p, b in zip(target.parameters(), before, strict=True):
        assert torch.equal(p, b)


def test_ema_update_momentum_zero_copies_online():
    online, target = _net(0), frozen_copy(_net(1))
    assert not torch.equal(target[0].weight, online[0].weight)
    ema_update(target, online, 0.0)
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        assert torch.equal(t, o)
        assert t.data_ptr() != o.data_ptr()


def test_ema_update_leaves_buffers_alone():
    online, target = _net(0), frozen_copy(_net(1))
    online.train()(torch.randn(32, 4) * 3 + 2)  # online BN running stats move away from init
    target_buffers = {k: v.clone() for k, v in target.named_buffers()}
    assert not torch.equal(online[1].running_mean, target[1].running_mean)
    ema_update(target, online, 0.0)
    for k, v in target.named_buffers():
        assert torch.equal(v, target_buffers[k]), k
    assert torch.equal(target[1].running_mean, torch.zeros(8))
    assert torch.equal(target[1].running_var, torch.ones(8))


@pytest.mark.parametrize("momentum", [-0.1, 1.01, 2.0])
def test_ema_update_rejects_momentum_outside_unit_interval(momentum):
    online, target = _net(0), frozen_copy(_net(1))
    before = [p.clone() for p in target.parameters()]
    with pytest.raises(ValueError, match="momentum"):
        ema_update(target, online, momentum)
    for p, b in zip(target.parameters(), before, strict=True):
        assert torch.equal(p, b)


def test_ema_update_rejects_different_parameter_count():
    online = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 3))
    target = frozen_copy(nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 3, bias=False)))
    with pytest.raises(ValueError, match="parameters"):
        ema_update(target, online, 0.9)


def test_ema_update_rejects_incompatible_shapes():
    online = nn.Linear(4, 8)
    target = frozen_copy(nn.Linear(8, 8))
    with pytest.raises(ValueError):
        ema_update(target, online, 0.9)


def test_ema_update_rejects_broadcastable_shape_mismatch():
    online = nn.Linear(4, 1)  # weight (1, 4), bias (1,)
    target = frozen_copy(nn.Linear(4, 4))  # weight (4, 4), bias (4,)
    with pytest.raises(ValueError):
        ema_update(target, online, 0.9)
