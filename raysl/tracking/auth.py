"""Logins of a cluster's MLflow tracking server (MLflow's basic auth), made like Ray's token.

``raysl credentials`` writes ``~/.raysl/mlflow.env`` (mode 0600) on your machine: the admin's
user name and a random password, and the server's session secret, as shell variables. The
cluster files ship it to every node, start ``mlflow server --app-name basic-auth`` on the head
with an admin of those credentials (:func:`write_server_config`), and export them before
``ray start``, so every Ray process (job drivers, train workers) authenticates as the admin with
``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``, the variables MLflow's client reads.

Consumers never get that file. ``raysl credentials --consumer NAME`` (:func:`create_consumer`)
asks the server, as the admin, for a user of its own and writes its login, without the session
secret, to ``~/.raysl/mlflow-NAME.env``. The server runs with workspaces
(``--enable-workspaces``), every user being granted its ``default_permission``, ``READ``, in
the default one, so such a user reads every run, artifact and registered model, changes none
(a tag, a description, an alias, a new version, an artifact) and creates none: without
workspaces MLflow lets any user create a registered model, and one who took a name before
training registered it would manage every version training put there. No password goes into
a config, a param or a log.
"""

from __future__ import annotations

import configparser
import os
import secrets
from pathlib import Path
from typing import Any

DEFAULT_ENV_FILE = Path("~/.raysl/mlflow.env")
USER_VAR, PASSWORD_VAR, SECRET_VAR = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                                      "MLFLOW_FLASK_SERVER_SECRET_KEY")
# What a user other than the admin may do (in the default workspace; `mlflow server
# --enable-workspaces`): read, and neither change nor create anything.
DEFAULT_PERMISSION = "READ"
# The basic-auth app's REST API (mlflow.server.auth.routes; that module starts MLflow's server
# app when imported, which `raysl` does not need).
CREATE_USER = "/api/2.0/mlflow/users/create"
GET_USER = "/api/2.0/mlflow/users/get"
UPDATE_USER_PASSWORD = "/api/2.0/mlflow/users/update-password"


def write_credentials(path: Path = DEFAULT_ENV_FILE, user: str = "raysl",
                      force: bool = False) -> tuple[Path, bool]:
    """Create the admin's login file if it does not exist (or ``force``): ``(path, created)``."""
    path = path.expanduser()
    if path.exists() and not force:
        return path, False
    _write_private(path, f"{USER_VAR}={user}\n{PASSWORD_VAR}={secrets.token_urlsafe(24)}\n"
                         f"{SECRET_VAR}={secrets.token_urlsafe(32)}\n")
    return path, True


def read_credentials(path: Path = DEFAULT_ENV_FILE) -> dict[str, str]:
    """The ``NAME=value`` lines of the admin's credentials file.

    Raises:
        FileNotFoundError: no file there (run ``raysl credentials`` first).
        ValueError: a variable is missing.
    """
    values = {}
    for line in path.expanduser().read_text().splitlines():
        name, sep, value = line.strip().partition("=")
        if sep and not name.startswith("#"):
            values[name.strip()] = value.strip()
    missing = [v for v in (USER_VAR, PASSWORD_VAR, SECRET_VAR) if not values.get(v)]
    if missing:
        raise ValueError(f"{path}: missing {missing}; run `raysl credentials --force`")
    return values


def write_server_config(credentials: Path, ini: Path, database: str) -> Path:
    """The basic-auth app's config (``MLFLOW_AUTH_CONFIG_PATH``): the credentials as its admin.

    Every other user may read and nothing more (``default_permission = READ``, granted in the
    default workspace of a server started with ``--enable-workspaces``; without workspaces
    MLflow would let it create experiments and registered models); anonymous requests get 401.
    """
    values = read_credentials(credentials)
    config = configparser.ConfigParser(interpolation=None)
    config["mlflow"] = {
        "default_permission": DEFAULT_PERMISSION,
        "database_uri": database,
        "admin_username": values[USER_VAR],
        "admin_password": values[PASSWORD_VAR],
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
        "grant_default_workspace_access": "true",
    }
    ini = ini.expanduser()
    ini.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(ini, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        config.write(f)
    return ini


def consumer_file(user: str) -> Path:
    """Where ``raysl credentials --consumer USER`` writes USER's login by default."""
    return DEFAULT_ENV_FILE.with_name(f"mlflow-{user}.env")


def create_consumer(admin: Path, tracking_uri: str, user: str, out: Path,
                    force: bool = False) -> Path:
    """Create the read-only user ``user`` on the server and write its login to ``out`` (0600).

    Args:
        admin: the admin's credentials file (``raysl credentials``), which the server runs with.
        tracking_uri: the server, ``http(s)://HOST:PORT`` (through the SSH tunnel to the head).
        user: the consumer's user name; not the admin's.
        out: the consumer's credentials file: user name and password only.
        force: if ``user`` exists, give it a new password (the old file stops working).

    Raises:
        ValueError: ``user`` is the admin, an admin, or exists (without ``force``), or the
            tracking URI is not a server.
        MlflowException: the server refused (e.g. 401: ``admin`` is not its admin's login).
    """
    from mlflow.exceptions import MlflowException  # MLflow only here: `raysl` starts without it

    login = read_credentials(admin)
    if user == login[USER_VAR]:
        raise ValueError(f"--consumer {user!r} is the admin in {admin}: name another user")
    if not tracking_uri.startswith(("http://", "https://")):
        raise ValueError(f"--tracking-uri {tracking_uri!r}: the cluster's MLflow server, "
                         "http://HOST:PORT (e.g. http://localhost:5001 through the tunnel)")
    server = tracking_uri.rstrip("/")
    password = secrets.token_urlsafe(24)
    body = {"username": user, "password": password}
    try:
        _as_admin(server, login, CREATE_USER, "POST", json=body)
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        if not force:
            raise ValueError(f"user {user!r} exists on {tracking_uri}; --force gives it a new "
                             "password") from None
        existing = _as_admin(server, login, GET_USER, "GET", params={"username": user})["user"]
        if existing["is_admin"]:
            raise ValueError(f"user {user!r} is an admin of {tracking_uri}: a consumer's "
                             "login must be read-only") from None
        _as_admin(server, login, UPDATE_USER_PASSWORD, "PATCH", json=body)
    out = out.expanduser()
    _write_private(out, f"{USER_VAR}={user}\n{PASSWORD_VAR}={password}\n")
    return out


def _as_admin(server: str, login: dict[str, str], endpoint: str, method: str,
              **kwargs: Any) -> Any:
    """The JSON answer of the basic-auth app's ``endpoint``, asked as the admin of ``login``.

    Raises:
        MlflowException: the server refused, with its error code.
    """
    from mlflow.utils.rest_utils import MlflowHostCreds, http_request, verify_rest_response

    creds = MlflowHostCreds(server, username=login[USER_VAR],  # type: ignore[no-untyped-call]
                            password=login[PASSWORD_VAR])
    # A person waits for this: one retry, not MLflow's minutes of backoff.
    response = http_request(creds, endpoint, method,  # type: ignore[no-untyped-call]
                            max_retries=1, timeout=60, **kwargs)
    return verify_rest_response(response, endpoint).json()


def _write_private(path: Path, text: str) -> None:
    """``text`` to ``path``, readable by its owner only (its folder too, if made here)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
