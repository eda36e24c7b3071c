"""Scale by file count: listing, labels and read tasks stay linear in the number of files.

Every size here is counted in bytes or items, never timed: a read task's pickled size must not
grow with the source (it once carried every unit's paths, so an epoch serialised
units x files bytes), and a listing must equal the plain Python walk it replaces.
"""

import os
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import ray
from ray.data._internal.planner.plan_read_op import TASK_SIZE_WARN_THRESHOLD_BYTES, _derive_metadata

from raysl.config import SourceConfig
from raysl.data.ledger import DecodePolicy
from raysl.data.readers.base import BAD_LABEL, FILES_PER_UNIT, FileUnits, labels_of, list_target
from raysl.data.source import UnitSource, pick_reader
from raysl.data.storage import Store

pytestmark = pytest.mark.usefixtures("ray_session")

# A unit's 256 paths of ~40 characters pickle to ~12 kB; the shared part is a few hundred bytes.
TASK_BYTES_BOUND = 32 * 1024


def _file_list(tmp_path: Path, n: int, classes: int = 1000) -> Path:
    """A list of ``n`` relative image paths with class-name labels (no image files needed)."""
    lines = ["path,label"] + [f"img/c{i % classes:04d}/{i:07d}.jpg,c{i % classes:04d}"
                              for i in range(n)]
    path = tmp_path / f"list-{n}.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def _units(path: Path, shuffle: bool = True) -> UnitSource:
    store, cfg = Store(), SourceConfig(path=str(path))
    target = list_target(cfg.path, store, "data.source")
    encoded = pick_reader(cfg, target, store, "data.source").open(cfg, target, store, 0,
                                                                  "data.source")
    return UnitSource(encoded, store, 3, 32, DecodePolicy(), None, 0, cfg.path, shuffle)


def _task_sizes(source: UnitSource) -> list[int]:
    """Each read task's size as Ray Data measures it (the object it puts for the task)."""
    sizes = []
    for task in source.get_read_tasks(1):
        ref = ray.put(task)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # Ray's large-read-task warning would raise here
            sizes.append(_derive_metadata(task, ref).size_bytes)
    return sizes


def test_read_tasks_of_a_100k_file_source_carry_only_their_unit(tmp_path: Path):
    big = _units(_file_list(tmp_path, 100_000))
    small = _units(_file_list(tmp_path, 10_000))
    sizes = _task_sizes(big)
    assert len(sizes) == -(-100_000 // FILES_PER_UNIT)
    assert max(sizes) < TASK_BYTES_BOUND < TASK_SIZE_WARN_THRESHOLD_BYTES
    # O(files in the unit): ten times the files, the same bytes per task, ten times the total.
    assert max(sizes) <= 1.05 * max(_task_sizes(small))
    assert sum(sizes) < 100_000 * TASK_BYTES_BOUND / FILES_PER_UNIT


def test_every_file_is_read_once_per_epoch_in_a_new_unit_order(tmp_path: Path):
    source = _units(_file_list(tmp_path, 3000, classes=7))
    epochs = [source.get_read_tasks(1) for _ in range(2)]
    listed = [[p for t in tasks for p in t.read_fn.unit.paths] for tasks in epochs]
    assert sorted(listed[0]) == sorted(listed[1]) and len(set(listed[0])) == 3000
    assert listed[0] != listed[1]  # each epoch draws its own unit order
    # A task's first row index is its unit's place in the listed order, whatever the epoch.
    first = {t.read_fn.unit.paths[0]: t.read_fn.first for t in epochs[0]}
    assert all(first[t.read_fn.unit.paths[0]] == t.read_fn.first for t in epochs[1])
    assert sorted(first.values()) == list(range(0, 3000, FILES_PER_UNIT))


def test_class_names_travel_once_not_in_every_task(tmp_path: Path):
    source = _units(_file_list(tmp_path, 2000, classes=2000))
    (task,) = source.get_read_tasks(1)[:1]
    assert isinstance(task.read_fn.decoding.class_names, ray.ObjectRef)
    assert len(ray.get(task.read_fn.decoding.class_names)) == 2000


def test_folder_listing_equals_a_plain_walk(tmp_path: Path):
    """Nested class folders, hidden files and folders, a symlinked file, a FIFO: the Arrow
    listing is what os.walk finds (visible regular files), sorted."""
    rng = np.random.default_rng(0)
    for i in range(600):
        sub = tmp_path / f"k{rng.integers(0, 5)}" / ("deep" if i % 3 == 0 else "")
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"{i:04d}.png").write_bytes(b"x")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "a.png").write_bytes(b"x")
    (tmp_path / "k0" / ".dot.png").write_bytes(b"x")
    (tmp_path / "top.png").write_bytes(b"x")
    os.symlink(tmp_path / "top.png", tmp_path / "k1" / "link.png")
    os.mkfifo(tmp_path / "k2" / "pipe.png")
    expected = sorted(
        os.path.join(root, f) for root, dirs, files in os.walk(tmp_path)
        if not any(p.startswith(".") for p in Path(root).relative_to(tmp_path).parts)
        for f in files if not f.startswith(".") and os.path.isfile(os.path.join(root, f)))
    listed = Store().list_files(str(tmp_path))
    assert listed.type == pa.large_string() and listed.to_pylist() == expected


def test_folder_labels_follow_the_sorted_class_folders(tmp_path: Path):
    for c in ("zebra", "ant", "moth"):
        (tmp_path / c).mkdir()
        for i in range(300):
            (tmp_path / c / f"{i}.png").write_bytes(b"x")
    source = _units(tmp_path, shuffle=False)
    assert source.encoded.class_names == ["ant", "moth", "zebra"]
    for task in source.get_read_tasks(1):
        unit = task.read_fn.unit
        assert [source.encoded.class_names[k] for k in unit.labels] == \
            [Path(p).parent.name for p in unit.paths]


@pytest.mark.parametrize("values", [
    ["3", " 1", "0 ", "3"], [2, 0, 1], ["cat", "dog ", " ant", "cat"], ["10", "9", "x"], []])
def test_labels_of_matches_its_naive_reading(values):
    """The Arrow labels_of against the definition: ints as they are, else sorted names."""
    text = [str(v).strip() for v in values]
    if all(t.lstrip("-").isdigit() for t in text):
        want = [int(t) for t in text]
        classes = [str(i) for i in range(max(want) + 1)] if want else []
    else:
        classes = sorted(set(text))
        want = [classes.index(t) for t in text]
    labels, names = labels_of(values, "x")
    assert labels.tolist() == want and names == classes
    assert labels_of(pa.array(values if values else [], pa.large_string() if not values
                              else None), "x")[0].tolist() == want


def test_file_units_hold_one_arrow_array_and_build_units_on_demand():
    paths = pa.array([f"/d/{i}.png" for i in range(1000)], pa.large_string())
    units = FileUnits(paths, np.arange(1000) % 3)
    assert len(units) == 4 and units.sizes.tolist() == [256, 256, 256, 232]
    assert units[3].paths[-1] == "/d/999.png" and units[-1] == units[3]
    assert units[1].labels == tuple(int(k) for k in np.arange(256, 512) % 3)
    with pytest.raises(IndexError):
        units[4]


def test_labels_that_can_be_no_class_are_marked_bad_not_guessed():
    labels, classes = labels_of(["2", "", "-1", " 0", None])
    assert labels.tolist() == [2, BAD_LABEL, BAD_LABEL, 0, BAD_LABEL]
    assert classes == ["0", "1", "2"]  # the empty label did not turn the integers into names
    labels, classes = labels_of(["cat", "", "dog"])
    assert labels.tolist() == [0, BAD_LABEL, 1] and classes == ["cat", "dog"]


def test_a_file_lists_bad_labels_are_skipped_and_counted_not_fatal(tmp_path: Path):
    from PIL import Image

    from raysl.data.source import Reading, read_source, to_numpy

    rows = ["path,label"]
    for i, label in enumerate(["0", "1", "-3", "", "1", "0"]):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{label}")
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    source = read_source(SourceConfig(path=str(tmp_path / "list.csv")),
                         Reading(1, 8, policy=DecodePolicy(max_bad_fraction=0.5)))
    x, y = to_numpy(source)
    assert len(x) == 4 and sorted(y.tolist()) == [0, 0, 1, 1]
    assert source.skipped == {"bad_label": 2} and source.class_names == ["0", "1"]


def test_an_image_file_larger_than_the_pixel_cap_allows_is_skipped_unread(tmp_path: Path):
    from PIL import Image

    from raysl.data.source import Reading, read_source

    for i in range(9):
        Image.fromarray(np.full((8, 8), 20 * i, np.uint8)).save(tmp_path / f"{i}.png")
    # 64 pixels allowed: at most 8 x 64 bytes + 1 MiB of an encoded image; this file is 2 MiB.
    (tmp_path / "huge.png").write_bytes(b"\x89PNG" + bytes(2 * 2**20))
    source = read_source(SourceConfig(path=str(tmp_path)),
                         Reading(1, 8, policy=DecodePolicy(max_pixels=64, max_bad_fraction=0.5)))
    assert source.num_images == 9 and source.skipped == {"too_large": 1}
