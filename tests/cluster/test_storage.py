"""Multi-node runs refuse node-local checkpoint and MLflow stores before anything starts."""

import pytest

from raysl.cluster.storage import check_shared, check_tracking_shared, filesystem_type
from raysl.errors import ConfigError

MOUNTS = """\
/dev/vda1 / ext4 rw,relatime 0 0
tmpfs /tmp tmpfs rw 0 0
10.0.0.5:/export /mnt/shared nfs4 rw,vers=4.1 0 0
fs-1.efs:/ /mnt/shared/efs efs rw 0 0
/dev/vdb1 /mnt/shared/scratch ext4 rw 0 0
my\\040bucket /mnt/s3\\040data fuse.mountpoint-s3 rw 0 0
"""


def test_filesystem_type_is_that_of_the_longest_mount_point_above():
    assert filesystem_type("/home/me/runs", MOUNTS) == "ext4"
    assert filesystem_type("/mnt/shared/runs/new", MOUNTS) == "nfs4"  # need not exist
    assert filesystem_type("/mnt/shared/scratch/x", MOUNTS) == "ext4"  # a local disk inside NFS
    assert filesystem_type("/mnt/sharedness", MOUNTS) == "ext4"  # a prefix is not a parent
    assert filesystem_type("/mnt/s3 data/runs", MOUNTS) == "fuse.mountpoint-s3"
    assert filesystem_type("/tmp/x", MOUNTS) == "tmpfs"
    assert filesystem_type("/tmp") != ""  # this machine's own /proc/mounts


def test_one_node_may_use_any_path():
    check_shared("train.storage_path", "/home/me/runs", 1, MOUNTS)
    check_tracking_shared("sqlite:////home/me/mlflow.db", 1, MOUNTS)


def test_several_nodes_need_shared_storage():
    for ok in ("s3://bucket/runs", "gs://b/r", "/mnt/shared/runs", "/mnt/shared/efs/r"):
        check_shared("train.storage_path", ok, 3, MOUNTS)
    with pytest.raises(ConfigError, match=r"train.storage_path='/home/me/runs': is on this "
                                          r"machine's own disk \(ext4 filesystem\) but the cluster "
                                          r"spans 3 machines.*s3://bucket/prefix or an NFS path"):
        check_shared("train.storage_path", "/home/me/runs", 3, MOUNTS)
    with pytest.raises(ConfigError, match=r"\(tmpfs filesystem\)"):
        check_shared("train.storage_path", "/tmp/runs", 2, MOUNTS)


def test_several_nodes_need_a_shared_mlflow_store():
    check_tracking_shared("http://head:5000", 4, MOUNTS)
    check_tracking_shared("sqlite:////mnt/shared/mlflow.db", 4, MOUNTS)
    with pytest.raises(ConfigError, match=r"tracking.tracking_uri='sqlite:////home/me/mlflow.db'"
                                          r": is a store on this machine's disk.*mlflow server"):
        check_tracking_shared("sqlite:////home/me/mlflow.db", 2, MOUNTS)
