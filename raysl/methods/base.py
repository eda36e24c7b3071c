"""The interface every SSL method implements. It holds no training logic (see train/step.py)."""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import ClassVar

import torch
from torch import Tensor, nn

from raysl import catalog, distributed
from raysl.checkpoint import ENCODER_FILE, STATE_FILE, load_tensors, read_state
from raysl.config import VIEW_PRESETS, MethodConfig, ModelConfig, Pretext
from raysl.config import Config as RunConfig
from raysl.errors import ConfigError, check
from raysl.nn.backbones import Encoder, build_encoder
from raysl.nn.layouts import load_exactly

Targets = Mapping[str, Tensor]  # per-sample targets by column name, rows aligned with the views
NO_TARGETS: Targets = MappingProxyType({})


def target(targets: Targets, column: str) -> Tensor:
    """``targets[column]``, or an error saying the data did not carry it."""
    if column not in targets:
        raise KeyError(f"the batch has no {column!r} column (it has {sorted(targets)}); the "
                       f"method declares it in target_columns and the data must provide it")
    return targets[column]


@dataclass
class LossOutput:
    """What a method's forward returns: the loss to minimise and scalars to log."""

    loss: Tensor  # scalar, differentiable
    logs: dict[str, float] = field(default_factory=dict)  # detached extras, e.g. {"train/acc": .9}


@dataclass(frozen=True)
class EpochData:
    """What a method that reads the training set before an epoch (DeepCluster) is given.

    Attributes:
        epoch: the epoch about to start, from 0.
        images: a new pass over this worker's share of the training images, un-augmented:
            batches of ``{"image": (B, C, S, S) uint8, "index": (B,) int64}`` (and ``"label"``
            (B,) when the data has labels), on the model's device.
        seed: the run's seed (``train.seed``), the same on every worker.
    """

    epoch: int
    images: Callable[[], Iterable[Mapping[str, Tensor]]]
    seed: int = 0


@dataclass
class EpochStart:
    """What :meth:`SSLMethod.on_epoch_start` did, for the train loop to act on and log."""

    logs: dict[str, float] = field(default_factory=dict)  # e.g. {"cluster/nmi_previous": .6}
    # Parameters re-initialised: the loop drops their optimizer state (momentum, Adam moments).
    reset: list[nn.Parameter] = field(default_factory=list)
    histograms: dict[str, Tensor] = field(default_factory=dict)  # name -> (bins,) counts, plotted
    summary: str = ""  # one line for the terminal ("" = nothing to say)


@dataclass(frozen=True)
class Progress:
    """Where training stands, for schedules inside methods (EMA momentum, temperatures...)."""

    step: int  # optimizer steps done so far
    total_steps: int
    steps_per_epoch: int

    @property
    def fraction(self) -> float:
        """Fraction of training done, in [0, 1]."""
        return min(1.0, self.step / max(1, self.total_steps))

    @property
    def epoch(self) -> float:
        """Epochs done so far, fractional (0.5 = half of the first epoch)."""
        return self.step / max(1, self.steps_per_epoch)


class SSLMethod(nn.Module, ABC):
    """A self-supervised objective around an :class:`Encoder`.

    Subclasses set ``Config`` (their config dataclass), ``summary`` and ``paper``, and register
    themselves with ``@catalog.register("method", name)``. ``forward`` is what DDP wraps, so all
    trainable parameters must be used in it. Momentum (EMA) copies are ordinary submodules whose
    parameters have ``requires_grad=False``; they are updated in :meth:`on_step_end`.
    """

    Config: ClassVar[type[MethodConfig]]
    summary: ClassVar[str]  # one line for `raysl methods`
    paper: ClassVar[str]  # citation with arXiv id
    default_preset: ClassVar[str] = "simclr"  # augmentation recipe, a key of VIEW_PRESETS
    multicrop: ClassVar[bool] = False  # whether it takes local crops beyond the global views
    # The view layout it trains on, checked against data.views at config time: the number of
    # global views (MAE and the pretext tasks: 1) and the pretext target column it reads.
    global_views: ClassVar[int] = 2
    pretext: ClassVar[Pretext] = "none"
    # The data columns beyond the views that ``forward`` reads as ``targets`` (a pretext task's
    # label, a pseudo-label): the train loop carries exactly these, per sample, to the method.
    target_columns: ClassVar[tuple[str, ...]] = ()
    vit_only: ClassVar[bool] = False  # works inside a ViT's tokens (MAE's masking)
    # Whether the training forward runs the encoder on whole views: the online probe learns
    # from those features, which must be the exported encoder's (MAE's sees a quarter).
    encodes_whole_views: ClassVar[bool] = True
    # Whether :meth:`on_epoch_start` reads the whole training set (DeepCluster clusters it):
    # the trainer then hands the workers a second, un-augmented pass over the images.
    reads_training_set: ClassVar[bool] = False
    # What usually makes this method's representation collapse: printed with the collapse
    # warning of the label-free monitors (eval/monitors.py).
    collapse_hint: ClassVar[str] = "a learning rate too high or too strong a weight decay"

    # Whether it learns from a frozen teacher encoder (``method.teacher``), built by
    # :meth:`with_teacher` instead of :meth:`from_config` (distillation).
    takes_teacher: ClassVar[bool] = False

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.encoder = encoder

    @classmethod
    def with_teacher(cls, encoder: Encoder, cfg: RunConfig, teacher: Encoder) -> SSLMethod:
        """The method around ``encoder`` learning from ``teacher`` (``takes_teacher`` only)."""
        raise NotImplementedError(f"{cls.__name__} takes no teacher")

    @classmethod
    def from_config(cls, encoder: Encoder, cfg: RunConfig) -> SSLMethod:
        """The method around ``encoder``, from the run's config.

        Methods take ``(encoder, cfg.method)``; one that needs more (the jigsaw's tiles and
        permutations come from ``cfg.data``) overrides this.
        """
        return cls(encoder, cfg.method)  # type: ignore[call-arg]

    @classmethod
    def validate(cls, cfg: RunConfig) -> None:
        """Raise ``ConfigError`` unless ``cfg`` suits this method; run by ``Config.from_dict``.

        The views must have the method's layout (multi-crop, global views, pretext target),
        then the method's own :meth:`check_config` runs.
        """
        local = cfg.data.views.local_crops
        if local and not cls.multicrop:
            users = [n for n, m in catalog.entries("method").items() if m.multicrop]
            raise ConfigError("data.views.local_crops", local,
                              f"must be 0: {cfg.method.name} does not use multi-crop (methods "
                              f"that do: {users})")
        if cls.vit_only and not cfg.model.is_vit:
            raise ConfigError("model.backbone", cfg.model.backbone,
                              f"a ViT (vit_tiny, vit_small) for {cfg.method.name}: it works on "
                              f"the transformer's patch tokens")
        if cfg.eval.online_probe and not cls.encodes_whole_views:
            raise ConfigError("eval.online_probe", True,
                              f"false for {cfg.method.name}: its training forward does not run "
                              f"the encoder on whole views (eval.online_knn_every does)")
        _check_view_layout(cls, cfg)
        cls.check_config(cfg)

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        """Raise ``ConfigError`` for settings this method cannot work with (across sections)."""

    @classmethod
    def check_training_set(cls, cfg: RunConfig, num_images: int) -> None:
        """Raise ``ConfigError`` for a training set of ``num_images`` this method cannot use.

        Run by the driver before training (DeepCluster needs at least k images).
        """

    @abstractmethod
    def forward(self, views: list[Tensor], progress: Progress,
                targets: Targets = NO_TARGETS) -> LossOutput:
        """Loss on a batch of views.

        Args:
            views: ``global_views`` global views (B, C, S, S), then any local crops
                (B, C, s, s); float in [0, 1] or uint8. A jigsaw view holds tiles instead.
            progress: where training stands, for schedules inside the method.
            targets: one (B, ...) tensor per name of ``target_columns`` (empty otherwise).
        """

    def exported_encoder(self) -> nn.Module:
        """The encoder that is checkpointed as ``encoder.pt`` and registered (the online one)."""
        return self.encoder

    def exported_projector(self) -> nn.Module | None:
        """The projection head on top of :meth:`exported_encoder`, monitored beside it (or None).

        The ``projector`` attribute by default, which most methods name theirs.
        """
        head = getattr(self, "projector", None)
        return head if isinstance(head, nn.Module) else None

    def fixed_lr_parameters(self) -> list[nn.Parameter]:
        """Parameters whose learning rate stays at its peak (no warm-up, no decay)."""
        return []

    def on_epoch_start(self, data: EpochData) -> EpochStart:
        """Called on every worker before each epoch's first step (DeepCluster re-clusters here).

        ``data.images`` may only be iterated by methods with ``reads_training_set``.
        """
        return EpochStart()

    def worker_state(self) -> dict[str, Tensor]:
        """State that differs between workers by design (SwAV's queue), by name; {} if none.

        ``method.pt`` is written by rank 0, so this is gathered from every rank into the
        checkpoint (:func:`gather_worker_state`) and each rank of a resumed run takes its own
        back (:func:`take_worker_state`). Every rank returns the same names and shapes.
        """
        return {}

    def load_worker_state(self, state: Mapping[str, Tensor]) -> None:
        """Take back what :meth:`worker_state` returned on this rank."""

    def on_after_backward(self, progress: Progress) -> None:
        """Called after the backward pass, before clipping and the optimizer step."""

    def on_step_end(self, progress: Progress) -> None:
        """Called after each optimizer step (EMA updates go here)."""


def _check_view_layout(method_cls: type[SSLMethod], cfg: RunConfig) -> None:
    """Raise unless the views have the method's layout: global views and pretext target.

    Methods declare theirs as ``SSLMethod.global_views`` and ``SSLMethod.pretext``.
    """
    views = cfg.data.views
    got, need = (views.global_views, views.pretext), (method_cls.global_views, method_cls.pretext)
    if got == need:
        return
    preset = VIEW_PRESETS[cfg.data.preset]
    value: object
    if got == (preset.global_views, preset.pretext):  # the preset's layout, not an override
        field, value = "data.preset", cfg.data.preset
    elif views.pretext != method_cls.pretext:
        field, value = "data.views.pretext", views.pretext
    else:
        field, value = "data.views.global_views", views.global_views
    fits = [p for p, v in VIEW_PRESETS.items() if (v.global_views, v.pretext) == need
            and (method_cls.multicrop or not v.local_crops)]
    users = [n for n, m in catalog.entries("method").items()
             if (m.global_views, m.pretext) == got]
    who = f"methods {users} train on" if users else "no registered method trains on yet"
    raise ConfigError(field, value, f"{cfg.method.name} trains on {_layout(*need)} (presets "
                                    f"{fits}); this gives {_layout(*got)}, which {who}")


def _layout(global_views: int, pretext: str) -> str:
    """``"1 global view with a rotation target"``, for error messages."""
    views = f"{global_views} global view{'s' if global_views > 1 else ''}"
    return views if pretext == "none" else f"{views} with a {pretext} target"


def encode_each(encoder: nn.Module, views: list[Tensor]) -> list[Tensor]:
    """Features of each view, one forward pass per view: (B, F) each.

    BatchNorm normalises each view over its own batch, as in the reference code of BYOL,
    SimSiam, MoCo v3, Barlow Twins and VICReg (``f(y1)``, ``f(y2)``). With both views in one
    batch, the statistics mix them, and a view's features depend on the other view's content.
    """
    return [encoder(v) for v in views]


def encode_views(encoder: nn.Module, views: list[Tensor]) -> list[Tensor]:
    """Features of each view, with one forward pass per run of same-size views (multi-crop).

    Batching views of one resolution together (as DINO's MultiCropWrapper and SwAV do) makes
    BatchNorm see all of them at once and keeps the number of forward passes at 1-2 for
    multi-crop. Two-view methods use :func:`encode_each` instead.

    Returns:
        One (B, F) tensor per view, in the order of ``views``.
    """
    out: list[Tensor] = []
    for _, group in itertools.groupby(views, key=lambda v: v.shape[-2:]):
        run = list(group)
        out.extend(encoder(torch.cat(run)).chunk(len(run)))
    return out


@torch.no_grad()
def enqueue_ring(queue: Tensor, ptr: Tensor, rows: Tensor) -> None:
    """Write ``rows`` (N, D) over the oldest entries of the ring buffer ``queue`` (K, D).

    ``ptr`` (a 0-d long tensor) is the next slot; both are updated in place and may wrap around.
    MoCo's queue of keys and NNCLR's support set.
    """
    idx = (ptr + torch.arange(rows.shape[0], device=rows.device)) % len(queue)
    queue[idx] = rows.to(queue.dtype)
    ptr.copy_((ptr + rows.shape[0]) % len(queue))


def output_std(z: Tensor) -> float:
    """Mean per-dimension std of L2-normalised outputs (B, D), a collapse monitor.

    ~1/sqrt(D) when healthy, 0 when collapsed to a constant (SimSiam, arXiv:2011.10566, fig. 2).
    """
    z = torch.nn.functional.normalize(z.detach().float(), dim=1)
    return float(z.std(dim=0).mean())


def check_momentum(start: float, end: float) -> None:
    """Validate an EMA momentum schedule (cosine from ``start`` to ``end``, as BYOL)."""
    for name, value in (("momentum_start", start), ("momentum_end", end)):
        check(0.0 <= value <= 1.0, name, value, "is an EMA momentum in [0, 1] (typically 0.99-1)")
    check(start <= end, "momentum_end", end, f"must be >= momentum_start ({start})")


def full_precision(x: Tensor) -> torch.autocast:
    """Autocast off on ``x``'s device, for losses over batch statistics and sharp softmaxes.

    Under bf16 autocast a matmul keeps 8 bits of mantissa: too coarse for a cross-correlation
    matrix or for logits divided by a temperature of 0.04. Callers also pass ``.float()`` inputs.
    """
    return torch.autocast(device_type=x.device.type, enabled=False)


def head_over_views(head: nn.Module, features: list[Tensor]) -> list[Tensor]:
    """``head`` applied to every view's features in one batch (its BatchNorm sees all crops).

    As the reference SwAV and DINO (``MultiCropWrapper``): per-crop statistics would hide the
    difference between global and local crops.
    """
    out: Tensor = head(torch.cat(features))
    return list(out.chunk(len(features)))


WORLD_KEY = "world"  # the number of workers a gathered worker state came from


@torch.no_grad()
def gather_worker_state(method: SSLMethod) -> dict[str, Tensor]:
    """Every rank's :meth:`~SSLMethod.worker_state`, stacked: (world, ...) per name, on CPU.

    A collective: every rank calls it. {} for methods without per-worker state.
    """
    state = method.worker_state()
    if not state:
        return {}
    out = {name: distributed.gather_no_grad(t.detach().unsqueeze(0)).cpu()
           for name, t in sorted(state.items())}
    out[WORLD_KEY] = torch.tensor(distributed.world_size())
    return out


def take_worker_state(method: SSLMethod, gathered: Mapping[str, Tensor], rank: int,
                      world: int) -> bool:
    """Give ``method`` rank ``rank``'s share of :func:`gather_worker_state`'s result.

    Returns:
        False (nothing taken) when the state was gathered from another number of workers, or
        has other names or shapes than this method's now: a rank's share then has no
        counterpart (SwAV's queue is rebuilt as training goes on).
    """
    if int(gathered[WORLD_KEY]) != world:
        return False
    mine = {name: t[rank] for name, t in gathered.items() if name != WORLD_KEY}
    now = method.worker_state()
    if set(mine) != set(now) or any(mine[k].shape != now[k].shape for k in now):
        return False  # e.g. SwAV's queue_length changed since the checkpoint
    method.load_worker_state(mine)
    return True


@dataclass(frozen=True)
class InitWeights:
    """What a run starts from instead of random weights (``model.init_from``), raysl's layout.

    Attributes:
        encoder: the :class:`Encoder`'s state dict.
        method: the whole method's state dict (its heads, any EMA target) when the source is a
            checkpoint of the same method whose heads fit this run's; None: the heads start
            fresh.
        source: where the weights came from, for people and the lineage tag.
    """

    encoder: Mapping[str, Tensor]
    method: Mapping[str, Tensor] | None
    source: str


@dataclass(frozen=True)
class TeacherWeights:
    """A frozen teacher for distillation (``method.teacher``): its architecture and weights.

    The architecture is the teacher's own (its pretraining config), not the student's run's.
    """

    model: ModelConfig
    channels: int
    image_size: int  # what it was pretrained at: views are resized to it
    state: Mapping[str, Tensor]
    source: str  # where it came from, for people and the lineage tag

    def build(self) -> Encoder:
        """The teacher encoder, in eval mode with no gradients."""
        encoder = build_encoder(self.model, self.channels, self.image_size)
        load_exactly(encoder, self.state, f"method.teacher={self.source!r}")
        return encoder.eval().requires_grad_(False)


def teacher_from_checkpoint(directory: str) -> TeacherWeights:
    """The encoder of a raysl checkpoint directory (``encoder.pt`` + ``state.json``).

    What a worker reads when no driver resolved ``method.teacher`` (a method built directly);
    the driver resolves registry URIs and runs (``raysl.serving.init_from``).

    Raises:
        ConfigError: ``directory`` is not a complete raysl checkpoint.
    """
    path = Path(directory)
    if not (path / ENCODER_FILE).is_file() or not (path / STATE_FILE).is_file():
        raise ConfigError("method.teacher", directory,
                          f"a registry URI (models:/NAME@ALIAS), runs:/RUN_ID or a raysl "
                          f"checkpoint directory holding {ENCODER_FILE} and {STATE_FILE}")
    source = RunConfig.from_dict(read_state(path)["config"], source=str(path / STATE_FILE))
    return TeacherWeights(source.model, source.data.channels, source.data.image_size,
                          load_tensors(path / ENCODER_FILE), str(path))


def build_method(cfg: RunConfig, init: InitWeights | None = None,
                 teacher: TeacherWeights | None = None) -> SSLMethod:
    """The registered method of ``cfg.method.name`` around an encoder from ``cfg.model``.

    The encoder is random unless ``init`` is given. Its weights are loaded before the method is
    built, so that whatever the method copies from the encoder (BYOL's, DINO's and MoCo's EMA
    target) starts from them too. A method that learns from a frozen teacher
    (``takes_teacher``) gets ``teacher``, or the checkpoint directory ``method.teacher`` names.

    Raises:
        CheckpointError: ``init`` does not fit the encoder (or the method), naming the keys.
    """
    encoder = build_encoder(cfg.model, cfg.data.channels, cfg.data.image_size)
    if init is not None:
        load_exactly(encoder, init.encoder, f"model.init_from={init.source!r}")
    spec = catalog.get("method", cfg.method.name)
    method: SSLMethod
    if spec.takes_teacher:
        frozen = teacher or teacher_from_checkpoint(getattr(cfg.method, "teacher", ""))
        method = spec.with_teacher(encoder, cfg, frozen.build())
    else:
        method = spec.from_config(encoder, cfg)
    if init is not None and init.method is not None:
        load_exactly(method, init.method, f"model.init_from={init.source!r} (its heads)")
    return method
