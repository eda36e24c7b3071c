"""Few-label fine-tuning: the whole encoder plus a linear head on a small labeled subset.

SimCLR's semi-supervised protocol (arXiv:2002.05709, section 7.2): fine-tune on 1% or 10% of the
labels and compare with the same architecture trained from scratch on the same subset, with the
same schedule. Pure torch; the caller decides where it runs (a Ray task, on a GPU if any).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raysl.catalog import register
from raysl.config import EvalConfig
from raysl.eval.features import resized
from raysl.eval.protocols.base import ImageJob, ImageProtocol, Scores, topk_accuracy
from raysl.eval.splits import LabeledSplit, label_subset
from raysl.nn.backbones import Encoder
from raysl.schedules import cosine, set_lr


@dataclass(frozen=True)
class FinetuneSettings:
    """Schedule of one fine-tuning run (SGD with Nesterov momentum, cosine, no warm-up)."""

    epochs: int
    min_steps: int
    lr: float  # per 256 images
    batch_size: int
    weight_decay: float
    seed: int
    layer_decay: float = 1.0  # lr of depth d: lr * layer_decay^(deepest - d); 1 = one lr


@dataclass(frozen=True)
class FinetuneResult:
    """Test accuracy after fine-tuning."""

    top1: float
    top5: float
    train_images: int
    steps: int
    seconds: float


class Classifier(nn.Module):
    """Encoder + linear head: (B, C, H, W) images -> (B, classes) logits."""

    def __init__(self, encoder: nn.Module, num_features: int, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(num_features, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) float in [0, 1] -> (B, classes)."""
        out: Tensor = self.head(self.encoder(x))
        return out


def layer_depth(name: str, encoder: Encoder) -> int:
    """Depth of an encoder parameter, for layer-wise lr decay (BEiT, MAE's fine-tuning).

    ViT: 0 for the patch embedding, [CLS] token and positions, i + 1 for block i, and
    ``blocks + 1`` for the final norm. ResNet: 0 for the stem, i for stage ``layer<i>``.
    """
    if encoder.is_vit:
        blocks = len(encoder.backbone.blocks)  # type: ignore[arg-type]
        if name.startswith("backbone.blocks."):
            return int(name.split(".")[2]) + 1
        return blocks + 1 if name.startswith("backbone.norm") else 0
    for stage in range(1, 5):
        if name.startswith(f"backbone.layer{stage}."):
            return stage
    return 0


def decayed_param_groups(model: Classifier, encoder: Encoder, decay: float
                         ) -> list[dict[str, object]]:
    """One group per encoder depth with ``lr_scale = decay^(top - depth)``; the head at 1.

    ``top`` is one above the encoder's deepest layer, the head's depth: lower layers, which
    pretraining made most general, change least (MAE, appendix A.2: decay 0.75 for ViT-B).
    """
    by_depth: dict[int, list[nn.Parameter]] = {}
    for name, p in encoder.named_parameters():
        by_depth.setdefault(layer_depth(name, encoder), []).append(p)
    top = max(by_depth) + 1
    groups: list[dict[str, object]] = [{"params": ps, "lr_scale": decay ** (top - d)}
                                       for d, ps in sorted(by_depth.items())]
    return [*groups, {"params": list(model.head.parameters()), "lr_scale": 1.0}]


def random_crop_flip(x: Tensor, gen: torch.Generator) -> Tensor:
    """Per-image random crop of the reflect-padded batch (pad = size/8) and horizontal flip.

    The light augmentation of supervised training on small images: (B, C, S, S) -> same shape.
    """
    b, _, s, _ = x.shape
    pad = max(1, s // 8)
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    offsets = torch.randint(0, 2 * pad + 1, (b, 2), generator=gen)
    out = torch.stack([padded[i, :, dy:dy + s, dx:dx + s]
                       for i, (dy, dx) in enumerate(offsets.tolist())])
    flip = torch.rand(b, generator=gen) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def finetune(encoder: Encoder, split: LabeledSplit, s: FinetuneSettings, device: str = "cpu",
             log: Callable[[str], None] | None = None) -> FinetuneResult:
    """Fine-tune ``encoder`` (modified in place) + a new linear head; score on the queries.

    Args:
        encoder: the encoder to fine-tune (a pretrained one, or a random init for the baseline);
            images are resized to its ``image_size``.
        split: the label subset to train on (its bank) and the images scored (its queries).
        s: the schedule.
        device: where to train.
        log: progress lines, if given.
    """
    image_size = encoder.image_size
    t0 = time.perf_counter()
    torch.manual_seed(s.seed)
    gen = torch.Generator().manual_seed(s.seed)
    model = Classifier(encoder, encoder.num_features, split.num_classes).to(device).train()
    x = resized(split.bank_images, image_size)
    y = torch.from_numpy(split.bank_labels.astype(np.int64))
    batch = min(s.batch_size, len(x))
    steps_per_epoch = max(1, len(x) // batch)
    total = max(s.epochs * steps_per_epoch, s.min_steps)
    lr = s.lr * batch / 256
    opt = torch.optim.SGD(decayed_param_groups(model, encoder, s.layer_decay), lr=lr,
                          momentum=0.9, nesterov=True, weight_decay=s.weight_decay)
    step = 0
    while step < total:
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, steps_per_epoch * batch, batch):
            if step == total:
                break
            idx = order[start:start + batch]
            set_lr(opt, cosine(step / total, lr, 0.0))
            inputs = random_crop_flip(x[idx], gen).to(device)
            loss = F.cross_entropy(model(inputs), y[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            step += 1
            if log and step % max(1, total // 4) == 0:
                log(f"[raysl]   fine-tune step {step}/{total} loss {loss.item():.3f}")
    logits = predict(model, split.query_images, image_size, device)
    test_y = torch.from_numpy(split.query_labels.astype(np.int64))
    return FinetuneResult(topk_accuracy(logits, test_y, 1), topk_accuracy(logits, test_y, 5),
                          len(x), total, time.perf_counter() - t0)


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, image_size: int, device: str,
            batch_size: int = 512) -> Tensor:
    """(M, classes) logits of ``model`` in eval mode on (M, H, W, C) uint8 images."""
    model.eval()
    out = [model(resized(images[i:i + batch_size], image_size).to(device)).float().cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out)


def fraction_key(fraction: float) -> str:
    """0.01 -> ``1pct``, 0.005 -> ``0.5pct`` (metric names)."""
    return f"{100 * fraction:g}pct"


@register("protocol", "finetune")
class Finetune(ImageProtocol):
    """Few-label fine-tuning top-1 and top-5 per label fraction (``eval.finetune_fractions``)."""

    name = "finetune"
    title = "fine-tuning"
    summary = ("few-label fine-tuning of the whole encoder vs the same network from scratch "
               "(SimCLR's semi-supervised protocol)")

    def jobs(self, cfg: EvalConfig, bank_labels: np.ndarray, seed: int) -> list[ImageJob]:
        """One job per label fraction: a stratified, seeded subset of the bank."""
        out = []
        for i, fraction in enumerate(cfg.finetune_fractions):
            settings = FinetuneSettings(cfg.finetune_epochs_for(i), cfg.finetune_min_steps,
                                        cfg.finetune_lr, cfg.finetune_batch_size,
                                        cfg.finetune_weight_decay, seed,
                                        cfg.finetune_layer_decay)
            idx = label_subset(bank_labels, fraction, seed)
            out.append(ImageJob(fraction_key(fraction), idx, settings,
                                f"fine-tuning on {fraction:.0%} of the labels ({len(idx)} "
                                f"images, {settings.epochs} epochs)"))
        return out

    def run(self, encoder: Encoder, split: LabeledSplit, job: ImageJob, device: str,
            from_scratch: bool) -> Scores:
        """``finetune_<key>_top1`` and ``_top5`` after :func:`finetune`.

        The network trained from scratch gets one learning rate: layer-wise decay keeps a
        pretrained encoder's early layers close to what they learned, and would only hold back
        a random init's (making the pretrained encoder's lead look larger than it is).
        """
        settings = job.settings
        assert isinstance(settings, FinetuneSettings)
        if from_scratch:
            settings = replace(settings, layer_decay=1.0)
        result = finetune(encoder, split, settings, device)
        how = "trained from scratch" if from_scratch else "fine-tuned"
        return Scores({f"finetune_{job.key}_top1": result.top1,
                       f"finetune_{job.key}_top5": result.top5},
                      notes=[f"{job.key} {how}: {result.train_images} images, {result.steps} "
                             f"steps, {result.seconds:.0f}s"])
