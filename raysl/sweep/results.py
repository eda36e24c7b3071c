"""Sweep results as people read them: a table, a CSV, and plots of accuracy vs each parameter.

Pure (numpy + matplotlib, no Ray, no MLflow): :mod:`raysl.sweep.run` fills :class:`TrialRow` s
from Tune's results and logs what these functions return to the sweep's parent MLflow run.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from typing import Any

from raysl.sweep.spec import SearchDim, metric_scale, metric_text

COMPLETED, STOPPED, ERROR, RUNNING = "completed", "stopped early", "error", "running"


@dataclass
class TrialRow:
    """One trial: its parameters, what it reached, and where its run is."""

    trial_id: str
    params: dict[str, Any]  # the swept fields only
    status: str  # COMPLETED, STOPPED, ERROR or RUNNING
    epochs: int  # epochs reported
    metric: float  # the sweep metric at the last reported epoch (NaN if none)
    history: list[tuple[int, float]] = field(default_factory=list)  # (epoch, metric)
    batch_global: int = 0  # images per optimizer step over all workers
    batch_per_worker: int = 0
    peak_lr: float = 0.0  # base_lr x batch_global / 256 (linear scaling rule)
    run_id: str = ""  # the trial's MLflow (child) run
    error: str = ""
    checkpoint: str = ""  # its last Ray Train checkpoint

    def params_text(self) -> str:
        """``optim.base_lr=0.5, method.temperature=0.2``."""
        return ", ".join(f"{k}={fmt(v)}" for k, v in self.params.items())

    @property
    def best(self) -> float:
        """The best metric over the epochs reported (NaN if none)."""
        values = [v for _, v in self.history if math.isfinite(v)]
        return max(values) if values else float("nan")


def ended_status(epochs_reached: int, epochs: int) -> str:
    """A trial that ended without an error: COMPLETED if it ran every epoch, else STOPPED."""
    return COMPLETED if epochs_reached >= epochs else STOPPED


def status_counts(rows: list[TrialRow]) -> str:
    """``2 completed, 1 stopped early``: known statuses first, then any other (pending...)."""
    order = [COMPLETED, STOPPED, ERROR, RUNNING]
    seen = sorted({r.status for r in rows}, key=lambda s: (order.index(s) if s in order else 9, s))
    return ", ".join(f"{sum(r.status == s for r in rows)} {s}" for s in seen)


def best_trial(rows: list[TrialRow]) -> TrialRow | None:
    """The completed trial with the highest final metric (stopped trials never ran out)."""
    done = [r for r in rows if r.status == COMPLETED and math.isfinite(r.metric)]
    return max(done, key=lambda r: r.metric) if done else None


def fmt(value: Any) -> str:
    """A parameter value for tables: floats to 4 significant digits."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _columns(head: list[str], body: list[list[str]], rule: bool = True) -> list[str]:
    """Left-aligned columns as wide as their widest cell (with a rule under the head)."""
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))
             for row in [head, *body]]
    if rule:
        lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def table(rows: list[TrialRow], fields: list[str], metric: str, best_id: str = "") -> str:
    """Fixed-width table: trial, parameters, batch per worker, peak lr, metric, status."""
    head = ["trial", *fields, "batch (global/per worker)", "peak lr", "epochs", metric, "status"]
    body = []
    for r in sorted(rows, key=lambda r: r.trial_id):
        mark = " *" if r.trial_id == best_id else ""
        status = r.status + (f": {r.error}" if r.error else "")
        body.append([r.trial_id + mark, *(fmt(r.params.get(f, "")) for f in fields),
                     f"{r.batch_global}/{r.batch_per_worker}", f"{r.peak_lr:.4g}",
                     str(r.epochs), metric_text(metric, r.metric), status[:60]])
    lines = _columns(head, body)
    if best_id:
        lines.append("* best completed trial")
    return "\n".join(lines)


def progress_table(rows: list[TrialRow], fields: list[str], metric: str) -> str:
    """The live table while a sweep runs: trial, status, parameters, epoch, metric (indented)."""
    head = ["trial", "status", *fields, "epoch", metric]
    body = [[r.trial_id, r.status, *(fmt(r.params.get(f)) for f in fields), str(r.epochs),
             metric_text(metric, r.metric)] for r in sorted(rows, key=lambda r: r.trial_id)]
    return "\n".join("  " + line for line in _columns(head, body, rule=False))


def to_csv(rows: list[TrialRow], fields: list[str], metric: str) -> str:
    """One line per trial, every number unrounded (for pandas / spreadsheets)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["trial", *fields, "batch_size_global", "batch_size_per_worker", "peak_lr",
                     "epochs", metric, f"{metric}_best", "status", "mlflow_run_id", "error"])
    for r in sorted(rows, key=lambda r: r.trial_id):
        writer.writerow([r.trial_id, *(r.params.get(f, "") for f in fields), r.batch_global,
                         r.batch_per_worker, r.peak_lr, r.epochs, r.metric, r.best, r.status,
                         r.run_id, r.error])
    return out.getvalue()


_STYLE = {COMPLETED: ("o", "tab:blue"), STOPPED: ("x", "tab:orange"), ERROR: ("s", "tab:red"),
          RUNNING: ("^", "tab:gray")}


def plot_params(rows: list[TrialRow], space: tuple[SearchDim, ...], metric: str,
                best_id: str = "") -> bytes:
    """PNG: the final metric of every trial against each swept parameter, one panel each.

    Stopped trials show where they were stopped (their last metric), so the plot also shows what
    the scheduler cut. Log axes for log-uniform fields; categorical axes for non-numbers.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, scale = len(space), metric_scale(metric)
    cols = min(n, 3)
    fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(4.2 * cols,
                             3.4 * ((n + cols - 1) // cols)), squeeze=False)
    for ax, dim in zip(axes.flat, space, strict=False):
        numeric = all(isinstance(r.params.get(dim.field), int | float)
                      and not isinstance(r.params.get(dim.field), bool) for r in rows)
        labels = sorted({fmt(r.params.get(dim.field)) for r in rows})
        for status, (marker, colour) in _STYLE.items():
            pts = [r for r in rows if r.status == status and math.isfinite(r.metric)]
            if not pts:
                continue
            xs = [r.params[dim.field] if numeric else labels.index(fmt(r.params[dim.field]))
                  for r in pts]
            ax.scatter(xs, [scale * r.metric for r in pts], marker=marker, color=colour,
                       label=status, s=40)
        best = [r for r in rows if r.trial_id == best_id]
        if best:
            x = best[0].params[dim.field] if numeric else labels.index(
                fmt(best[0].params[dim.field]))
            ax.scatter([x], [scale * best[0].metric], marker="*", s=220, color="gold",
                       edgecolors="black", label="best", zorder=3)
        if dim.log_scale and numeric:
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(range(len(labels)), labels)
        ax.set_xlabel(dim.field)
        ax.set_ylabel(_axis_label(metric))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"{metric} at each trial's last epoch")
    fig.tight_layout()
    return _png(fig)


def _axis_label(metric: str) -> str:
    return f"{metric} (%)" if metric_scale(metric) == 100 else metric


def plot_curves(rows: list[TrialRow], metric: str, best_id: str = "") -> bytes:
    """PNG: the metric per epoch of every trial; stopped trials end where the scheduler cut them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for r in sorted(rows, key=lambda r: r.trial_id):
        if not r.history:
            continue
        epochs, values = zip(*r.history, strict=True)
        style = "-" if r.status == COMPLETED else "--"
        width = 2.5 if r.trial_id == best_id else 1.2
        ax.plot(epochs, [metric_scale(metric) * v for v in values], style, marker=".", lw=width,
                label=f"{r.trial_id} ({r.status})")
    ax.set_xlabel("epoch")
    ax.set_ylabel(_axis_label(metric))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("Online evaluation per trial (dashed: stopped early or failed)")
    fig.tight_layout()
    return _png(fig)


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
