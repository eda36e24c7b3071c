"""Plumbing of benchmarks/sweep_startup.py: the sweep it runs is a valid one, on both sides."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import sweep_startup as bench  # noqa: E402

from raysl.sweep.spec import load_sweep  # noqa: E402


@pytest.mark.parametrize("side", bench.SIDES)
def test_the_benchmarks_sweep_is_one_worker_trials_of_each_side(tmp_path: Path, side: str):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(bench.sweep_spec(tmp_path, side)))
    sweep = load_sweep(path)
    assert sweep.num_trials == bench.TRIALS and sweep.fields == ["optim.base_lr"]
    t = sweep.base.train
    assert t.num_workers == 1 and t.local_mode == side and t.epochs == 1
    assert t.storage_path == str(tmp_path / "runs")
    assert sweep.settings.max_concurrent_trials == 1 and not sweep.settings.champion.register
