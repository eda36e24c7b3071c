"""Joining Ray (the running one, the cluster at ``RAY_ADDRESS``, or a local one), quietly."""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

import ray
import ray.data

from raysl.cluster.probe import check_reachable, use_token_auth
from raysl.console import WorkerLineFilter, verbose


def connect(address: str = "") -> None:
    """Use the running Ray (tests), the cluster at ``address``/``$RAY_ADDRESS``, or start one.

    Under ``ray job submit`` the job supervisor sets ``RAY_ADDRESS``, so the job joins the cluster
    it was submitted to; run directly, raysl joins the local Ray that ``raysl up`` left running
    (:mod:`raysl.cluster.local`), or else starts a local in-process cluster. Unless
    ``--verbose`` (:func:`raysl.console.verbose`), the terminal shows raysl's own lines and the
    warnings that matter; Ray's logs stay in the session's log files.
    """
    # Per process (a sweep trial is its own process): our epoch lines instead of Ray Data's bars.
    ray.data.DataContext.get_current().enable_progress_bars = False
    if ray.is_initialized():
        return
    quiet = not verbose()
    if quiet:
        quiet_driver_logs()
    address = address or os.environ.get("RAY_ADDRESS", "") or _local_ray()
    level = logging.WARNING if quiet else logging.INFO
    if address:
        check_reachable(address)
        ray.init(address=address, log_to_driver=True, logging_level=level)
    else:
        # The dashboard also serves the state API that Train's placement-group cleaner polls;
        # without it the cleaner logs a warning every few seconds for the whole run.
        ray.init(address="local", include_dashboard=True, log_to_driver=True,
                 logging_level=level)
    if quiet:
        _filter_worker_lines()


# Warnings Ray logs on the driver that say nothing about the run.
_BENIGN = ("Token authentication is enabled", "Progress bars disabled")


def quiet_driver_logs() -> None:
    """Ray's and MLflow's INFO lines, and two benign notices, off the driver's terminal.

    Filters go on the handlers: a logger's own filters do not see its children's records.
    """
    for name in ("ray", "mlflow"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # MLflow's "Downloading artifacts" bars, each time a model or config is read back.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # Ray Data's note that a small dataset has fewer blocks than tasks allowed: nothing to do.
    warnings.filterwarnings("ignore", message="The maximum number of concurrent tasks")
    for name in ("ray", "ray.data"):
        for handler in logging.getLogger(name).handlers:
            if not isinstance(handler, logging.StreamHandler) or isinstance(
                    handler, logging.FileHandler):
                continue  # the session's log files keep everything
            handler.addFilter(lambda record: not record.getMessage().startswith(_BENIGN))
            handler.setLevel(logging.WARNING)


def _filter_worker_lines() -> None:
    """Pass what Ray forwards from worker processes through :class:`WorkerLineFilter`.

    Ray has no public hook for this: ``log_to_driver=False`` would also drop raysl's own epoch
    lines, which rank 0 prints on its worker. So the driver's forwarding handler (the pinned
    Ray 2.60's ``ray_print_logs``) is replaced by one that filters first; if Ray's internals
    move, the default handler stays and the terminal is merely verbose.
    """
    try:
        from ray._private import worker as ray_worker
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return
    keep = WorkerLineFilter()

    def forward(data: dict[str, Any]) -> None:
        lines = [line for line in data.get("lines", []) if keep.keep(line)]
        if lines:
            ray_worker.print_to_stdstream({**data, "lines": lines}, ignore_prefix=True)

    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", forward)


def _local_ray() -> str:
    """The address of the Ray that ``raysl up`` started, said on the terminal; "" if none."""
    from raysl.cluster import local

    up = local.running()
    if up is None:
        return ""
    if "RAY_AUTH_MODE" not in os.environ:  # it was started with token auth
        use_token_auth()
    print(f"[raysl] joining the local Ray of `raysl up` at {up.describe()}; `raysl down` stops "
          "it", flush=True)
    return up.address
