"""The suite on Ray: feature extraction actors, every protocol, baselines and figures."""

import numpy as np
import pytest
import ray
import ray.data
import torch

from raysl import config as C
from raysl.config import ModelConfig
from raysl.data import generated
from raysl.errors import DataError, ModelNotFoundError
from raysl.eval import extract
from raysl.eval.data import EvalData, _bank_indices
from raysl.eval.extract import extract_features
from raysl.eval.features import encoder_features
from raysl.eval.splits import LabeledSplit, label_subset
from raysl.eval.suite import PIXELS, RANDOM_INIT, TRAINED, EvalReport, evaluate_encoders
from raysl.nn.backbones import build_encoder
from raysl.serving.models import load_model

pytestmark = pytest.mark.usefixtures("ray_session")


def _split() -> LabeledSplit:
    x, y = generated.shapes(n=400, size=32, seed=0)
    x = x[..., None] if x.ndim == 3 else x
    return LabeledSplit(x[:320], y[:320], x[320:], y[320:], int(y.max()) + 1, "shapes",
                        list(generated.CLASSES))


def _encoder(seed: int):
    torch.manual_seed(seed)
    return build_encoder(ModelConfig(width=8, small_stem=True), 1, 32)


def test_ray_data_features_match_in_process_features_in_order(monkeypatch):
    split = _split()
    encoder = _encoder(0).train()
    # Blocks come back in a shuffled order: only the index column can put rows back in place.
    original = extract._dataset
    monkeypatch.setattr(extract, "_dataset", lambda images, tasks:
                        original(images, tasks).randomize_block_order(seed=7))
    ray_feats = extract_features(encoder, split.bank_images, 32, batch_size=50, tasks=2)
    assert encoder.training  # the caller's module is left as it was
    local = encoder_features(encoder, split.bank_images, 32)
    torch.testing.assert_close(ray_feats, local, rtol=1e-4, atol=1e-5)


def test_query_folder_labels_follow_the_bank_class_names():
    # The query set lacks class "b": its folder indices (a=0, c=1) are the bank's (a=0, c=2).
    y = _bank_indices(np.array([0, 1, 1]), ["a", "c"], ["a", "b", "c"], "q")
    assert y.tolist() == [0, 2, 2]
    with pytest.raises(DataError, match=r"eval.query.path='q': classes \['z'\]"):
        _bank_indices(np.array([0]), ["z"], ["a", "b"], "q")
    # An npz / IDX query set has no names: its integer labels are the bank's.
    assert _bank_indices(np.array([1, 2]), ["0", "1", "2"], ["cat", "dog", "owl"], "q").tolist() \
        == [1, 2]
    with pytest.raises(DataError, match=r"label 3 but eval\.bank has 3 classes"):
        _bank_indices(np.array([3]), ["0", "1", "2", "3"], ["cat", "dog", "owl"], "q")


def test_every_protocol_with_baselines_and_figures():
    split = _split()
    cfg = C.load(None, ["eval.protocols=knn,linear,finetune", "eval.knn_k=20",
                        "eval.linear_lrs=[0.1]", "eval.linear_epochs=[5]",
                        "eval.finetune_fractions=[0.1]", "eval.finetune_epochs=1",
                        "eval.finetune_min_steps=4", "eval.finetune_batch_size=16",
                        "eval.plot_points=50"]).eval
    report = evaluate_encoders({TRAINED: _encoder(0), RANDOM_INIT: _encoder(1)},
                               EvalData.of(split), cfg, 32, log=lambda _: None)
    assert set(report.results) == {TRAINED, RANDOM_INIT, PIXELS}
    assert set(report.results[TRAINED]) == {"knn_top1", "knn_top5", "linear_top1",
                                            "linear_top5", "finetune_10pct_top1",
                                            "finetune_10pct_top5"}
    assert set(report.results[PIXELS]) == {"knn_top1", "knn_top5", "linear_top1", "linear_top5"}
    assert all(r["knn_top5"] >= r["knn_top1"] for r in report.results.values())
    metrics = report.metrics()
    assert {"eval/knn_top1", "eval/knn_top1_raw_pixels", "eval/linear_top1_random_init",
            "eval/finetune_10pct_top1", "eval/finetune_10pct_top1_random_init"} <= set(metrics)
    assert all(0 <= v <= 1 for v in metrics.values())
    # Raw pixels separate the generated shapes far above chance (1/8): the baseline is real.
    assert report.results[PIXELS]["knn_top1"] > 0.3
    assert set(report.figures) == {"eval/embedding.png", "eval/confusion_matrix.png"}
    assert all(png[:4] == b"\x89PNG" for png in report.figures.values())
    assert "| disk |" in report.texts["eval/per_class_accuracy.md"]
    table = report.table()
    assert "finetune_10pct_top1" in table and "raw pixels" in table
    labels = report.labels["finetune_10pct"]
    assert labels == len(label_subset(split.bank_labels, 0.1, seed=0))  # the subset it trained on
    ours, scratch = (report.results[m]["finetune_10pct_top1"] for m in (TRAINED, RANDOM_INIT))
    assert report.headline() == (
        f"with {labels} labels, the pretrained encoder fine-tunes to {100 * ours:.2f}% top-1 "
        f"and the same network from scratch to {100 * scratch:.2f}% "
        f"({100 * (ours - scratch):+.2f} points)")
    assert report.headline() in report.artifacts()["eval/results.txt"]


def test_the_headline_is_the_fewest_labels_against_training_from_scratch():
    report = EvalReport("split", labels={"finetune_10pct": 600, "finetune_1pct": 60})
    assert report.headline() == ""  # no results yet
    for model, (one, ten) in {TRAINED: (0.7, 0.85), RANDOM_INIT: (0.6, 0.8)}.items():
        report.add(model, "finetune_1pct_top1", one)
        report.add(model, "finetune_10pct_top1", ten)
    assert report.headline().startswith("with 60 labels, the pretrained encoder fine-tunes to "
                                        "70.00% top-1 and the same network from scratch to "
                                        "60.00% (+10.00 points)")
    del report.results[RANDOM_INIT]  # baselines off: nothing to compare against
    assert report.headline() == ""


def test_unknown_models_get_a_clear_error(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for spec, message in [("models:/nope/1", "not in the registry"),
                          ("runs:/0123456789abcdef0123456789abcdef", "not found"),
                          (str(tmp_path), "no encoder.pt"),
                          ("what", "not a checkpoint directory")]:
        with pytest.raises(ModelNotFoundError, match=message):
            load_model(spec, uri)


def test_an_interrupted_checkpoint_write_leaves_the_previous_checkpoint_in_use(tmp_path):
    """A run directory whose newest checkpoint was cut off mid-write (no state.json, the file
    written last) is evaluated from the complete one before it."""
    from raysl.checkpoint import save_checkpoint
    from raysl.methods.base import build_method

    cfg = C.load(None, ["model.width=8", "model.small_stem=true", "data.image_size=16"])
    method = build_method(cfg)
    opt = torch.optim.SGD(method.parameters(), lr=0.1)
    for epoch in (0, 1):
        save_checkpoint(tmp_path / f"checkpoint_2026-12-04_10-00-0{epoch}", method,
                        method.encoder, opt, {"epoch": epoch, "step": epoch,
                                              "config": cfg.to_dict()})
    interrupted = tmp_path / "checkpoint_2026-12-04_10-00-02"
    interrupted.mkdir()
    (interrupted / "encoder.pt").write_bytes(b"half a file")  # killed before state.json
    model = load_model(str(tmp_path), "")
    assert "checkpoint_2026-12-04_10-00-01" in model.description
    with pytest.raises(ModelNotFoundError, match=r"no state\.json; not a complete raysl"):
        load_model(str(interrupted), "")  # named directly: refused, not half-read


def test_evaluate_only_takes_eval_and_tracking_settings():
    from raysl.evaluate import evaluation_config

    cfg = evaluation_config(C.Config(), "generated", "knn", ["eval.knn_k=7"])
    assert cfg.eval.protocols == ("knn",) and cfg.eval.knn_k == 7
    assert cfg.eval.bank.format == "generated" and not cfg.eval.query.is_set
    with pytest.raises(C.ConfigError, match=r"takes eval\.\*, tracking"):
        evaluation_config(C.Config(), None, None, ["data.image_size=64"])
    with pytest.raises(C.ConfigError, match="at least one"):
        evaluation_config(C.Config(), None, "", [])
    assert evaluation_config(C.Config(), None, None, ["train.address=auto"]).train.address == "auto"
    with pytest.raises(C.ConfigError, match="protocols"):
        evaluation_config(C.Config(), None, "knn,probe", [])
    assert np.isfinite(cfg.eval.knn_temperature)


def test_the_bank_in_the_object_store_scores_as_the_one_in_memory():
    from raysl.eval.extract import DatasetBank
    from raysl.eval.protocols.base import InMemoryBank
    from raysl.eval.protocols.knn import bank_votes
    from raysl.eval.protocols.linear import bank_linear_probe, linear_probe

    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 12, generator=g) * 3
    y = torch.arange(3000) % 4
    x = centres[y] + torch.randn(3000, 12, generator=g)
    rows = ray.data.from_items([{"features": x[i].numpy(), "label": int(y[i]), "index": i}
                                for i in range(3000)], override_num_blocks=6).materialize()
    bank = DatasetBank.of(rows)
    queries, query_y = x[:200] + 0.5 * torch.randn(200, 12, generator=g), y[:200]
    # kNN over the distributed blocks is exactly the in-memory search.
    torch.testing.assert_close(bank_votes(bank, queries, 4, k=50),
                               bank_votes(InMemoryBank(x, y), queries, 4, k=50))
    gathered_x, gathered_y = bank.gather()
    assert torch.equal(gathered_x, x) and torch.equal(gathered_y, y)
    # The streamed probe (nothing gathered) learns what the in-memory one learns.
    streamed = bank_linear_probe(bank, queries, query_y, 4, (0.3, 0.03), (3, 6), 128, 0.1, 0,
                                 gather_bytes=0)
    in_memory = linear_probe(x, y, queries, query_y, 4, (0.3, 0.03), (3, 6), 128, 0.1, 0)
    assert len(streamed.search) == 4 and streamed.top1 > 0.9
    assert abs(streamed.top1 - in_memory.top1) < 0.05
