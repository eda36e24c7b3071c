"""The consumers' commands of ``raysl``: embed, neighbours, export, register."""

from __future__ import annotations

import argparse
import os
import sys

from raysl.config import SourceConfig, TrackingConfig
from raysl.console import verbose
from raysl.serving.models import LoadedModel, load_model
from raysl.tracking.mlflow import resolve_tracking_uri, tracking_client
from raysl.tracking.model_registry import logged_weights, register_encoder


def run(args: argparse.Namespace) -> int:
    """Run ``args.command``; 0 on success."""
    if not verbose():  # MLflow's "Downloading artifacts" bars, each time the model is read
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = resolve_tracking_uri(TrackingConfig(tracking_uri=args.tracking_uri))
    model = load_model(args.model, uri)
    if args.command == "embed":
        return _embed(args, model)
    if args.command == "neighbours":
        return _neighbours(args, model)
    if args.command == "export":
        return _export(args, model, uri)
    return _register(args, model, uri)


def _embed(args: argparse.Namespace, model: LoadedModel) -> int:
    from raysl.cluster.connect import connect
    from raysl.serving.embed import embed, write_summary

    connect()
    source = SourceConfig(format=args.data_format, path=args.data, split=args.split)
    print(write_summary(embed(model, source, args.out, args.batch_size,
                              overwrite=args.overwrite)))
    return 0


def _neighbours(args: argparse.Namespace, model: LoadedModel) -> int:
    from raysl.serving.embed import neighbours

    for image, found in zip(args.images, neighbours(model, args.embeddings, args.images,
                                                    args.k), strict=True):
        print(f"{image}:")
        for n in found:
            label = f"  label {n.label}" if n.label is not None else ""
            print(f"  {n.rank:>3}  {n.similarity:.4f}  row {n.index}  {n.path}{label}")
    return 0


def _export(args: argparse.Namespace, model: LoadedModel, uri: str) -> int:
    from raysl.cluster.connect import connect
    from raysl.errors import ExportError
    from raysl.serving.export import export, log_to_version

    connect()
    try:
        result = export(model, args.format, args.out)
        artifact = log_to_version(tracking_client(uri), model, result) if args.log else ""
    except ExportError as e:
        print(f"raysl: error: {e}", file=sys.stderr)
        return 2
    print(f"[raysl] {result.format}: {result.path}; largest difference from the encoder "
          f"{result.max_abs_diff:.2e} on {result.images}")
    if artifact:
        print(f"[raysl] logged to {model.description} as {artifact}")
    return 0


def _register(args: argparse.Namespace, model: LoadedModel, uri: str) -> int:
    client = tracking_client(uri)
    if not model.run_id:
        print(f"raysl: error: MODEL={args.model!r}: must be a registered version or an MLflow "
              "run (models:/..., runs:/...): the new version points at the run's weights",
              file=sys.stderr)
        return 2
    name = args.name or model.registered_name
    if not name:
        print(f"raysl: error: --name is needed: MODEL={args.model!r} is a run, not a registered "
              "version", file=sys.stderr)
        return 2
    tags = {"raysl.registered_from": args.model}
    if model.registered_name:
        old = client.get_model_version(model.registered_name, model.registered_version)
        tags.update({k: v for k, v in old.tags.items() if k.startswith("eval.")})
        description = old.description or ""
    else:
        description = f"{model.config.method.name} encoder of run {model.run_id}"
    registered = register_encoder(model.encoder, model.config, model.run_id, uri, name,
                                  description, tags, logged_weights(client, model.run_id))
    assert registered is not None
    print(f"[raysl] registered {args.model} again as {registered.model_uri} (pyfunc: loads "
          "without unpickling)")
    return 0
