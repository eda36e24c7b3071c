"""The evaluation suite: kNN, linear probe and few-label fine-tuning of encoders on one split.

Shared by pretraining (after training), ``raysl evaluate`` and sweeps. Each protocol is run for
every encoder given (the trained one and, as a baseline, the same architecture at random init)
and for raw pixels where it applies, all on the same split, so the numbers compare.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import ray
import ray.data
import torch
from mlflow.tracking import MlflowClient
from torch import Tensor

from raysl import catalog
from raysl.config import Config, EvalConfig
from raysl.eval import plots
from raysl.eval.data import EvalData
from raysl.eval.extract import DatasetBank, dataset_features, dataset_pixels, gather
from raysl.eval.protocols.base import (
    EvalProtocol,
    FeatureProtocol,
    Features,
    ImageJob,
    ImageProtocol,
    Scores,
)
from raysl.eval.splits import LabeledSplit
from raysl.nn.backbones import Encoder, build_encoder
from raysl.tracking.mlflow import Tracker, log_blobs

TRAINED, RANDOM_INIT, PIXELS = "trained", "random_init", "raw_pixels"
MODEL_LABELS = {TRAINED: "trained encoder", RANDOM_INIT: "same encoder, random init",
                PIXELS: "raw pixels"}
PIXEL_SIDE = 32  # the raw-pixel baseline sees images at most this large (224 px would be 150k-D)


@dataclass
class EvalReport:
    """Results of every protocol for every model, plus figures.

    ``results[model][metric]``: model is ``trained``, ``random_init`` or ``raw_pixels``; metric
    e.g. ``knn_top1``, ``linear_top5``, ``finetune_10pct_top1``. Accuracies are in [0, 1].
    """

    split: str
    results: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # settings chosen (linear lr...), one line each
    figures: dict[str, bytes] = field(default_factory=dict)  # artifact path -> PNG bytes
    texts: dict[str, str] = field(default_factory=dict)  # artifact path -> text
    # labeled images each image-protocol job trained on, e.g. {"finetune_1pct": 100}
    labels: dict[str, int] = field(default_factory=dict)

    def add(self, model: str, metric: str, value: float) -> None:
        """Record one number."""
        self.results.setdefault(model, {})[metric] = value

    def metrics(self) -> dict[str, float]:
        """MLflow metric names: ``eval/<metric>`` for the trained encoder, ``..._<baseline>``."""
        return {f"eval/{metric}" + ("" if model == TRAINED else f"_{model}"): value
                for model, row in self.results.items() for metric, value in row.items()}

    def table(self) -> str:
        """A fixed-width table: one row per metric, one column per model."""
        models = [m for m in (TRAINED, RANDOM_INIT, PIXELS) if m in self.results]
        metrics = list(dict.fromkeys(k for m in models for k in self.results[m]))
        head = f"{'metric':<24}" + "".join(f"{MODEL_LABELS[m]:>28}" for m in models)
        rows = [head, "-" * len(head)]
        for metric in metrics:
            cells = [self.results[m].get(metric) for m in models]
            rows.append(f"{metric:<24}" + "".join(
                f"{100 * v:>27.2f}%" if v is not None else f"{'-':>28}" for v in cells))
        return "\n".join(rows)

    def headline(self) -> str:
        """Pretraining's gain where it is made for: few labels, against training from scratch.

        The fine-tuning run with the fewest labels, the pretrained encoder against the same
        network trained from scratch on the same labels; empty without both.
        """
        trained, scratch = self.results.get(TRAINED, {}), self.results.get(RANDOM_INIT, {})
        runs = sorted((n, job) for job, n in self.labels.items()
                      if f"{job}_top1" in trained and f"{job}_top1" in scratch)
        if not runs:
            return ""
        labels, job = runs[0]
        ours, theirs = trained[f"{job}_top1"], scratch[f"{job}_top1"]
        return (f"with {labels} labels, the pretrained encoder fine-tunes to "
                f"{100 * ours:.2f}% top-1 and the same network from scratch to "
                f"{100 * theirs:.2f}% ({100 * (ours - theirs):+.2f} points)")

    def tags(self) -> dict[str, str]:
        """Model-version tags: ``{"eval.knn_top1": "0.7616", ...}``."""
        return {k.replace("eval/", "eval."): f"{v:.4f}" for k, v in self.metrics().items()}

    def artifacts(self) -> dict[str, bytes | str]:
        """Files to log to the MLflow run: figures, tables, ``eval/results.{txt,json}``."""
        return {**self.figures, **self.texts, "eval/results.json": self.to_json(),
                "eval/results.txt": "\n".join(filter(None, [self.table(), self.headline()]))
                + "\n"}

    def log_to(self, client: MlflowClient, run_id: str, step: int = 0) -> None:
        """Log the metrics (at ``step``) and :meth:`artifacts` to an MLflow run."""
        Tracker(client.tracking_uri, run_id, active=True).log_metrics(self.metrics(), step=step)
        log_blobs(client, run_id, self.artifacts())

    def to_json(self) -> str:
        """Results, notes and split as JSON (the ``eval/results.json`` artifact)."""
        return json.dumps({"split": self.split, "results": self.results, "notes": self.notes,
                           "labels": self.labels}, indent=2)


def with_baseline(cfg: Config, trained: Encoder) -> dict[str, Encoder]:
    """``{"trained": trained}``, plus the run's own initial weights when ``eval.baselines``.

    The workers seed the same way before building, so this is the exact random init.
    """
    encoders = {TRAINED: trained}
    if cfg.eval.baselines:
        torch.manual_seed(cfg.train.seed)  # build_method builds the encoder first
        encoders[RANDOM_INIT] = build_encoder(cfg.model, cfg.data.channels, cfg.data.image_size)
    return encoders


def evaluate_encoders(encoders: dict[str, Encoder], data: EvalData, cfg: EvalConfig,
                      image_size: int, seed: int = 0,
                      log: Callable[[str], None] = print) -> EvalReport:
    """Run every protocol of ``cfg.protocols`` for each encoder (and raw pixels as a baseline).

    Args:
        encoders: name -> frozen encoder; ``trained`` gets the figures, ``random_init`` is the
            baseline (for the image protocols: training from scratch).
        data: the labeled bank and queries.
        cfg: protocols and their settings.
        image_size: side the encoders take.
        seed: seeds label subsets, probe initialisation and fine-tuning.
        log: progress lines.
    """
    report = EvalReport(data.description)
    protocols = [catalog.get("protocol", name)() for name in cfg.protocols]
    on_features = [p for p in protocols if isinstance(p, FeatureProtocol)]
    features: dict[str, Features] = {}
    if on_features or cfg.plots:
        for name, encoder in encoders.items():
            log(f"[raysl] extracting features: {MODEL_LABELS.get(name, name)}")
            features[name] = _features(
                data, lambda ds, e=encoder: dataset_features(  # type: ignore[misc]
                    e, ds, image_size, cfg.batch_size, cfg.feature_actors))
    frozen = dict(features)
    if cfg.baselines and on_features:
        side = min(image_size, PIXEL_SIDE)
        frozen[PIXELS] = _features(data, lambda ds: dataset_pixels(ds, side), centred=True)
    predictions: dict[str, tuple[int, Tensor]] = {}  # model -> (rank, predictions)
    for protocol in on_features:
        for name, f in frozen.items():
            if protocol.prediction_rank > 1:  # the slow ones say what they are doing
                log(f"[raysl] {protocol.title}: {MODEL_LABELS.get(name, name)}")
            scores = protocol.score(f, cfg, seed)
            _add(report, protocol, name, scores)
            if scores.predictions is not None and (
                    protocol.prediction_rank > predictions.get(name, (0, None))[0]):
                predictions[name] = (protocol.prediction_rank, scores.predictions)
    for protocol in protocols:
        if isinstance(protocol, ImageProtocol):
            _run_on_images(protocol, encoders, data, cfg, seed, report, log)
    if cfg.plots and TRAINED in features:
        chosen = predictions.get(TRAINED)
        how = next((p.title for p in on_features if chosen and p.prediction_rank == chosen[0]), "")
        _figures(features[TRAINED].queries, chosen[1] if chosen else None, how, data, cfg, seed,
                 report)
    return report


def _features(data: EvalData, extract: Callable[[ray.data.Dataset], ray.data.Dataset],
              centred: bool = False) -> Features:
    """One model's features: the bank's stay in the object store, the queries' come here.

    ``centred`` subtracts the bank's mean (raw pixels: the cosine kNN should not compare mean
    brightness).
    """
    bank = DatasetBank.of(extract(data.bank))
    queries, _ = gather(extract(data.queries))
    if centred:
        total = sum(bank.map_blocks(lambda x, y, i: x.double().sum(0)), torch.zeros(bank.dim))
        mean = (total / bank.num_rows).float()
        bank, queries = DatasetBank(bank.features, bank.dim, mean), queries - mean
    return Features(bank, queries, torch.from_numpy(data.query_labels), data.num_classes)


def _add(report: EvalReport, protocol: EvalProtocol, model: str, scores: Scores) -> None:
    for metric, value in scores.metrics.items():
        report.add(model, metric, value)
    report.notes += [f"{protocol.title}, {MODEL_LABELS.get(model, model)}: {note}"
                     for note in scores.notes]


def _run_on_images(protocol: ImageProtocol, encoders: dict[str, Encoder], data: EvalData,
                   cfg: EvalConfig, seed: int, report: EvalReport,
                   log: Callable[[str], None]) -> None:
    """Every job of ``protocol`` for every encoder, as Ray tasks (a GPU each if any).

    A job's label subset and the queries come to the driver as arrays (fine-tuning holds them
    in memory): size ``eval.finetune_fractions`` to what a task can hold.
    """
    gpus = 1 if ray.cluster_resources().get("GPU", 0) else 0  # type: ignore[no-untyped-call]
    task = ray.remote(num_cpus=1, num_gpus=gpus)(_image_task)
    query_x, query_y = ray.put(data.query_images()), ray.put(data.query_labels)
    encoder_refs = {name: ray.put(enc) for name, enc in encoders.items()}  # tasks get copies
    pending = {}
    for job in protocol.jobs(cfg, data.bank_labels, seed):
        train_x = ray.put(data.bank_images(job.train_indices))
        train_y = ray.put(data.bank_labels[job.train_indices])
        log(f"[raysl] {job.description}")
        report.labels[f"{protocol.name}_{job.key}"] = len(job.train_indices)
        for name, encoder_ref in encoder_refs.items():
            pending[(name, job.key)] = task.remote(protocol, encoder_ref, train_x, train_y,
                                                   query_x, query_y, data.num_classes, job,
                                                   name != TRAINED)
    for (name, _), result_ref in pending.items():
        _add(report, protocol, name, ray.get(result_ref))


def _image_task(protocol: ImageProtocol, encoder: Encoder, images: np.ndarray,
                labels: np.ndarray, test_images: np.ndarray, test_labels: np.ndarray,
                num_classes: int, job: ImageJob, from_scratch: bool) -> Scores:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    split = LabeledSplit(images, labels, test_images, test_labels, num_classes, "")
    return protocol.run(encoder, split, job, device, from_scratch)


def _figures(query_features: Tensor, predictions: Tensor | None, how: str,
             split: EvalData, cfg: EvalConfig, seed: int, report: EvalReport) -> None:
    names = [split.name_of(c) for c in range(split.num_classes)]
    report.figures["eval/embedding.png"] = plots.embedding_png(
        query_features.numpy(), split.query_labels, names, "trained encoder", cfg.plot_points,
        seed)
    if predictions is not None:
        matrix = plots.confusion_matrix(split.query_labels, predictions.numpy(),
                                        split.num_classes)
        if split.num_classes <= plots.MAX_CONFUSION_CLASSES:  # beyond, only the table is legible
            report.figures["eval/confusion_matrix.png"] = plots.confusion_png(
                matrix, names, f"trained encoder, {how}")
        report.texts["eval/per_class_accuracy.md"] = (
            f"Per-class accuracy of the trained encoder ({how}) on {split.description}\n\n"
            + plots.per_class_table(matrix, names))
