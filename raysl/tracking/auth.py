"""Credentials of a cluster's MLflow tracking server (MLflow's basic auth), made like Ray's token.

``raysl credentials`` writes ``~/.raysl/mlflow.env`` (mode 0600) on your machine: a user name,
a random password and the server's session secret, as shell variables. The cluster files ship it
to every node, start ``mlflow server --app-name basic-auth`` on the head with an admin of those
credentials (:func:`write_server_config`), and export them before ``ray start``, so every Ray
process (job drivers, train workers) authenticates with ``MLFLOW_TRACKING_USERNAME`` /
``MLFLOW_TRACKING_PASSWORD``, the variables MLflow's client reads. Consumers do the same:
``set -a; . ~/.raysl/mlflow.env; set +a``. The password never goes into a config, a param or a
log.
"""

from __future__ import annotations

import configparser
import os
import secrets
from pathlib import Path

DEFAULT_ENV_FILE = Path("~/.raysl/mlflow.env")
USER_VAR, PASSWORD_VAR, SECRET_VAR = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                                      "MLFLOW_FLASK_SERVER_SECRET_KEY")


def write_credentials(path: Path = DEFAULT_ENV_FILE, user: str = "raysl",
                      force: bool = False) -> tuple[Path, bool]:
    """Create the credentials file if it does not exist (or ``force``): ``(path, created)``."""
    path = path.expanduser()
    if path.exists() and not force:
        return path, False
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    text = (f"{USER_VAR}={user}\n{PASSWORD_VAR}={secrets.token_urlsafe(24)}\n"
            f"{SECRET_VAR}={secrets.token_urlsafe(32)}\n")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path, True


def read_credentials(path: Path = DEFAULT_ENV_FILE) -> dict[str, str]:
    """The ``NAME=value`` lines of a credentials file.

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

    Users other than the admin get no permission by default; anonymous requests get 401.
    """
    values = read_credentials(credentials)
    config = configparser.ConfigParser(interpolation=None)
    config["mlflow"] = {
        "default_permission": "NO_PERMISSIONS",
        "database_uri": database,
        "admin_username": values[USER_VAR],
        "admin_password": values[PASSWORD_VAR],
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
    }
    ini = ini.expanduser()
    ini.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(ini, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        config.write(f)
    return ini
