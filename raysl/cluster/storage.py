"""Is a path reachable from every node? Checked before a multi-node run starts, not after it fails.

On one node any local path works. On several, Ray Train workers on other nodes write checkpoints
to ``train.storage_path`` and rank 0 (wherever it lands) logs to the MLflow store, so both must
be shared: an object-store URI, or a path on a network filesystem mounted on every node.
"""

from __future__ import annotations

import os
from pathlib import Path

from raysl.config import Config
from raysl.errors import ConfigError

# Filesystem types (as in /proc/mounts) that other machines can also mount.
NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "glusterfs", "ceph",
    "cephfs", "fuse.glusterfs", "fuse.cephfs", "fuse.s3fs", "fuse.gcsfuse", "fuse.goofys",
    "fuse.mountpoint-s3", "fuse.juicefs", "fuse.sshfs", "fuse.weka", "wekafs", "efs",
})
_URI_SCHEMES = ("s3://", "gs://", "gcs://", "abfs://", "abfss://", "hdfs://", "az://")


def filesystem_type(path: str, mounts: str | None = None) -> str:
    """Type of the filesystem holding ``path`` (the longest mount point above it), e.g. "ext4".

    Args:
        path: a local path; it need not exist yet.
        mounts: the text of ``/proc/mounts`` (read when None); "" when unknown.
    """
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:
            return ""
    target = os.path.abspath(path)
    best, kind = "", ""
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) > len(best):
            best, kind = point, fields[2]
    return kind


def check_shared(field: str, location: str, machines: int, mounts: str | None = None) -> None:
    """Raise unless ``location`` is reachable from every machine (host) of the cluster.

    Args:
        field: the config field, for the message (``train.storage_path``).
        location: a local path or a URI.
        machines: distinct hosts among the alive nodes (nodes on one host share its disk).
        mounts: ``/proc/mounts`` text, for tests.

    Raises:
        ConfigError: naming the field, the path, its filesystem and what would work.
    """
    if machines <= 1 or location.startswith(_URI_SCHEMES):
        return
    kind = filesystem_type(location, mounts)
    if kind in NETWORK_FILESYSTEMS:
        return
    raise ConfigError(field, location, f"is on this machine's own disk ({kind or 'unknown'} "
                                       f"filesystem) but the cluster spans {machines} machines: "
                                       "workers elsewhere could not write there. Use shared "
                                       "storage: s3://bucket/prefix or an NFS path mounted on "
                                       "every node")


def check_tracking_shared(uri: str, machines: int, mounts: str | None = None) -> None:
    """Raise unless the MLflow store ``uri`` is reachable from every machine of the cluster.

    A server (``http(s)://``, ``databricks``) is; a sqlite file or a local directory only when it
    lies on a network filesystem.

    Raises:
        ConfigError: on ``tracking.tracking_uri``.
    """
    if machines <= 1 or uri.startswith(("http://", "https://", "databricks")):
        return
    path = uri.removeprefix("sqlite:///").removeprefix("file://")  # sqlite:////abs, sqlite:///rel
    try:
        check_shared("tracking.tracking_uri", path, machines, mounts)
    except ConfigError:
        raise ConfigError("tracking.tracking_uri", uri,
                          f"is a store on this machine's disk but the cluster spans {machines} "
                          "machines, and the first train worker logs metrics from wherever it "
                          "runs: start an MLflow server (mlflow server --host 0.0.0.0) and use "
                          "http://<head>:5000") from None


def storage_path(cfg: Config) -> str:
    """Checkpoints' (and a sweep's Tune state's) root: ``train.storage_path`` or ./ray_results.

    The default is made absolute: Ray workers run in other directories.
    """
    return cfg.train.storage_path or str(Path("ray_results").resolve())
