"""Every registered method, automatically, on a tiny ResNet and a tiny ViT.

One optimizer step through ``train_step`` (the code the Ray workers run): the loss is finite,
every online parameter gets a gradient, momentum (EMA) copies get none and move after the step.
"""

import dataclasses
from pathlib import Path

import pytest
import torch

from raysl import catalog, methods
from raysl import config as C
from raysl.data.views import make_columns
from raysl.errors import ConfigError
from raysl.eval.online import LabelFreeMonitor
from raysl.methods.base import EpochData, EpochStart, Progress, SSLMethod, build_method
from raysl.nn.backbones import build_encoder
from raysl.train.optim import build_optimizer
from raysl.train.step import train_step
from tests.methods.teachers import tiny_teacher

del methods  # registers them
NAMES = catalog.names("method")
BACKBONES = {
    "resnet": ["model.width=8", "model.small_stem=true"],
    "vit": ["model.backbone=vit_tiny", "model.width=32", "model.depth=2", "model.patch_size=4"],
}
HEAD_DIM = 32


def tiny_config(name: str, backbone: str = "", extra: tuple[str, ...] = ()) -> C.Config:
    """``name`` at toy size: 32 px RGB, batch 8, every ``*_dim`` of its config shrunk.

    ``backbone``: a key of BACKBONES; "" = the ResNet, or the ViT for a ViT-only method.
    """
    backbone = backbone or ("vit" if catalog.get("method", name).vit_only else "resnet")
    teacher = ([f"method.teacher={tiny_teacher()}"] if catalog.get("method", name).takes_teacher
               else [])
    base = [*BACKBONES[backbone], "data.image_size=32", "data.batch_size_global=8",
            "train.num_workers=1", f"method.name={name}", *teacher, *extra]
    cfg = C.load(None, base)
    dims = [f"method.{f.name}={HEAD_DIM}" for f in dataclasses.fields(cfg.method)
            if f.name.endswith("_dim") and getattr(cfg.method, f.name) > HEAD_DIM]
    queue = ["method.queue_size=64"] if hasattr(cfg.method, "queue_size") else []
    clusters = ["method.num_clusters=4"] if hasattr(cfg.method, "num_clusters") else []
    return C.load(None, base + dims + queue + clusters)


def tiny_batch(cfg: C.Config, b: int = 8, seed: int = 0
               ) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """Views and targets of ``b`` random images, made by the data path (``make_columns``)."""
    g = torch.Generator().manual_seed(seed)
    size = cfg.data.image_size + 8
    images = torch.randint(0, 256, (b, cfg.data.channels, size, size), dtype=torch.uint8,
                           generator=g)
    columns = make_columns(images, cfg.data, g)
    views = [columns.pop(f"view{i}") for i in range(len(cfg.view_sizes))]
    columns["index"] = torch.arange(b)  # every source's row index, passed through the views
    return views, columns


def start_epoch(method: SSLMethod, cfg: C.Config, b: int = 8, seed: int = 0) -> EpochStart:
    """The method's start-of-epoch work on ``b`` whole images (DeepCluster clusters them)."""
    g = torch.Generator().manual_seed(seed)
    size = cfg.data.image_size
    images = torch.randint(0, 256, (b, cfg.data.channels, size, size), dtype=torch.uint8,
                           generator=g)
    return method.on_epoch_start(EpochData(0, lambda: [{"image": images,
                                                        "index": torch.arange(b)}], seed))


def read_by(method: SSLMethod, targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The target columns ``method`` declares, as the train loop passes them."""
    assert set(method.target_columns) <= set(targets)  # the data path makes what it reads
    return {c: targets[c] for c in method.target_columns}


def tiny_views(cfg: C.Config, b: int = 8, seed: int = 0) -> list[torch.Tensor]:
    return tiny_batch(cfg, b, seed)[0]


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
@pytest.mark.parametrize("name", NAMES)
def test_every_method_trains_one_step(name, backbone):
    if backbone == "resnet" and catalog.get("method", name).vit_only:
        with pytest.raises(ConfigError) as info:
            tiny_config(name, backbone)
        assert info.value.field == "model.backbone" and "a ViT" in str(info.value)
        return
    cfg = tiny_config(name, backbone)
    torch.manual_seed(0)
    method = build_method(cfg)
    assert method.paper and method.summary and method.Config is type(cfg.method)
    online = {n: p for n, p in method.named_parameters() if p.requires_grad}
    frozen = {n: p for n, p in method.named_parameters() if not p.requires_grad}
    frozen_before = {n: p.detach().clone() for n, p in frozen.items()}
    grads = {}

    def keep_grads(progress: Progress) -> None:
        grads.update({n: p.grad for n, p in method.named_parameters()})
    method.on_after_backward = keep_grads  # type: ignore[method-assign]  # record, not skip

    opt = build_optimizer(method, dataclasses.replace(cfg.optim, name="sgd"), lr=0.1)
    views, targets = tiny_batch(cfg)
    start_epoch(method, cfg)
    result = train_step(method, [views], opt, Progress(0, 100, 10),
                        targets=[read_by(method, targets)])

    assert torch.isfinite(torch.tensor(result.loss))
    assert all(grads[n] is not None for n in online), [n for n in online if grads[n] is None]
    assert any(grads[n].abs().sum() > 0 for n in online if n.startswith("encoder."))
    assert all(grads[n] is None for n in frozen)
    if frozen:  # the EMA copies moved towards the updated online weights
        assert any(not torch.equal(frozen_before[n], p) for n, p in frozen.items()), name


@pytest.mark.parametrize("name", NAMES)
def test_ema_copies_mirror_online_modules(name):
    method = build_method(tiny_config(name))
    frozen = [n for n, p in method.named_parameters() if not p.requires_grad]
    # A parameter of the method itself (DINOv2's mask token) has no module prefix: not an EMA's.
    online = {n for n, p in method.named_parameters() if p.requires_grad and "." in n}
    # Every momentum parameter shadows an online one of the same shape (nothing else is frozen).
    for n in frozen:
        assert any(n.split(".", 1)[1] == o.split(".", 1)[1] for o in online), n


@pytest.mark.parametrize("name", NAMES)
def test_every_method_is_monitored_on_its_encoder_and_projector(name):
    """The label-free monitors of every method: its exported encoder and projector, and a hint."""
    cfg = tiny_config(name, extra=("eval.monitor_views=2", "eval.batch_size=5"))
    method = build_method(cfg)
    assert len(method.collapse_hint) > 20, name
    images = torch.randint(0, 256, (6, 40, 40, 3), dtype=torch.uint8).numpy()
    values, _ = LabelFreeMonitor(images, cfg, 0, 1).measure(method, torch.device("cpu"))
    assert 1 <= values["eval/rankme"] <= 6 and 1 <= values["eval/lidar"] <= 6
    # Every joint-embedding method has a projection head (DINO: its MLP up to the bottleneck),
    # and DeepCluster the MLP it clusters; the predictive ones (one view) have a classifier or
    # decoder, not monitored.
    head = method.exported_projector()
    if method.global_views == 2 or head is not None:
        assert head is not None and 1 <= values["eval/rankme_projector"] <= 6, name
    else:
        assert "eval/rankme_projector" not in values


@pytest.mark.parametrize("name", NAMES)
def test_every_method_has_a_shipped_config(name):
    shipped = [p for p in Path("pipelines/configs").glob("*.yaml")
               if C.load(p).method.name == name]
    assert shipped, f"no pipelines/configs/*.yaml for method {name}"


# The training-only parts of the methods (raysl/methods/*.py): decoders, classifiers, pretext
# and projection heads, predictors, prototypes, and the EMA copies of the heads.
TRAINING_ONLY = ("decoder", "classifier", "tile_head", "head", "patch_head", "teacher_head",
                 "projector", "projection", "predictor", "prototypes", "target_projector",
                 "momentum_projector")
ENCODERS = ("encoder", "teacher_encoder", "target_encoder", "momentum_encoder")


@pytest.mark.parametrize("name", NAMES)
def test_the_exported_encoder_carries_no_training_only_head(name):
    cfg = tiny_config(name)
    method = build_method(cfg)
    children = dict(method.named_children())
    assert set(children) <= {*ENCODERS, *TRAINING_ONLY}, name  # every part is known here
    assert set(children) & set(TRAINING_ONLY), name
    exported = method.exported_encoder()
    # The method's backbone (DINO: the teacher's), with exactly a fresh backbone's weights.
    assert any(exported is children.get(n) for n in ("encoder", "teacher_encoder")), name
    keys = set(exported.state_dict())
    assert keys == set(build_encoder(cfg.model, cfg.data.channels,
                                     cfg.data.image_size).state_dict()), name
    assert not {k.split(".", 1)[0] for k in keys} & set(TRAINING_ONLY), name
    # No tensor of a training-only part is reachable from it either.
    exported_ptrs = {t.data_ptr() for t in exported.state_dict().values() if t.numel()}
    for part in TRAINING_ONLY:
        if part in children:
            ptrs = {t.data_ptr() for t in children[part].state_dict().values() if t.numel()}
            assert ptrs and not ptrs & exported_ptrs, (name, part)


def test_unknown_method_lists_known():
    known = r"method.name.*must be one of \['autoencoder', 'barlow_twins'"
    with pytest.raises(ConfigError, match=known):
        C.load(None, ["method.name=byoll"])


def test_methods_take_their_augmentation_preset():
    assert C.load(None, ["method.name=byol"]).data.views.solarize_p == (0.0, 0.2)
    dino = C.load(None, ["method.name=dino"])
    assert dino.data.preset == "dino" and dino.data.views.local_crops == 8
    assert dino.view_sizes == [224, 224] + [96] * 8
    # A user's field wins over the preset's; another preset can be named.
    assert C.load(None, ["method.name=dino", "data.views.local_crops=2"]).view_sizes[2:] == [96] * 2
    assert C.load(None, ["method.name=byol", "data.preset=simclr"]).data.views.solarize_p == (0, 0)


@pytest.mark.parametrize(("overrides", "field"), [
    (["method.name=byol", "data.views.local_crops=4"], "data.views.local_crops"),
    (["method.name=simclr", "data.preset=dino"], "data.views.local_crops"),
    (["method.name=byol", "method.momentum_start=1.2"], "method.momentum_start"),
    (["method.name=dino", "method.momentum_start=-0.1"], "method.momentum_start"),
    (["method.name=byol", "method.momentum_start=0.999", "method.momentum_end=0.99"],
     "method.momentum_end"),
    (["method.name=moco_v2", "method.queue_size=128", "data.batch_size_global=256",
      "train.num_workers=2"], "method.queue_size"),
    (["method.name=moco_v2", "method.bn_splits=3"], "method.bn_splits"),
    (["method.name=swav", "method.queue_length=100"], "method.queue_length"),
    (["method.name=nnclr", "method.support_size=100"], "method.support_size"),
    (["method.name=nnclr", "method.temperature=0"], "method.temperature"),
    (["model.backbone=vit_small", "model.small_stem=true"], "model.small_stem"),
    (["train.sync_bn=true", "train.num_workers=2"], "train.sync_bn"),
    (["model.backbone=resnet18", "model.patch_size=4"], "model.patch_size"),
    (["model.backbone=vit_tiny", "data.image_size=28"], "data.image_size"),
    (["model.backbone=vit_tiny", "model.width=129"], "model.width"),
    (["data.batch_size_global=30", "train.num_workers=2", "train.grad_accumulation=4"],
     "data.batch_size_global"),
])
def test_config_time_errors_name_the_field(overrides, field):
    with pytest.raises(ConfigError) as info:
        C.load(None, overrides)
    assert info.value.field == field, str(info.value)


def test_grad_accumulation_matches_one_big_batch_for_per_sample_losses():
    # SimSiam's loss is a mean over samples, so 2 micro-batches of 4 equal 1 batch of 8 when the
    # heads have no BatchNorm coupling the samples: compare gradients on a BN-free ViT.
    cfg = tiny_config("simsiam", "vit", ("method.proj_layers=2",))
    views = tiny_views(cfg)
    grads = []
    for micro in ([views], [[v[:4] for v in views], [v[4:] for v in views]]):
        torch.manual_seed(0)
        method = build_method(cfg).eval()  # eval: BatchNorm uses running stats, no coupling
        opt = torch.optim.SGD(method.parameters(), lr=0.0)
        train_step(method, micro, opt, Progress(0, 1, 1))
        grads.append([p.grad.clone() for p in method.parameters() if p.grad is not None])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("name", "frozen_attr", "epochs_field"), [
    ("dino", "head.last_layer.weight", "freeze_last_layer_epochs"),
    ("swav", "prototypes.weight", "freeze_prototypes_epochs"),
])
def test_frozen_at_first_then_trained(name, frozen_attr, epochs_field):
    cfg = tiny_config(name)
    assert getattr(cfg.method, epochs_field) == 1.0
    for step, should_move in ((5, False), (15, True)):  # 10 steps per epoch: epoch 0.5, 1.5
        torch.manual_seed(0)
        method = build_method(cfg)
        param = method.get_parameter(frozen_attr)
        before = param.detach().clone()
        opt = torch.optim.SGD(method.parameters(), lr=0.5)
        train_step(method, [tiny_views(cfg)], opt, Progress(step, 100, 10))
        moved = not torch.allclose(before, param)
        assert moved == should_move, (name, step)


def test_dino_teacher_temperature_warms_up_linearly():
    cfg = C.load(None, ["method.name=dino", "method.warmup_teacher_temp=0.04",
                        "method.teacher_temp=0.07", "method.warmup_teacher_temp_epochs=30"])
    m = cfg.method
    assert m.teacher_temp_at(0) == pytest.approx(0.04)  # type: ignore[attr-defined]
    assert m.teacher_temp_at(15) == pytest.approx(0.055)  # type: ignore[attr-defined]
    assert m.teacher_temp_at(30) == m.teacher_temp_at(100) == 0.07  # type: ignore[attr-defined]


def test_ema_momentum_follows_the_cosine_schedule():
    cfg = tiny_config("byol", extra=("method.momentum_start=0.5", "method.momentum_end=1.0"))
    torch.manual_seed(0)
    method = build_method(cfg)
    target = method.get_submodule("target_encoder")
    for progress, m in ((Progress(0, 10, 10), 0.5), (Progress(10, 10, 10), 1.0)):
        before = [p.detach().clone() for p in target.parameters()]
        with torch.no_grad():
            for p in method.encoder.parameters():
                p.add_(1.0)  # online moved by +1 everywhere
        method.on_step_end(progress)
        for b, p, o in zip(before, target.parameters(), method.encoder.parameters(), strict=True):
            torch.testing.assert_close(p, m * b + (1 - m) * o)


def test_moco_v2_keys_ignore_the_shuffle_without_bn_splits():
    # With one BatchNorm chunk the shuffle permutes rows only; keys come back in input order.
    cfg = tiny_config("moco_v2", extra=("method.bn_splits=1",))
    torch.manual_seed(0)
    method = build_method(cfg)
    x = tiny_views(cfg)[0]
    with torch.no_grad():
        expected = torch.nn.functional.normalize(
            method.momentum_projector(method.momentum_encoder(x)), dim=1)
        torch.testing.assert_close(method._key(x), expected, rtol=1e-4, atol=1e-5)


def test_dino_exports_the_teacher_unless_asked_otherwise():
    method = build_method(tiny_config("dino"))
    assert method.exported_encoder() is method.get_submodule("teacher_encoder")
    student = build_method(tiny_config("dino", extra=("method.export_teacher=false",)))
    assert student.exported_encoder() is student.encoder
    byol = build_method(tiny_config("byol"))
    assert byol.exported_encoder() is byol.encoder


@pytest.mark.parametrize("name", NAMES)
def test_every_method_steps_under_bf16_autocast(name):
    # The GPU mixed-precision path, exercised on CPU: finite loss, fp32 weights and EMA copies.
    cfg = tiny_config(name)
    torch.manual_seed(0)
    method = build_method(cfg)
    opt = torch.optim.SGD(method.parameters(), lr=0.01)
    views, targets = tiny_batch(cfg)
    start_epoch(method, cfg)
    result = train_step(method, [views], opt, Progress(0, 100, 10), amp_dtype=torch.bfloat16,
                        targets=[read_by(method, targets)])
    assert torch.isfinite(torch.tensor(result.loss))
    assert all(p.dtype == torch.float32 for p in method.parameters())
    assert all(b.dtype != torch.bfloat16 for b in method.buffers())


# The reference code of these passes each view through the encoder on its own (f(y1), f(y2)), so
# BatchNorm normalises a view over its own batch; SimCLR's concatenates them (one 2B batch).
ONE_PASS_PER_VIEW = [
    "barlow_twins", "byol", "moco_v2", "moco_v3", "nnclr", "simsiam", "vicreg"]


def first_view_features(name: str, views: list[torch.Tensor]) -> torch.Tensor:
    """What the (online) encoder gives the first view in a training forward, BatchNorm live."""
    torch.manual_seed(0)
    method = build_method(tiny_config(name))
    seen: list[torch.Tensor] = []
    method.encoder.register_forward_hook(lambda m, args, out: seen.append(out.detach()))
    method(views, Progress(0, 100, 10))
    return seen[0][: views[0].shape[0]]


@pytest.mark.parametrize("name", [*ONE_PASS_PER_VIEW, "simclr"])
def test_batchnorm_sees_one_view_at_a_time_where_the_paper_does(name):
    cfg = tiny_config(name)
    a, b = tiny_views(cfg, seed=1)
    c = 255 - b  # another second view
    same = torch.allclose(first_view_features(name, [a, b]), first_view_features(name, [a, c]))
    assert same == (name in ONE_PASS_PER_VIEW)
