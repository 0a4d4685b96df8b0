"""Batch scoring with a pinned model (``tracking.pinning``): a file's request rows (``tracking.request_file``, in
the model's request columns or its training spec's own) through the logged pyfunc, the predictions written next to the input (``tracking.score_files``), one MLflow
run per file.

    score_file(pin_model("models:/bert-sst2@champion"), "reviews.csv", columns={"text": "review"}) -> dict

The scoring run, in the experiment ``bertflow-score-<model name>`` (``bertflow-score-runs`` for a run's model):
- tags: ``model_name``, ``model_version``, ``model_uri`` (the pinned one), ``model_requested`` (as given),
  ``model_alias``, ``model_run_id``, ``model_label``, ``family``, ``input_file``, ``input_sha256`` (of its
  bytes), ``input_format``, ``predictions_file``, ``code_version``, plus the caller's (Prefect's ids);
- params: ``columns`` (the file's column read for each request field), ``batch_size``, ``fail_on_bad_rows``,
  ``precision`` (the one the model predicted in: logged with it, or ``precision`` given);
- metrics: ``rows``, ``rows_scored``, ``rows_rejected``, ``predict_seconds``, ``rows_per_second`` (rows
  scored per second of prediction), ``seconds`` (the whole file: reading, predicting, writing);
- artifacts: ``scoring/<predictions file>`` and, when rows were rejected, ``scoring/<rejected file>``;
- drift against the model's dev set (``tracking.drift_check``): metrics ``drift_psi_<item>``, tags ``drift`` and
  ``drift_items``, the artifact ``drift/drift_report.json``.
A failure ends the run FAILED with its message as the ``error`` tag.

Bad rows: the good rows are scored, the rejected ones listed (with their error) in the predictions file and
in the rejected file; with ``fail_on_bad_rows`` any bad row fails the file before anything is scored.

Already scored (``unscored``): a file counts as scored by a model when its predictions file for that model
(the name carries ``<name>-v<version>``) is next to it *and* the scoring experiment holds a FINISHED run of
that model on the same path with the same sha256. A file whose bytes changed since, a predictions file
deleted by hand, or a run that failed half-way: scored again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from bert_core.drift import DRIFT_PSI
from bert_core.families import FAMILIES, Family, get_family
from bert_core.validation import DataError
from tracking import store
from tracking.drift_check import measure_drift
from tracking.packaging import load_pyfunc, rows_to_frame
from tracking.pinning import PinnedModel, scoring_task
from tracking.request_check import text_limit
from tracking.request_file import RequestFile, RequestRow, read_requests
from tracking.score_files import output_paths, prediction_lines, rejected_lines, write_jsonl

SHOWN_BAD_ROWS = 5  # bad rows quoted in a fail_on_bad_rows error
# Rows per call of the model: it sorts a call's inputs by length into batches (less padding, measured 1.3x
# faster than calls of one batch on SST-2 dev), and a call's rows and features stay a bounded size in memory.
ROWS_PER_CALL = 1024
BATCH_SIZE = 64  # inputs per forward pass, as the evaluation's default (TrainConfig.eval_batch_size)
_loaded: dict[tuple[str, str, str | None], tuple[mlflow.pyfunc.PyFuncModel, Family, dict]] = {}


def load_model(pinned: PinnedModel, precision: str | None = None) -> tuple[mlflow.pyfunc.PyFuncModel, Family, dict]:
    """The logged pyfunc (loaded once per store, pinned URI and precision in this process: a pinned version's
    artifacts never change), its family, and its meta (``save_finetuned``'s: its training spec's column names,
    ``spec_columns``, absent from models saved before their meta kept them; its task settings). ``precision``:
    auto, fp32, bf16 or int8 in place of the one logged with the model (``bert_core.serving_precision``)."""
    key = (mlflow.get_tracking_uri(), pinned.uri, precision)
    if key not in _loaded:
        model = load_pyfunc(pinned.uri, precision)
        try:
            python_model = model.unwrap_python_model()
        except MlflowException:  # not a python model at all
            python_model = None
        family = getattr(python_model, "family", None)
        if family not in FAMILIES:
            raise ValueError(f"{pinned.uri} is not a bertflow model (its pyfunc names no bertflow family)")
        meta = getattr(getattr(python_model, "predictor", None), "meta", None) or {}
        _loaded.clear()  # one model at a time: a folder is scored by one version
        _loaded[key] = model, get_family(family), meta
    return _loaded[key]


def predict_rows(model, family: Family, rows: list[RequestRow], batch_size: int) -> tuple[list[dict], float]:
    """The model's response (a dict of its response columns) per row, in order, and the seconds spent
    predicting. The model runs ``batch_size`` inputs per forward pass (QA: passage windows, several per long
    passage) and is asked ``ROWS_PER_CALL`` rows at a time: inputs of similar length share a batch."""
    predictor = getattr(model.unwrap_python_model(), "predictor", None)  # tracking.packaging.BertPyfunc's
    if predictor is not None:
        predictor.batch_size = batch_size
    responses: list[dict] = []
    seconds = 0.0
    for start in range(0, len(rows), ROWS_PER_CALL):
        frame = rows_to_frame(family.name, [r.fields for r in rows[start:start + ROWS_PER_CALL]])
        began = time.perf_counter()
        predicted = model.predict(frame)
        seconds += time.perf_counter() - began
        responses += predicted.to_dict(orient="records")
    return responses, seconds


def score_file(pinned: PinnedModel, path: str | Path, columns: dict[str, str] | None = None, fmt: str | None = None,
               batch_size: int = BATCH_SIZE, fail_on_bad_rows: bool = False, tags: dict[str, str] | None = None,
               drift_threshold: float = DRIFT_PSI, precision: str | None = None) -> dict:
    """Score one file in its own MLflow run (see the module docstring); returns what was done, as a dict, its
    ``drift`` that of ``tracking.drift_check.measure_drift`` (``drift_threshold``: the PSI an item must pass).
    ``precision``: None = the one logged with the model."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    began = time.perf_counter()
    path = Path(os.path.abspath(Path(path).expanduser()))  # a symlink stays where it is: outputs go beside it
    model, family, meta = load_model(pinned, precision)
    predictor = getattr(model.unwrap_python_model(), "predictor", None)
    predictions_path, rejected_path = output_paths(path, pinned.label)
    uri = mlflow.get_tracking_uri()
    run_tags = {"model_name": pinned.name or "none", "model_version": pinned.version or "none",
                "model_uri": pinned.uri, "model_requested": pinned.requested, "model_alias": pinned.alias or "none",
                "model_run_id": pinned.run_id or "none", "model_label": pinned.label, "family": family.name,
                "input_file": str(path), "predictions_file": str(predictions_path),
                "code_version": store.code_version(), **(tags or {})}
    with mlflow.start_run(experiment_id=store.experiment_for(scoring_task(pinned.name), uri),
                          run_name=f"{path.name} {pinned.label}", tags=run_tags) as run:
        try:
            requests = read_requests(path, family, columns, fmt, text_limit(family, meta), meta.get("spec_columns"))
            mlflow.set_tags({"input_sha256": requests.sha256, "input_format": requests.format})
            store.log_params_safely({"columns": json.dumps(requests.columns), "batch_size": batch_size,
                                     "fail_on_bad_rows": fail_on_bad_rows,
                                     "precision": getattr(predictor, "precision", precision or "none")})
            if requests.rejected and fail_on_bad_rows:
                raise DataError(bad_rows_message(requests))
            responses, predict_seconds = predict_rows(model, family, requests.rows, batch_size)
            drift = measure_drift(model, family, [r.fields for r in requests.rows], responses, drift_threshold)
            write_jsonl(predictions_path, prediction_lines(requests, responses))
            mlflow.log_artifact(str(predictions_path), artifact_path="scoring")
            if requests.rejected:
                write_jsonl(rejected_path, rejected_lines(requests))
                mlflow.log_artifact(str(rejected_path), artifact_path="scoring")
            else:
                rejected_path.unlink(missing_ok=True)  # an earlier scoring's, of other bytes
            speed = len(requests.rows) / predict_seconds if predict_seconds > 0 else 0.0
            metrics = {"rows": requests.total, "rows_scored": len(requests.rows), "rows_rejected": len(requests.rejected),
                       "predict_seconds": predict_seconds, "rows_per_second": speed,
                       "seconds": time.perf_counter() - began}
            mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
        except BaseException as err:
            mlflow.set_tag("error", store.mask_secrets(f"{type(err).__name__}: {err}")[:5000])
            raise  # start_run's context manager ends the run FAILED
    return {"input": str(path), "format": requests.format, "sha256": requests.sha256, "columns": requests.columns,
            **metrics, "predictions": str(predictions_path),
            "rejected_file": str(rejected_path) if requests.rejected else None, "mlflow_run_id": run.info.run_id,
            "experiment": pinned.experiment, "model": dataclasses.asdict(pinned), "drift": drift}


def bad_rows_message(requests: RequestFile) -> str:
    """The error of a file whose bad rows fail it: how many, and the first few with row, line and field."""
    bad = requests.rejected
    shown = "; ".join(f"row {r.row} ({r.source}): {r.error}" for r in bad[:SHOWN_BAD_ROWS])
    more = f"; and {len(bad) - SHOWN_BAD_ROWS} more" if len(bad) > SHOWN_BAD_ROWS else ""
    return (f"{requests.path}: {len(bad)} of {requests.total} row(s) cannot be scored, and bad rows fail the run "
            f"(fail_on_bad_rows), so nothing was scored: {shown}{more}")


def unscored(pinned: PinnedModel, paths: list[str]) -> tuple[list[str], list[str]]:
    """(files still to score, files already scored) by ``pinned`` (see the module docstring)."""
    client = MlflowClient()
    experiment = client.get_experiment_by_name(pinned.experiment)
    todo, done = [], []
    for path in paths:
        predictions, _ = output_paths(path, pinned.label)
        scored = predictions.is_file() and experiment is not None and _finished_run(
            client, experiment.experiment_id, pinned.label, os.path.abspath(path), _sha256(path))
        (done if scored else todo).append(path)
    return todo, done


def _finished_run(client: MlflowClient, experiment_id: str, label: str, path: str, sha256: str) -> bool:
    def quoted(text: str) -> str:
        return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"

    runs = client.search_runs([experiment_id], max_results=1, filter_string=(
        f"tags.model_label = {quoted(label)} and tags.input_sha256 = {quoted(sha256)} and "
        f"tags.input_file = {quoted(path)} and attributes.status = 'FINISHED'"))
    return bool(runs)


def _sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
