"""Plumbing of benchmarks/throughput.py at tiny sizes (a smoke check, never a timing)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu as tp_gpu  # noqa: E402
import throughput as tp  # noqa: E402


def _args(tmp_path: Path, *extra: str):
    return tp.parse(["--images", "64", "--batch", "16", "--epochs", "2", "--loader-workers", "0",
                     "--threads", "1", "--cache", str(tmp_path / "cache"), *extra])


@pytest.mark.parametrize("method", sorted(tp.RECIPES))
@pytest.mark.parametrize("side", ["plain", "ceiling", "lightly"])
def test_each_in_process_side_trains_the_workload_and_times_its_last_epoch(
        side, method, tmp_path, fmnist_dir):
    if side == "lightly" and importlib.util.find_spec("lightly") is None:
        pytest.skip("lightly is not installed (make peers; make test requires it)")
    result = tp.measure(side, method, 2, _args(tmp_path), process_start=0.0)
    assert result["side"] == side and result["method"] == method
    assert result["images_per_s"] > 0 and result["first_step_s"] > 0


def test_an_image_folder_and_a_standard_network_make_the_gpu_workload(tmp_path):
    # benchmarks/gpu.py's shape at a CPU size: colour JPEGs in class folders, a standard
    # ResNet-18 and a ViT at 32 px, read by torchvision's ImageFolder on the in-process sides.
    folder = tp_gpu.write_folder(tmp_path / "images", 24, size=40)
    for model in ("resnet18", "vit_small"):
        args = _args(tmp_path, "--folder", str(folder), "--model", model, "--image-size", "32",
                     "--batch", "8")
        cfg = tp.workload("simclr", args, workers=1)
        assert (cfg.data.channels, cfg.data.image_size, cfg.model.backbone) == (3, 32, model)
        assert cfg.model.width == 0 and not cfg.model.small_stem
        result = tp.measure("plain", "simclr", 1, args, process_start=0.0)
        assert result["images_per_s"] > 0


def test_views_of_every_side_are_the_recipes_size_and_range(tmp_path, fmnist_dir):
    cfg = tp.workload("byol", _args(tmp_path))
    data = tp.fashion_mnist(str(fmnist_dir), tmp_path / "cache", 4)
    views = tp.torchvision_views(cfg)(data[0][0])
    assert [tuple(v.shape) for v in views] == [(1, 28, 28)] * 2
    assert all(v.min() >= 0 and v.max() <= 1 for v in views)


def test_the_schedule_interleaves_sides_and_the_table_gives_ratios(tmp_path):
    args = _args(tmp_path, "--methods", "simclr", "--rounds", "2", "--workers", "2", "1")
    order = tp.schedule(args)
    one_round = [("raysl", "simclr", 2), ("raysl", "simclr", 1), ("lightly", "simclr", 1),
                 ("plain", "simclr", 1), ("ceiling", "simclr", 2), ("ceiling", "simclr", 1)]
    assert order == one_round * 2  # A B C A B C: drift hits every side alike
    rows = [{"side": s, "method": m, "workers": w, "images_per_s": ips, "first_step_s": 10.0}
            for (s, m, w), ips in zip(
                order, [300, 200, 250, 240, 500, 300, 340, 220, 250, 260, 500, 300], strict=True)]
    summary = tp.summarise(rows)
    assert summary["simclr raysl/2w"]["images_per_s"] == 320  # the median of 300 and 340
    ratios = tp.ratios(summary, ["simclr"], 2)
    assert ratios["simclr raysl/lightly"] == pytest.approx(320 / 250)
    assert ratios["simclr raysl/ceiling"] == pytest.approx(320 / 500)
    assert ratios["simclr raysl 2w/1w"] == pytest.approx(320 / 210)
    assert "| simclr raysl/lightly | 1.28x |" in tp.table(summary, ratios)
