"""The cluster launcher configs pass Ray's own checks, so a typo fails CI instead of `ray up`.

`ray up` (ray.autoscaler._private.commands.create_or_update_cluster -> _bootstrap_config) loads
the YAML, calls ``prepare_config`` (merges the provider's defaults.yaml, folds setup_commands
into the head/worker lists, checks the docker section, fills per-type worker limits), then
``validate_config`` (ray-schema.json plus cross-field checks), and only then the provider's
bootstrap, which calls the cloud. We run the same two functions, offline. They are private Ray
APIs: if an upgrade moves them, these tests fail loudly at import.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(REPO.glob("cluster*.yaml"))  # cluster.yaml (AWS), cluster-gcp, cluster-onprem
# The cloud SDK the autoscaler on the head imports to add and remove nodes.
PROVIDER_SDK = {"aws": "boto3", "gcp": "google-api-python-client", "local": None}


def load(path: Path) -> dict[str, Any]:
    config = yaml.safe_load(path.read_text())
    assert isinstance(config, dict), f"{path.name} is not a YAML mapping"
    return config


def ray_up_checks(config: dict[str, Any]) -> dict[str, Any]:
    """What `ray up` does to a config before it contacts the cloud; returns the prepared one."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def repo_mount(config: dict[str, Any]) -> str:
    """Where file_mounts puts the repository ("." is the repo: `ray up` runs from its root)."""
    targets = [remote for remote, local in config["file_mounts"].items() if local == "."]
    assert len(targets) == 1, f"file_mounts must copy the repository once, got {targets}"
    return targets[0]


@pytest.fixture(params=CONFIGS, ids=lambda p: p.name)
def config(request: pytest.FixtureRequest) -> dict[str, Any]:
    return load(request.param)


def test_the_aws_config_and_its_alternatives_exist():
    assert [p.name for p in CONFIGS] == ["cluster-gcp.yaml", "cluster-onprem.yaml",
                                         "cluster.yaml"]


def test_ray_accepts_the_config(config: dict[str, Any]):
    ray_up_checks(config)


@pytest.mark.parametrize(("right", "wrong", "error", "message"), [
    ("max_workers: 6", "max_worker: 6", jsonschema.ValidationError, r"'max_worker' was unexpected"),
    ("\n    min_workers: 1", '\n    min_workers: "two"', jsonschema.ValidationError,
     r"'two' is not of type 'integer'"),
    ("min_workers: 0", "min_worker: 0", jsonschema.ValidationError, r"'min_worker' was unexpected"),
    ('"GPU": 4', '"GPU": 0.5', jsonschema.ValidationError, r"0.5 is not of type 'integer'"),
    ("run_options:", "run_option:", jsonschema.ValidationError, r"'run_option' was unexpected"),
    ("head_node_type: head", "head_node_type: haed", ValueError, r"must be one of"),
    ("type: aws", "type: awss", NotImplementedError, r"Unsupported node provider"),
    ("\n    min_workers: 1", "\n    min_workers: 7", ValueError,
     r"smaller than the sum of `min_workers`"),
], ids=["top-level key", "min_workers type", "node-type key", "fractional resource",
        "docker key", "head_node_type", "provider type", "min_workers sum"])
def test_a_typo_is_rejected(right: str, wrong: str, error: type[Exception], message: str):
    text = (REPO / "cluster.yaml").read_text()
    assert text.count(right) == 1, f"{right!r} must occur once in cluster.yaml"
    with pytest.raises(error, match=message):
        ray_up_checks(yaml.safe_load(text.replace(right, wrong)))


def test_aws_node_configs_are_valid_run_instances_arguments():
    """Ray's schema leaves node_config free-form; the AWS provider passes it to EC2 RunInstances.

    botocore's EC2 model (shipped in the package, no network) catches misspelt or mistyped
    fields there, e.g. ``InstanceTyp`` or ``VolumeSize: "200"``.
    """
    botocore_session = pytest.importorskip("botocore.session")
    from botocore.validate import ParamValidator

    run_instances = botocore_session.get_session().get_service_model("ec2").operation_model(
        "RunInstances").input_shape
    for name, node_type in load(REPO / "cluster.yaml")["available_node_types"].items():
        report = ParamValidator().validate({**node_type["node_config"], "MinCount": 1,
                                            "MaxCount": 1}, run_instances)
        assert not report.has_errors(), f"{name}: {report.generate_report()}"


def test_node_types_split_training_and_data(config: dict[str, Any]):
    prepared = ray_up_checks(config)
    if config["provider"]["type"] == "local":  # one node type; the start commands set markers
        head = " ".join(prepared["head_start_ray_commands"])
        workers = " ".join(prepared["worker_start_ray_commands"])
        assert "--num-cpus=0" in head
        assert "train_node" in workers and "data_node" in workers
        return
    types = prepared["available_node_types"]
    head = types.pop(prepared["head_node_type"])
    assert head["resources"].get("CPU") == 0, "tasks must not land on the head"
    assert "GPU" not in head["resources"]
    train = [t for t in types.values() if t["resources"].get("train_node")]
    data = [t for t in types.values() if t["resources"].get("data_node")]
    assert len(train) == 1 and len(data) == 1 and len(types) == 2
    assert train[0]["resources"].get("GPU", 0) >= 1 and train[0]["resources"]["CPU"] >= 1
    assert data[0]["resources"].get("GPU", 0) == 0 and data[0]["resources"]["CPU"] >= 1
    for t in types.values():
        assert 0 <= t["min_workers"] <= t["max_workers"]
    # Every type can reach its own max_workers at the same time.
    assert sum(t["max_workers"] for t in types.values()) <= prepared["max_workers"]


def test_every_node_installs_raysl_as_the_readme_does(config: dict[str, Any]):
    prepared = ray_up_checks(config)
    repo = repo_mount(config)
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^install:", makefile, re.M)
    assert re.search(r'pip install .*-e "\.\[dev\]"', makefile)
    for key in ("head_setup_commands", "worker_setup_commands"):
        commands = prepared[key]
        assert f"cd {repo} && make install" in commands, key
        # Our lists replace Ray's defaults (which would pip install a nightly Ray wheel).
        assert not any("ray-wheels" in c or "pip install -U" in c for c in commands), key
    assert f"cd {repo} && make data" in prepared["head_setup_commands"]
    sdk = PROVIDER_SDK[config["provider"]["type"]]
    if sdk:  # the autoscaler runs in raysl's venv on the head, so the SDK goes there
        assert any(f"{repo}/.venv/bin/python -m pip install" in c and sdk in c
                   for c in prepared["head_setup_commands"])


def test_ray_starts_from_the_venv_with_the_dashboard_and_one_auth_mode(config: dict[str, Any]):
    prepared = ray_up_checks(config)
    repo = repo_mount(config)
    head, workers = prepared["head_start_ray_commands"], prepared["worker_start_ray_commands"]
    for commands in (head, workers):
        assert commands[0].endswith("ray stop")  # a second `ray up` restarts Ray
        assert all(c.startswith(f". {repo}/.venv/bin/activate &&") for c in commands)
    start_head = next(c for c in head if "ray start" in c)
    assert "ray start --head " in start_head and " --port=6379" in start_head
    assert "--dashboard-host=$HEAD_IP" in start_head  # `ray job submit` talks to the dashboard
    assert "--include-dashboard=false" not in start_head
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in start_head
    start_worker = next(c for c in workers if "ray start" in c)
    assert "ray start --address=$RAY_HEAD_IP:6379" in start_worker
    # Left unset, `ray start --head` enables token auth only if a token file exists; head and
    # workers must agree, and token mode needs the token on every node.
    modes = [re.findall(r"RAY_AUTH_MODE=(\w+)", c) for c in (start_head, start_worker)]
    assert modes == [["token"], ["token"]]
    assert any(local == "~/.ray/auth_token" and remote.endswith("/.ray/auth_token")
               for remote, local in config["file_mounts"].items())


def test_the_tracking_server_requires_the_shipped_login(config: dict[str, Any]):
    prepared = ray_up_checks(config)
    head, workers = prepared["head_start_ray_commands"], prepared["worker_start_ray_commands"]
    server = next(c for c in head if "mlflow server" in c)
    assert "--app-name basic-auth" in server and "MLFLOW_AUTH_CONFIG_PATH=" in server
    assert "raysl credentials --file" in server and "--server-config" in server
    # Every Ray process (drivers, train workers) gets the login from the environment.
    for start in (next(c for c in head if "ray start" in c),
                  next(c for c in workers if "ray start" in c)):
        assert re.search(r"set -a && \. \S+/\.raysl/mlflow\.env && set \+a", start), start
    assert any(local == "~/.raysl/mlflow.env" and remote.endswith("/.raysl/mlflow.env")
               for remote, local in config["file_mounts"].items())


def test_the_container_runs_the_ray_and_python_raysl_pins(config: dict[str, Any]):
    if "docker" not in config:
        return
    pyproject = (REPO / "pyproject.toml").read_text()
    ray_pin = re.search(r'"ray\[[^\]]*\]==([\d.]+)"', pyproject)
    assert ray_pin
    assert config["docker"]["image"].startswith(f"rayproject/ray:{ray_pin[1]}-py311-")
    assert '">=3.11,<3.12"' in pyproject
