"""Optimizer, step, checkpoint and resource planning: plain torch, no Ray cluster."""

import json
from pathlib import Path

import pytest
import torch

from raysl import config as C
from raysl.checkpoint import (
    ENCODER_FILE,
    METHOD_FILE,
    STATE_FILE,
    is_complete,
    load_strict,
    read_state,
    restore,
    save_checkpoint,
)
from raysl.cluster.nodes import DATA_MARKER, MARKER_REQUEST, TRAIN_MARKER, Node
from raysl.errors import CheckpointError, ConfigError, NonFiniteLossError
from raysl.methods.base import Progress, build_method
from raysl.schedules import set_lr
from raysl.train.optim import LARS, build_optimizer, param_groups, set_weight_decay
from raysl.train.step import autocast_dtype, forward_seed, memory_format, train_step
from raysl.train.trainer import plan_resources, torch_backend, worker_count

TINY = ["model.width=8", "model.small_stem=true", "data.channels=1", "data.image_size=16"]


def _method(extra=()):
    torch.manual_seed(0)
    cfg = C.load(None, TINY + list(extra))
    return cfg, build_method(cfg)


def _views(b=8):
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 256, (b, 1, 16, 16), dtype=torch.uint8, generator=g) for _ in range(2)]


@pytest.mark.parametrize("name", ["lars", "sgd", "adamw"])
def test_optimizers_reduce_the_loss(name):
    cfg, method = _method([f"optim.name={name}"])
    opt = build_optimizer(method, cfg.optim, lr=0.05 if name != "adamw" else 1e-3)
    views = _views()
    losses = [train_step(method, [views], opt, Progress(i, 15, 15)).loss for i in range(15)]
    assert losses[-1] < losses[0]


def test_memory_format_auto_is_channels_last_for_cnns_on_gpu_only():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert memory_format("auto", gpu, is_vit=False) == torch.channels_last
    assert memory_format("auto", gpu, is_vit=True) == torch.contiguous_format
    assert memory_format("auto", cpu, is_vit=False) == torch.contiguous_format
    assert memory_format("on", cpu, is_vit=True) == torch.channels_last
    assert memory_format("off", gpu, is_vit=False) == torch.contiguous_format


def test_channels_last_step_matches_the_contiguous_one():
    # The GPU path's layout, run on CPU: same loss, same update, weights kept NHWC.
    results = []
    for layout in (torch.contiguous_format, torch.channels_last):
        cfg, method = _method()
        method = method.to(memory_format=layout)
        opt = build_optimizer(method, cfg.optim, lr=0.05)
        views = [v.contiguous(memory_format=layout) for v in _views()]
        loss = train_step(method, [views], opt, Progress(0, 2, 2)).loss
        conv = next(p for p in method.parameters() if p.ndim == 4)
        results.append((loss, conv.detach().clone()))
        assert conv.is_contiguous(memory_format=layout)
    (loss_a, conv_a), (loss_b, conv_b) = results
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    torch.testing.assert_close(conv_a, conv_b, rtol=1e-4, atol=1e-5)


def test_bias_and_norm_excluded_from_decay_and_lars():
    cfg, method = _method()
    decay, no_decay = param_groups(method, cfg.optim)
    assert decay["decay"] is True and no_decay["decay"] is False
    assert all(p.ndim > 1 for p in decay["params"])
    assert all(p.ndim <= 1 for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0 and no_decay["lars_adapt"] is False


def test_lars_trust_ratio():
    w = torch.nn.Parameter(torch.full((4,), 2.0))  # ||w|| = 4
    w.grad = torch.full((4,), 0.5)  # ||g|| = 1
    LARS([w], lr=1.0, momentum=0.0, eta=0.1).step()
    # update = lr * eta * ||w|| / ||g|| * g = 0.4 * 0.5 per element
    torch.testing.assert_close(w.data, torch.full((4,), 2.0 - 0.2))


@pytest.mark.parametrize(("lr", "step"), [(0.5, 0.2), (0.1, 0.05)])
def test_clipped_lars_moves_a_tensor_by_eta_of_its_norm_or_by_sgd_if_less(lr, step):
    w = torch.nn.Parameter(torch.full((4,), 2.0))  # ||w|| = 4
    w.grad = torch.full((4,), 0.5)  # ||g|| = 1
    LARS([w], lr=lr, momentum=0.0, eta=0.1, clip=True).step()
    # ||step|| = min(eta * ||w||, lr * ||g||): 0.4 at lr 0.5 (LARS), 0.1 at lr 0.1 (plain SGD);
    # per element 0.2 or 0.05. Unclipped, lr 0.5 would move it lr * eta * ||w|| = 0.2 (0.1 each).
    torch.testing.assert_close(w.data, torch.full((4,), 2.0 - step))


def test_non_finite_loss_stops_before_the_update():
    cfg, method = _method()
    opt = build_optimizer(method, cfg.optim, lr=0.1)
    before = [p.detach().clone() for p in method.parameters()]
    bad = [torch.full((8, 1, 16, 16), float("nan")) for _ in range(2)]
    with pytest.raises(NonFiniteLossError, match="at step 7"):
        train_step(method, [bad], opt, Progress(7, 15, 15))
    assert all(torch.equal(a, b) for a, b in zip(before, method.parameters(), strict=False))


def test_bf16_autocast_path_runs_on_cpu():
    cfg, method = _method()
    opt = build_optimizer(method, cfg.optim, lr=0.01)
    loss = train_step(method, [_views()], opt, Progress(0, 1, 1), amp_dtype=torch.bfloat16).loss
    assert loss == loss  # finite
    cpu = torch.device("cpu")
    assert autocast_dtype("auto", cpu) is None and autocast_dtype("bf16", cpu) == torch.bfloat16


def test_checkpoint_round_trip_is_strict(tmp_path: Path):
    cfg, method = _method()
    opt = build_optimizer(method, cfg.optim, lr=0.1)
    train_step(method, [_views()], opt, Progress(0, 1, 1))
    save_checkpoint(tmp_path, method, method.encoder, opt, {"epoch": 3, "step": 42,
                                                           "config": cfg.to_dict()})
    assert {p.name for p in tmp_path.iterdir()} == {"encoder.pt", "method.pt", "optimizer.pt",
                                                    "state.json"}
    _, fresh = _method()
    fresh_opt = build_optimizer(fresh, cfg.optim, lr=0.1)
    state = restore(tmp_path, fresh, fresh_opt)
    assert state["epoch"] == 3 and C.Config.from_dict(state["config"]) == cfg
    for a, b in zip(method.state_dict().values(), fresh.state_dict().values(), strict=False):
        assert torch.equal(a, b)
    assert fresh_opt.state_dict()["state"].keys() == opt.state_dict()["state"].keys()


def test_strict_load_names_mismatched_keys(tmp_path: Path):
    cfg, method = _method()
    opt = build_optimizer(method, cfg.optim, lr=0.1)
    save_checkpoint(tmp_path, method, method.encoder, opt, {"epoch": 0})
    _, wider = _method(["model.width=12"])
    with pytest.raises(CheckpointError, match="size mismatch"):
        load_strict(wider.encoder, tmp_path / ENCODER_FILE)
    with pytest.raises(CheckpointError, match="Unexpected key"):
        load_strict(method.encoder, tmp_path / METHOD_FILE)


def test_checkpoint_files_are_tensors_only(tmp_path: Path):
    # weights_only=True refuses pickled code: a file holding an arbitrary object fails to load.
    torch.save({"x": torch.nn.Linear(2, 2)}, tmp_path / ENCODER_FILE)
    _, method = _method()
    with pytest.raises(Exception, match="Weights only load failed"):
        load_strict(method.encoder, tmp_path / ENCODER_FILE)


def test_incomplete_checkpoint_is_refused(tmp_path: Path):
    with pytest.raises(CheckpointError, match="not a complete raysl checkpoint"):
        read_state(tmp_path)
    (tmp_path / STATE_FILE).write_text(json.dumps({"epoch": 0}))
    assert read_state(tmp_path) == {"epoch": 0}


def test_a_checkpoint_lists_its_files_and_a_copy_cut_short_is_not_complete(tmp_path: Path):
    cfg, method = _method()
    optimizer = build_optimizer(method, cfg.optim, 0.1)
    save_checkpoint(tmp_path, method, method.encoder, optimizer, {"epoch": 0, "step": 3},
                    {"probe": {"w": torch.zeros(2)}})
    assert is_complete(tmp_path) and read_state(tmp_path) == {"epoch": 0, "step": 3}
    listed = json.loads((tmp_path / STATE_FILE).read_text())["files"]
    assert set(listed) == {ENCODER_FILE, METHOD_FILE, "optimizer.pt", "probe.pt"}
    # Ray Train copies a checkpoint file by file into place: cut short, or a file missing.
    data = (tmp_path / METHOD_FILE).read_bytes()
    (tmp_path / METHOD_FILE).write_bytes(data[: len(data) // 2])
    assert not is_complete(tmp_path)
    (tmp_path / METHOD_FILE).unlink()
    assert not is_complete(tmp_path)
    # One written before the list: its state.json is what there is to check.
    (tmp_path / STATE_FILE).write_text(json.dumps({"epoch": 0, "step": 3}))
    assert is_complete(tmp_path)


def _one_node(cpus: float, gpus: float = 0.0) -> list[Node]:
    return [Node(cpus, gpus)]


def test_resource_plan_keeps_cpu_for_ray_data():
    cfg = C.load(None, ["train.num_workers=2"])
    plan = plan_resources(cfg, _one_node(2))
    assert plan.cpus_per_worker == 0.5 and plan.threads_per_worker == 1
    assert 2 * plan.cpus_per_worker + cfg.train.data_cpus <= 2
    big = plan_resources(cfg, _one_node(16))
    assert big.cpus_per_worker == 7.5 and big.threads_per_worker == 7
    assert big.worker_resources() == {"CPU": 7.5} and big.augment_resources() == {}


@pytest.mark.parametrize(("overrides", "cpus", "gpus", "field"), [
    (["train.num_workers=4", "train.cpus_per_worker=1"], 2, 0, "train.num_workers"),
    (["train.data_cpus=2"], 2, 0, "train.num_workers"),
    (["train.use_gpu=true"], 8, 1, "train.num_workers"),
    (["data.augment_cpus=2"], 8, 0, "data.augment_cpus"),
])
def test_unschedulable_requests_fail_before_starting(overrides, cpus, gpus, field):
    with pytest.raises(ConfigError) as info:
        plan_resources(C.load(None, overrides), _one_node(cpus, gpus))
    assert info.value.field == field


def test_automatic_share_fits_every_worker_on_a_node():
    # A CPU head, one 48-CPU node with 4 GPUs, one 32-CPU node: (80 - 12) / 4 = 17 CPUs a
    # worker would fit only 2 workers on the GPU node; 12 CPUs fit all 4.
    nodes = [Node(0.0), Node(48.0, 4.0), Node(32.0)]
    cfg = C.load(None, ["train.num_workers=4", "train.use_gpu=true", "train.data_cpus=12"])
    plan = plan_resources(cfg, nodes)
    assert plan.cpus_per_worker == 12 and plan.gpus_per_worker == 1
    cpu_only = C.load(None, ["train.num_workers=3", "data.batch_size_global=255"])  # 2 CPU each
    assert plan_resources(cpu_only, [Node(4.0), Node(4.0)]).cpus_per_worker == 2
    assert plan_resources(cpu_only, _one_node(8)).cpus_per_worker == 2.33  # one node: no cap


@pytest.mark.parametrize(("overrides", "nodes", "field", "message"), [
    (["train.num_workers=2", "train.cpus_per_worker=20"], [Node(16.0), Node(16.0), Node(16.0)],
     "train.cpus_per_worker", r"2 worker\(s\) of 20 CPU each do not fit on the nodes \(16 CPU, "
                              r"16 CPU, 16 CPU\); a worker runs on one node. At most 16 CPU"),
    (["train.num_workers=2", "train.use_gpu=true"], [Node(8.0, 1.0), Node(8.0, 1.0), Node(8.0)],
     None, None),
])
def test_requests_that_fit_no_node_fail_before_starting(overrides, nodes, field, message):
    cfg = C.load(None, overrides)
    if field is None:  # fits: one GPU worker on each GPU node
        assert plan_resources(cfg, nodes).cpus_per_worker <= 8
        return
    with pytest.raises(ConfigError, match=message) as info:
        plan_resources(cfg, nodes)
    assert info.value.field == field


def test_an_elastic_run_starts_when_its_fewest_workers_fit():
    # Spot GPU nodes: 2 of the 4 GPUs are up. A fixed run of 4 cannot start; an elastic one
    # (min_workers=2) starts with the 2 that fit, at the share planned for 4.
    fixed = C.load(None, ["train.num_workers=4", "train.use_gpu=true"])
    with pytest.raises(ConfigError, match=r"the cluster has 2 GPU\(s\)"):
        plan_resources(fixed, [Node(16.0, 2.0)])
    elastic = C.load(None, ["train.num_workers=4", "train.min_workers=2", "train.use_gpu=true",
                            "data.batch_size_global=240"])
    plan = plan_resources(elastic, [Node(16.0, 2.0)])
    assert plan.cpus_per_worker == 3.75 and worker_count(elastic) == (2, 4)
    assert worker_count(fixed) == 4 and "2-4 (elastic) train worker(s)" in plan.describe(elastic)
    with pytest.raises(ConfigError, match=r"2 worker\(s\) of 5 CPU each do not fit"):
        plan_resources(C.load(None, ["train.num_workers=4", "train.min_workers=2",
                                     "train.cpus_per_worker=5", "data.batch_size_global=240"]),
                       [Node(4.0), Node(4.0), Node(4.0)])


HEAD = Node(0.0, host="10.0.0.1")
GPU_NODE = Node(48.0, 4.0, "10.0.0.2", frozenset({TRAIN_MARKER}))
DATA_NODE = Node(32.0, 0.0, "10.0.0.3", frozenset({DATA_MARKER}))


def test_node_types_pin_workers_to_train_nodes_and_augmentation_to_data_nodes():
    cfg = C.load(None, ["train.num_workers=4", "train.use_gpu=true", "data.augment_cpus=2"])
    plan = plan_resources(cfg, [HEAD, GPU_NODE, DATA_NODE, DATA_NODE])
    # The data nodes do the augmenting, so the workers share all of the GPU node's CPUs.
    assert plan.cpus_per_worker == 12 and plan.augment_tasks == 32
    assert plan.worker_resources() == {"CPU": 12, "GPU": 1, TRAIN_MARKER: MARKER_REQUEST}
    assert plan.augment_resources() == {DATA_MARKER: MARKER_REQUEST}
    assert "on the train_node nodes" in plan.describe(cfg)


def test_without_data_nodes_the_train_nodes_keep_cpu_for_ray_data():
    # cluster.yaml's data nodes autoscale from 0: augmentation then runs beside the workers.
    cfg = C.load(None, ["train.num_workers=4", "train.use_gpu=true", "train.data_cpus=8"])
    plan = plan_resources(cfg, [HEAD, GPU_NODE])
    assert plan.cpus_per_worker == 10 and plan.augment_tasks == 8 / cfg.data.augment_cpus
    assert plan.augment_resources() == {} and TRAIN_MARKER in plan.worker_resources()


def test_node_markers_off_or_absent_leave_placement_to_ray():
    cfg = C.load(None, ["train.num_workers=4", "train.use_gpu=true", "train.node_markers=false"])
    plan = plan_resources(cfg, [HEAD, GPU_NODE, DATA_NODE])
    assert plan.worker_resources() == {"CPU": 12, "GPU": 1} and plan.augment_resources() == {}
    # A data marker alone does not pin augmentation: the workers could fill those nodes' CPUs.
    unmarked_gpu = Node(48.0, 4.0, "10.0.0.2")
    plan = plan_resources(C.load(None, ["train.num_workers=2"]), [unmarked_gpu, DATA_NODE])
    assert plan.augment_resources() == {} and plan.train_marker == ""


def test_the_train_nodes_alone_must_hold_the_workers():
    cfg = C.load(None, ["train.num_workers=8", "train.use_gpu=true"])
    with pytest.raises(ConfigError, match=r"the cluster has 4 GPU\(s\) on the 1 train_node "):
        plan_resources(cfg, [HEAD, GPU_NODE, Node(8.0, 4.0, "10.0.0.9")])
    big_tasks = C.load(None, ["data.augment_cpus=64", "train.data_cpus=64"])
    with pytest.raises(ConfigError, match="data node CPUs") as info:
        plan_resources(big_tasks, [HEAD, GPU_NODE, DATA_NODE])
    assert info.value.field == "data.augment_cpus"


def test_biases_and_norms_take_their_share_of_the_learning_rate():
    cfg, method = _method(["optim.bias_norm_lr_scale=0.024"])  # Barlow Twins: 0.0048 / 0.2
    opt = build_optimizer(method, cfg.optim, lr=0.2)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.2, 0.0048])
    set_lr(opt, 0.1)  # the schedule moves both, keeping the ratio
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1, 0.0024])


def test_bias_norm_lr_scale_needs_its_own_group():
    with pytest.raises(C.ConfigError) as info:
        C.load(None, ["optim.exclude_bias_and_norm=false", "optim.bias_norm_lr_scale=0.5"])
    assert info.value.field == "optim.bias_norm_lr_scale"


@pytest.mark.parametrize("fix", [True, False])
def test_simsiam_predictor_keeps_its_peak_learning_rate(fix):
    cfg, method = _method(["method.name=simsiam", f"method.fix_pred_lr={str(fix).lower()}"])
    opt = build_optimizer(method, cfg.optim, lr=0.5, fixed_lr=method.fixed_lr_parameters())
    set_lr(opt, 0.01)  # somewhere in the warm-up or the cosine
    predictor = {id(p) for p in method.predictor.parameters()}
    for group in opt.param_groups:
        in_predictor = {id(p) in predictor for p in group["params"]}
        if fix:  # the predictor in groups of its own, at the peak; the rest scheduled
            assert len(in_predictor) == 1
        assert group["lr"] == pytest.approx(0.5 if fix and in_predictor == {True} else 0.01)
    assert sum(len(g["params"]) for g in opt.param_groups) == sum(
        1 for p in method.parameters() if p.requires_grad)


def test_weight_decay_schedule_sets_the_decayed_group_only():
    cfg, method = _method()
    opt = build_optimizer(method, cfg.optim, lr=0.1)
    set_weight_decay(opt, 0.3)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.3, 0.0]


def test_gradient_clipping_bounds_the_update():
    _, method = _method()
    opt = torch.optim.SGD(method.parameters(), lr=1.0)
    before = [p.detach().clone() for p in method.parameters()]
    result = train_step(method, [_views()], opt, Progress(0, 1, 1), clip_grad=1e-3)
    assert result.grad_norm > 1e-3  # it was clipped
    moved = torch.cat([(p.detach() - b).flatten() for p, b in zip(method.parameters(), before,
                                                                  strict=True)])
    assert moved.norm() == pytest.approx(1e-3, rel=1e-3)  # lr 1: the step is the clipped gradient


def test_per_parameter_clipping_bounds_each_tensor():
    _, method = _method()
    opt = torch.optim.SGD(method.parameters(), lr=1.0)
    before = [p.detach().clone() for p in method.parameters()]
    train_step(method, [_views()], opt, Progress(0, 1, 1), clip_grad=1e-3, clip_per_param=True)
    steps = [(p.detach() - b).norm() for p, b in zip(method.parameters(), before, strict=True)]
    assert max(steps) <= 1e-3 * (1 + 1e-4)
    assert sum(s > 0.99e-3 for s in steps) > 1  # several tensors clipped, each to the bound


def test_gpu_workers_talk_nccl_and_cpu_workers_gloo():
    assert torch_backend(C.load(None, ["train.use_gpu=true"])) == "nccl"
    assert torch_backend(C.load(None, [])) == "gloo"


def test_a_collapse_after_warm_up_warns_once_and_tags_the_run(tmp_path):
    """The warning path of the label-free monitors (the stop path: test_pretrain_e2e)."""
    from types import SimpleNamespace

    from mlflow.tracking import MlflowClient

    from raysl.errors import RepresentationCollapsed
    from raysl.eval.monitors import Collapse
    from raysl.tracking.mlflow import Tracker
    from raysl.train.watch import Watchers

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("c")).info.run_id
    cfg = C.load(None, [*TINY, "method.name=byol", "optim.warmup_epochs=2"])
    lines: list[str] = []
    log = SimpleNamespace(say=lines.append, tracker=Tracker(uri, run_id, active=True))
    w = Watchers(cfg, method=None, device=torch.device("cpu"), rank=0, log=log)
    seen = [Collapse("complete", "encoder", 1.0, 64, 0.001)]
    w.react_to_collapse(0, seen)  # epoch 1 of a 2-epoch warm-up: not judged yet
    assert lines == []
    w.react_to_collapse(1, [])
    w.react_to_collapse(1, seen)
    w.react_to_collapse(2, seen)
    assert len(lines) == 1, lines  # one line, not one per epoch
    assert lines[0].startswith("[raysl] WARNING: epoch 2: complete collapse of the encoder's "
                               "embeddings (RankMe 1.0 of 64, std 0.001). For byol this usually "
                               "means a target momentum too low")
    assert "train.stop_on_collapse=true" in lines[0]
    assert client.get_run(run_id).data.tags["raysl.collapse"].startswith("epoch 2: complete")
    w.cfg = C.load(None, [*TINY, "method.name=byol", "train.stop_on_collapse=true",
                          "optim.warmup_epochs=0"])
    with pytest.raises(RepresentationCollapsed, match=r"stopped: train\.stop_on_collapse"):
        w.react_to_collapse(0, seen)


def test_each_rank_and_each_resume_draws_its_own_masks():
    # The weights start equal on every rank (seeded before); the in-model randomness must not:
    # with one seed for all, sample i of every rank would get the same MAE mask.
    from raysl.methods.mae import random_masking

    def masks(rank: int, step: int) -> torch.Tensor:
        torch.manual_seed(forward_seed(0, rank, step))
        return random_masking(4, 16, 4, torch.device("cpu"))[1]

    assert torch.equal(masks(0, 0), masks(0, 0))  # reproducible
    assert not torch.equal(masks(0, 0), masks(1, 0))  # ranks differ
    assert not torch.equal(masks(0, 0), masks(0, 10))  # a resume does not replay step 0
    assert len({forward_seed(s, r, t) for s in range(3) for r in range(8) for t in range(50)}) \
        == 3 * 8 * 50


def test_probe_and_grad_scaler_state_come_back_exactly(tmp_path: Path):
    """A resumed run's online probe goes on from its weights and momentum, and fp16's loss
    scale from its value and growth tracker: every tensor equal to the saved one."""
    from raysl.checkpoint import load_extra
    from raysl.eval.online import OnlineProbe

    cfg, method = _method()
    opt = build_optimizer(method, cfg.optim, lr=0.1)
    probe = OnlineProbe(method, method.encoder, method.encoder.num_features, 3, 0.1)
    train_step(method, [_views()], opt, Progress(0, 1, 1))
    probe.step([torch.arange(len(_views())) % 3])  # one probe step: momentum buffers exist
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=7)
    save_checkpoint(tmp_path, method, method.encoder, opt, {"epoch": 0},
                    {"probe": probe.training_state(), "scaler": scaler.state_dict()})
    assert {"probe.pt", "scaler.pt"} <= {p.name for p in tmp_path.iterdir()}

    _, fresh = _method()
    fresh_probe = OnlineProbe(fresh, fresh.encoder, fresh.encoder.num_features, 3, 0.1)
    saved = load_extra(tmp_path, "probe")
    assert saved is not None
    fresh_probe.load_training_state(saved)
    for a, b in zip(probe.head.state_dict().values(), fresh_probe.head.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)
    momentum = [s["momentum_buffer"] for s in probe.optimizer.state_dict()["state"].values()]
    restored = [s["momentum_buffer"]
                for s in fresh_probe.optimizer.state_dict()["state"].values()]
    assert momentum and all(torch.equal(a, b) for a, b in zip(momentum, restored, strict=True))
    fresh_scaler = torch.amp.GradScaler("cpu")
    fresh_scaler.load_state_dict(load_extra(tmp_path, "scaler") or {})
    assert fresh_scaler.get_scale() == 1024.0 and fresh_scaler.get_growth_interval() == 7
    assert load_extra(tmp_path, "absent") is None


def test_an_epochs_time_is_split_into_data_communication_and_compute():
    from raysl.train.log import EpochStats
    split = EpochStats(seconds=10.0, data_wait_s=1.0, comm_s=3.0).breakdown()
    assert split == pytest.approx({"train/data_wait_fraction": 0.1, "train/comm_fraction": 0.3,
                                   "train/compute_fraction": 0.6})
    # DDP's all-reduce overlaps backward; the overlap is never counted twice into a negative.
    assert EpochStats(seconds=1.0, data_wait_s=0.5, comm_s=0.7).breakdown()[
        "train/compute_fraction"] == 0.0


def test_tracking_calls_the_server_did_not_take_are_kept_by_the_checkpoint(tmp_path: Path):
    """A worker group restarted while the tracking server is away: rank 0's unsent calls go
    into the checkpoint and the restarted rank 0 queues them again, in order."""
    from types import SimpleNamespace

    from raysl.checkpoint import load_extra
    from raysl.tracking.buffered import BufferedTracker
    from raysl.train.state import TRACKING_FILE, TrainState
    from tests.processes import free_port

    down = f"http://127.0.0.1:{free_port()}"  # nothing listens: every send fails, and waits
    cfg, method = _method()
    optimizer = build_optimizer(method, cfg.optim, 0.1)

    def worker() -> TrainState:
        lines: list[str] = []
        tracker = BufferedTracker(down, "0" * 32, active=True, retry_s=30, warn=lines.append)
        log = SimpleNamespace(tracker=tracker, lines=lines, say=lines.append)
        return TrainState(method, optimizer, scaler=None, probe=None, log=log, rank=0,
                          run_config={}, run_name="r", mlflow_run_id="0" * 32)

    killed = worker()
    killed.log.tracker.log_metrics({"cluster/nmi_labels": 0.3}, step=1)
    killed.log.tracker.set_tags({"raysl.note": "during the outage"})
    killed.log.tracker.log_files({"clusters/sizes.txt": "10 12"})
    save_checkpoint(tmp_path, method, method.encoder, optimizer, {"epoch": 0}, killed.extras())
    assert len((load_extra(tmp_path, TRACKING_FILE) or {})["calls"]) == 3

    restarted = worker()
    restarted.restore_extras(str(tmp_path), "byol", world=1)
    assert restarted.log.tracker.unsent() == killed.log.tracker.unsent()
    assert "3 tracking call(s) the tracking server had not received" in restarted.log.lines[0]
    assert TRACKING_FILE not in worker().extras()  # nothing unsent: nothing kept
