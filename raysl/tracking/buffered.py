"""Tracking calls queued by training and sent by a thread: no MLflow import on the way.

A train worker (and its checkpoint code) needs these classes before its first step, but not
MLflow itself (~1.2 s of imports per process, most of it ``mlflow.genai``): the sending thread
imports it, beside training, and only on rank 0.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from raysl.redact import redact

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient


@dataclass(frozen=True)
class TrackingCall:
    """One queued tracking call, as data: a checkpoint can keep it and a new process send it.

    Sent again, it is the same request: MLflow ignores a metric logged again with the same key,
    value, timestamp and step; a tag or file set again to the same value changes nothing.
    """

    metrics: tuple[tuple[str, float, int, int], ...] = ()  # (key, value, timestamp ms, step)
    tags: tuple[tuple[str, str], ...] = ()
    files: tuple[tuple[str, bytes | str], ...] = ()  # (artifact path, content)

    def send(self, client: MlflowClient, run_id: str) -> None:
        """Log it into run ``run_id``; raises what the client raises."""
        from mlflow.entities import Metric, RunTag

        from raysl.tracking.mlflow import log_blobs

        if self.metrics or self.tags:
            client.log_batch(run_id, metrics=[Metric(*m) for m in self.metrics],
                             tags=[RunTag(*t) for t in self.tags])
        if self.files:
            log_blobs(client, run_id, dict(self.files))

    def state(self) -> dict[str, list[list[Any]]]:
        """Plain lists (a checkpoint loads them with ``weights_only=True``)."""
        return {"metrics": [list(m) for m in self.metrics], "tags": [list(t) for t in self.tags],
                "files": [list(f) for f in self.files]}

    @classmethod
    def from_state(cls, state: dict[str, list[list[Any]]]) -> TrackingCall:
        """The call :meth:`state` describes."""
        return cls(tuple((str(k), float(v), int(t), int(s)) for k, v, t, s in state["metrics"]),
                   tuple((str(k), str(v)) for k, v in state["tags"]),
                   tuple((str(p), c) for p, c in state["files"]))


class BufferedTracker:
    """A :class:`Tracker` whose calls return at once; a thread sends them, in order, retrying.

    Training must not stop because the tracking server does: each call is queued with its
    timestamp and a background thread sends the queue in order, retrying a failed send (after
    MLflow's own retries) every ``retry_s`` up to ``max_retry_s`` apart, for as long as it
    takes. A retried send is the same request, so a send that reached the server before its
    answer was lost is not stored twice (MLflow ignores a metric logged again with the same
    key, value, timestamp and step). :meth:`flush` waits for the queue to drain.

    Args:
        uri: tracking URI.
        run_id: run created by the driver.
        active: true on rank 0 only (others queue nothing).
        retry_s: first pause after a failed send; doubled after each failure.
        max_retry_s: longest pause between retries.
        warn: where to say that the server is unreachable (once per outage) and back.
    """

    def __init__(self, uri: str, run_id: str, active: bool, retry_s: float = 1.0,
                 max_retry_s: float = 30.0, warn: Callable[[str], None] | None = None) -> None:
        self.uri, self.run_id = uri, run_id
        self.active = active and bool(run_id)
        self.retry_s, self.max_retry_s = retry_s, max_retry_s
        self.warn = warn or (lambda line: print(line, file=sys.stderr, flush=True))
        self.failed_sends = 0  # sends that failed and were retried, over the whole run
        self.dropped = 0  # calls the server refused for good (e.g. a deleted run)
        self._queue: queue.Queue[TrackingCall] = queue.Queue()
        self._sending: TrackingCall | None = None  # taken from the queue, not yet through
        self._thread = threading.Thread(target=self._send_forever, daemon=True,
                                        name="raysl-tracker")
        if self.active:
            self._thread.start()

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Queue ``{"train/loss": 4.1, ...}`` at ``step``, stamped now."""
        now = int(time.time() * 1000)
        self._put(TrackingCall(metrics=tuple((k, float(v), now, step)
                                             for k, v in metrics.items())))

    def set_tags(self, tags: dict[str, str]) -> None:
        """Queue run tags."""
        self._put(TrackingCall(tags=tuple(tags.items())))

    def log_files(self, files: dict[str, bytes | str]) -> None:
        """Queue in-memory files for the run's artifacts."""
        self._put(TrackingCall(files=tuple(files.items())))

    def unsent(self) -> list[TrackingCall]:
        """The calls not yet through, oldest first (for a checkpoint: :meth:`resend`)."""
        with self._queue.mutex:
            waiting = list(self._queue.queue)
            sending = self._sending
        return ([sending] if sending is not None else []) + waiting

    def resend(self, calls: list[TrackingCall]) -> None:
        """Queue calls an earlier process had not sent (its checkpoint kept them)."""
        for call in calls:
            self._put(call)

    @property
    def pending(self) -> int:
        """Calls queued or being sent."""
        return self._queue.unfinished_tasks

    def flush(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for every queued call to reach the server.

        Returns:
            The calls still unsent (0 when all were sent).
        """
        deadline = time.monotonic() + timeout
        while self.pending and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.pending

    def _put(self, call: TrackingCall) -> None:
        if self.active:
            self._queue.put(call)

    def _send_forever(self) -> None:
        # Here, not above: MLflow's import is ~1.2 s, which the train loop need not wait for.
        try:
            from raysl.tracking.mlflow import tracking_client, worth_retrying
        except Exception as e:  # nothing could ever be sent: say so, and stop queuing
            self._give_up(f"MLflow could not be imported ({type(e).__name__}: "
                          f"{redact(str(e))[:300]})")
            return
        client: MlflowClient | None = None
        while True:
            with self._queue.mutex:  # taken and marked in one go, for unsent()
                while not self._queue.queue:
                    self._queue.not_empty.wait()
                call = self._sending = self._queue.queue.popleft()
            pause, down_since = self.retry_s, 0.0
            while True:
                try:
                    if client is None:  # made with the first call, retried as a call is
                        client = tracking_client(self.uri)
                    call.send(client, self.run_id)
                    break
                except Exception as e:  # whatever the client raises when the server is away
                    if not worth_retrying(e):  # the server answered no: it will again
                        self.dropped += 1
                        self.warn(f"[raysl] WARNING: the tracking server refused a call, "
                                  f"not retried: {redact(str(e))[:300]}")
                        break
                    self.failed_sends += 1
                    if not down_since:
                        down_since = time.monotonic()
                        self.warn(f"[raysl] WARNING: the tracking server is unreachable "
                                  f"({type(e).__name__}); training goes on and its metrics "
                                  f"are kept until it is back ({self.pending} waiting)")
                    time.sleep(pause)
                    pause = min(2 * pause, self.max_retry_s)
            if down_since:
                self.warn(f"[raysl] the tracking server is back after "
                          f"{time.monotonic() - down_since:.0f}s; sending what was kept")
            with self._queue.mutex:
                self._sending = None
            self._queue.task_done()

    def _give_up(self, why: str) -> None:
        """Stop queuing, and count what was queued as dropped: it will never be sent."""
        self.active = False
        self.warn(f"[raysl] WARNING: the run's metrics are not being logged: {why}")
        with self._queue.mutex:
            dropped = len(self._queue.queue)
            self._queue.queue.clear()
        for _ in range(dropped):
            self._queue.task_done()
        self.dropped += dropped
