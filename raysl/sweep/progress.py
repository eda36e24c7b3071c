"""A live table of a sweep's trials while it runs: a Ray Tune callback on the driver."""

from __future__ import annotations

import time
from typing import Any

import ray.tune
from ray.tune.experiment import Trial

from raysl.sweep import results as res
from raysl.sweep.spec import metric_text

PROGRESS_EVERY_S = 30.0


class ProgressTable(ray.tune.Callback):
    """A live table of the trials (status, parameters, epoch, metric) every ``every_s`` seconds.

    Plus one line when a trial completes, is stopped or fails.
    """

    def __init__(self, fields: list[str], metric: str, epochs: int,
                 every_s: float = PROGRESS_EVERY_S) -> None:
        self.fields, self.metric, self.epochs, self.every_s = fields, metric, epochs, every_s
        self._last = 0.0

    def _status(self, trial: Trial) -> str:
        epoch = int((trial.last_result or {}).get("epoch", 0))
        if trial.status == Trial.TERMINATED:
            return res.ended_status(epoch, self.epochs)
        return {Trial.ERROR: res.ERROR, Trial.RUNNING: res.RUNNING}.get(trial.status,
                                                                       trial.status.lower())

    def _row(self, trial: Trial) -> res.TrialRow:
        last = trial.last_result or {}
        return res.TrialRow(trial.trial_id, {f: trial.config.get(f) for f in self.fields},
                            self._status(trial), int(last.get("epoch", 0)),
                            float(last.get(self.metric, float("nan"))))

    def on_step_end(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        """Print the table if ``every_s`` has passed (Tune calls this every loop step)."""
        if time.monotonic() - self._last >= self.every_s and trials:
            self._last = time.monotonic()
            rows = [self._row(t) for t in trials]
            print(f"[raysl] sweep progress ({res.status_counts(rows)}):\n"
                  + res.progress_table(rows, self.fields, self.metric), flush=True)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial,
                          **info: Any) -> None:
        """One line: completed, or stopped early by the scheduler."""
        row = self._row(trial)
        row.status = res.ended_status(row.epochs, self.epochs)  # Tune has not marked it yet
        print(f"[raysl] trial {trial.trial_id} {row.status} at epoch {row.epochs}: "
              f"{self.metric} {metric_text(self.metric, row.metric)}", flush=True)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial,
                       **info: Any) -> None:
        """One line; the trial's own log above has the traceback."""
        print(f"[raysl] trial {trial.trial_id} failed (see its log above)", flush=True)

