"""The champion alias moves only when the challenger wins on the same evaluation (real registry)."""

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from raysl import config as C
from raysl.nn.backbones import build_encoder
from raysl.sweep.champion import NotComparable, alias_version, crown
from raysl.tracking.model_registry import log_and_register

NAME = "champion-test"


@pytest.fixture
def registry(tmp_path: Path) -> tuple[MlflowClient, str]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.create_experiment("c", artifact_location=(tmp_path / "artifacts").as_uri())
    return client, uri


def _register(client: MlflowClient, uri: str) -> str:
    """A new version of NAME: a tiny real encoder logged from its own run."""
    run_id = client.create_run(client.get_experiment_by_name("c").experiment_id).info.run_id
    cfg = C.load(None, ["data.source.format=generated", "data.image_size=16", "data.channels=1",
                        "model.width=4", "model.small_stem=true"])
    encoder = build_encoder(cfg.model, 1, 16)
    registered = log_and_register(encoder, cfg, run_id, uri, NAME, "test", {})
    assert registered is not None
    return registered.version


def test_alias_moves_only_to_a_better_challenger(registry):
    client, uri = registry
    scores: dict[str, float] = {}
    evaluated: list[str] = []

    def score(model_uri: str) -> float:
        evaluated.append(model_uri)
        return scores[model_uri]

    v1 = _register(client, uri)
    scores[f"models:/{NAME}/{v1}"] = 0.60
    first = crown(client, NAME, "champion", v1, "knn_top1", score)
    assert first.promoted and alias_version(client, NAME, "champion") == v1
    assert "no champion yet" in first.reason

    # Worse on the same evaluation: the alias stays, and the summary says why.
    v2 = _register(client, uri)
    scores[f"models:/{NAME}/{v2}"] = 0.55
    evaluated.clear()
    worse = crown(client, NAME, "champion", v2, "knn_top1", score)
    assert not worse.promoted and alias_version(client, NAME, "champion") == v1
    assert worse.incumbent_score == 0.60 and worse.champion_version == v1
    assert evaluated == [f"models:/{NAME}/{v2}", f"models:/{NAME}/{v1}"]  # both scored now
    assert "does not beat 60.00% of version 1" in worse.summary(NAME, "knn_top1")

    # A tie does not move it either; a better one does.
    v3 = _register(client, uri)
    scores[f"models:/{NAME}/{v3}"] = 0.60
    assert not crown(client, NAME, "champion", v3, "knn_top1", score).promoted
    v4 = _register(client, uri)
    scores[f"models:/{NAME}/{v4}"] = 0.61
    better = crown(client, NAME, "champion", v4, "knn_top1", score)
    assert better.promoted and alias_version(client, NAME, "champion") == v4
    assert better.incumbent_version == v1 and "61.00% > 60.00% of version 1" in better.reason


def test_an_incumbent_that_cannot_be_scored_keeps_the_alias(registry):
    client, uri = registry
    v1 = _register(client, uri)
    crown(client, NAME, "champion", v1, "knn_top1", lambda _: 0.5)
    v2 = _register(client, uri)

    def score(model_uri: str) -> float:
        if model_uri.endswith(f"/{v1}"):
            raise NotComparable("it takes 3-channel images, this sweep's split has 1")
        return 0.9

    decision = crown(client, NAME, "champion", v2, "knn_top1", score)
    assert not decision.promoted and alias_version(client, NAME, "champion") == v1
    assert "3-channel" in decision.reason and decision.incumbent_score is None
