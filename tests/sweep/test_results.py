"""Sweep results: the best trial, the table, the CSV and the plots."""

import csv
import io
import math

from raysl.sweep import results as res
from raysl.sweep.spec import SearchDim


def _rows() -> list[res.TrialRow]:
    return [
        res.TrialRow("a_00000", {"optim.base_lr": 0.8, "method.temperature": 0.2}, res.COMPLETED,
                     3, 0.61, [(1, 0.55), (2, 0.60), (3, 0.61)], 64, 64, 0.2),
        res.TrialRow("a_00001", {"optim.base_lr": 1e-6, "method.temperature": 0.5}, res.STOPPED,
                     2, 0.37, [(1, 0.43), (2, 0.37)], 128, 64, 5e-7),
        # Higher than every completed trial, but stopped: it never ran out, so it cannot win.
        res.TrialRow("a_00002", {"optim.base_lr": 0.5, "method.temperature": 0.2}, res.STOPPED,
                     1, 0.70, [(1, 0.70)], 64, 64, 0.125),
        res.TrialRow("a_00003", {"optim.base_lr": 0.3, "method.temperature": 0.1}, res.COMPLETED,
                     3, 0.64, [(1, 0.5), (2, 0.66), (3, 0.64)], 64, 64, 0.075),
        res.TrialRow("a_00004", {"optim.base_lr": 9.0, "method.temperature": 0.1}, res.ERROR,
                     0, float("nan"), error="loss is NaN"),
    ]


def test_best_is_the_completed_trial_with_the_highest_final_metric():
    rows = _rows()
    best = res.best_trial(rows)
    assert best is not None and best.trial_id == "a_00003"
    assert rows[3].best == 0.66 and math.isnan(rows[4].best)
    assert res.best_trial([r for r in rows if r.status != res.COMPLETED]) is None


def test_table_shows_params_batch_per_worker_lr_metric_and_status():
    text = res.table(_rows(), ["optim.base_lr", "method.temperature"], "eval/online_knn_top1",
                     "a_00003")
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["trial", "optim.base_lr", "method.temperature"]
    assert "batch (global/per worker)" in lines[0]
    row = next(line for line in lines if line.startswith("a_00003"))
    assert "a_00003 *" in row and "64.00%" in row and "completed" in row and "0.075" in row
    stopped = next(line for line in lines if line.startswith("a_00001"))
    assert "128/64" in stopped and "stopped early" in stopped
    assert "error: loss is NaN" in next(line for line in lines if line.startswith("a_00004"))


def test_csv_has_one_unrounded_line_per_trial():
    text = res.to_csv(_rows(), ["optim.base_lr"], "eval/online_knn_top1")
    records = list(csv.DictReader(io.StringIO(text)))
    assert [r["trial"] for r in records] == [f"a_0000{i}" for i in range(5)]
    assert float(records[1]["optim.base_lr"]) == 1e-6
    assert float(records[3]["eval/online_knn_top1_best"]) == 0.66
    assert records[1]["status"] == res.STOPPED


def test_plots_are_pngs_for_numeric_log_and_categorical_fields():
    rows = _rows()
    for r in rows:
        r.params["model.backbone"] = "resnet18" if r.trial_id < "a_00002" else "vit_tiny"
    space = (SearchDim("optim.base_lr", "loguniform", (1e-6, 10.0)),
             SearchDim("method.temperature", "choice", (0.1, 0.2, 0.5)),
             SearchDim("model.backbone", "choice", ("resnet18", "vit_tiny")))
    for png in (res.plot_params(rows, space, "eval/online_knn_top1", "a_00003"),
                res.plot_curves(rows, "eval/online_knn_top1", "a_00003")):
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
