"""Credentials in URIs never reach what raysl shows or stores (config.redact)."""

import pytest

from raysl import config as C
from raysl.config.redact import redact, redact_values

SECRET = "s3cr3t-pw"


@pytest.mark.parametrize("text, shown", [
    (f"http://alice:{SECRET}@mlflow.internal:5000", "http://***@mlflow.internal:5000"),
    (f"https://token:{SECRET}@host/api?x=1", "https://***@host/api?x=1"),
    (f"s3://AKIAEXAMPLE:{SECRET}@bucket/images/", "s3://***@bucket/images/"),
    (f"http://bob:p@{SECRET}@host/x@2x.png", "http://***@host/x@2x.png"),  # '@' in a password
    (f"MLflow run 1f2e at http://u:{SECRET}@h:1 (retrying)",
     "MLflow run 1f2e at http://***@h:1 (retrying)"),
])
def test_the_userinfo_of_every_uri_is_hidden(text: str, shown: str):
    assert redact(text) == shown and SECRET not in redact(text)


@pytest.mark.parametrize("text", [
    "http://mlflow.internal:5000/#/experiments", "sqlite:////abs/path/mlflow.db",
    "s3://bucket/images/", "mail alice@example.com", "/data/x@2x.png", ""])
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
