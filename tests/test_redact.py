"""Credentials in URIs never reach what raysl shows or stores (config.redact)."""

from pathlib import Path

import numpy as np
import pytest

from raysl import cli
from raysl import config as C
from raysl.data.storage import Store
from raysl.redact import redact, redact_values
from raysl.serving.embed import _table as embed_table

SECRET = "s3cr3t-pw"


@pytest.mark.parametrize("text, shown", [
    (f"http://alice:{SECRET}@mlflow.internal:5000", "http://***@mlflow.internal:5000"),
    (f"https://token:{SECRET}@host/api?x=1", "https://***@host/api?x=1"),
    (f"s3://AKIAEXAMPLE:{SECRET}@bucket/images/", "s3://***@bucket/images/"),
    (f"http://bob:p@{SECRET}@host/x@2x.png", "http://***@host/x@2x.png"),  # '@' in a password
    (f"MLflow run 1f2e at http://u:{SECRET}@h:1 (retrying)",
     "MLflow run 1f2e at http://***@h:1 (retrying)"),
    (f"got a URI: 'AKIAEXAMPLE:{SECRET}@127.0.0.1:1/bucket'",  # pyarrow drops the scheme
     "got a URI: '***@127.0.0.1:1/bucket'"),
])
def test_the_userinfo_of_every_uri_is_hidden(text: str, shown: str):
    assert redact(text) == shown and SECRET not in redact(text)


@pytest.mark.parametrize("text", [
    "http://mlflow.internal:5000/#/experiments", "sqlite:////abs/path/mlflow.db",
    "s3://bucket/images/", "mail alice@example.com", "/data/x@2x.png", "",
    "ssh git@github.com:org/repo.git"])
def test_text_without_credentials_is_unchanged(text: str):
    assert redact(text) == text


def test_nested_values_are_redacted_and_other_types_kept():
    assert redact_values({"a": [f"http://u:{SECRET}@h", 3], "b": (1.5, None)}) == {
        "a": ["http://***@h", 3], "b": (1.5, None)}


def test_a_config_shows_and_stores_no_password_but_keeps_it_in_memory():
    uri = f"http://alice:{SECRET}@127.0.0.1:5000"
    cfg = C.load(None, [f"tracking.tracking_uri={uri}"])
    assert cfg.tracking.tracking_uri == uri  # what the run connects with
    assert cfg.to_dict()["tracking"]["tracking_uri"] == uri  # passed to workers, in memory
    for shown in (cfg.to_yaml(), str(cfg.flat()), str(cfg.public_dict()), repr(cfg),
                  repr(cfg.tracking)):
        assert SECRET not in shown
    assert cfg.flat()["tracking.tracking_uri"] == "http://***@127.0.0.1:5000"
    with pytest.raises(C.ConfigError) as info:
        C.load(None, [f"data.source.path=s3://key:{SECRET}@bucket/x", "train.epochs=0"])
    assert SECRET not in str(info.value)
    error = C.ConfigError("tracking.tracking_uri", uri, "an http(s) or sqlite URI")
    assert SECRET not in str(error) and error.value == uri


@pytest.mark.parametrize("text, shown", [
    (f"s3://bucket/imgs?access_key=AKIA&secret_key={SECRET}&region=eu",
     "s3://bucket/imgs?access_key=***&secret_key=***&region=eu"),
    (f"az://c/p?sv=2024&sig={SECRET}%3D&se=2027", "az://c/p?sv=2024&sig=***&se=2027"),
    (f"token endpoint https://h/o?client_secret={SECRET} failed",
     "token endpoint https://h/o?client_secret=*** failed"),
    (f"'gs://b/x?X-Goog-Credential={SECRET}'", "'gs://b/x?X-Goog-Credential=***'"),
])
def test_secrets_in_query_strings_are_hidden(text: str, shown: str):
    assert redact(text) == shown


def test_a_store_never_shows_its_keys():
    store = Store("http://127.0.0.1:9000", ("AKIAEXAMPLE", SECRET, ""))
    assert SECRET not in repr(store) and SECRET not in str(store)


@pytest.mark.parametrize("path", [f"/no/such/dir?token={SECRET}",
                                  f"s3://AKIAEXAMPLE:{SECRET}@127.0.0.1:1/bucket"])
def test_the_cli_error_line_hides_the_data_paths_credentials(path, capsys, tmp_path,
                                                            monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["pretrain", "--set", f"data.source.path={path}"]) == 2
    err = capsys.readouterr().err
    assert "raysl: error: data.source.path=" in err and SECRET not in err


def test_the_embedding_tables_path_column_hides_credentials():
    table = embed_table({"index": np.arange(2), "features": np.zeros((2, 3), np.float32),
                         "path": np.array([f"s3://k:{SECRET}@b/0.png", f"/d/1.png?sig={SECRET}"])})
    assert table.column("path").to_pylist() == ["s3://***@b/0.png", "/d/1.png?sig=***"]


def test_every_text_written_through_raysls_mlflow_client_is_redacted(tmp_path):
    """Tags, params, batches, text artifacts, version tags and descriptions, each with a
    userinfo and a query-string secret, read back from a real MLflow store."""
    import mlflow
    from mlflow.entities import Param, RunTag

    from raysl.tracking.mlflow import tracking_client

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    secret = f"s3://AKIA:{SECRET}@bucket/imgs?secret_key={SECRET}"
    client = tracking_client(uri)
    exp = client.create_experiment("redact", artifact_location=str(tmp_path / "artifacts"))
    run_id = client.create_run(exp).info.run_id
    client.set_tag(run_id, "data.source", secret)
    client.log_param(run_id, "data.source.path", secret)
    client.log_batch(run_id, params=[Param("p", secret)], tags=[RunTag("t", secret)])
    client.log_text(run_id, f"skipped: {secret}/bad.png: corrupt\n", "data/skipped.txt")
    client.log_dict(run_id, {"source": secret}, "data/source.json")
    client.create_registered_model("m")
    version = client.create_model_version("m", f"runs:/{run_id}/x", run_id).version
    client.set_model_version_tag("m", version, "data.source", secret)
    client.update_model_version("m", version, description=f"trained on {secret}")
    client.set_registered_model_tag("m", "data", secret)
    client.update_registered_model("m", description=secret)
    plain = mlflow.MlflowClient(uri)  # what any registry reader sees
    run = plain.get_run(run_id)
    mv = plain.get_model_version("m", version)
    model = plain.get_registered_model("m")
    texts = [*run.data.tags.values(), *run.data.params.values(), *mv.tags.values(),
             mv.description, *model.tags.values(), model.description,
             Path(plain.download_artifacts(run_id, "data/skipped.txt", str(tmp_path))).read_text(),
             Path(plain.download_artifacts(run_id, "data/source.json", str(tmp_path))).read_text()]
    assert run.data.tags["data.source"] == "s3://***@bucket/imgs?secret_key=***"
    assert not [t for t in texts if SECRET in t]
