"""Joining Ray (the running one, the cluster at ``RAY_ADDRESS``, or a local one), quietly."""

from __future__ import annotations

import logging
import os
import re
import warnings
from typing import Any

import ray
import ray.data

from raysl.console import WorkerLineFilter, verbose
from raysl.errors import ClusterUnreachable

PROBE_TIMEOUT_S = 5.0  # a head that answers at all answers a cluster-id request within this
_HOST_PORT = re.compile(r"^(?P<host>\[[0-9A-Fa-f:]+\]|[A-Za-z0-9.-]+):(?P<port>[0-9]{1,5})$")
_AUTH_FIX = ("set RAY_AUTH_MODE=token and give raysl the cluster's token: the file "
             "~/.ray/auth_token (or RAY_AUTH_TOKEN_PATH), or RAY_AUTH_TOKEN; `ray get-auth-token` "
             "on the head prints it")


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


def check_reachable(address: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Ask the Ray head at ``address`` for its cluster id before ``ray.init`` joins it.

    ``ray.init`` meets a head that refuses its token, or no head at all, by retrying for ten
    seconds with a warning a second, then a bare ``ConnectionError``. One request with the
    credentials ``ray.init`` would send (Ray's own token lookup: ``RAY_AUTH_MODE``, the token
    file, ``RAY_AUTH_TOKEN``) tells the two apart at once. Addresses that are not ``host:port``
    (``auto``, ``ray://``) are left to Ray.

    Raises:
        ClusterUnreachable: naming the address, the cause and the fix.
    """
    match = _HOST_PORT.match(address.strip())
    if match is None:
        return
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    channel = grpc.insecure_channel(address.strip())
    try:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)  # type: ignore[no-untyped-call]
        request = gcs_service_pb2.GetClusterIdRequest()  # type: ignore[attr-defined]
        stub.GetClusterId(request, timeout=timeout_s, metadata=_auth_metadata())
    except grpc.RpcError as e:
        raise ClusterUnreachable(_explain(address, e.code(), timeout_s)) from None
    finally:
        channel.close()


def _auth_metadata() -> tuple[tuple[str, str], ...]:
    """The gRPC metadata ``ray.init`` sends: the token when token auth is on, else none."""
    try:
        from ray._private.authentication.grpc_authentication_client_interceptor import (
            _get_authentication_metadata_tuple,
        )
    except ImportError:  # Ray moved it: probe without; ray.init reports auth errors itself
        return ()
    return tuple(_get_authentication_metadata_tuple())


def _explain(address: str, code: Any, timeout_s: float) -> str:
    """One line: what went wrong at ``address`` and what to do."""
    import grpc

    where = f"RAY_ADDRESS={address!r}"
    if code == grpc.StatusCode.UNAUTHENTICATED:
        mode = os.environ.get("RAY_AUTH_MODE", "")
        if mode == "token":
            return (f"{where}: the Ray head refused raysl's token (RAY_AUTH_MODE=token): it is "
                    "not this cluster's; use the head's token (`ray get-auth-token` on the head "
                    "prints it) in ~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN")
        return (f"{where}: the Ray head requires token authentication and raysl sent no token "
                f"(RAY_AUTH_MODE={mode or 'unset'}): {_AUTH_FIX}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return (f"{where}: no answer within {timeout_s:g} s (a firewall, or not a Ray head's GCS "
                "port; the head prints its address when `ray start --head` starts, default port "
                "6379); unset RAY_ADDRESS to run on a local Ray instead")
    return (f"{where}: no Ray cluster answers there ({code.name.lower()}): start one with "
            "`ray start --head` (its GCS port, default 6379), or unset RAY_ADDRESS to run on a "
            "local Ray instead")


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


def use_token_auth() -> None:
    """Send the token (``~/.ray/auth_token``) from now on, as ``RAY_AUTH_MODE=token`` would.

    Ray reads the mode once, when it is imported: setting the variable later needs the refresh
    Ray's own ``_enable_token_auth`` does for a local ``ray.init``.
    """
    os.environ["RAY_AUTH_MODE"] = "token"
    try:
        from ray._raylet import Config  # type: ignore[attr-defined]
    except ImportError:  # Ray moved it: the mode read at import stays
        return
    Config.initialize("")
