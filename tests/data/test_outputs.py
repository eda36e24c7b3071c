"""Outputs written whole or not at all: refused when they exist, staged, renamed, never mixed."""

import json
from pathlib import Path

import pytest

from raysl.data.outputs import MANIFEST, check_apart, manifest_files, open_output
from raysl.data.storage import Store
from raysl.errors import DataError


def _write(output, names: list[str]) -> dict[str, int]:
    files = {}
    for i, name in enumerate(names):
        with output.store.open_output(output.path(name)) as f:
            f.write(b"x" * (i + 1))
        files[name] = i + 1
    return files


def test_a_folder_output_is_staged_beside_and_renamed_with_its_manifest(tmp_path: Path):
    out = tmp_path / "out"
    output = open_output(str(out), Store(), overwrite=False, folder=True)
    assert Path(output.staging).parent == tmp_path and Path(output.staging).name.startswith(
        ".out.partial-")
    files = _write(output, ["a.tar", "b.tar"])
    assert not out.exists()  # nothing at the destination until it is complete
    output.commit(files, "tar shards")
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "a.tar", "b.tar"]
    assert json.loads((out / MANIFEST).read_text())["files"] == {"a.tar": 1, "b.tar": 2}
    assert manifest_files(Store(), str(out)) == [f"{out}/a.tar", f"{out}/b.tar"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging left


def test_an_existing_output_is_refused_unless_overwritten_and_never_mixed(tmp_path: Path):
    out = tmp_path / "out"
    first = open_output(str(out), Store(), False, folder=True)
    first.commit(_write(first, ["old-1.tar", "old-2.tar"]), "tar shards")
    with pytest.raises(DataError, match=r"OUT=.*the folder exists; pass --overwrite"):
        open_output(str(out), Store(), False, folder=True)
    second = open_output(str(out), Store(), True, folder=True)
    assert sorted(p.name for p in out.iterdir())[1:] == ["old-1.tar", "old-2.tar"]  # kept...
    second.commit(_write(second, ["new.tar"]), "tar shards")
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "new.tar"]  # ...until replaced
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_an_abandoned_run_leaves_the_old_output_as_it_was(tmp_path: Path):
    out = tmp_path / "emb.parquet"
    out.write_bytes(b"the old, complete output")
    output = open_output(str(out), Store(), True, folder=False)
    with Store().open_output(output.staging) as f:
        f.write(b"half of a new one")
    output.abandon()  # interrupted: the destination is untouched, the staged file gone
    assert out.read_bytes() == b"the old, complete output"
    assert [p.name for p in tmp_path.iterdir()] == ["emb.parquet"]
    with pytest.raises(DataError, match="the file exists; pass --overwrite"):
        open_output(str(out), Store(), False, folder=False)


def test_an_empty_folder_is_not_an_existing_output(tmp_path: Path):
    (tmp_path / "out").mkdir()
    output = open_output(str(tmp_path / "out"), Store(), False, folder=True)
    output.commit(_write(output, ["a"]), "x")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [MANIFEST, "a"]


@pytest.mark.parametrize("source, out", [("src", "src"), ("src", "src/shards"), ("src/a", "src")])
def test_an_output_overlapping_its_source_is_refused(tmp_path: Path, source: str, out: str):
    with pytest.raises(DataError, match="overlaps the source"):
        check_apart(str(tmp_path / source), str(tmp_path / out), Store())


def test_outputs_beside_their_source_are_fine(tmp_path: Path):
    check_apart(str(tmp_path / "imgs"), str(tmp_path / "imgs-shards"), Store())
    check_apart(str(tmp_path / "list.txt"), str(tmp_path / "shards"), Store())


def test_a_folder_without_a_manifest_has_no_manifest_files(tmp_path: Path):
    assert manifest_files(Store(), str(tmp_path)) is None
