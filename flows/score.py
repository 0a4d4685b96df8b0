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
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from pydantic import Field

from bert_core.request_file import FORMATS
from tasks.score import find_new_files, pin, score_one_file
from tasks.train import artifact_key
from tracking import store as tracking
from tracking.scoring import BATCH_SIZE

InputFormat = Literal[FORMATS]  # type: ignore[valid-type]


@flow(name="bertflow-score")
def score(
    model: Annotated[str, Field(description="models:/<name>@<alias> (e.g. models:/bert-sst2@champion), "
                                "models:/<name>/<version> or runs:/<run id>/model; an alias is resolved to its "
                                "version once, when the run starts.")] = "models:/bert-sst2@champion",
    file: Annotated[str | None, Field(description="One file to score (give this or `folder`).")] = None,
    folder: Annotated[str | None, Field(description="Score this folder's files that the model's version has not "
                                        "scored yet (give this or `file`).")] = None,
    pattern: Annotated[str, Field(description="Folder mode: which files are inputs, a glob such as '*.csv' "
                                  "(scoring's own .predictions./.rejected. files never are).")] = "*",
    columns: Annotated[dict[str, str] | None, Field(description="Request column -> the file's column, e.g. "
                                                    "{'text': 'review'}; unmapped ones are found by name.")] = None,
    input_format: Annotated[InputFormat | None, Field(description="The files' format; default: from each "
                                                      "file's extension.")] = None,
    batch_size: Annotated[int, Field(ge=1, description="Inputs per forward pass (QA: passage windows; a long "
                                     "passage has several).")] = BATCH_SIZE,
    fail_on_bad_rows: Annotated[bool, Field(description="Fail a file with any bad row instead of scoring the "
                                            "good ones and listing the bad.")] = False,
    settle_seconds: Annotated[float, Field(ge=0, description="Folder mode: leave files modified this recently "
                                           "for a later run (they may still be being written).")] = 60,
    tracking_uri: Annotated[str | None, Field(description="MLflow store; default: $MLFLOW_TRACKING_URI, else "
                                              "$BERTFLOW_HOME/mlflow.db.")] = None,
) -> dict:
    """Score `file`, or the new files of `folder`, with `model`; returns what was scored and skipped."""
    uri = tracking.configure_tracking(tracking.check_tracking(tracking_uri))
    if (file is None) == (folder is None):
        raise ValueError("give either a file to score or a folder of files (not both)")
    pinned = pin(model)
    label = pinned["label"]
    shown = f"{pinned['name']} v{pinned['version']}" if pinned["name"] else pinned["uri"]
    _say(f"model: {model} -> {shown}" if model != pinned["uri"] else f"model: {shown}")
    if file is not None:
        found = {"new": [os.path.abspath(Path(file).expanduser())], "already_scored": [], "settling": [], "conflicts": []}
    else:
        folder = os.path.abspath(Path(folder).expanduser())
        found = find_new_files(folder, pattern, pinned, settle_seconds)
        _say(f"folder {folder}: {len(found['new'])} file(s) to score matching {pattern!r}; "
             f"{len(found['already_scored'])} already scored by {label}, {len(found['settling'])} modified in the "
             f"last {settle_seconds:g} s (left for later), {len(found['conflicts'])} sharing a name stem (skipped)")
        for path in found["conflicts"]:
            get_run_logger().warning("%s: another input has the same name stem, so both would write one predictions "
                                     "file; rename one of them", path)
    scored, failed = [], []
    for path in found["new"]:
        try:
            scored.append(score_one_file(pinned, path, columns, input_format, batch_size, fail_on_bad_rows))
        except Exception as err:
            if file is not None:
                raise
            failed.append({"input": path, "error": tracking.mask_secrets(f"{type(err).__name__}: {err}")})
            get_run_logger().error("%s: %s", path, err)
    if scored:
        create_table_artifact([{k: f[k] for k in ("input", "rows_scored", "rows_rejected", "rows_per_second",
                                                  "predictions", "mlflow_run_id")} for f in scored],
                              key=artifact_key(label, "scored"), description=f"files scored by {label}")
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(found['new'])} file(s) failed ({len(scored)} scored): "
                           + "; ".join(f"{f['input']}: {f['error']}" for f in failed))
    return {"model": pinned, "tracking_uri": tracking.mask_secrets(uri), "folder": folder, "pattern": pattern,
            "files": scored, "already_scored": found["already_scored"], "settling": found["settling"],
            "conflicts": found["conflicts"]}


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
    lines.append(f"MLflow store {result['tracking_uri']} (browse: bertflow ui)")
    return "\n".join(lines)
