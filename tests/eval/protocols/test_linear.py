import torch

from raysl.eval.protocols.base import topk_accuracy
from raysl.eval.protocols.linear import linear_probe, train_linear


def _separable(n_per_class=100, classes=4, dim=32, seed=0):
    """Classes that a linear map separates (the class sets one coordinate high), noisy elsewhere."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(classes).repeat_interleave(n_per_class)
    x = torch.randn(len(y), dim, generator=g) * 3.0 + 5.0  # unstandardised: offset and scale
    x[torch.arange(len(y)), y] += 25.0  # > 8 noise std apart: separable
    return x, y


def test_linear_probe_separates_linearly_separable_features():
    x, y = _separable(seed=0)
    xt, yt = _separable(seed=1)
    result = linear_probe(x, y, xt, yt, 4, lrs=(0.1, 0.01), epochs=(5, 20))
    assert result.top1 > 0.97 and result.top5 == 1.0  # top-5 clipped to the 4 classes
    assert len(result.search) == 4 and (result.lr, result.epochs) in {
        (lr, e) for lr, e, _ in result.search}
    assert result.predictions.shape == (len(yt),)


def test_the_setting_is_chosen_without_looking_at_the_test_labels():
    x, y = _separable(seed=0)
    x = x + 8.0 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))  # harder
    xt, yt = _separable(seed=1)
    grid = {"lrs": (1.0, 0.01), "epochs": (1, 30)}
    honest = linear_probe(x, y, xt, yt, 4, **grid)
    wrong = yt[torch.randperm(len(yt), generator=torch.Generator().manual_seed(0))]
    blind = linear_probe(x, y, xt, wrong, 4, **grid)
    assert (honest.lr, honest.epochs, honest.search) == (blind.lr, blind.epochs, blind.search)
    assert torch.equal(honest.predictions, blind.predictions)
    assert blind.top1 < honest.top1  # only the score, not the choice, saw the test labels


def test_linear_probe_is_at_chance_on_shuffled_labels():
    x, y = _separable(n_per_class=200, seed=0)
    y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(1))]
    xt, yt = _separable(n_per_class=200, seed=1)
    assert 0.15 < linear_probe(x, y, xt, yt, 4, lrs=(0.1,), epochs=(10,)).top1 < 0.40


def test_linear_probe_is_deterministic_under_its_seed():
    x, y = _separable()
    a = train_linear(x, y, 4, 0.1, 3, seed=5)
    b = train_linear(x, y, 4, 0.1, 3, seed=5)
    assert torch.equal(a.fc.weight, b.fc.weight)


def test_topk_accuracy():
    logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]])
    y = torch.tensor([1, 0])
    assert topk_accuracy(logits, y, 1) == 0.0
    assert topk_accuracy(logits, y, 2) == 0.5
    assert topk_accuracy(logits, y, 5) == 1.0
