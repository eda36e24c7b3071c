"""Training in the command's own process (``train.local_mode``): when, and its checkpoints.

Plain files and the resource plan; the runs themselves are in tests/test_pretrain_e2e.py (a
worker group's run resumed in process) and tests/test_continued_pretraining.py.
"""

import json
import re
from pathlib import Path

import pytest

from raysl import config as C
from raysl.checkpoint import STATE_FILE
from raysl.cluster.nodes import Node
from raysl.errors import ConfigError
from raysl.train import in_process
from raysl.train.trainer import trains_in_process

ONE_NODE = [Node(2.0, host="127.0.0.1")]


def _checkpoint(directory: Path, step: int, complete: bool = True) -> Path:
    """A checkpoint directory as far as resuming reads it: ``state.json`` (last) and a weight."""
    directory.mkdir(parents=True)
    (directory / "encoder.pt").write_bytes(b"weights")
    if complete:
        (directory / STATE_FILE).write_text(json.dumps({"epoch": 0, "step": step}))
    return directory


def _commit(run_dir: Path, step: int, keep: int = 2) -> Path:
    pending = in_process.pending_directory(str(run_dir))
    (pending / STATE_FILE).write_text(json.dumps({"epoch": 0, "step": step}))
    return in_process.commit(pending, keep)


def test_a_committed_checkpoint_is_named_as_ray_trains_are_and_marked(tmp_path: Path):
    committed = _commit(tmp_path / "run", step=5)
    assert re.fullmatch(r"checkpoint_\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d\.\d{6}", committed.name)
    assert (committed / in_process.IN_PROCESS_MARK).exists()
    assert (committed / STATE_FILE).exists()
    assert [p.name for p in (tmp_path / "run").iterdir()] == [committed.name]  # nothing pending


def test_commits_keep_the_newest_of_their_own_and_leave_ray_trains_alone(tmp_path: Path):
    run = tmp_path / "run"
    rays = _checkpoint(run / "checkpoint_2000-01-01_00-00-00.000000", step=1)
    committed = [_commit(run, step, keep=2) for step in (10, 20, 30)]
    assert not committed[0].exists() and committed[1].exists() and committed[2].exists()
    assert rays.exists()  # Ray Train prunes its own


def test_newest_is_the_complete_checkpoint_with_the_most_steps(tmp_path: Path):
    run = tmp_path / "run"
    ours = _commit(run, step=20)
    _checkpoint(run / "checkpoint_2999-01-01_00-00-00.000000", step=40, complete=False)
    rays = _checkpoint(run / "checkpoint_1999-01-01_00-00-00.000000", step=30)  # older name
    assert in_process.newest(str(run), marked_only=False) == in_process.OnDisk(rays, 30)
    # A worker group trusts only checkpoints committed whole: Ray copies its own file by file.
    assert in_process.newest(str(run), marked_only=True) == in_process.OnDisk(ours, 20)
    assert in_process.newest(str(tmp_path / "none"), marked_only=False) is None


def test_a_checkpoint_cut_short_is_passed_over_and_a_killed_runs_pending_one_removed(
        tmp_path: Path):
    run = tmp_path / "run"
    ours = _commit(run, step=20)
    cut = _checkpoint(run / "checkpoint_2999-01-01_00-00-00.000000", step=40)
    (cut / STATE_FILE).write_text(json.dumps({"epoch": 1, "step": 40,
                                              "files": {"encoder.pt": 7, "method.pt": 900}}))
    assert in_process.newest(str(run), marked_only=False) == in_process.OnDisk(ours, 20)
    (cut / "method.pt").write_bytes(b"x" * 900)  # the copy finished
    assert in_process.newest(str(run), marked_only=False) == in_process.OnDisk(cut, 40)
    left = run / f"{in_process.PENDING_PREFIX}killed"
    left.mkdir()
    pending = in_process.pending_directory(str(run))
    assert not left.exists() and pending.exists()


def test_a_run_resumes_from_whichever_checkpoint_has_more_steps(tmp_path: Path):
    run = tmp_path / "run"
    recorded = str(_checkpoint(tmp_path / "recorded", step=20))
    assert in_process.pick(None, "", trains_in_process=False) is None
    assert in_process.pick(recorded, "", trains_in_process=False) == recorded  # remote storage
    ours = str(_commit(run, step=20))
    assert in_process.pick(recorded, str(run), trains_in_process=False) == recorded  # a tie
    later = str(_commit(run, step=30))
    assert in_process.pick(recorded, str(run), trains_in_process=False) == later
    assert in_process.pick(None, str(run), trains_in_process=True) == later
    # In process, Ray Train's complete checkpoints count too; a worker group's own do not.
    rays = str(_checkpoint(run / "checkpoint_2000-01-01_00-00-00.000000", step=40))
    assert in_process.pick(None, str(run), trains_in_process=True) == rays
    assert in_process.pick(None, str(run), trains_in_process=False) == later
    assert ours != later


@pytest.mark.parametrize("overrides, nodes, storage, trains", [
    (["train.num_workers=1"], ONE_NODE, "/runs", True),
    (["train.num_workers=1", "train.local_mode=on"], ONE_NODE, "/runs", True),
    (["train.num_workers=2"], ONE_NODE, "/runs", False),
    (["train.num_workers=2", "train.min_workers=1"], ONE_NODE, "/runs", False),
    (["train.num_workers=1", "train.local_mode=off"], ONE_NODE, "/runs", False),
    (["train.num_workers=1"], ONE_NODE * 2, "/runs", False),
    (["train.num_workers=1"], ONE_NODE, "s3://bucket/runs", False),
])
def test_auto_trains_in_process_one_worker_on_this_machines_one_node(overrides, nodes, storage,
                                                                      trains):
    why = trains_in_process(C.load(None, overrides), nodes, storage)
    assert bool(why) is trains
    if trains:
        assert "run the same command again" in why and "train.local_mode=off" in why


@pytest.mark.parametrize("nodes, storage, cause", [
    (ONE_NODE * 2, "/runs", "the cluster has 2 nodes"),
    (ONE_NODE, "s3://bucket/runs", "train.storage_path='s3://bucket/runs'"),
])
def test_on_where_it_cannot_names_the_field_and_the_cause(nodes, storage, cause):
    cfg = C.load(None, ["train.num_workers=1", "train.local_mode=on"])
    with pytest.raises(ConfigError, match=re.escape(cause)) as info:
        trains_in_process(cfg, nodes, storage)
    assert info.value.field == "train.local_mode"


def test_on_with_more_than_one_worker_is_refused_by_the_config():
    with pytest.raises(ConfigError, match=r"train\.num_workers=1") as info:
        C.load(None, ["train.num_workers=2", "train.local_mode=on"])
    assert info.value.field == "train.local_mode"


@pytest.mark.parametrize("text, expected", [("on", "on"), ("off", "off"), ("auto", "auto")])
def test_bare_on_and_off_read_as_the_words_not_yaml_booleans(text, expected):
    cfg = C.load(None, [f"train.local_mode={text}", f"train.channels_last={text}",
                        "train.num_workers=1"])
    assert cfg.train.local_mode == expected and cfg.train.channels_last == expected
