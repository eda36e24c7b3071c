"""The process-group helpers' own behaviour in one process (the gloo equivalence tests are in
tests/test_losses.py and tests/methods/test_distributed_methods.py)."""

import torch

from raysl import distributed
from raysl.distributed import _CommClock


def test_the_comm_clock_counts_overlapping_intervals_once():
    clock = _CommClock()
    clock.add(0.0, 2.0)   # bucket 1
    clock.add(1.0, 3.0)   # bucket 2, launched while bucket 1 ran: only 2..3 is new
    clock.add(5.0, 6.0)   # a later gather
    clock.add(5.5, 5.8)   # finished inside an interval already counted
    assert clock.seconds == 4.0


def test_without_a_process_group_nothing_communicates_or_is_timed():
    before = distributed.comm_seconds()
    x = torch.randn(4, 3, requires_grad=True)
    assert distributed.gather(x) is x
    assert torch.equal(distributed.all_reduce_mean(x), x)
    assert distributed.comm_seconds() == before
