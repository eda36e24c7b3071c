"""Errors a restart cannot fix are noted once and re-raised by every restarted worker."""

import json
from pathlib import Path

import pytest

from raysl.errors import CheckpointError, ConfigError, DataError, RepresentationCollapsed
from raysl.train.permanent import (
    NOTE_FILE,
    clear_note,
    leave_note,
    note_path,
    raise_noted,
)


def test_note_path_is_in_the_runs_storage_directory(tmp_path: Path, monkeypatch):
    assert note_path(str(tmp_path), "run-1") == f"{tmp_path}/run-1/{NOTE_FILE}"
    assert note_path("s3://bucket/results/", "r") == f"s3://bucket/results/r/{NOTE_FILE}"
    monkeypatch.chdir(tmp_path)
    assert note_path("ray_results", "r") == f"{tmp_path}/ray_results/r/{NOTE_FILE}"


@pytest.mark.parametrize("error", [
    DataError("data.max_bad_fraction=0.1: 40 of the 100 image files are bad"),
    CheckpointError("method.pt does not match SimCLR"),
    RepresentationCollapsed("epoch 3: complete collapse"),
])
def test_a_noted_error_is_raised_again_as_itself(tmp_path: Path, error: Exception):
    path = note_path(str(tmp_path), "run")
    raise_noted(path)  # nothing noted: nothing raised
    leave_note(path, error)
    with pytest.raises(type(error), match=str(error)):
        raise_noted(path)
    with pytest.raises(type(error)):
        raise_noted(path)  # every restart, not just the first
    clear_note(path)
    raise_noted(path)
    clear_note(path)  # clearing twice is fine


def test_a_config_error_keeps_its_field_value_and_expectation(tmp_path: Path):
    path = note_path(str(tmp_path), "run")
    leave_note(path, ConfigError("method.num_clusters", 100, "at most the 60 training images"))
    with pytest.raises(ConfigError) as info:
        raise_noted(path)
    assert (info.value.field, info.value.value) == ("method.num_clusters", 100)
    assert info.value.expected == "at most the 60 training images"
    # JSON, not a pickle: nothing in the note can run code when read.
    assert json.loads(Path(path).read_text())["kind"] == "ConfigError"


def test_the_note_hides_credentials_and_an_unreadable_note_counts_as_none(tmp_path: Path):
    path = note_path(str(tmp_path), "run")
    leave_note(path, ConfigError("data.source.path", "s3://key:s3cr3t@bucket/x", "reachable"))
    assert "s3cr3t" not in Path(path).read_text()
    with pytest.raises(ConfigError) as info:
        raise_noted(path)
    assert info.value.value == "s3://***@bucket/x"
    Path(path).write_text('{"kind": "DataE')  # a half-written note from an older raysl
    raise_noted(path)  # not a JSONDecodeError in every restarted worker
    assert [p.name for p in (tmp_path / "run").iterdir()] == [NOTE_FILE]  # no temp files left
