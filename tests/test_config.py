from pathlib import Path

import pytest

from raysl import config as C
from raysl.config import Config
from raysl.errors import ConfigError


def test_defaults_are_valid_and_round_trip():
    cfg = Config()
    assert cfg.method.name == "simclr" and cfg.method.temperature == 0.1  # type: ignore[attr-defined]
    assert Config.from_dict(cfg.to_dict()) == cfg
    assert Config.from_dict({}) == cfg


def test_yaml_and_set_overrides(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("method: simclr\noptim: {base_lr: 0.5}\n"
                    "data: {views: {crop_scale: [0.2, 1]}}\n")
    cfg = C.load(path, ["method.temperature=0.3", "train.num_workers=4",
                        "data.batch_size_global=512"])
    assert cfg.optim.base_lr == 0.5
    assert cfg.method.temperature == 0.3  # type: ignore[attr-defined]
    assert cfg.data.views.crop_scale == (0.2, 1.0)
    assert cfg.batch_size_per_worker == 128
    assert cfg.optim.peak_lr(cfg.data.batch_size_global) == pytest.approx(1.0)


@pytest.mark.parametrize(("override", "field", "fragment"), [
    ("optim.base_lr=-1", "optim.base_lr", "must be > 0"),
    ("optim.bse_lr=1", "optim.bse_lr", "unknown field"),
    ("train.epochs=abc", "train.epochs", "of type int"),
    ("train.epochs=1.5", "train.epochs", "of type int"),
    ("train.use_gpu=3", "train.use_gpu", "of type bool"),
    ("train.node_wait_s=1", "train.node_wait_s", ">= 5 seconds"),
    ("optim.name=adam", "optim.name", "one of ['lars', 'sgd', 'adamw']"),
    ("data.views.hue=0.9", "data.views.hue", "[0, 0.5]"),
    ("data.views.crop_scale=[0.5]", "data.views.crop_scale", "list of 2"),
    ("data.source.limit=-3", "data.source.limit", ">= 0"),
    ("method.name=nope", "method.name", "must be one of ['autoencoder', 'barlow_twins', 'byol'"),
    ("method.temperature=0", "method.temperature", "must be > 0"),
    ("data.batch_size_global=255", "data.batch_size_global", "divisible by train.num_workers"),
    ("train.run_name=a/b", "train.run_name", "letters, digits"),
    ("train.min_workers=3", "train.min_workers", "1..train.num_workers=2"),
])
def test_errors_name_field_value_and_expectation(override, field, fragment):
    with pytest.raises(ConfigError) as info:
        C.load(None, [override])
    err = info.value
    assert err.field == field
    assert fragment in str(err)
    assert field in str(err) and repr(err.value) in str(err)


def test_an_elastic_run_keeps_its_global_batch_at_every_worker_count():
    cfg = C.load(None, ["train.num_workers=4", "train.min_workers=2", "data.batch_size_global=96"])
    assert cfg.train.elastic and list(cfg.train.worker_counts) == [2, 3, 4]
    assert cfg.batch_size_per_worker == 24
    shrunk = cfg.with_workers(3)
    assert shrunk.batch_size_per_worker == 32 and shrunk.data == cfg.data
    assert shrunk.train.num_workers == 3 and not shrunk.train.elastic
    assert cfg.with_workers(4) is cfg
    assert not C.load(None, ["train.min_workers=2"]).train.elastic  # = num_workers: fixed
    # 3 workers cannot split 64 images equally: refused before anything starts.
    with pytest.raises(ConfigError, match=r"every worker count .*min_workers=2 to "
                                          r"train.num_workers=4.*3 x 1 is not") as info:
        C.load(None, ["train.num_workers=4", "train.min_workers=2", "data.batch_size_global=64"])
    assert info.value.field == "data.batch_size_global"
    # The method's checks hold at every size: MoCo's shuffle-BN splits each worker's
    # micro-batch, which is 12 with 4 workers but 16 with 3.
    moco = ["method.name=moco_v2", "method.bn_splits=6", "data.batch_size_global=48",
            "train.num_workers=4"]
    C.load(None, moco)
    with pytest.raises(ConfigError, match=r"with 3 workers, which this elastic run may have"):
        C.load(None, [*moco, "train.min_workers=3"])


def test_error_names_the_yaml_file(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("optim: {momentum: 1.5}\n")
    with pytest.raises(ConfigError, match=r"optim.momentum=1.5: .*\(from .*bad.yaml\)"):
        C.load(path)


def test_override_syntax_error():
    with pytest.raises(ConfigError, match=r"section\.field=value"):
        C.load(None, ["optim.base_lr"])


def test_flat_params_cover_every_field():
    flat = Config().flat()
    assert flat["optim.base_lr"] == 0.3 and flat["method.temperature"] == 0.1
    assert flat["data.source.path"] == C.FASHION_MNIST_DIR


def test_shipped_configs_load():
    for path in sorted(Path("pipelines/configs").glob("*.yaml")):
        C.load(path)  # raises on any stale key


def test_weight_decay_cosine_schedule():
    cfg = C.load(None, ["optim.weight_decay=0.04", "optim.weight_decay_schedule=cosine",
                        "optim.weight_decay_end=0.4"]).optim
    assert cfg.weight_decay_at(0.0) == pytest.approx(0.04)
    assert cfg.weight_decay_at(0.5) == pytest.approx(0.22)
    assert cfg.weight_decay_at(1.0) == pytest.approx(0.4)
    assert C.OptimConfig(weight_decay=0.1).weight_decay_at(0.7) == 0.1  # constant by default


def test_vit_local_crops_round_to_whole_patches():
    cfg = C.load(None, ["method.name=dino", "model.backbone=vit_tiny", "model.patch_size=4",
                        "data.image_size=32"])
    assert cfg.view_sizes == [32, 32] + [16] * 8  # auto 14 px -> 16 (whole 4 px patches)
    assert Config.from_dict(cfg.to_dict()) == cfg


def test_exponent_without_dot_is_a_float():
    # PyYAML (YAML 1.1) reads `1e-6` as a string; a float field takes it as the number it is.
    assert C.load(None, ["optim.weight_decay=1e-6"]).optim.weight_decay == 1e-6
    with pytest.raises(ConfigError, match="must be of type float, got str"):
        C.load(None, ["optim.weight_decay=lots"])


def test_eval_lists_and_knn_auto_k():
    cfg = C.load(None, ["eval.protocols=knn,finetune", "eval.linear_lrs=[0.1, 1e-2]",
                        "eval.linear_epochs=50"])
    assert cfg.eval.protocols == ("knn", "finetune")
    assert cfg.eval.linear_lrs == (0.1, 0.01) and cfg.eval.linear_epochs == (50,)
    assert cfg.eval.knn_k_for(10_000) == 200 and cfg.eval.knn_k_for(1_281_167) == 20
    assert C.load(None, ["eval.knn_k=7"]).eval.knn_k_for(10**6) == 7
    # SimCLR's fine-tuning epochs by default, for any list of fractions.
    ev = C.load(None, ["eval.finetune_fractions=[0.01, 0.1, 0.5]"]).eval
    assert [ev.finetune_epochs_for(i) for i in range(3)] == [60, 30, 30]
    ev = C.load(None, ["eval.finetune_fractions=[0.05]", "eval.finetune_epochs=[7]"]).eval
    assert ev.finetune_epochs_for(0) == 7
    for bad, field in [("eval.protocols=knn,probe", "eval.protocols[1]"),
                       ("eval.protocols=knn,knn", "eval.protocols"),
                       ("eval.finetune_fractions=[0]", "eval.finetune_fractions"),
                       ("eval.linear_lrs=[]", "eval.linear_lrs"),
                       ("eval.finetune_batch_size=1", "eval.finetune_batch_size"),
                       ("eval.finetune_epochs=[60, 30, 10]", "eval.finetune_epochs")]:
        with pytest.raises(C.ConfigError) as e:
            C.load(None, [bad])
        assert e.value.field == field, bad


def test_a_config_error_survives_pickling_as_ray_sends_it_from_a_worker():
    import pickle

    error = ConfigError("optim.base_lr", -1.0, "must be > 0", "recipe.yaml")
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is ConfigError and str(again) == str(error)
    assert (again.field, again.value, again.expected, again.source) == (
        "optim.base_lr", -1.0, "must be > 0", "recipe.yaml")


@pytest.mark.parametrize("word", ["on", "off"])
def test_a_bare_on_or_off_is_the_word_where_a_field_takes_it(tmp_path: Path, word: str):
    # YAML 1.1 reads a bare on/off as a boolean, in a file and in --set alike.
    path = tmp_path / "c.yaml"
    path.write_text(f"train:\n  channels_last: {word}\n")
    assert C.load(path, []).train.channels_last == word
    assert C.load(None, [f"train.channels_last={word}"]).train.channels_last == word
