"""Plumbing of benchmarks/accuracy.py: its plan, the lightly side at a tiny size, its table."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import accuracy as acc  # noqa: E402

from raysl.methods.base import build_method  # noqa: E402

PILOT = {"wall_s": 100.0, "images_seen": 12_000, "images_per_s": 300.0}  # fixed cost 60 s


def test_the_plan_fills_the_budget_after_the_pilots_fixed_cost():
    # 10 min: 540 s of training at 300 img/s = 162,000 images = 3 epochs of 54,000 of 60,000.
    assert acc.plan(600, PILOT, 60_000) == (3, 54_000)
    # Whole epochs when they fit exactly; one epoch of everything when not even that fits.
    assert acc.plan(60 + 360, PILOT, 54_000) == (2, 54_000)
    assert acc.plan(90, PILOT, 60_000) == (1, 60_000)


def test_the_lightly_side_trains_the_recipes_encoder_and_saves_it(tmp_path, fmnist_dir):
    if importlib.util.find_spec("lightly") is None:
        pytest.skip("lightly is not installed (make peers; make test requires it)")
    args = acc.parse(["--data", str(fmnist_dir), "--images", "512", "--threads", "1",
                      "--loader-workers", "0", "--cache", str(tmp_path / "cache")])
    out = tmp_path / "lightly.pt"
    before = build_method(acc.encoder_config(args)).encoder.state_dict()
    result = acc.train_lightly(args, launched=time.time(), budget_s=0.0, out=out)
    assert result["steps"] >= 1 and result["images_seen"] == result["steps"] * acc.LIGHTLY_BATCH
    encoder = build_method(acc.encoder_config(args)).encoder
    encoder.load_state_dict(torch.load(out, weights_only=True))  # the same network, trained
    assert any(not torch.equal(before[k], v) for k, v in encoder.state_dict().items())


def test_the_table_gives_each_side_and_raysls_lead():
    scores = {"raysl": {"knn_top1": 0.80, "linear_top1": 0.85},
              "lightly": {"knn_top1": 0.76, "linear_top1": 0.86},
              "random_init": {"knn_top1": 0.66, "linear_top1": 0.73},
              "raw_pixels": {"knn_top1": 0.79, "linear_top1": 0.83}}
    results = [{"budget_min": 10.0, "scores": scores,
                "raysl": {"wall_s": 590.0, "images_seen": 162_000},
                "lightly": {"wall_s": 591.0, "images_seen": 200_192}}]
    table = acc.table(results)
    assert "| 10 min | raysl | 9.8 min | 162,000 | 80.00% | 85.00% |" in table
    assert "| 10 min | raw_pixels | - | - | 79.00% | 83.00% |" in table
    assert "| 10 min | raysl - lightly | | | +4.00 points | -1.00 points |" in table
