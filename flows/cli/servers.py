"""`bertflow ui` and `bertflow serve`: this process becomes MLflow's UI server or its scoring server, on
bertflow's tracking store."""

from __future__ import annotations

import argparse
import os
import sys

from flows.cli.flags import add_precision, add_tracking_uri

HOST_HELP = "default 127.0.0.1 (this machine only); 0.0.0.0 for all"


def add(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "ui", help="the MLflow UI on bertflow's tracking store",
        description="Starts `mlflow server` on the store bertflow logs to (--tracking-uri, else "
        "$MLFLOW_TRACKING_URI, else $BERTFLOW_HOME/mlflow.db), its artifacts beside the database. For a "
        "tracking server, it prints the server's own UI address instead.")
    p.add_argument("--port", type=int, default=5000, help="default 5000")
    p.add_argument("--host", default="127.0.0.1", help=HOST_HELP)
    add_tracking_uri(p)
    p.set_defaults(handle=handle_ui, name="ui")

    p = commands.add_parser(
        "serve", help="serve a registered or logged model over HTTP (MLflow's scoring server)",
        description="`mlflow models serve` for MODEL_URI, resolved in bertflow's tracking store, in this "
        "environment (no conda or virtualenv is built). POST JSON to /invocations, e.g. {\"dataframe_records\": "
        "[{\"text\": \"a gripping film\"}]}. Pickled models are refused (MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false "
        "unless set).")
    p.add_argument("model_uri", help="e.g. models:/bert-sst2@champion, models:/bert-sst2/3, runs:/<id>/model")
    p.add_argument("--port", type=int, default=5001, help="default 5001")
    p.add_argument("--host", default="127.0.0.1", help=HOST_HELP)
    p.add_argument("--workers", type=int, default=1, help="server processes (default 1)")
    add_precision(p)
    add_tracking_uri(p)
    p.set_defaults(handle=handle_serve, name="serve")


def handle_ui(args: argparse.Namespace) -> int:
    from tracking.store import artifact_root, check_tracking, local_store_path, mask_secrets

    uri = check_tracking(args.tracking_uri)  # a new local store is created with its artifacts beside it
    if uri.startswith(("http://", "https://")):
        print(f"{mask_secrets(uri)} is an MLflow tracking server: its UI is at that address")
        return 0
    store = local_store_path(uri)
    command = ["server", "--backend-store-uri", uri, "--host", args.host, "--port", str(args.port), "--workers", "1"]
    if store is not None:
        command += ["--default-artifact-root", artifact_root(store)]
    print(f"MLflow UI on {mask_secrets(uri)}: http://{args.host}:{args.port} (Ctrl-C stops it)", flush=True)
    _exec_mlflow(command, {})


def handle_serve(args: argparse.Namespace) -> None:
    from tracking.serving import serving_environment
    from tracking.store import mask_secrets

    uri, env = serving_environment(args.model_uri, args.tracking_uri, args.precision)
    precision = f" in {args.precision}" if args.precision else ""
    print(f"serving {args.model_uri}{precision} from {mask_secrets(uri)} at http://{args.host}:{args.port}/invocations "
          "(Ctrl-C stops it)", flush=True)
    _exec_mlflow(["models", "serve", "-m", args.model_uri, "--env-manager", "local", "-h", args.host,
                  "-p", str(args.port), "-w", str(args.workers)], env)


def _exec_mlflow(arguments: list[str], env: dict[str, str]) -> None:
    """Become `mlflow <arguments>` (signals such as Ctrl-C then reach the server directly). The virtualenv's
    bin folder goes first on PATH: MLflow's servers start uvicorn / gunicorn from PATH."""
    bin_dir = os.path.dirname(sys.executable)
    mlflow = os.path.join(bin_dir, "mlflow")
    merged = {**os.environ, **env, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    os.execve(mlflow, [mlflow, *arguments], merged)
