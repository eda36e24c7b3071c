"""Distillation: the loss as FitNets/LightlyTrain write it, a teacher that is never trained or
saved, its own preprocessing, and a teacher that cannot teach refused by name."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from raysl import config as C
from raysl.errors import ConfigError
from raysl.losses import feature_distillation, standardised_targets
from raysl.methods.base import Progress, build_method, teacher_from_checkpoint
from raysl.methods.distill import Distill
from raysl.serving.init_from import resolve_teacher
from tests.methods.teachers import VIT, tiny_teacher
from tests.serving.registered import NAME, register_tiny_encoder


def _config(teacher: str, *extra: str, vit: bool = False, size: int = 32) -> C.Config:
    model = [*VIT, "model.patch_size=8"] if vit else ["model.width=8", "model.small_stem=true"]
    return C.load(None, [*model, f"data.image_size={size}", "data.batch_size_global=4",
                         "train.num_workers=1", "method.name=distill",
                         f"method.teacher={teacher}", *extra])


def test_feature_distillation_is_the_mean_squared_error_of_every_element():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    total = 0.0
    for i in range(3):  # FitNets' hint loss, Eq. 2, summed by hand: (1/N) sum_i sum_j (s - t)^2
        for j in range(5):
            total += (float(student[i, j]) - float(teacher[i, j])) ** 2
    assert float(feature_distillation(student, teacher)) == pytest.approx(total / 15, rel=1e-6)
    teacher.requires_grad_(True)
    feature_distillation(student.requires_grad_(True), teacher).backward()
    assert teacher.grad is None or not teacher.grad.any()  # no gradient into the teacher


def test_standardised_targets_match_a_loop_transcription():
    g = torch.Generator().manual_seed(0)
    for shape in [(6, 4), (3, 4, 2, 2)]:  # features; patch features, over batch and positions
        t = torch.rand(*shape, generator=g, dtype=torch.float64) * 5
        t[:, 1] = 2.0  # a feature constant over the batch (a dead ReLU) becomes 0
        values: list[list[float]] = [[] for _ in range(shape[1])]
        for index in torch.cartesian_prod(*[torch.arange(n) for n in shape]):
            values[int(index[1])].append(float(t[tuple(index)]))
        expected = torch.empty(shape, dtype=torch.float64)
        for index in torch.cartesian_prod(*[torch.arange(n) for n in shape]):
            column = values[int(index[1])]
            mean = sum(column) / len(column)
            var = sum((v - mean) ** 2 for v in column) / len(column)  # biased, as BatchNorm
            expected[tuple(index)] = (float(t[tuple(index)]) - mean) / (var + 1e-5) ** 0.5
        got = standardised_targets(t.requires_grad_(True))
        torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)
        assert not got.requires_grad and not got[:, 1].any()


def test_a_student_identical_to_its_teacher_has_zero_loss_on_class_tokens_and_patches():
    teacher_dir = tiny_teacher(vit=True, patch=8)
    method = build_method(_config(teacher_dir, "method.standardise=false", vit=True))
    assert isinstance(method, Distill) and method.patch_head is not None
    # The student made a copy of the teacher and both projections the identity.
    method.encoder.load_state_dict(method.teacher.state_dict())
    with torch.no_grad():
        for head in (method.head, method.patch_head):
            head.weight.copy_(torch.eye(32))
            head.bias.zero_()
    views = [torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8) for _ in range(2)]
    out = method(views, Progress(0, 10, 10))
    assert float(out.loss.detach()) == pytest.approx(0.0, abs=1e-10)
    assert set(out.logs) == {"distill/global", "distill/patch"}
    # Another student: both terms, averaged over the views, the patch term weighted.
    torch.manual_seed(1)
    other = build_method(_config(teacher_dir, "method.patch_weight=0.5", vit=True))
    assert isinstance(other, Distill)
    out = other(views, Progress(0, 10, 10))
    expected = out.logs["distill/global"] + 0.5 * out.logs["distill/patch"]
    assert float(out.loss.detach()) == pytest.approx(expected, rel=1e-5)


def test_standardised_a_student_is_perfect_when_it_maps_the_teacher_to_its_z_scores():
    teacher_dir = tiny_teacher()
    method = build_method(_config(teacher_dir))
    assert isinstance(method, Distill) and method.cfg.standardise
    method.encoder.load_state_dict(method.teacher.state_dict())
    method.eval()  # the copy's BatchNorm uses the teacher's running statistics
    view = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    features, _ = method.teacher_features(view)
    mean, var = features.mean(0), features.var(0, unbiased=False)
    with torch.no_grad():  # the head standardises what the (copied) encoder gives
        method.head.weight.copy_(torch.diag((var + 1e-5).rsqrt()))
        method.head.bias.copy_(-mean * (var + 1e-5).rsqrt())
    out = method([view, view], Progress(0, 10, 10))
    assert float(out.loss.detach()) == pytest.approx(0.0, abs=1e-8)
    raw = build_method(_config(teacher_dir, "method.standardise=false"))
    raw.load_state_dict(method.state_dict())  # the same weights regress the raw features
    raw.eval()
    assert float(raw([view, view], Progress(0, 10, 10)).loss.detach()) > 1e-3


def test_the_teacher_is_frozen_unsaved_and_sees_views_at_its_own_size():
    teacher_dir = tiny_teacher(size=16)  # pretrained at 16 px; the student trains at 32
    method = build_method(_config(teacher_dir))
    assert isinstance(method, Distill) and method.patch_head is None  # a ResNet has no patches
    assert not any("teacher" in k for k in method.state_dict())  # not in checkpoints
    assert all(p.requires_grad for p in method.parameters())  # the optimizer sees the student
    view = torch.rand(4, 3, 32, 32)
    features, _ = method.teacher_features(view)
    resized = F.interpolate(view, size=(16, 16), mode="bilinear", antialias=True,
                            align_corners=False)
    with torch.no_grad():
        torch.testing.assert_close(features, method.teacher(resized))
    before = {k: v.clone() for k, v in method.teacher.state_dict().items()}
    method.train()
    assert not method.teacher.training  # in inference mode whatever the student's mode
    loss = method([view, view.flip(-1)], Progress(0, 10, 10)).loss
    loss.backward()
    assert all(p.grad is None for p in method.teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in method.teacher.state_dict().items())
    assert method.exported_encoder() is method.encoder


def test_a_teacher_is_required_and_must_be_readable():
    with pytest.raises(ConfigError) as error:
        C.load(None, ["method.name=distill"])
    assert error.value.field == "method.teacher"
    with pytest.raises(ConfigError, match=r"method.teacher.*checkpoint directory"):
        teacher_from_checkpoint("/nonexistent/teacher")


def test_the_driver_resolves_a_registered_teacher_and_refuses_other_channels(tmp_path: Path):
    registered = register_tiny_encoder(tmp_path)  # 1 channel, 32 px
    gray = _config(f"models:/{NAME}@champion", "data.channels=1")
    teacher = resolve_teacher(gray, registered["uri"])
    assert teacher is not None and teacher.source.startswith(f"models:/{NAME}/1")
    assert teacher.channels == 1 and teacher.image_size == 32
    built = build_method(gray, teacher=teacher)
    assert isinstance(built, Distill)
    assert all(torch.equal(a, b) for a, b in zip(built.teacher.state_dict().values(),
                                                 registered["encoder"].state_dict().values(),
                                                 strict=True))
    with pytest.raises(ConfigError) as error:
        resolve_teacher(_config(f"models:/{NAME}@champion"), registered["uri"])  # RGB student
    assert error.value.field == "method.teacher" and "1-channel" in str(error.value)
    assert resolve_teacher(C.load(None, []), registered["uri"]) is None  # not a distillation
