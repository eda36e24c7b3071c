"""The ``raysl`` command: ``pretrain``, ``evaluate``, ``tune``, ``demo``, ``methods``, ``config``.

User mistakes (bad config values, missing data) print one clear line and exit with status 2,
without a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import traceback
from pathlib import Path

from raysl import catalog
from raysl import config as config_mod
from raysl.config import FASHION_MNIST_DIR, Config
from raysl.console import VERBOSE_ENV
from raysl.curate import NEAR_DEFAULT
from raysl.errors import (
    CheckpointError,
    ClusterUnreachable,
    ConfigError,
    DataError,
    ModelNotFoundError,
    NodesNotBack,
    RepresentationCollapsed,
)
from raysl.eval.protocols.base import ImageProtocol, cheapest_first
from raysl.redact import redact
from raysl.sweep.spec import Sweep, load_sweep
from raysl.tracking.auth import (
    DEFAULT_ENV_FILE,
    consumer_file,
    create_consumer,
    write_credentials,
    write_server_config,
)

# Tiny, fast settings for --smoke-test: generated data, 2 workers, a few steps (Ray's examples
# convention; CI runs every entry point this way).
SMOKE_OVERRIDES = [
    "data.source.format=generated", "data.source.limit=256", "data.image_size=32",
    "data.channels=1", "data.batch_size_global=32", "data.views.blur_p=[0.0, 0.0]",
    "data.views.crop_scale=[0.2, 1.0]", "model.width=8", "model.small_stem=true",
    "optim.name=sgd", "optim.base_lr=0.5", "optim.weight_decay=0.0005", "optim.warmup_epochs=0",
    "train.epochs=1", "train.num_workers=2",
    "eval.bank.format=generated", "eval.bank.limit=400", "eval.query.path=''",
    "eval.query.format=auto", "eval.knn_k=20", "tracking.register=true",
]

# The demo falls back to generated shapes when Fashion-MNIST is not installed.
DEMO_FALLBACK = [
    "data.source.format=generated", "data.source.limit=4000", "data.image_size=32",
    "eval.bank.format=generated", "eval.bank.limit=3000", "eval.query.path=''",
    "eval.query.format=auto",
]


SMOKE_HEAD_DIM = 64  # smoke tests shrink every head dimension (`*_dim` fields) to at most this


def load_config(path: str | None, overrides: list[str], smoke_test: bool = False,
                method: str | None = None) -> Config:
    """Config from an optional YAML file, ``--method``, the smoke-test settings, then ``--set``."""
    head = [f"method.name={method}"] if method else []
    if not smoke_test:
        return config_mod.load(path, head + overrides)
    cfg = config_mod.load(path, head + SMOKE_OVERRIDES + overrides)
    return config_mod.load(path, head + SMOKE_OVERRIDES + smoke_head_dims(cfg) + overrides)


def smoke_head_dims(cfg: Config) -> list[str]:
    """Overrides shrinking the method's head sizes (e.g. DINO's 65536 outputs) for a smoke run."""
    return [f"method.{f.name}={SMOKE_HEAD_DIM}" for f in dataclasses.fields(cfg.method)
            if f.name.endswith("_dim") and getattr(cfg.method, f.name) > SMOKE_HEAD_DIM]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="raysl", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    def add_config_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", help="YAML file of overrides, e.g. "
                        "pipelines/configs/simclr_fmnist.yaml")
        sp.add_argument("--method", help="SSL method by name (see `raysl methods`); the same as "
                        "--set method.name=NAME")
        sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one field, e.g. --set optim.base_lr=0.5 (repeatable)")
        sp.add_argument("--smoke-test", action="store_true",
                        help="tiny generated data, 2 workers, 1 epoch: checks the whole path")
        add_verbose(sp)

    def add_verbose(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--verbose", action="store_true",
                        help="Ray's own log lines on the terminal too (they are always in the "
                        "Ray session's log files)")

    def add_model(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("model", metavar="MODEL", help="models:/NAME/VERSION, "
                        "models:/NAME@ALIAS, runs:/ID or a checkpoint directory")

    def add_tracking_uri(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--tracking-uri", default="", help="the MLflow store (default: "
                        "$MLFLOW_TRACKING_URI, else ./mlflow.db)")

    add_config_args(sub.add_parser("pretrain", help="pretrain an encoder, evaluate, register"))
    add_config_args(sub.add_parser("demo", help="the README demo (SimCLR on Fashion-MNIST)"))
    add_config_args(sub.add_parser("config", help="print the effective config as YAML"))
    up = sub.add_parser("up", help="start a local Ray that later commands join (saves each "
                        "command the start of its own)")
    up.add_argument("--num-cpus", type=int, default=None,
                    help="logical CPUs it offers (default: the machine's)")
    sub.add_parser("down", help="stop the local Ray that `raysl up` started (only that one)")
    sub.add_parser("methods", help="list the registered SSL methods")
    sub.add_parser("protocols", help="list the registered evaluation protocols")
    ev = sub.add_parser("evaluate", help="kNN / linear probe / fine-tuning of a trained encoder")
    ev.add_argument("model", metavar="MODEL", help="a checkpoint directory, an MLflow run "
                    "(runs:/ID) or a registry URI (models:/NAME/VERSION, models:/NAME@ALIAS)")
    ev.add_argument("--data", metavar="SPEC", help="labeled data: a directory of class "
                    "sub-folders, an IDX directory (train = bank, t10k = queries), a .npz, or "
                    "'generated'; default: the split the model was evaluated on after pretraining")
    ev.add_argument("--protocol", metavar="LIST", help="comma-separated, out of "
                    "knn,linear,finetune (default: eval.protocols of the model's config)")
    ev.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override an eval.* or tracking.* field (repeatable)")
    ev.add_argument("--smoke-test", action="store_true",
                    help="every protocol on a little generated data, a few steps each: checks "
                    "the whole path with a real model")
    add_verbose(ev)
    sub.add_parser("readers", help="list the registered data formats (data.source.format)")
    sh = sub.add_parser("shards", help="convert a dataset into tar (WebDataset) or parquet "
                        "shards, the format that streams best")
    sh.add_argument("source", metavar="SOURCE", help="any source raysl reads: a folder, a file "
                    "list, parquet, IDX, npz, CIFAR, shards; local or s3://, gs://")
    sh.add_argument("out", metavar="OUT", help="the folder to write the shards into (local or "
                    "an object-store URI)")
    sh.add_argument("--format", default="tar", choices=["tar", "parquet"],
                    help="tar: WebDataset-style with a shards.json index (default); parquet")
    sh.add_argument("--shard-size", type=int, default=1000, metavar="N",
                    help="images per shard (default 1000: ~100 MB of JPEGs at ImageNet size)")
    sh.add_argument("--source-format", default="auto", metavar="NAME",
                    help="the source's reader (default: detected; see `raysl readers`)")
    sh.add_argument("--split", default="train", help="IDX/CIFAR: the split to convert")
    sh.add_argument("--limit", type=int, default=0, help="convert this many images (a seeded "
                    "random subset); 0 = all")
    sh.add_argument("--seed", type=int, default=0, help="seeds the order of the images")
    sh.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (its "
                    "files are deleted once the new shards are complete)")
    add_verbose(sh)
    em = sub.add_parser("embed", help="embed a dataset with a registered encoder into parquet")
    add_model(em)
    em.add_argument("--data", required=True, metavar="SOURCE", help="any source raysl reads "
                    "(folder, file list, parquet, shards, IDX, npz...), local or s3://, gs://")
    em.add_argument("--out", required=True, metavar="OUT", help="a .parquet file, or a folder "
                    "of part files (local or an object store)")
    em.add_argument("--data-format", default="auto", metavar="NAME", help="the source's reader")
    em.add_argument("--split", default="train", help="IDX/CIFAR: which split")
    em.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (once "
                    "the new embeddings are complete)")
    em.add_argument("--batch-size", type=int, default=512, help="images per encoder call "
                    "(default 512)")
    add_tracking_uri(em)
    add_verbose(em)
    nb = sub.add_parser("neighbours", help="the nearest rows of `raysl embed` output to images")
    nb.add_argument("embeddings", metavar="EMBEDDINGS", help="the parquet file or folder")
    nb.add_argument("images", metavar="IMAGE", nargs="+", help="query image files")
    nb.add_argument("--model", required=True, metavar="MODEL", help="the encoder that made "
                    "the embeddings")
    nb.add_argument("-k", type=int, default=10, help="neighbours per query (default 10)")
    add_tracking_uri(nb)
    cu = sub.add_parser("curate", help="remove duplicates and draw a cluster-balanced "
                        "selection of a dataset (Vo et al. 2024), as a file list or shards to "
                        "pretrain on")
    cu.add_argument("source", metavar="SOURCE", help="any source raysl reads: a folder, a file "
                    "list, tar or parquet shards, IDX, npz, npy, CIFAR; local or s3://, gs://")
    cu.add_argument("--model", required=True, metavar="MODEL", help="the encoder that embeds "
                    "the images: models:/NAME/VERSION, models:/NAME@ALIAS, runs:/ID or a "
                    "checkpoint directory")
    cu.add_argument("--out", required=True, metavar="OUT", help="a folder: selection.txt (the "
                    "file list) or selection/ (shards), report.json, report.png and "
                    "embeddings/")
    cu.add_argument("--write", default="auto", choices=("auto", "list", "tar", "parquet"),
                    help="the selection as a file list (image files only) or as tar or "
                    "parquet shards of the selected images (default auto: a list for image "
                    "files, tar shards for any other source)")
    cu.add_argument("--target", required=True, type=int, metavar="N", help="images to select")
    cu.add_argument("--near", type=float, default=NEAR_DEFAULT, help="cosine at or "
                    f"above which two images are near duplicates (default {NEAR_DEFAULT})")
    cu.add_argument("--clusters", default="", metavar="K1,K2,...", help="clusters per level, "
                    "level 1 first (default: two levels, about sqrt(N) and N^(1/4))")
    cu.add_argument("--iters", type=int, default=20, help="Lloyd iterations per k-means "
                    "(default 20)")
    cu.add_argument("--steps", type=int, default=3, help="resampling steps per level "
                    "(default 3; the paper's code: 10)")
    cu.add_argument("--size", type=int, default=10, help="points per cluster a resampling "
                    "step takes, closest to its centroid (default 10)")
    cu.add_argument("--block-rows", type=int, default=8192, help="rows per block; a task "
                    "holds two (default 8192)")
    cu.add_argument("--seed", type=int, default=0, help="seeds every draw")
    cu.add_argument("--data-format", default="auto", metavar="NAME", help="the source's reader")
    cu.add_argument("--split", default="train", help="shards with splits: which split")
    cu.add_argument("--overwrite", action="store_true", help="replace what OUT holds")
    add_tracking_uri(cu)
    add_verbose(cu)
    ex = sub.add_parser("export", help="export an encoder as TorchScript or ONNX, checked "
                        "against the original")
    add_model(ex)
    ex.add_argument("--format", required=True, choices=["torchscript", "onnx"])
    ex.add_argument("--out", required=True, metavar="FILE", help="e.g. encoder.onnx")
    ex.add_argument("--log", action="store_true", help="also log it to the version's run and "
                    "tag the version with it (registry URIs)")
    add_tracking_uri(ex)
    add_verbose(ex)
    rg = sub.add_parser("register", help="register an encoder again, in the safe pyfunc format "
                        "(for versions made before it, which load by unpickling)")
    add_model(rg)
    rg.add_argument("--name", default="", help="registered model name (default: the "
                    "version's own name)")
    add_tracking_uri(rg)
    cr = sub.add_parser("credentials", help="create the MLflow server credentials a cluster "
                        "uses (~/.raysl/mlflow.env), or the server's auth config from them")
    cr.add_argument("--file", default=str(DEFAULT_ENV_FILE), help="the admin's credentials file")
    cr.add_argument("--force", action="store_true", help="replace existing credentials (with "
                    "--consumer: give an existing user a new password)")
    cr.add_argument("--server-config", metavar="INI", help="write the basic-auth app's config "
                    "(the head runs this before `mlflow server --app-name basic-auth`)")
    cr.add_argument("--auth-db", default="sqlite:////home/ray/mlflow/auth.db",
                    help="the auth app's user database, with --server-config")
    cr.add_argument("--consumer", metavar="NAME", help="create a read-only user NAME on the "
                    "MLflow server (as the admin in --file) for someone who loads models, and "
                    "write its login to --out")
    cr.add_argument("--tracking-uri", default="", help="with --consumer: the server, e.g. "
                    "http://localhost:5001 through the SSH tunnel (default: $MLFLOW_TRACKING_URI)")
    cr.add_argument("--out", metavar="FILE", help="with --consumer: the consumer's login file "
                    "(default ~/.raysl/mlflow-NAME.env)")
    tu = sub.add_parser("tune", help="sweep hyperparameters with Ray Tune, register the best")
    tu.add_argument("--sweep", required=True, metavar="FILE",
                    help="sweep definition, e.g. tuning/simclr_temperature.yaml")
    tu.add_argument("--method", help="the method to sweep (fills {method} in the sweep file)")
    tu.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a sweep field (num_samples=8, scheduler.grace_period=2, ...) or a "
                    "field of the base config (train.epochs=20, ...); repeatable")
    tu.add_argument("--smoke-test", action="store_true",
                    help="two tiny trials on generated data: checks the whole path")
    add_verbose(tu)
    return p


# --smoke-test of `raysl evaluate`: the model is real, the labeled data tiny and generated, and
# every protocol runs a few steps (its own --data, --protocol and --set still win).
SMOKE_EVAL = ["eval.bank.limit=400", "eval.linear_lrs=[0.3]", "eval.linear_epochs=[2]",
              "eval.finetune_fractions=[0.1]", "eval.finetune_epochs=[1]",
              "eval.finetune_min_steps=4", "eval.plot_points=100"]


def evaluate_args(args: argparse.Namespace) -> tuple[str | None, str | None, list[str]]:
    """``--data``, ``--protocol`` and ``--set`` of ``raysl evaluate``, as ``--smoke-test`` sets."""
    if not args.smoke_test:
        return args.data, args.protocol, args.set
    every = ",".join(cheapest_first(catalog.names("protocol")))
    return args.data or "generated", args.protocol or every, [*SMOKE_EVAL, *args.set]


# --smoke-test of `raysl tune`: the pretraining smoke settings, two trials of two epochs.
SMOKE_SWEEP = ["num_samples=2", "search=random", "scheduler.grace_period=1",
               "max_concurrent_trials=1"]
SMOKE_SWEEP_BASE = ["train.epochs=2", "train.num_workers=1"]


def load_sweep_args(args: argparse.Namespace) -> Sweep:
    """The sweep of ``raysl tune``'s arguments (``--smoke-test`` shrinks the trials)."""
    if not args.smoke_test:
        return load_sweep(args.sweep, args.set, args.method)
    probe = load_sweep(args.sweep, args.set, args.method)
    base = [*SMOKE_OVERRIDES, *smoke_head_dims(probe.base), *SMOKE_SWEEP_BASE]
    # Grids become choices (two samples in all) and tiny data cannot fill the sweep's batches.
    return load_sweep(args.sweep, [*SMOKE_SWEEP, *args.set], args.method, base_overrides=base,
                      smoke=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``raysl`` console script."""
    args = _parser().parse_args(argv)
    if getattr(args, "verbose", False):
        os.environ[VERBOSE_ENV] = "1"
    try:
        return _run(args)
    except (ConfigError, DataError, FileNotFoundError, ClusterUnreachable, ModelNotFoundError,
            CheckpointError) as e:
        _error(f"raysl: error: {e}")
        return 2
    except (RepresentationCollapsed, NodesNotBack) as e:
        _error(f"raysl: training stopped: {e}")
        return 1
    except Exception:  # the traceback, its URIs' credentials hidden
        _error(traceback.format_exc().rstrip())
        return 1


def _error(text: str) -> None:
    """An error for the terminal: a data path's or tracking URI's credentials hidden."""
    print(redact(text), file=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    if args.command in ("up", "down"):
        return _up_down(args)
    if args.command == "methods":
        print(f"{'method':<13} {'views (preset)':<22} what it does  [paper]")
        for name in catalog.names("method"):
            cls = catalog.get("method", name)
            views = cls.default_preset + (", multi-crop" if cls.multicrop else "")
            print(f"{name:<13} {views:<22} {cls.summary}  [{cls.paper}]")
        print("\nRun one: raysl pretrain --method NAME "
              "[--config pipelines/configs/NAME_fmnist.yaml]")
        return 0
    if args.command == "protocols":
        print(f"{'protocol':<10} {'kind':<9} what it measures")
        for name, protocol in catalog.entries("protocol").items():
            kind = "images" if issubclass(protocol, ImageProtocol) else "features"
            print(f"{name:<10} {kind:<9} {protocol.summary}")
        print("\nRun some: raysl evaluate MODEL --protocol knn,linear")
        return 0
    if args.command == "evaluate":
        from raysl.evaluate import evaluate

        print(evaluate(args.model, *evaluate_args(args)).summary())
        return 0
    if args.command == "readers":
        print(f"{'format':<10} {'reads':<6} what it reads")
        for name, reader in catalog.entries("reader").items():
            print(f"{name:<10} {reader.reads:<6} {reader.summary}")
        print("\nformat: auto (the default) picks one from the path; large datasets stream best "
              "as shards: raysl shards SOURCE OUT")
        return 0
    if args.command == "shards":
        return _shards(args)
    if args.command == "credentials":
        return _credentials(args)
    if args.command in ("embed", "neighbours", "export", "register"):
        from raysl.serving import commands  # MLflow, torch; Ray for embed and export

        return commands.run(args)
    if args.command == "curate":
        from raysl.curate import command as curate  # MLflow, torch, Ray

        return curate.run(args)
    if args.command == "tune":
        from raysl.sweep.run import run_sweep  # heavy imports (Ray Tune, MLflow)

        sweep = run_sweep(load_sweep_args(args))
        print(sweep.summary())
        if sweep.interrupted or (sweep.best is None and not sweep.finished_earlier):
            return 1  # interrupted, or no trial completed: scripts and CI must see it
        return 0
    if args.command == "demo":
        overrides = list(args.set)
        if not Path(FASHION_MNIST_DIR).is_dir():
            print(f"raysl: Fashion-MNIST is not installed at {FASHION_MNIST_DIR} (Debian package "
                  "dataset-fashion-mnist); the demo uses a generated shapes dataset instead.")
            overrides = DEMO_FALLBACK + overrides
        cfg = load_config(args.config or "pipelines/configs/demo.yaml", overrides, args.smoke_test,
                          args.method)
    else:
        cfg = load_config(args.config, args.set, args.smoke_test, args.method)
    if args.command == "config":
        print(cfg.to_yaml(), end="")
        return 0
    from raysl.pretrain import pretrain  # heavy imports (Ray, MLflow) only when training

    result = pretrain(cfg, launched_at=process_start())
    print(result.summary())
    return 0



def _credentials(args: argparse.Namespace) -> int:
    if args.consumer:
        from mlflow.exceptions import MlflowException  # a server's refusal (e.g. 401)

        uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
        try:
            out = create_consumer(Path(args.file), uri, args.consumer,
                                  Path(args.out) if args.out else consumer_file(args.consumer),
                                  args.force)
        except (ValueError, MlflowException) as e:
            _error(f"raysl: error: {e}")
            return 2
        print(f"[raysl] created the read-only MLflow user {args.consumer!r} on {redact(uri)} and "
              f"wrote its login to {out} (mode 0600): give that file, not {args.file}, to "
              f"whoever loads models (`set -a; . {out.name}; set +a`)")
        return 0
    if args.server_config:
        ini = write_server_config(Path(args.file), Path(args.server_config), args.auth_db)
        print(f"[raysl] wrote {ini} (mode 0600) from {args.file}")
        return 0
    path, created = write_credentials(Path(args.file), force=args.force)
    print(f"[raysl] {'created' if created else 'kept the existing'} {path} (mode 0600): the "
          "cluster files ship it to every node; consumers load it with "
          f"`set -a; . {path}; set +a`")
    return 0


def process_start() -> float:
    """When this process started (``time.time()`` scale): the command's start-up counts."""
    import psutil  # Ray's vendored copy
    import ray  # noqa: F401  (puts its vendored psutil on the path)

    started: float = psutil.Process(os.getpid()).create_time()
    return started


def _shards(args: argparse.Namespace) -> int:
    from raysl.cluster.connect import connect
    from raysl.data.shards import write_shards  # Ray

    source = config_mod.SourceConfig(format=args.source_format, path=args.source,
                                     split=args.split, limit=args.limit)
    connect()
    try:
        result = write_shards(source, args.out, args.shard_size, args.format, args.seed,
                              overwrite=args.overwrite)
    except ValueError as e:  # DataError included
        _error(f"raysl: error: {e}")
        return 2
    skipped = f"; skipped {result.skipped}" if result.skipped else ""
    print(f"[raysl] wrote {result.samples} images in {len(result.shards)} {args.format} "
          f"shard(s) to {result.out} in {result.seconds:.0f}s{skipped}")
    print(f"[raysl] train on them: raysl pretrain --set data.source.path={result.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


def _up_down(args: argparse.Namespace) -> int:
    """``raysl up`` / ``raysl down``: the long-lived local Ray (raysl/cluster/local.py)."""
    from raysl.cluster import local

    if args.command == "up":
        up, started = local.start(args.num_cpus)
        if not started:
            print(f"[raysl] a local Ray is already up at {up.describe()}")
            return 0
        print(f"[raysl] local Ray up at {up.describe()}: raysl commands here join it (unless "
              f"RAY_ADDRESS names another); `raysl down` stops it. Its log: {up.log}")
        return 0
    stopped = local.stop()
    print(f"[raysl] stopped the local Ray at {stopped.address}" if stopped else
          "[raysl] no local Ray of `raysl up` is running")
    return 0
