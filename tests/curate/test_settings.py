"""``raysl curate``'s flags: bad values name the flag, the value and what is expected."""

import pytest

from raysl.curate.command import CurateSettings
from raysl.errors import ConfigError, DataError


@pytest.mark.parametrize(("kwargs", "says"), [
    ({"target": 0}, "--target=0: must be >= 1"),
    ({"target": 5, "near": 1.0}, "--near=1.0: must be in (0, 1)"),
    ({"target": 5, "clusters": (10, 20)}, "--clusters=(10, 20): level 1 first"),
    ({"target": 5, "clusters": (0,)}, "--clusters=(0,): must be clusters per level"),
    ({"target": 5, "steps": -1}, "--steps=-1: must be >= 0"),
    ({"target": 5, "write": "zip"}, "--write='zip': one of auto, list, tar, parquet"),
])
def test_bad_settings_name_the_flag(kwargs, says):
    with pytest.raises(ConfigError) as raised:
        CurateSettings(**kwargs)
    assert str(raised.value).startswith(says)


def test_clusters_per_level():
    assert CurateSettings(target=5).ks(10_000) == [100, 10]
    assert CurateSettings(target=5).ks(9) == [3]
    assert CurateSettings(target=5, clusters=(8, 2)).ks(100) == [8, 2]
    with pytest.raises(ConfigError, match="at most as many clusters as the 5 images left"):
        CurateSettings(target=5, clusters=(8, 2)).ks(5)


def test_the_selection_is_a_list_of_files_and_shards_of_anything_else():
    assert CurateSettings(target=5).written_as("folder") == "list"
    assert CurateSettings(target=5).written_as("npz") == "tar"
    assert CurateSettings(target=5, write="parquet").written_as("files") == "parquet"
    with pytest.raises(DataError, match="--write=list: the source's images are not files"):
        CurateSettings(target=5, write="list").written_as("tar")
