"""The `suite` flow: fine-tune many task specs with the same settings (`SuiteParams`), at most `max_concurrency` at once,
then publish a leaderboard (tasks.leaderboard).

Two ways to fan out, both Prefect's own machinery:
- here (default): each fine-tune is the `finetune` flow, run as a subflow inside a task of a
  `ProcessPoolTaskRunner` with `max_concurrency` worker processes, which share the machine's cores.
  Separate processes keep each fine-tune's seeded RNG and thread settings its own, so a suite's results
  match single runs with the same threads.
- `deployment="bertflow-finetune/on-demand"` (any deployment of the finetune flow): each fine-tune is a
  run of that deployment, picked up by whichever worker polls its work pool; a thread per running
  fine-tune waits for it. The summary comes back from the MLflow run tagged with its flow run id, so
  workers on other machines need only the shared tracking server.

A task whose fine-tune finds nothing changed since its champion trains nothing (flows/finetune.py): its row
says `unchanged` and shows that version and its scores. A failed task does not stop the others; the suite fails at the end, naming the tasks that failed, after
the leaderboard (with their errors) is published.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.deployments import run_deployment
from prefect.runtime import flow_run
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

from bert_core.home import runs_root
from bert_core.loading import ENV_DATA_DIR, has_local_data
from bert_core.spec import builtin_specs, load_spec
from flows.params import FinetuneParams, SuiteParams
from flows.summary import FinetuneSummary
from tasks.leaderboard import publish_leaderboard
from tasks.serving_precision import serving_lines_of_version
from tracking import store as tracking
from tracking.leaderboard import leaderboard_row
from tracking.retrain import UNCHANGED_SINCE_TAG, read_version
from tracking.run import finished_run_of_flow_run

GLUE = ["cola", "sst2", "mrpc", "rte", "stsb", "mnli"]
ALSO = ["conll2003_ner", "squad"]


def default_tasks(data_dir: str | None = None) -> list[str]:
    """The GLUE tasks whose files are under the data root (all of them when there is no data root: the
    hub serves them), then conll2003_ner and squad."""
    root = data_dir or os.environ.get(ENV_DATA_DIR)
    glue = [name for name in GLUE if name in builtin_specs() and (root is None or has_local_data(name, root))]
    return glue + ALSO


@flow(name="bertflow-suite")
def suite(params: SuiteParams = SuiteParams()) -> list[dict]:  # noqa: B008 (pydantic default = the UI form's)
    """Fine-tune every task of `params.tasks` with the same `params.base` (its `task` field is replaced by each
    task; training fields left unset still take each task's own spec defaults); returns the leaderboard rows."""
    log, base = get_run_logger(), params.base
    max_concurrency, deployment = params.max_concurrency, params.deployment
    names = list(params.tasks or default_tasks(base.data_dir))
    runs = [base.model_copy(update={"task": name}) for name in names]
    log.info("suite over %s, %d at once, %s", names, max_concurrency, deployment or "in processes here")
    if deployment:
        with ThreadPoolTaskRunner(max_workers=max_concurrency) as runner:
            futures = [runner.submit(finetune_on_worker, {"deployment": deployment, "params": p}) for p in runs]
            rows = [_row(name, future) for name, future in zip(names, futures, strict=True)]
    else:
        with ProcessPoolTaskRunner(max_workers=max_concurrency, initializer=share_cores,
                                   initargs=(max_concurrency,)) as runner:
            futures = [runner.submit(finetune_here, {"params": p}) for p in runs]
            rows = [_row(name, future) for name, future in zip(names, futures, strict=True)]

    started = flow_run.scheduled_start_time or datetime.now(UTC)
    folder = runs_root(base.run_root) / "_suites" / f"{started:%Y%m%d-%H%M%S}-{flow_run.name or 'local'}"
    published = publish_leaderboard(rows, str(folder), base.tracking_uri,
                                    {"prefect.flow_run_id": flow_run.id or "none", "max_concurrency": str(max_concurrency),
                                     "fan_out": deployment or "processes"})
    log.info("leaderboard: %s (MLflow run %s)", published["markdown"], published["mlflow_run_id"])
    failed = [row["task"] for row in rows if row["error"]]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(rows)} task(s) failed: {failed}; see {published['markdown']}")
    return rows


def share_cores(workers: int) -> None:
    """Worker-process initializer: the machine's cores split among the suite's concurrent fine-tunes, so
    they do not oversubscribe it (`training.num_threads`, when set, still wins inside `fit`); and no `datasets`
    bar per split saved in the flow's log (the audit's folds call `fit` directly)."""
    import datasets
    import torch

    datasets.disable_progress_bars()

    share = max(1, (os.cpu_count() or 1) // workers)
    os.environ["OMP_NUM_THREADS"] = str(share)  # fit's default (bert_core/training/threads.py) respects it
    torch.set_num_threads(share)


@task(cache_policy=NO_CACHE, task_run_name="finetune-{params.task}")
def finetune_here(params: FinetuneParams) -> dict:
    """The finetune flow as a subflow of this task, in a worker process of the suite's pool."""
    # Imported here, in the worker process: cloudpickle ships this function by value (the module attribute
    # is the Task, not the function), and a flow shipped by value loses the globals that resolve its
    # parameter annotations.
    from flows.finetune import finetune

    return finetune(params)


@task(cache_policy=NO_CACHE, task_run_name="finetune-{params.task}-on-worker")
def finetune_on_worker(deployment: str, params: FinetuneParams) -> dict:
    """A run of `deployment` with `params`, waited for; its summary as the finetune flow returns it."""
    run = run_deployment(deployment, parameters={"params": params.model_dump(mode="json")},
                         flow_run_name=f"suite-{Path(params.task).stem}", timeout=None)
    if not run.state or not run.state.is_completed():
        state = run.state.name if run.state else "unknown"
        raise RuntimeError(f"{deployment} flow run {run.name} ({run.id}) ended {state}: "
                           f"{run.state.message if run.state else ''}")
    return summary_from_mlflow(params, str(run.id))


def summary_from_mlflow(params: FinetuneParams, flow_run_id: str) -> dict:
    """The finetune flow's summary, rebuilt from the FINISHED MLflow run tagged with `flow_run_id` (and, for a
    fine-tune that trained nothing, from the version it stands on)."""
    spec = load_spec(params.task)
    tracking.configure_tracking(params.tracking_uri)
    found = finished_run_of_flow_run(tracking.experiment_name(spec.name), flow_run_id)
    if found is None:
        raise RuntimeError(f"no FINISHED MLflow run of {tracking.experiment_name(spec.name)} is tagged with flow "
                           f"run {flow_run_id}")
    if since := found.tags.get(UNCHANGED_SINCE_TAG):
        version = read_version(since)
        return FinetuneSummary.unchanged(spec, found.run_id, "", version, serving_lines_of_version(version)).as_dict()
    return FinetuneSummary.from_run(spec, found).as_dict()


def _row(name: str, future) -> dict:
    try:
        name = load_spec(name).name  # a spec file's task name, not its path
    except Exception:  # noqa: BLE001 (a bad spec: the fine-tune's own error says why)
        pass
    try:
        return leaderboard_row(name, future.result())
    except Exception as err:  # noqa: BLE001 (one failed task is a leaderboard row, not the suite's end)
        get_run_logger().error("%s failed: %s", name, err)
        return leaderboard_row(name, error=f"{type(err).__name__}: {err}")
