"""Exact and near duplicates among embedded images, found two blocks of rows at a time (pure torch).

Rows come in blocks (index, digest, unit-norm embedding). Every pair of blocks, a block with
itself included, is compared on its own: a row is removed when a row of *smaller index* is a
duplicate of it, exact when both have the same pixel digest, near when their cosine is at least
the threshold (exact wins when both hold). The rule looks at pairs only, never at what was
removed before, so the blocks can be compared in any order, by any number of processes, and
each group of copies keeps its row of smallest index. No process holds more than two blocks
and one ``(CHUNK, rows)`` slice of their similarities.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

EXACT, NEAR = "exact", "near"
CHUNK = 4096  # rows of the first block whose similarities to the second are computed at once


@dataclass(frozen=True)
class Rows:
    """A block of embedded rows.

    Attributes:
        index: (n,) int64 the rows' indices in the source (unique).
        digest: (n,) str each image's pixel digest.
        x: (n, D) float32 unit-norm embeddings.
    """

    index: Tensor
    digest: np.ndarray
    x: Tensor


def block_pairs(blocks: int) -> list[tuple[int, int]]:
    """Every pair ``(i, j)`` with ``i <= j`` of ``blocks`` blocks: what must be compared."""
    return [(i, j) for i in range(blocks) for j in range(i, blocks)]


def duplicates_between(a: Rows, b: Rows, threshold: float) -> dict[int, str]:
    """The rows of ``a`` and ``b`` that have a duplicate of smaller index in the other block.

    ``a`` may be ``b`` (a block against itself). Returns row index -> ``exact`` or ``near``.
    """
    _, codes = np.unique(np.concatenate([a.digest, b.digest]), return_inverse=True)
    code = torch.from_numpy(codes.reshape(-1))  # the same digest, the same code
    code_a, code_b = code[:len(a.digest)], code[len(a.digest):]
    later = {EXACT: torch.zeros(0, dtype=torch.long), NEAR: torch.zeros(0, dtype=torch.long)}
    for start in range(0, len(a.index), CHUNK):
        rows = slice(start, start + CHUNK)
        smaller = a.index[rows, None] < b.index[None, :]  # (chunk, m): a's row comes first
        larger = a.index[rows, None] > b.index[None, :]
        for reason, same in ((EXACT, code_a[rows, None] == code_b[None, :]),
                             (NEAR, a.x[rows] @ b.x.T >= threshold)):  # (chunk, m)
            later[reason] = torch.cat([later[reason], b.index[(same & smaller).any(0)],
                                       a.index[rows][(same & larger).any(1)]])
    removed = dict.fromkeys(later[NEAR].tolist(), NEAR)
    removed.update(dict.fromkeys(later[EXACT].tolist(), EXACT))  # exact wins
    return removed


def merge(into: dict[int, str], found: dict[int, str]) -> dict[int, str]:
    """``found`` added to ``into`` (in place), a row's ``exact`` winning over ``near``."""
    for row, reason in found.items():
        if into.get(row) != EXACT:
            into[row] = reason
    return into


def find_duplicates(blocks: list[Rows], threshold: float) -> dict[int, str]:
    """Every block pair compared here, one after another (small data and tests)."""
    removed: dict[int, str] = {}
    for i, j in block_pairs(len(blocks)):
        merge(removed, duplicates_between(blocks[i], blocks[j], threshold))
    return removed


def counts(removed: dict[int, str]) -> dict[str, int]:
    """Rows removed per reason: ``{"exact": n, "near": m}``."""
    values = list(removed.values())
    return {EXACT: values.count(EXACT), NEAR: values.count(NEAR)}


def unit_rows(x: np.ndarray) -> Tensor:
    """(n, D) embeddings -> float32 rows of unit norm (a zero row stays zero)."""
    t = torch.from_numpy(np.array(x, dtype=np.float32))  # a copy: Arrow hands out read-only
    unit: Tensor = t / t.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return unit
