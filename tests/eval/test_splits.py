import numpy as np
import pytest

from raysl.eval.splits import label_subset, stratified_holdout


def test_stratified_holdout_is_stratified_and_reproducible():
    labels = np.repeat(np.arange(5), [100, 50, 20, 10, 2])
    keep, held = stratified_holdout(labels, 0.2, seed=0)
    assert len(np.intersect1d(keep, held)) == 0 and len(keep) + len(held) == len(labels)
    counts = np.bincount(labels[held], minlength=5)
    assert counts.tolist() == [20, 10, 4, 2, 1]
    _keep2, held2 = stratified_holdout(labels, 0.2, seed=0)
    assert np.array_equal(held, held2)
    assert not np.array_equal(held, stratified_holdout(labels, 0.2, seed=1)[1])


@pytest.mark.parametrize("fraction", [0.01, 0.1])
def test_label_subsets_are_stratified_and_reproducible(fraction):
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(10), 600))
    idx = label_subset(labels, fraction, seed=3)
    counts = np.bincount(labels[idx], minlength=10)
    assert counts.tolist() == [round(600 * fraction)] * 10  # every class equally
    assert len(np.unique(idx)) == len(idx)
    assert np.array_equal(idx, label_subset(labels, fraction, seed=3))
    assert not np.array_equal(idx, label_subset(labels, fraction, seed=4))


def test_label_subset_keeps_one_of_every_rare_class():
    labels = np.repeat(np.arange(3), [1000, 20, 3])
    idx = label_subset(labels, 0.01, seed=0)
    assert np.bincount(labels[idx]).tolist() == [10, 1, 1]
    assert len(label_subset(labels, 1.0, seed=0)) == len(labels)
