"""The labeled evaluation data as Ray Datasets: a bank and queries that need not fit anywhere.

``eval.bank`` and ``eval.query`` are read like training data (any format, cached in the object
store when they fit, streamed otherwise); only their labels and row indices come to the driver
(16 bytes an image). Features are extracted from the datasets (:mod:`raysl.eval.extract`); images
come to the driver only for what needs them in memory: few-label fine-tuning's subsets and the
small arrays split of online evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import ray
import ray.data

from raysl.config import Config
from raysl.data.source import DataError, ImageSource, Reading, arrays_to_dataset, read_source
from raysl.eval.splits import LabeledSplit, stratified_holdout


@dataclass
class EvalData:
    """A labeled bank and labeled queries.

    Attributes:
        bank: rows ``image`` (H, W, C) uint8, ``label`` and ``index``.
        queries: the same columns.
        bank_index: (N,) the bank's row indices, sorted.
        bank_labels: (N,) their labels (``bank_labels[i]`` is the row ``bank_index[i]``'s).
        query_index: (M,) likewise for the queries.
        query_labels: (M,) their labels, as indices of the bank's classes.
    """

    bank: ray.data.Dataset
    queries: ray.data.Dataset
    bank_index: np.ndarray
    bank_labels: np.ndarray
    query_index: np.ndarray
    query_labels: np.ndarray
    num_classes: int
    description: str
    class_names: list[str] = field(default_factory=list)

    def name_of(self, c: int) -> str:
        """Name of class ``c`` (its index when the data has no names)."""
        return self.class_names[c] if c < len(self.class_names) else str(c)

    @classmethod
    def of(cls, split: LabeledSplit) -> EvalData:
        """In-memory arrays as evaluation data (tests, online evaluation's split)."""
        bank = arrays_to_dataset(split.bank_images, split.bank_labels, with_index=True)
        queries = arrays_to_dataset(split.query_images, split.query_labels, with_index=True)
        return cls(bank, queries, np.arange(len(split.bank_labels)), split.bank_labels,
                   np.arange(len(split.query_labels)), split.query_labels, split.num_classes,
                   split.description, list(split.class_names))

    def bank_images(self, positions: np.ndarray) -> np.ndarray:
        """(n, H, W, C) images of the bank rows at ``positions`` (into ``bank_index``)."""
        return _images(_only(self.bank, self.bank_index[positions]))

    def query_images(self) -> np.ndarray:
        """(M, H, W, C) every query image, in index order."""
        return _images(self.queries)

    def split(self, limit: int, seed: int) -> LabeledSplit:
        """In-memory arrays: at most ``limit`` bank rows and as many queries (seeded subsets)."""
        rng = np.random.default_rng(seed)
        bank_pos = np.sort(rng.permutation(len(self.bank_index))[:limit])
        query_pos = np.sort(rng.permutation(len(self.query_index))[:limit])
        query_images = _images(_only(self.queries, self.query_index[query_pos]))
        return LabeledSplit(self.bank_images(bank_pos), self.bank_labels[bank_pos],
                            query_images, self.query_labels[query_pos], self.num_classes,
                            self.description, list(self.class_names))


def load_eval_data(run_cfg: Config, training: ImageSource | None = None) -> EvalData:
    """Read ``eval.bank`` and ``eval.query`` (or hold out ``eval.holdout`` of the bank).

    Args:
        run_cfg: the run's config: its ``eval`` section, and the channels, decode size, seed and
            bad-file policy of its ``data`` and ``train`` sections.
        training: the training data already opened, for a bank drawn from it (``eval.bank.path``
            empty: ``eval.bank.limit`` of its rows, a seeded subset); read here if not given.

    Raises:
        DataError: a source without labels, or query classes the bank does not have.
    """
    cfg, data, seed = run_cfg.eval, run_cfg.data, run_cfg.train.seed
    reading = Reading.of(data, cache="auto")
    if not cfg.bank.is_set and training is None:
        training = read_source(data.source, reading, seed, "data.source")
    if training is None:
        bank = read_source(cfg.bank, reading, seed, "eval.bank")
        bank_index, bank_labels = _labels(bank, "eval.bank", cfg.bank.path)
        bank_ds, bank_desc = bank.dataset, bank.description
    else:
        bank = training
        bank_index, bank_labels = _labels(bank, "eval.bank", "", training=True)
        if cfg.bank.limit and cfg.bank.limit < len(bank_index):
            chosen = np.sort(np.random.default_rng(seed).permutation(len(bank_index))
                             [: cfg.bank.limit])
            bank_index, bank_labels = bank_index[chosen], bank_labels[chosen]
        bank_ds = _only(bank.dataset, bank_index)
        bank_desc = f"the training data, {len(bank_index)} images of {bank.description}"
    if cfg.query.is_set:
        query = read_source(cfg.query, reading, seed, "eval.query")
        query_index, query_labels = _labels(query, "eval.query", cfg.query.path)
        query_labels = _bank_indices(query_labels, query.class_names, bank.class_names,
                                     cfg.query.path)
        query_ds = query.dataset
        desc = f"bank: {bank_desc}; queries: {query.description}"
    else:
        keep, held = stratified_holdout(bank_labels, cfg.holdout, seed)
        query_index, query_labels = bank_index[held], bank_labels[held]
        bank_index, bank_labels = bank_index[keep], bank_labels[keep]
        bank_ds, query_ds = _only(bank_ds, bank_index), _only(bank_ds, query_index)
        desc = f"{bank_desc}, {cfg.holdout:.0%} held out as queries (stratified)"
    num_classes = int(max(bank_labels.max(), query_labels.max())) + 1
    return EvalData(bank_ds, query_ds, bank_index, bank_labels, query_index, query_labels,
                    num_classes, desc, list(bank.class_names))


def _labels(source: ImageSource, field_name: str, path: str, training: bool = False
            ) -> tuple[np.ndarray, np.ndarray]:
    """``(indices, labels)`` of every row, sorted by index (the only per-row data gathered)."""
    if not source.labeled:
        where = (f"{field_name}.path is empty and the training data ({source.description})"
                 if training else f"{field_name}.path={path!r}")
        raise DataError(f"{where}: has no labels; evaluation needs a labeled set (class "
                        "sub-folders, IDX labels or an npz 'labels' array): name one with "
                        "--set eval.bank.path=PATH")
    index, labels = [], []
    for batch in source.dataset.select_columns(["index", "label"]).iter_batches(
            batch_size=None, batch_format="numpy"):
        index.append(batch["index"])
        labels.append(batch["label"])
    if not index:
        raise DataError(f"{field_name}.path={path!r}: no images could be read")
    idx = np.concatenate(index)
    order = np.argsort(idx, kind="stable")
    return idx[order], np.concatenate(labels)[order]


def _keep_rows(batch: dict[str, np.ndarray], index: dict[str, ray.ObjectRef[np.ndarray]]
               ) -> dict[str, np.ndarray]:
    keep = np.isin(batch["index"], ray.get(index["ref"]), assume_unique=True)
    return {k: v[keep] for k, v in batch.items()}


def _only(dataset: ray.data.Dataset, index: np.ndarray) -> ray.data.Dataset:
    """The rows of ``dataset`` whose ``index`` is in ``index``."""
    out: ray.data.Dataset = dataset.map_batches(
        _keep_rows,  # type: ignore[arg-type]  # Ray's stub: a one-argument callable
        # In a dict: Ray Data passes an ObjectRef argument as it is, not its value.
        fn_kwargs={"index": {"ref": ray.put(np.sort(index))}}, batch_format="numpy")
    return out


def _images(dataset: ray.data.Dataset) -> np.ndarray:
    """Every image of ``dataset`` in this process, in index order."""
    images, index = [], []
    for batch in dataset.select_columns(["image", "index"]).iter_batches(
            batch_size=None, batch_format="numpy"):
        images.append(batch["image"])
        index.append(batch["index"])
    if not images:
        raise DataError("no images to gather")
    return np.concatenate(images)[np.argsort(np.concatenate(index), kind="stable")]


def _bank_indices(labels: np.ndarray, names: list[str], bank_names: list[str], path: str
                  ) -> np.ndarray:
    """Query labels as indices of the bank's classes, matched by name (folders may differ).

    Sources without class names (IDX, npz: names are "0", "1"...) keep their integer labels.
    """
    if names == bank_names or _index_names(names) or _index_names(bank_names):
        if bank_names and labels.size and labels.max() >= len(bank_names):
            raise DataError(f"eval.query.path={path!r}: label {labels.max()} but eval.bank has "
                            f"{len(bank_names)} classes")
        return labels
    index = {n: i for i, n in enumerate(bank_names)}
    unknown = sorted(set(names) - set(index))
    if unknown:
        raise DataError(f"eval.query.path={path!r}: classes {unknown[:5]} are not classes of "
                        f"eval.bank ({bank_names[:10]}...)")
    remapped: np.ndarray = np.array([index[n] for n in names], np.int64)[labels]
    return remapped


def _index_names(names: list[str]) -> bool:
    return names == [str(i) for i in range(len(names))]
