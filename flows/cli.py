"""The `bertflow` command.

    bertflow tasks                                   # the built-in task specs
    bertflow check my_task.yaml --data-dir D         # dry run: every check, data report, time estimate
    bertflow run sst2 --max-train-samples 2000       # the finetune flow, here, with no Prefect server
    bertflow runs --status failed interrupted        # run folders; add --prune to delete them
    bertflow suite sst2 stsb squad --max-train-samples 500 --max-concurrency 2   # many tasks, a leaderboard
    bertflow predict models:/bert-sst2@champion --text "a gripping film"
    echo '{"text": "a gripping film"}' | bertflow predict models:/bert-sst2@champion
    bertflow compare sst2                            # registered versions side by side
    bertflow score models:/bert-sst2@champion reviews.csv --column text=review   # batch predictions of a file
    bertflow score models:/bert-sst2@champion --folder inbox --pattern '*.csv'    # a folder's new files

Failures print the error's message (no traceback; `--verbose` keeps Prefect's) and exit non-zero.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import typing


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the command line, not a call from Python: first a faster malloc, when the system has one
        # bert_core imports its names lazily, so this loads no torch before the process starts again
        from bert_core.allocator import start_again_with_faster_malloc

        try:
            start_again_with_faster_malloc()
        except ValueError as err:  # BERTFLOW_MALLOC names no library
            print(f"bertflow: error: {err}", file=sys.stderr)
            return 2
    args = _parser().parse_args(argv)
    try:
        return args.command(args) or 0
    except KeyboardInterrupt:
        return 130
    except Exception as err:  # the message is the product; the traceback would bury it
        if getattr(args, "verbose", False):
            raise
        print(f"bertflow {args.name}: error: {err}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bertflow", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    p = sub.add_parser("tasks", help="list the built-in task specs")
    p.set_defaults(command=cmd_tasks, name="tasks")

    p = sub.add_parser("check", help="dry run: load and check a task's data, build its features, estimate the "
                       "training time; trains nothing and writes nothing",
                       description="Everything `bertflow run` does before its first training step, in seconds: "
                       "every split loaded and validated, the spec's metrics checked against the labels, tags "
                       "against tag_scheme, features built, settings checked against the checkpoint; then rows, "
                       "label distribution, token lengths and truncation per split, and a training time "
                       "estimated from a few timed steps here. Exit status 0 when everything passes, else 1.")
    p.add_argument("task", help="built-in task name (see `bertflow tasks`) or a spec YAML path")
    _training_options(p)
    p.set_defaults(command=cmd_check, name="check")

    p = sub.add_parser("run", help="fine-tune a task with the finetune flow, locally")
    p.add_argument("task", help="built-in task name (see `bertflow tasks`) or a spec YAML path")
    _finetune_options(p)
    p.add_argument("--json", action="store_true", help="print the run's summary as JSON (default: a few lines "
                   "for people)")
    p.add_argument("--retries", type=int, default=0, metavar="N",
                   help="retry the flow run N times after a failure that may heal (tracking server or hub "
                   "unreachable, I/O), 60 s apart; errors of the input are never retried. Default 0: a run "
                   "here fails at once, and the same command again resumes from its newest checkpoint")
    p.set_defaults(command=cmd_run, name="run")

    p = sub.add_parser("runs", help="list run folders (status, size, MLflow run); prune them",
                       description="Run folders under the runs root ($BERTFLOW_HOME/runs, or --run-root), oldest "
                       "first. Status: running (a flow works there now), finished, failed, or interrupted "
                       "(killed or crashed: a new run with the same task, data and recipe resumes it). With "
                       "--prune the listed folders are deleted, never a running one.")
    p.add_argument("--task", help="only this task's folders")
    p.add_argument("--status", nargs="+", choices=["running", "finished", "failed", "interrupted"],
                   help="only folders with these statuses")
    p.add_argument("--older-than", type=float, metavar="DAYS", help="only folders created more than DAYS ago")
    p.add_argument("--prune", action="store_true", help="delete the listed folders (needs --status or --older-than)")
    p.add_argument("--run-root", help="where run folders are; default: $BERTFLOW_HOME/runs")
    p.set_defaults(command=cmd_runs, name="runs")

    p = sub.add_parser("suite", help="fine-tune many tasks (the suite flow), then a leaderboard")
    p.add_argument("tasks", nargs="*", help="task names or spec paths; default: the GLUE tasks present, "
                   "conll2003_ner and squad")
    p.add_argument("--max-concurrency", type=int, default=1, metavar="N", help="fine-tunes at once (default 1)")
    p.add_argument("--deployment", help="run each fine-tune through this finetune deployment's work pool, e.g. "
                   "bertflow-finetune/on-demand (needs a Prefect server and a worker); default: processes here")
    _finetune_options(p)
    p.set_defaults(command=cmd_suite, name="suite")

    p = sub.add_parser("sweep", help="hyperparameter search for a task (the sweep flow), then register the best trial",
                       description="Trials are fine-tunes with some TrainConfig fields varied; the Optuna study is "
                       "kept in a database, so the same command again resumes an interrupted sweep. Example: "
                       "bertflow sweep mrpc --space learning_rate=2e-5,3e-5,5e-5 --space batch_size=16,32")
    p.add_argument("task", help="built-in task name (see `bertflow tasks`) or a spec YAML path")
    p.add_argument("--space", action="append", type=_space_option, metavar="FIELD=VALUES", required=True,
                   help="a searched TrainConfig field: FIELD=V1,V2,... (a list: grid axis or categorical), or "
                   "FIELD=LOW:HIGH, FIELD=LOW:HIGH:log, FIELD=LOW:HIGH:STEP (a range, --sampler tpe only); repeat "
                   "for more fields")
    p.add_argument("--sampler", choices=["grid", "tpe"], default="grid", help="default grid")
    p.add_argument("--n-trials", type=int, metavar="N", help="trials to finish; default: the whole grid, or 10 for tpe")
    p.add_argument("--max-concurrency", type=int, default=1, metavar="N", help="trials at once (default 1)")
    p.add_argument("--pruner", choices=["median", "none"], default="median", help="default median")
    p.add_argument("--pruning-startup-trials", type=int, default=3, metavar="N",
                   help="trials that finish before any is pruned (default 3)")
    p.add_argument("--storage", help="Optuna storage URL; default: $BERTFLOW_OPTUNA_STORAGE, else "
                   "$BERTFLOW_HOME/optuna.db")
    p.add_argument("--study-name", help="default: <task>-<hash of the search>, so the same command resumes")
    p.add_argument("--sampler-seed", type=int, default=0, metavar="N", help="seeds the sampler (default 0)")
    p.add_argument("--no-register", action="store_true", help="do not register the best trial's model")
    p.add_argument("--deployment", help="run each trial through this finetune deployment's work pool; default: "
                   "processes here")
    _finetune_options(p)
    p.set_defaults(command=cmd_sweep, name="sweep")

    p = sub.add_parser("predict", help="predict with a logged or registered model",
                       description="Rows come from the options (repeat an option for more rows: the n-th "
                       "--text goes with the n-th --text-b), or as JSON lines on stdin (columns: text / text_a, "
                       "text_b / tokens / question, context). One JSON line out per row, in order.")
    p.add_argument("model_uri", help="e.g. models:/bert-sst2@champion, models:/bert-sst2/3, runs:/<id>/model")
    p.add_argument("--text", action="append",
                   help="the text (classification, tagging: split on spaces), or a pair's first text")
    p.add_argument("--text-b", action="append", help="the second text of a pair task")
    p.add_argument("--question", action="append")
    p.add_argument("--context", action="append")
    p.add_argument("--tokens", nargs="+", action="append", help="words to tag (one row per --tokens)")
    p.add_argument("--tracking-uri")
    p.set_defaults(command=cmd_predict, name="predict")

    p = sub.add_parser("score", help="batch predictions of a registered model for a file, or a folder's new files",
                       description="Runs the bertflow-score flow here: the model URI is pinned to one version "
                       "(an alias resolved once), the file's rows are read (format from the extension: tsv, csv, "
                       "json, jsonl, parquet, conll, SQuAD json) and scored; predictions go next to the file as "
                       "<stem>.predictions.<model>-v<version>.jsonl, one line per input row, rows that cannot be "
                       "scored listed with their error (and in <stem>.rejected.<model>-v<version>.jsonl); each file "
                       "gets an MLflow run in the experiment bertflow-score-<model>. With --folder, the files "
                       "matching --pattern that this version has not scored yet, as the bertflow-score/folder "
                       "deployment does. See docs/scoring.md.")
    p.add_argument("model_uri", help="models:/<name>@<alias> (e.g. models:/bert-sst2@champion), "
                   "models:/<name>/<version> or runs:/<run id>/model")
    p.add_argument("file", nargs="?", help="the file to score (or give --folder)")
    p.add_argument("--folder", help="score the files of this folder not yet scored by the model's version")
    p.add_argument("--pattern", default="*", help="with --folder: which files are inputs, a glob (default: *; "
                   "scoring's own output files never are)")
    p.add_argument("--settle-seconds", type=float, default=0, metavar="S", help="with --folder: leave files "
                   "modified in the last S seconds for a later run (default 0; the deployment uses 60)")
    p.add_argument("--column", action="append", default=[], metavar="NAME=COLUMN",
                   help="the file's column for one of the model's request columns, e.g. --column text=review, "
                   "--column text_a=sentence1 --column text_b=sentence2, --column id=review_id; repeat it")
    p.add_argument("--format", choices=_input_formats(), help="the file's format (default: from its extension)")
    p.add_argument("--batch-size", type=int, default=64, metavar="N",
                   help="inputs per forward pass (QA: passage windows); default 64")
    p.add_argument("--fail-on-bad-rows", action="store_true", help="fail if any row cannot be scored, naming "
                   "them, and score nothing (default: score the good rows, list the bad)")
    p.add_argument("--tracking-uri", help="MLflow URI; default: $MLFLOW_TRACKING_URI, else $BERTFLOW_HOME/mlflow.db")
    p.add_argument("--json", action="store_true", help="print the result as JSON (default: a few lines for people)")
    p.add_argument("--verbose", action="store_true", help="show tracebacks and every library's INFO lines")
    p.set_defaults(command=cmd_score, name="score")

    p = sub.add_parser("ui", help="the MLflow UI on bertflow's tracking store",
                       description="Starts `mlflow server` on the store bertflow logs to (--tracking-uri, else "
                       "$MLFLOW_TRACKING_URI, else $BERTFLOW_HOME/mlflow.db), its artifacts beside the database. "
                       "For a tracking server, it prints the server's own UI address instead.")
    p.add_argument("--port", type=int, default=5000, help="default 5000")
    p.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (this machine only); 0.0.0.0 for all")
    p.add_argument("--tracking-uri")
    p.set_defaults(command=cmd_ui, name="ui")

    p = sub.add_parser("serve", help="serve a registered or logged model over HTTP (MLflow's scoring server)",
                       description="`mlflow models serve` for MODEL_URI, resolved in bertflow's tracking store, "
                       "in this environment (no conda or virtualenv is built). POST JSON to /invocations, e.g. "
                       "{\"dataframe_records\": [{\"text\": \"a gripping film\"}]}. Pickled models are refused "
                       "(MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false unless set).")
    p.add_argument("model_uri", help="e.g. models:/bert-sst2@champion, models:/bert-sst2/3, runs:/<id>/model")
    p.add_argument("--port", type=int, default=5001, help="default 5001")
    p.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (this machine only); 0.0.0.0 for all")
    p.add_argument("--workers", type=int, default=1, help="server processes (default 1)")
    p.add_argument("--tracking-uri")
    p.set_defaults(command=cmd_serve, name="serve")

    p = sub.add_parser("compare", help="registered versions of a task side by side, with bootstrap intervals")
    p.add_argument("task", help="task name or spec YAML path")
    p.add_argument("--confidence", type=float, default=0.95, metavar="X", help="interval confidence (default 0.95)")
    p.add_argument("--resamples", type=int, default=1000, metavar="N", help="bootstrap resamples (default 1000)")
    p.add_argument("--run-root", help="where the comparison folder goes; default: $BERTFLOW_HOME/runs")
    p.add_argument("--no-log", action="store_true", help="do not keep the comparison as an MLflow run")
    p.add_argument("--tracking-uri")
    p.set_defaults(command=cmd_compare, name="compare")
    return parser


def _input_formats() -> tuple[str, ...]:
    from bert_core.request_file import FORMATS

    return FORMATS


def _training_options(p: argparse.ArgumentParser) -> None:
    """What shapes a fine-tune: every TrainConfig field, checkpoint, data (the options of `check`, `run`, `suite`).
    Only the options given reach TrainConfig, so the task spec's defaults fill the rest."""
    from bert_core.training import TrainConfig

    group = p.add_argument_group("training (TrainConfig; unset fields take the task spec's defaults)")
    for name, field in TrainConfig.model_fields.items():
        flag = "--" + name.replace("_", "-")
        text = f"{field.description} Default: {field.default}, unless the task spec sets it."
        kind = _flag_type(field.annotation)
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif isinstance(kind, tuple):  # a Literal: its values are the choices
            group.add_argument(flag, choices=kind, default=None, help=text)
        else:
            group.add_argument(flag, type=kind, default=None, metavar="N" if kind is int else "X", help=text)
    p.add_argument("--pretrained", help="checkpoint folder or hub id; default: the packaged all-MiniLM-L6-v2")
    p.add_argument("--data-dir", help="folder holding the task's files; default: $BERTFLOW_DATA_DIR")
    p.add_argument("--drop-bad-rows", action="store_true", help="skip malformed rows instead of failing")
    p.add_argument("--verbose", action="store_true", help="show tracebacks and every library's INFO lines (Prefect, "
                   "MLflow); default: bertflow's own line per step, warnings and errors")


def _finetune_options(p: argparse.ArgumentParser) -> None:
    """The options of `run` and `suite`: FinetuneParams' fields."""
    _training_options(p)
    p.add_argument("--tracking-uri", help="MLflow URI; default: $MLFLOW_TRACKING_URI, else $BERTFLOW_HOME/mlflow.db")
    p.add_argument("--run-root", help="where run folders go; default: $BERTFLOW_HOME/runs")
    p.add_argument("--keep-checkpoints-after-success", action="store_true",
                   help="keep the resumable checkpoints and the best model's folder once the run has succeeded "
                   "(the model is in MLflow either way)")
    p.add_argument("--registry-policy", choices=["better", "significant"], default="better",
                   help="when the new version becomes champion (default: better)")
    p.add_argument("--registry-confidence", type=float, default=0.95, metavar="X",
                   help="policy significant: confidence of the bootstrap interval (default 0.95)")


def _flag_type(annotation):
    """int, float, bool or str for a TrainConfig field's type (``X | None`` -> X); a tuple of a Literal's values."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Literal:
        return tuple(typing.get_args(annotation))
    if args:  # X | None
        return _flag_type(args[0])
    return annotation


def _training_config(args):
    """TrainConfig of the training options given (the rest stays unset, so the spec's defaults fill it)."""
    from bert_core.training import TrainConfig

    given = {k: getattr(args, k) for k in TrainConfig.model_fields if getattr(args, k, None) is not None}
    return TrainConfig(**given)


def _finetune_params(args, task: str):
    from flows.params import FinetuneParams

    training = _training_config(args)
    return FinetuneParams(task=task, training=training, pretrained=args.pretrained, data_dir=args.data_dir,
                          tracking_uri=args.tracking_uri, run_root=args.run_root, drop_bad_rows=args.drop_bad_rows,
                          keep_checkpoints_after_success=args.keep_checkpoints_after_success,
                          registry_policy=args.registry_policy, registry_confidence=args.registry_confidence)


def _run_flow(args, flow, **parameters):
    """Run a flow here; its result, or its error raised (printed by main without a traceback)."""
    # With no Prefect server configured, Prefect starts a temporary one; its first start creates a database,
    # which takes longer than Prefect's default wait on a small, busy machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    # That temporary server's telemetry heartbeat races the flow for its sqlite database and prints a
    # "database is locked" traceback; it also calls out to Prefect, which an offline machine cannot.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if not args.verbose:
        _hide_tracebacks()
        _quiet_libraries()
    if getattr(args, "retries", None) is not None:
        flow = flow.with_options(retries=args.retries)
    state = flow(**parameters, return_state=True)
    if not state.is_completed():
        error = state.result(raise_on_failure=False)
        raise error if isinstance(error, Exception) else RuntimeError(state.message or state.name)
    return state.result()


def cmd_tasks(args) -> None:
    from bert_core.spec import builtin_specs, load_spec

    rows = []
    for name in builtin_specs():
        spec = load_spec(name)
        source = "local" + ("+hub" if spec.hub else "") if spec.local else "hub"
        rows.append({"task": name, "family": spec.family, "primary metric": spec.primary_metric,
                     "data": source, "description": spec.description})
    print(_table(rows))


def cmd_check(args) -> int:
    from bert_core.dry_run import dry_run, report
    from bert_core.spec import load_spec

    spec = load_spec(args.task)
    cfg = _training_config(args).with_defaults(spec.defaults)
    print(report(dry_run(spec, cfg, args.data_dir, args.pretrained, args.drop_bad_rows)))
    return 0


def cmd_runs(args) -> int:
    from datetime import UTC, datetime, timedelta

    from bert_core.home import runs_root
    from flows.run_folder import list_runs, prune

    if args.prune and not (args.status or args.older_than is not None):
        raise ValueError("--prune deletes the listed folders: say which with --status (e.g. failed interrupted) "
                         "and/or --older-than DAYS")
    runs = list_runs(args.run_root, args.task)
    if args.status:
        runs = [r for r in runs if r.status in args.status]
    if args.older_than is not None:
        cutoff = (datetime.now(UTC) - timedelta(days=args.older_than)).isoformat(timespec="seconds")
        runs = [r for r in runs if (r.created or "") < cutoff]
    root = runs_root(args.run_root)
    if not runs:
        print(f"no run folders under {root}" + (" match" if args.status or args.older_than is not None else ""))
        return 0
    print(_table([{"folder": str(r.path.relative_to(root)), "status": r.status, "size": _megabytes(r.size_bytes),
                   "mlflow run": r.mlflow_run_id or "-", "created": r.created or "-",
                   "error": (r.error or "")[:70] or "-"} for r in runs]))
    total = sum(r.size_bytes for r in runs)
    if args.prune:
        deleted = prune(runs)
        skipped = len(runs) - len(deleted)
        print(f"deleted {len(deleted)} folder(s), {_megabytes(sum(r.size_bytes for r in runs if r.path in deleted))}"
              + (f"; kept {skipped} that a flow run works in now" if skipped else ""))
    else:
        print(f"{len(runs)} folder(s), {_megabytes(total)} under {root}; delete some with e.g. "
              "`bertflow runs --status failed interrupted --prune`")
    return 0


def _megabytes(size: int) -> str:
    return f"{size / 1e6:,.1f} MB"


def cmd_run(args) -> int:
    from bert_core.spec import load_spec

    load_spec(args.task)  # a bad spec fails here, before a Prefect server or MLflow run is started
    params = _finetune_params(args, args.task)
    from flows.finetune import finetune  # imports Prefect and MLflow: only when a run is wanted

    summary = _run_flow(args, finetune, params=params)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        from flows.summary import FinetuneSummary

        print(FinetuneSummary(**summary).text())
    return 0


def cmd_suite(args) -> int:
    from bert_core.spec import load_spec

    for task in args.tasks:
        load_spec(task)
    params = _finetune_params(args, args.tasks[0] if args.tasks else "sst2")  # `task` is replaced per task
    from flows.suite import suite

    rows = _run_flow(args, suite, tasks=args.tasks or None, params=params, max_concurrency=args.max_concurrency,
                     deployment=args.deployment)
    print(_table([{k: r[k] for k in ("task", "primary_metric", "score", "model", "alias", "train_seconds")}
                  for r in rows]))
    return 0


def _space_option(text: str) -> tuple[str, object]:
    """`FIELD=V1,V2` -> (field, [v1, v2]); `FIELD=LOW:HIGH[:log|:STEP]` -> (field, Range)."""
    from bert_core.search import Range

    field, sep, values = text.partition("=")
    if not sep or not field or not values:
        raise argparse.ArgumentTypeError(f"expected FIELD=V1,V2,... or FIELD=LOW:HIGH[:log|:STEP], got {text!r}")
    if ":" in values:
        low, high, *rest = values.split(":")
        if len(rest) > 1:
            raise argparse.ArgumentTypeError(f"a range is LOW:HIGH, LOW:HIGH:log or LOW:HIGH:STEP, got {values!r}")
        extra = {"log": True} if rest == ["log"] else {"step": _scalar(rest[0])} if rest else {}
        try:
            return field, Range(low=_scalar(low), high=_scalar(high), **extra)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"{field}: {err.errors()[0]['msg'] if hasattr(err, 'errors') else err}") from None
    return field, [_scalar(v) for v in values.split(",")]


def _scalar(text: str):
    """'16' -> 16, '2e-5' -> 2e-05, 'true' -> True, else the text."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def cmd_sweep(args) -> int:
    from bert_core.spec import load_spec

    load_spec(args.task)
    space = dict(args.space)
    if len(space) != len(args.space):
        raise ValueError("--space names a field twice")
    from flows.sweep import SweepParams, sweep

    params = SweepParams(base=_finetune_params(args, args.task), space=space, sampler=args.sampler,
                         n_trials=args.n_trials, max_concurrency=args.max_concurrency, pruner=args.pruner,
                         pruning_startup_trials=args.pruning_startup_trials, storage=args.storage,
                         study_name=args.study_name, seed=args.sampler_seed, register_best=not args.no_register,
                         deployment=args.deployment)
    result = _run_flow(args, sweep, params=params)
    metric = load_spec(args.task).primary_metric
    print(_table([{"trial": t["number"], "state": t["state"], **t["params"],
                   metric: "-" if t["value"] is None else f"{t['value']:.4f}", "mlflow run": t["mlflow_run_id"] or "-"}
                  for t in result["trials"]]))
    best, registered = result["best"], result["registered"]
    print(f"best: trial {best['number']}, {metric} {best['value']:.4f}"
          + (f"; {registered['model_uri']} is {registered['alias']}" if registered else ""))
    print(f"study {result['study']} in {result['storage']}; table {result['table']}, plot {result['plot']}")
    return 0


def cmd_predict(args) -> None:
    import mlflow
    import pandas as pd

    from tracking.store import configure_tracking

    columns = {"text": args.text, "text_b": args.text_b, "question": args.question, "context": args.context,
               "tokens": args.tokens}
    given = {k: v for k, v in columns.items() if v is not None}
    if given:
        counts = {f"--{k.replace('_', '-')}": len(v) for k, v in given.items()}
        if len(set(counts.values())) > 1:
            raise ValueError(f"each row needs one of each option given, but the counts differ: {counts}")
        rows = [dict(zip(given, values, strict=True)) for values in zip(*given.values(), strict=True)]
    else:
        rows = [json.loads(line) for line in sys.stdin if line.strip()]
        if not rows:
            raise ValueError("no input: give --text (or --question/--context, --tokens) or JSON lines on stdin")
    configure_tracking(args.tracking_uri)
    model = mlflow.pyfunc.load_model(args.model_uri)
    predictions = model.predict(pd.DataFrame(rows))
    print(predictions.to_json(orient="records", lines=True, force_ascii=False).strip())


def cmd_score(args) -> int:
    from pathlib import Path

    if (args.file is None) == (args.folder is None):
        raise ValueError("give a FILE to score, or --folder DIR (not both)")
    where = Path(args.file or args.folder).expanduser()
    if not (where.is_file() if args.file else where.is_dir()):  # here, before a Prefect server is started
        raise FileNotFoundError(f"{where}: no such {'file' if args.file else 'folder'}")
    columns = {}
    for item in args.column:
        name, sep, column = item.partition("=")
        if not sep or not name or not column:
            raise ValueError(f"--column {item!r}: expected NAME=COLUMN, e.g. --column text=review")
        columns[name] = column
    from flows.score import score, summary_text  # imports Prefect and MLflow: only when a run is wanted

    result = _run_flow(args, score, model=args.model_uri, file=os.path.abspath(where) if args.file else None,
                       folder=os.path.abspath(where) if args.folder else None, pattern=args.pattern,
                       columns=columns or None, input_format=args.format, batch_size=args.batch_size,
                       fail_on_bad_rows=args.fail_on_bad_rows, settle_seconds=args.settle_seconds,
                       tracking_uri=args.tracking_uri)
    print(json.dumps(result, indent=2, default=str) if args.json else summary_text(result))
    return 0


def cmd_ui(args) -> int:
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


def cmd_serve(args) -> int:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from tracking.store import check_tracking, configure_tracking, mask_secrets

    uri = configure_tracking(check_tracking(args.tracking_uri))
    if args.model_uri.startswith("models:/"):  # fail here, naming the store, not deep inside the server
        try:
            mlflow_model_version(MlflowClient(), args.model_uri)
        except MlflowException as err:
            names = sorted(m.name for m in MlflowClient().search_registered_models())
            raise ValueError(f"{args.model_uri} is not in the model registry of {mask_secrets(uri)} ({err.message}); "
                             f"registered models there: {names or 'none'}. Fine-tune one with `bertflow run`, or "
                             "point --tracking-uri / MLFLOW_TRACKING_URI at the store that holds it") from None
    print(f"serving {args.model_uri} from {mask_secrets(uri)} at http://{args.host}:{args.port}/invocations "
          "(Ctrl-C stops it)", flush=True)
    _exec_mlflow(["models", "serve", "-m", args.model_uri, "--env-manager", "local", "-h", args.host,
                  "-p", str(args.port), "-w", str(args.workers)],
                 {"MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri,
                  "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": os.environ.get("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")})


def mlflow_model_version(client, model_uri: str):
    """The registry version behind ``models:/<name>/<version>`` or ``models:/<name>@<alias>``."""
    name, _, rest = model_uri.removeprefix("models:/").partition("/")
    if "@" in name:
        name, alias = name.split("@", 1)
        return client.get_model_version_by_alias(name, alias)
    return client.get_model_version(name, rest)


def _exec_mlflow(arguments: list[str], env: dict[str, str]) -> None:
    """Become `mlflow <arguments>` (signals such as Ctrl-C then reach the server directly). The virtualenv's
    bin folder goes first on PATH: MLflow's servers start uvicorn / gunicorn from PATH."""
    bin_dir = os.path.dirname(sys.executable)
    mlflow = os.path.join(bin_dir, "mlflow")
    merged = {**os.environ, **env, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    os.execve(mlflow, [mlflow, *arguments], merged)


def cmd_compare(args) -> None:
    from tracking.compare import display_rows, run_comparison
    from tracking.store import configure_tracking

    configure_tracking(args.tracking_uri)
    result = run_comparison(args.task, args.confidence, args.resamples, args.run_root, log_to_mlflow=not args.no_log)
    print(f"{result.name} (primary metric: {result.primary_metric}; {args.confidence:.0%} bootstrap intervals)")
    print(_table(display_rows(result.rows)))
    print(f"chart: {result.chart}" + (f" (also in MLflow run {result.mlflow_run_id}, compare/)" if result.mlflow_run_id else ""))


def _table(rows: list[dict]) -> str:
    """Rows of equal keys as aligned text columns."""
    headers = list(rows[0])
    cells = [[str(r[h]) for h in headers] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


def _quiet_libraries() -> None:
    """The console shows bertflow's line per step (marked `bertflow_step`), warnings and errors; Prefect's INFO
    lines and MLflow's event messages ("Created version ...", hints, download bars) stay out. Prefect's API
    (the UI, `prefect flow-run logs`) still gets every line; `--verbose` shows them all here too."""
    from mlflow.utils.logging_utils import disable_logging

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    disable_logging()  # MLflow prints its events to one stream of its own, warnings included
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # Prefect's background services (events, telemetry) report their own hiccups, e.g. when the temporary
    # server stops; they do not change a flow run's result.
    logging.getLogger("prefect._internal").setLevel(logging.CRITICAL)
    for handler in logging.getLogger().handlers:
        handler.addFilter(lambda record: record.levelno >= logging.WARNING or getattr(record, "bertflow_step", False))


def _hide_tracebacks() -> None:
    """Prefect logs a failed task's or flow's traceback to the console; the CLI prints the message
    instead. Only the console's formatting changes: the Prefect API (the UI) still gets the traceback."""
    for handler in logging.getLogger().handlers:
        if handler.formatter is not None:
            handler.formatter.format = _without_traceback(handler.formatter.format)


def _without_traceback(format_record):
    def format_record_without_traceback(record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            return format_record(record)
        finally:  # other handlers (the API's) still see the traceback
            record.exc_info, record.exc_text, record.stack_info = saved
    return format_record_without_traceback


if __name__ == "__main__":
    sys.exit(main())
