"""DeepCluster: its loss against the paper's, the re-assignment, and the assignment's resume."""

import math

import pytest
import torch

from raysl.checkpoint import restore, save_checkpoint
from raysl.errors import ConfigError
from raysl.methods.base import EpochData, Progress, build_method
from raysl.methods.deepcluster import DeepCluster, cluster_weights, weighted_cross_entropy
from tests.test_methods import tiny_batch, tiny_config

N = 24  # images of the toy training set


def toy_set(cfg, n: int = N, seed: int = 0, labels: bool = True):
    """``EpochData.images`` of ``n`` whole images in 2 batches (with labels when asked)."""
    g = torch.Generator().manual_seed(seed)
    size = cfg.data.image_size
    images = torch.randint(0, 256, (n, cfg.data.channels, size, size), dtype=torch.uint8,
                           generator=g)
    truth = torch.arange(n) % 3

    def batches():
        for part in (slice(0, n // 2), slice(n // 2, n)):
            batch = {"image": images[part], "index": torch.arange(n)[part]}
            if labels:
                batch["label"] = truth[part]
            yield batch
    return batches


def built(extra: tuple[str, ...] = ()) -> DeepCluster:
    torch.manual_seed(0)
    method = build_method(tiny_config("deepcluster", extra=extra))
    assert isinstance(method, DeepCluster)
    return method


def naive_loss(logits: torch.Tensor, labels: list[int], sizes: list[int]) -> float:
    """Section 3.3 of the paper: each image's -log p(its pseudo-label), weighted by the inverse
    of its cluster's size (uniform sampling over pseudo-labels), normalised to weigh 1 on
    average over the training set: n / (k' |C|), k' the non-empty clusters."""
    n, present = sum(sizes), sum(1 for s in sizes if s)
    total = 0.0
    for row, c in zip(logits.tolist(), labels, strict=True):
        if c < 0:
            continue  # no pseudo-label: no loss
        log_z = math.log(sum(math.exp(v) for v in row))
        total += n / (present * sizes[c]) * (log_z - row[c])
    return total / len(labels)


def test_weighted_cross_entropy_matches_the_paper():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, generator=g)
    labels = [0, 0, 1, 3, -1, 0]
    sizes = [50, 5, 0, 20]
    got = weighted_cross_entropy(logits, torch.tensor(labels),
                                 cluster_weights(torch.tensor(sizes), balance=True))
    assert float(got) == pytest.approx(naive_loss(logits, labels, sizes), rel=1e-6)
    plain = weighted_cross_entropy(logits[:4], torch.tensor(labels[:4]),
                                   cluster_weights(torch.tensor(sizes), balance=False))
    torch.testing.assert_close(plain, torch.nn.functional.cross_entropy(
        logits[:4], torch.tensor(labels[:4])))


def test_balanced_weights_make_every_cluster_weigh_the_same_and_average_1():
    sizes = torch.tensor([70, 20, 0, 10])
    w = cluster_weights(sizes, balance=True)
    assert w[2] == 0
    per_cluster = (w * sizes)[sizes > 0]
    torch.testing.assert_close(per_cluster, torch.full((3,), 100 / 3))
    assert float((w * sizes).sum() / sizes.sum()) == pytest.approx(1.0)


def test_training_before_any_clustering_is_an_error():
    method = built()
    views, targets = tiny_batch(method_cfg := tiny_config("deepcluster"))
    del method_cfg
    with pytest.raises(RuntimeError, match="no pseudo-labels yet"):
        method(views, Progress(0, 1, 1), targets)


def test_clustering_assigns_every_image_and_reinitialises_the_classifier():
    cfg = tiny_config("deepcluster")
    method = built()
    bn_before = {k: v.clone() for k, v in method.state_dict().items() if "running_mean" in k}
    first = method.on_epoch_start(EpochData(0, toy_set(cfg), seed=3))
    assert len(method.assignment) == N and (method.assignment >= 0).all()
    assert int(first.histograms["cluster_sizes"].sum()) == N
    assert first.reset == list(method.classifier.parameters())
    assert first.logs["cluster/images"] == N and "cluster/nmi_labels" in first.logs
    assert "cluster/nmi_previous" not in first.logs  # nothing before the first
    assert "k-means: 24 images in 4 clusters" in first.summary
    # The feature pass ran in eval mode: BatchNorm's running statistics did not move.
    for k, v in bn_before.items():
        torch.testing.assert_close(method.state_dict()[k], v)
    # The classifier is new: N(0, 0.01) weights, zero bias, the same on every worker (seeded).
    assert not method.classifier.bias.detach().any()
    assert 0.003 < method.classifier.weight.detach().std().item() < 0.03
    twin = built()
    twin.on_epoch_start(EpochData(0, toy_set(cfg), seed=3))
    torch.testing.assert_close(twin.classifier.weight, method.classifier.weight)
    assert torch.equal(twin.assignment, method.assignment)

    # One step, then the next epoch's clustering compares itself with the first.
    views, targets = tiny_batch(cfg)
    out = method(views, Progress(0, 1, 1), {"index": targets["index"]})
    assert torch.isfinite(out.loss) and 0 <= out.logs["cluster_acc"] <= 1
    second = method.on_epoch_start(EpochData(1, toy_set(cfg), seed=3))
    assert 0 <= second.logs["cluster/nmi_previous"] <= 1


def test_without_labels_no_nmi_with_labels_is_logged():
    cfg = tiny_config("deepcluster")
    logs = built().on_epoch_start(EpochData(0, toy_set(cfg, labels=False))).logs
    assert "cluster/nmi_labels" not in logs and logs["cluster/images"] == N


def test_assignment_survives_a_resume(tmp_path):
    """A resumed run trains on the clusters it had: the assignment is in the checkpoint, and
    an epoch that is not due to re-cluster keeps it."""
    extra = ("method.recluster_every=2",)
    cfg = tiny_config("deepcluster", extra=extra)
    method = built(extra)
    method.on_epoch_start(EpochData(0, toy_set(cfg), seed=1))
    optimizer = torch.optim.SGD(method.parameters(), lr=0.1, momentum=0.9)
    save_checkpoint(tmp_path, method, method.encoder, optimizer, {"epoch": 0, "step": 3})

    resumed = built(extra)  # a fresh worker: no assignment until the checkpoint is read
    assert len(resumed.assignment) == 0
    restore(tmp_path, resumed, torch.optim.SGD(resumed.parameters(), lr=0.1, momentum=0.9))
    assert torch.equal(resumed.assignment, method.assignment)
    assert torch.equal(resumed.cluster_weights, method.cluster_weights)
    assert int(resumed.assigned_epoch) == 0

    def untouchable():
        raise AssertionError("epoch 1 is not due to re-cluster: the images must not be read")
    assert resumed.on_epoch_start(EpochData(1, untouchable, seed=1)).logs == {}
    assert torch.equal(resumed.assignment, method.assignment)
    assert resumed.on_epoch_start(EpochData(2, toy_set(cfg, seed=5), seed=1)).logs
    assert int(resumed.assigned_epoch) == 2


def test_a_resume_inside_an_epoch_keeps_that_epochs_clusters_and_classifier():
    # A checkpoint inside epoch 0 (train.checkpoint_every_steps) holds epoch 0's assignment; the
    # resumed epoch 0 is due to cluster but must not: the classifier has trained on it since.
    method = built()
    method.on_epoch_start(EpochData(0, toy_set(tiny_config("deepcluster")), seed=1))
    assignment, classifier = method.assignment.clone(), method.classifier.weight.clone()

    def untouchable():
        raise AssertionError("epoch 0 was clustered: the images must not be read again")
    start = method.on_epoch_start(EpochData(0, untouchable, seed=1))
    assert start.logs == {} and start.reset == []  # no optimizer state dropped
    assert torch.equal(method.assignment, assignment)
    assert torch.equal(method.classifier.weight, classifier)


def test_an_image_without_a_pseudo_label_adds_no_loss():
    cfg = tiny_config("deepcluster")
    method = built()
    method.on_epoch_start(EpochData(0, toy_set(cfg)))
    views, _ = tiny_batch(cfg, b=4)
    unknown = torch.tensor([N + 5] * 4)  # an index no worker clustered
    assert method(views, Progress(0, 1, 1), {"index": unknown}).loss.item() == 0.0


@pytest.mark.parametrize("setting, field", [
    ("method.pca_dim=600", "pca_dim"),  # above head_dim
    ("method.num_clusters=1", "num_clusters"),
    ("method.recluster_every=0", "recluster_every"),
])
def test_bad_settings_name_the_field(setting, field):
    with pytest.raises(ConfigError) as info:
        tiny_config("deepcluster", extra=(setting,))
    assert info.value.field.endswith(field)


def test_fewer_training_images_than_clusters_is_a_config_error():
    cfg = tiny_config("deepcluster")  # 4 clusters
    DeepCluster.check_training_set(cfg, 4)
    with pytest.raises(ConfigError, match="at most the 3 training images") as info:
        DeepCluster.check_training_set(cfg, 3)
    assert info.value.field == "method.num_clusters" and info.value.value == 4


def test_fewer_images_than_clusters_at_clustering_time_is_a_config_error():
    """E.g. a stream whose bad files left fewer images than k: not retried as a crash."""
    cfg = tiny_config("deepcluster")  # 4 clusters
    with pytest.raises(ConfigError, match="needs at least 4 images; the workers hold 3") as info:
        built().on_epoch_start(EpochData(0, toy_set(cfg, n=3)))
    assert info.value.field == "method.num_clusters"
