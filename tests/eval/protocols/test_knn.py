import pytest
import torch

from raysl.eval.protocols.knn import knn_predict, knn_top1, knn_votes


def _clusters(n_per_class=50, classes=5, dim=16, spread=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=g)
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    feats = centers[labels] + spread * torch.randn(len(labels), dim, generator=g)
    return feats, labels


def test_separable_clusters_are_classified_perfectly():
    bank, bank_y = _clusters(seed=0)
    queries, query_y = _clusters(seed=0)
    queries = queries + 0.01 * torch.randn_like(queries)
    assert knn_top1(bank, bank_y, queries, query_y, 5, k=20) == 1.0


def test_shuffled_labels_give_about_chance():
    bank, bank_y = _clusters(n_per_class=200, classes=4)
    bank_y = bank_y[torch.randperm(len(bank_y), generator=torch.Generator().manual_seed(3))]
    queries, query_y = _clusters(n_per_class=200, classes=4, seed=1)
    acc = knn_top1(bank, bank_y, queries, query_y, 4, k=50)
    assert 0.15 < acc < 0.40


def test_weighted_vote_prefers_closer_neighbours():
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    q = torch.tensor([[1.0, 0.05]])
    # Two far neighbours of class 1 vs one very close of class 0: low T trusts the close one.
    assert knn_predict(bank, labels, q, 2, k=3, temperature=0.01).item() == 0
    assert knn_predict(bank, labels, q, 2, k=3, temperature=100.0).item() == 1


def test_k_larger_than_bank_is_clipped():
    bank, y = _clusters(n_per_class=2, classes=2)
    assert knn_predict(bank, y, bank, 2, k=200).shape == (4,)


def test_rejects_mismatched_bank():
    with pytest.raises(ValueError, match="labels"):
        knn_predict(torch.ones(3, 2), torch.ones(2, dtype=torch.long), torch.ones(1, 2), 2)


def test_votes_rank_the_classes_by_weighted_neighbours():
    bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 1, 2, 3])
    votes = knn_votes(bank, labels, torch.tensor([[1.0, 0.0]]), 4, k=3, temperature=0.1)
    assert votes.shape == (1, 4)
    assert votes[0].argsort(descending=True)[:3].tolist() == [0, 1, 2]
    assert votes[0, 3] == 0  # not among the 3 nearest: no vote


def test_block_by_block_search_is_exactly_the_in_memory_one():
    from raysl.eval.protocols.base import InMemoryBank
    from raysl.eval.protocols.knn import bank_votes, block_topk, merge_topk

    g = torch.Generator().manual_seed(3)
    bank, labels = torch.randn(500, 16, generator=g), torch.randint(0, 7, (500,), generator=g)
    queries = torch.randn(60, 16, generator=g)
    sims, neighbours = block_topk(bank, labels, queries, k=40)
    whole = knn_votes(bank, labels, queries, 7, k=40, temperature=0.07)
    for rows in (500, 64, 23, 7):  # blocks larger and smaller than k
        top = None
        for i in range(0, 500, rows):
            block = block_topk(bank[i:i + rows], labels[i:i + rows], queries, k=40)
            top = block if top is None else merge_topk(top, block, 40)
        # The same neighbours; their similarities equal up to the matmul's float rounding.
        assert torch.equal(top[1], neighbours)
        torch.testing.assert_close(top[0], sims, rtol=1e-6, atol=1e-6)
        blocked = bank_votes(InMemoryBank(bank, labels, block_rows=rows), queries, 7, k=40,
                             temperature=0.07)
        assert torch.equal(blocked.argmax(1), whole.argmax(1))
        # The votes sum the same weights in another order: equal up to float rounding.
        torch.testing.assert_close(blocked, whole, rtol=1e-5, atol=0)
