"""Asking a Ray head whether it is there and takes raysl's credentials, before joining it."""

from __future__ import annotations

import os
import re
from typing import Any

from raysl.errors import ClusterUnreachable

PROBE_TIMEOUT_S = 5.0  # a head that answers at all answers a cluster-id request within this
_HOST_PORT = re.compile(r"^(?P<host>\[[0-9A-Fa-f:]+\]|[A-Za-z0-9.-]+):(?P<port>[0-9]{1,5})$")
_AUTH_FIX = ("set RAY_AUTH_MODE=token and give raysl the cluster's token: the file "
             "~/.ray/auth_token (or RAY_AUTH_TOKEN_PATH), or RAY_AUTH_TOKEN; `ray get-auth-token` "
             "on the head prints it")


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
