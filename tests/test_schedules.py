import itertools

import pytest

from raysl.schedules import cosine, warmup_cosine


def test_warmup_is_linear_then_cosine_reaches_final():
    peak = 1.0
    assert warmup_cosine(0, 100, 10, peak) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10, peak) == pytest.approx(1.0)
    assert warmup_cosine(10, 100, 10, peak) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10, peak, 0.0) == pytest.approx(0.5)  # cosine midpoint
    assert warmup_cosine(100, 100, 10, peak, 0.1) == pytest.approx(0.1)
    values = [warmup_cosine(s, 100, 10, peak) for s in range(10, 100)]
    assert all(a >= b for a, b in itertools.pairwise(values))


def test_no_warmup():
    assert warmup_cosine(0, 10, 0, 2.0) == pytest.approx(2.0)


def test_cosine_ramp():
    assert cosine(0.0, 0.996, 1.0) == pytest.approx(0.996)
    assert cosine(1.0, 0.996, 1.0) == pytest.approx(1.0)
    assert cosine(0.5, 0.0, 1.0) == pytest.approx(0.5)
    assert cosine(2.0, 0.0, 1.0) == pytest.approx(1.0)
