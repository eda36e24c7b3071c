"""Exact and near duplicates, found block pair by block pair: exactly the planted ones."""

import numpy as np
import pytest
import torch

from raysl.curate.dedup import (
    EXACT,
    NEAR,
    Rows,
    block_pairs,
    counts,
    duplicates_between,
    find_duplicates,
    unit_rows,
)


def _pool(rng: np.random.Generator, n: int = 300, dim: int = 48):
    """Random unit vectors (clean: pairwise cosine far below 0.9) with distinct digests."""
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x, np.array([f"d{i}" for i in range(n)])


def _blocks(x: np.ndarray, digest: np.ndarray, index: np.ndarray, rows: int) -> list[Rows]:
    order = np.argsort(np.random.default_rng(1).random(len(x)))  # rows in any order
    x, digest, index = x[order], digest[order], index[order]
    return [Rows(torch.from_numpy(index[s:s + rows]), digest[s:s + rows],
                 unit_rows(x[s:s + rows])) for s in range(0, len(x), rows)]


def test_block_pairs_cover_every_pair_once():
    assert block_pairs(3) == [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]


@pytest.mark.parametrize("rows", [7, 64, 1000])
def test_clean_data_has_no_duplicates(rng, rows):
    x, digest = _pool(rng)
    assert find_duplicates(_blocks(x, digest, np.arange(len(x)), rows), 0.9) == {}


@pytest.mark.parametrize("rows", [5, 64, 1000])
def test_planted_duplicates_are_found_exactly(rng, rows):
    x, digest = _pool(rng)
    n = len(x)
    planted: dict[int, str] = {}
    extra_x, extra_digest = [], []
    for k, source in enumerate([3, 3, 50, 120]):  # exact copies: same pixels, same digest
        extra_x.append(x[source])
        extra_digest.append(digest[source])
        planted[n + k] = EXACT
    for k, source in enumerate([7, 7, 200, 299], start=4):  # near: small noise, new digest
        extra_x.append(x[source] + 0.05 * rng.standard_normal(x.shape[1]).astype(np.float32))
        extra_digest.append(f"near{k}")
        planted[n + k] = NEAR
    # a near copy that comes first: the original (larger index) is the one removed
    extra_x.append(x[10] + 0.05 * rng.standard_normal(x.shape[1]).astype(np.float32))
    extra_digest.append("first")
    x_all = np.concatenate([x, np.stack(extra_x)])
    digest_all = np.concatenate([digest, np.array(extra_digest)])
    index = np.arange(len(x_all))
    index[-1], index[10] = 10, len(x_all) - 1  # the near copy has the smaller index
    planted[len(x_all) - 1] = NEAR
    removed = find_duplicates(_blocks(x_all, digest_all, index, rows), 0.9)
    assert removed == planted
    assert counts(removed) == {EXACT: 4, NEAR: 5}


def test_exact_wins_over_near_and_a_block_against_itself_skips_its_rows(rng):
    x = unit_rows(rng.standard_normal((3, 8)).astype(np.float32))
    x[2] = x[0]
    rows = Rows(torch.tensor([0, 1, 2]), np.array(["a", "b", "a"]), x)
    assert duplicates_between(rows, rows, 0.5) == {2: EXACT}
