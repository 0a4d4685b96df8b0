"""The `score` flow (`bertflow-score`): batch predictions of a registered model for a file, or for the new files
of a folder.

    bertflow score models:/bert-sst2@champion reviews.csv --column text=review      # one file, here
    bertflow score models:/bert-sst2@champion --folder inbox --pattern '*.csv'       # as the deployment does

The model URI is pinned first (an alias resolved to its version, tracking.pinning), so every file of a flow
run is scored by that one version even if the alias moves meanwhile. Each file gets its predictions file
next to it, `<stem>.predictions.<model>-v<version>.jsonl`, a rejected file when some rows could not be
scored, and its own MLflow run in `bertflow-score-<model>` (tracking.scoring).

Folder mode (the `bertflow-score/folder` deployment runs it on a schedule): the files matching `pattern`
that this version has not scored yet (its predictions file is there and a finished scoring run has the
file's sha256: tracking.scoring.unscored), that are not scoring's own output, and that were not modified in
the last `settle_seconds` (they may still be arriving). A file that fails does not stop the others; the
flow fails at the end, naming it, and the next run tries it again.

Drift: each file's inputs and predictions are profiled and compared with the model's dev set
(tracking.drift_check: a PSI per item, the run tag `drift`, a drift section in the summary). With
`retrain_on_drift` naming a deployment, a flow run in which any file drifted starts it (`retrain_on_drift`).
"""

from __future__ import annotations

import os
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.deployments import run_deployment
from prefect.events import emit_event
from prefect.runtime import flow_run

from flows.params import ScoreParams
from tasks.score import find_new_files, pin, score_one_file
from tasks.train import artifact_key
from tracking import store as tracking
from tracking.drift_check import drift_lines


@flow(name="bertflow-score")
def score(params: ScoreParams = ScoreParams()) -> dict:  # noqa: B008 (pydantic default = the UI form's)
    """Score `params.file`, or the new files of `params.folder`, with `params.model`; returns what was scored and
    skipped."""
    uri = tracking.configure_tracking(tracking.check_tracking(params.tracking_uri))
    file, folder, pattern = params.file, params.folder, params.pattern
    if (file is None) == (folder is None):
        raise ValueError("give either a file to score or a folder of files (not both)")
    pinned = pin(params.model)
    label = pinned["label"]
    shown = f"{pinned['name']} v{pinned['version']}" if pinned["name"] else pinned["uri"]
    _say(f"model: {params.model} -> {shown}" if params.model != pinned["uri"] else f"model: {shown}")
    if file is not None:
        found = {"new": [os.path.abspath(Path(file).expanduser())], "already_scored": [], "settling": [], "conflicts": []}
    else:
        folder = os.path.abspath(Path(folder).expanduser())
        found = find_new_files(folder, pattern, pinned, params.settle_seconds)
        _say(f"folder {folder}: {len(found['new'])} file(s) to score matching {pattern!r}; "
             f"{len(found['already_scored'])} already scored by {label}, {len(found['settling'])} modified in the "
             f"last {params.settle_seconds:g} s (left for later), {len(found['conflicts'])} sharing a name stem "
             "(skipped)")
        for path in found["conflicts"]:
            get_run_logger().warning("%s: another input has the same name stem, so both would write one predictions "
                                     "file; rename one of them", path)
    scored, failed = [], []
    for path in found["new"]:
        try:
            scored.append(score_one_file(pinned, path, params.columns, params.input_format, params.batch_size,
                                         params.fail_on_bad_rows, params.drift_threshold, params.precision))
        except Exception as err:
            if file is not None:
                raise
            failed.append({"input": path, "error": tracking.mask_secrets(f"{type(err).__name__}: {err}")})
            get_run_logger().error("%s: %s", path, err)
    if scored:
        create_table_artifact([{**{k: f[k] for k in ("input", "rows_scored", "rows_rejected", "rows_per_second",
                                                     "predictions", "mlflow_run_id")}, "drift": _drift_cell(f)}
                               for f in scored], key=artifact_key(label, "scored"), description=f"files scored by {label}")
    announce_drift(pinned, scored)
    retrain = retrain_on_drift(params.retrain_on_drift, scored)
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(found['new'])} file(s) failed ({len(scored)} scored): "
                           + "; ".join(f"{f['input']}: {f['error']}" for f in failed))
    return {"model": pinned, "tracking_uri": tracking.mask_secrets(uri), "folder": folder, "pattern": pattern,
            "files": scored, "already_scored": found["already_scored"], "settling": found["settling"],
            "conflicts": found["conflicts"], "retrain": retrain}


def announce_drift(pinned: dict, scored: list[dict]) -> None:
    """The Prefect event `bertflow.score.drift` when any file drifted, one per flow run, for automations
    (docs/scoring.md): its resource is the model (`bertflow.model.<name>`), its payload the files and items."""
    drifted = {Path(f["input"]).name: f["drift"]["drifted"] for f in scored if (f.get("drift") or {}).get("drifted")}
    if drifted:
        emit_event("bertflow.score.drift", payload={"model_uri": pinned["uri"], "files": drifted},
                   resource={"prefect.resource.id": f"bertflow.model.{pinned['name'] or pinned['label']}",
                             "prefect.resource.name": pinned["label"]})


def retrain_on_drift(deployment: str | None, scored: list[dict]) -> dict | None:
    """Opt-in (`retrain_on_drift`): when any file drifted, start that deployment's flow run and return it (not
    waiting for it; one per score flow run, however many files drifted, and one only if this flow run is
    retried: the idempotency key)."""
    drifted = [Path(f["input"]).name for f in scored if (f.get("drift") or {}).get("drifted")]
    if not deployment or not drifted:
        return None
    started = run_deployment(deployment, timeout=0, as_subflow=False, tags=["bertflow-drift-retrain"],
                             idempotency_key=f"drift-retrain-{flow_run.id}")
    _say(f"drift in {', '.join(drifted)}: started {deployment} (flow run {started.name}, {started.id})")
    return {"deployment": deployment, "flow_run_id": str(started.id), "flow_run_name": started.name,
            "files": drifted}


def _drift_cell(done: dict) -> str:
    drift = done.get("drift") or {}
    if not drift.get("measured"):
        return "not measured"
    if drift["drifted"]:
        return "drift: " + ", ".join(drift["drifted"])
    return f"none ({', '.join(drift['within_noise'])} within noise)" if drift.get("within_noise") else "none"


def _say(message: str) -> None:
    """One line per step for people: `bertflow score` shows these and hides Prefect's own INFO lines."""
    get_run_logger(bertflow_step=True).info(message)


def summary_text(result: dict) -> str:
    """What `bertflow score` prints: the model and version, then per file rows scored and rejected, speed,
    where the predictions and the MLflow run are."""
    pinned = result["model"]
    shown = f"{pinned['name']} v{pinned['version']}" if pinned["name"] else pinned["uri"]
    via = f" ({pinned['requested']})" if pinned["requested"] != pinned["uri"] else ""
    lines = []
    if result["folder"] is not None:
        skipped = [f"{len(result['already_scored'])} already scored by this version"]
        if result["settling"]:
            skipped.append(f"{len(result['settling'])} modified too recently (left for the next run)")
        if result["conflicts"]:
            skipped.append(f"{len(result['conflicts'])} sharing a name stem (rename them)")
        lines.append(f"{result['folder']} ({result['pattern']}) with {shown}{via}: {len(result['files'])} file(s) "
                     f"scored; {', '.join(skipped)}")
    for done in result["files"]:
        rejected = f", {done['rows_rejected']:,} rejected (listed in {done['rejected_file']})" if done["rows_rejected"] else ""
        if result["folder"] is None:
            lines.append(f"{Path(done['input']).name} with {shown}{via}")
        else:
            lines.append(f"- {Path(done['input']).name}")
        lines += [f"  rows         {done['rows_scored']:,} scored{rejected}",
                  f"  speed        {done['rows_per_second']:,.1f} rows/s ({done['predict_seconds']:.2f} s predicting, "
                  f"{done['seconds']:.2f} s in all)",
                  f"  predictions  {done['predictions']}",
                  f"  MLflow run   {done['mlflow_run_id']} in {done['experiment']}"]
        lines += drift_lines(done.get("drift"))
    if result.get("retrain"):
        lines.append(f"retrain on drift: started {result['retrain']['deployment']} "
                     f"(flow run {result['retrain']['flow_run_name']}, {result['retrain']['flow_run_id']})")
    lines.append(f"MLflow store {result['tracking_uri']} (browse: bertflow ui)")
    return "\n".join(lines)
