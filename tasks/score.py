"""The batch-scoring tasks: pin the model once (tracking.pinning), find a folder's files not yet scored by it,
score one file in its own MLflow run (tracking.scoring). Each returns small JSON-able dicts; the model itself
is loaded inside `score_one_file`, once per process and pinned version."""

from __future__ import annotations

import dataclasses

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import deployment, flow_run

from bert_core.drift import DRIFT_PSI
from tasks.retry_policy import retry_if_transient
from tracking.pinning import PinnedModel, pin_model
from tracking.score_files import scan_folder
from tracking.scoring import score_file, unscored


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10, retry_condition_fn=retry_if_transient)
def pin(model_uri: str) -> dict:
    """``model_uri`` resolved to one registered version (or a run's model), as a ``PinnedModel`` dict."""
    return dataclasses.asdict(pin_model(model_uri))


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10, retry_condition_fn=retry_if_transient)
def find_new_files(folder: str, pattern: str, pinned: dict, settle_seconds: float) -> dict:
    """The folder's input files by what happens to them: `new` (to score), `already_scored` (by this pinned
    model), `settling` (modified too recently), `conflicts` (two inputs, one predictions file name)."""
    scan = scan_folder(folder, pattern, settle_seconds)
    new, done = unscored(PinnedModel(**pinned), scan.inputs)
    return {"new": new, "already_scored": done, "settling": scan.settling, "conflicts": scan.conflicts}


@task(cache_policy=NO_CACHE, retries=1, retry_delay_seconds=10, retry_condition_fn=retry_if_transient)
def score_one_file(pinned: dict, path: str, columns: dict[str, str] | None, input_format: str | None,
                   batch_size: int, fail_on_bad_rows: bool, drift_threshold: float = DRIFT_PSI,
                   precision: str | None = None) -> dict:
    """``tracking.scoring.score_file`` with the flow run's ids as tags of the scoring run, and a line for people."""
    tags = {"prefect.flow_run_id": flow_run.id or "none", "prefect.flow_run_name": flow_run.name or "none",
            "prefect.deployment": deployment.name or "none"}
    done = score_file(PinnedModel(**pinned), path, columns, input_format, batch_size, fail_on_bad_rows, tags,
                      drift_threshold, precision)
    rejected = f", {done['rows_rejected']:,} rejected (listed in {done['rejected_file']})" if done["rows_rejected"] else ""
    get_run_logger(bertflow_step=True).info(
        "%s: %s rows scored%s, %.1f rows/s; predictions in %s, MLflow run %s", path, f"{done['rows_scored']:,}",
        rejected, done["rows_per_second"], done["predictions"], done["mlflow_run_id"])
    if done["drift"]["measured"] and done["drift"]["drifted"]:
        get_run_logger(bertflow_step=True).warning("%s: drift in %s (PSI over %g)", path,
                                                   ", ".join(done["drift"]["drifted"]), drift_threshold)
    return done
