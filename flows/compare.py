"""The `compare` flow: every registered version of a task side by side (tracking.compare), kept as an MLflow
run `compare-<time>` (chart, markdown, CSV under `compare/`) and shown as two Prefect artifacts, a table
and a markdown report.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.params import CompareParams
from tasks.train import artifact_key
from tracking import store as tracking
from tracking.compare import display_rows, run_comparison


@flow(name="bertflow-compare")
def compare(params: CompareParams = CompareParams()) -> dict:  # noqa: B008 (pydantic default = the UI form's)
    """Compare the versions of `bert-<params.task>`: dev metric with its bootstrap interval per version, and each
    version against the champion on the same dev rows. Returns the model name, primary metric, the rows
    (best first), the chart's path and the MLflow run holding the report."""
    tracking.configure_tracking(tracking.check_tracking(params.tracking_uri))
    result = run_comparison(params.task, params.confidence, params.n_resamples, params.run_root,
                            log_to_mlflow=params.log_to_mlflow)
    get_run_logger().info("%s: %d version(s) compared, report in MLflow run %s and %s", result.name,
                          len(result.rows), result.mlflow_run_id, result.folder)
    description = f"{result.name}: {result.primary_metric} per registered version, best first"
    create_table_artifact(display_rows(result.rows), key=artifact_key(result.name, "comparison"),
                          description=description)
    report = result.markdown + f"\n\nLogged to MLflow run `{result.mlflow_run_id}` under `compare/`."
    create_markdown_artifact(report, key=artifact_key(result.name, "comparison-report"), description=description)
    return {"model_name": result.name, "primary_metric": result.primary_metric, "rows": result.rows,
            "chart": result.chart, "mlflow_run_id": result.mlflow_run_id}
