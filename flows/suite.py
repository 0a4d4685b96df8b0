"""The `suite` flow: `finetune` as a subflow per task, one after the other, then a leaderboard.

A failed task does not stop the others; the suite fails at the end, naming the tasks that failed, after
the leaderboard (with their errors) is written. Issue 6 extends this with concurrency and deployments.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from flows.finetune import finetune
from flows.params import BuiltinTask, FinetuneParams

# One task per family, all with local data.
DEFAULT_TASKS = ["sst2", "mrpc", "stsb", "conll2003_ner", "squad"]


@flow(name="bertflow-suite")
def suite(tasks: list[BuiltinTask | str] = DEFAULT_TASKS,  # noqa: B006 (Prefect reads the default for the UI)
          params: FinetuneParams = FinetuneParams()) -> list[dict]:  # noqa: B008
    """Fine-tune every task in `tasks` with the same `params` (its `task` field is replaced by each task;
    training fields left unset still take each task's own spec defaults)."""
    log = get_run_logger()
    board = []
    for name in tasks:
        state = finetune(params.model_copy(update={"task": name}), return_state=True)
        if state.is_completed():
            s = state.result()
            board.append({"task": s["task"], "family": s["family"], "primary_metric": s["primary_metric"],
                          "score": round(s["score"], 4), "model": f"{s['model_name']} v{s['model_version']}",
                          "alias": s["alias"], "train_seconds": round(s["train_seconds"], 1),
                          "examples_per_second": round(s["examples_per_second"], 1), "error": ""})
        else:
            error = state.result(raise_on_failure=False)
            log.error("%s failed: %s", name, error)
            board.append({"task": name, "family": "", "primary_metric": "", "score": None, "model": "",
                          "alias": "", "train_seconds": None, "examples_per_second": None, "error": str(error)[:300]})
    create_table_artifact(board, key="suite-leaderboard", description=f"bertflow suite over {len(tasks)} task(s)")
    failed = [row["task"] for row in board if row["error"]]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(tasks)} task(s) failed: {failed}; see the suite-leaderboard artifact")
    return board
