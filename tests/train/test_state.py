"""The checkpointed state of a train worker (raysl/train/state.py), without a Ray cluster."""

import json
from pathlib import Path
from types import SimpleNamespace

import torch

from raysl import config as C
from raysl.methods.base import Progress, build_method
from raysl.tracking.buffered import BufferedTracker
from raysl.train.optim import build_optimizer
from raysl.train.state import TrainState
from raysl.train.step import train_step

TINY = ["model.width=8", "model.small_stem=true", "data.channels=1", "data.image_size=16"]
CFG = C.load(None, TINY)


def _state(lines: list[str], rank: int = 0, trained: bool = False, **position) -> TrainState:
    torch.manual_seed(0)
    method = build_method(CFG)
    optimizer = build_optimizer(method, CFG.optim, lr=0.1)
    if trained:
        views = [torch.randint(0, 256, (8, 1, 16, 16), dtype=torch.uint8) for _ in range(2)]
        train_step(method, [views], optimizer, Progress(0, 1, 1))
    log = SimpleNamespace(say=lines.append, tracker=BufferedTracker("", "", active=False))
    return TrainState(method, optimizer, None, None, log, rank, CFG.public_dict(), "run-a",
                      "0" * 32, **position)


def test_a_mid_epoch_checkpoint_resumes_at_its_step_with_its_start_of_epoch_metrics(
        tmp_path: Path):
    saved = _state([], trained=True, step=17, start_logs={"cluster/nmi_previous": 0.5})
    assert saved.checkpoint(str(tmp_path), last_epoch=1, epoch_steps=3) is not None
    state = json.loads((tmp_path / "state.json").read_text())
    assert (state["epoch"], state["epoch_steps"], state["step"]) == (1, 3, 17)
    assert state["start_logs"] == {"cluster/nmi_previous": 0.5}
    assert state["run_name"] == "run-a" and state["world_size"] == 1

    lines: list[str] = []
    resumed = _state(lines)
    resumed.restore(str(tmp_path), CFG, world=1, steps_per_epoch=10)
    assert (resumed.start_epoch, resumed.resumed_epoch_steps, resumed.step) == (2, 3, 17)
    assert lines == ["[raysl] resuming run-a at epoch 3, after 3 of its steps (step 17)"]
    for a, b in zip(saved.method.state_dict().values(), resumed.method.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)
    # The resumed epoch reads past its 3 trained steps; the next ones start from the top.
    assert resumed.steps_trained(2) == 3 and resumed.steps_trained(3) == 0
    resumed.keep_start_logs(2, {})  # nothing redone at the resume: the checkpoint's stay
    assert resumed.start_logs == {"cluster/nmi_previous": 0.5}
    resumed.keep_start_logs(3, {})
    assert resumed.start_logs == {}


def test_an_epochs_end_checkpoint_keeps_no_start_of_epoch_metrics(tmp_path: Path):
    _state([], step=20, start_logs={"cluster/nmi_previous": 0.5}).checkpoint(
        str(tmp_path), last_epoch=1, epoch_steps=0)
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["start_logs"] == {} and state["epoch_steps"] == 0
    resumed = _state([])
    resumed.restore(str(tmp_path), CFG, world=1, steps_per_epoch=10)
    assert (resumed.start_epoch, resumed.resumed_epoch_steps) == (2, 0)


def test_a_checkpoint_holding_a_whole_epoch_of_this_run_resumes_at_the_next(tmp_path: Path):
    # Taken 6 steps into epoch 2; the data shrank since, so an epoch is now 6 steps.
    _state([], step=26).checkpoint(str(tmp_path), last_epoch=1, epoch_steps=6)
    resumed = _state([])
    resumed.restore(str(tmp_path), CFG, world=1, steps_per_epoch=6)
    assert (resumed.start_epoch, resumed.resumed_epoch_steps) == (3, 0)


def test_only_rank_0_writes(tmp_path: Path):
    assert _state([], rank=1).checkpoint(str(tmp_path), last_epoch=0, epoch_steps=0) is None
    assert list(tmp_path.iterdir()) == []
