"""The `audit` flow (`bertflow audit TASK`): which of a task's training labels look wrong (bert_core/audit.py).

    download -> folds -> k fold fine-tunes (each on k-1 folds, scoring the one held out) -> cleanlab's ranking
    -> the suspects: CSV, markdown summary, MLflow run with the table (tracking/audit_log.py), Prefect artifacts

The folds fan out as the suite's fine-tunes do (flows/suite.py): tasks of a `ProcessPoolTaskRunner` with
`max_concurrency` worker processes sharing the machine's cores (`share_cores`). Folds register nothing; each
fold's model is deleted once it has scored its held-out rows, and only the probabilities stay in the audit's
folder, `$BERTFLOW_HOME/runs/_audits/<task>-<time>-<flow run>`.
"""

from __future__ import annotations

from datetime import UTC, datetime

import datasets
from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.task_runners import ProcessPoolTaskRunner

from bert_core.audit import SUSPECT_COLUMNS, agreement, is_multi_label, rank_suspects, suspect_counts
from bert_core.families import get_family
from bert_core.feature_cache import default_cache_dir
from bert_core.home import runs_root
from bert_core.spec import load_spec
from bert_core.training import effective_spec
from flows.params import AuditParams
from flows.suite import share_cores
from tasks.audit import audit_fold, audited_rows, make_folds, out_of_fold, publish_audit
from tasks.data import download
from tasks.pretrained import resolve_pretrained
from tracking import store as tracking


@flow(name="bertflow-audit")
def audit(params: AuditParams = AuditParams()) -> dict:  # noqa: B008 (pydantic default = the UI form's)
    """Audit the training labels of `params.base.task`; returns the counts, the paths and the MLflow run id."""
    log, base = get_run_logger(), params.base
    uri = tracking.configure_tracking(tracking.check_tracking(base.tracking_uri))  # fail fast, before training
    datasets.disable_progress_bars()
    spec = load_spec(base.task)
    cfg = base.training.with_defaults(spec.defaults)
    spec = effective_spec(spec, cfg)
    multi_label = is_multi_label(get_family(spec.family))  # other families: refused before any data is read
    source = resolve_pretrained(base.pretrained, spec, cfg)
    started = flow_run.scheduled_start_time or datetime.now(UTC)
    folder = runs_root(base.run_root) / "_audits" / f"{spec.name}-{started:%Y%m%d-%H%M%S}-{flow_run.name or 'local'}"
    folder.mkdir(parents=True, exist_ok=True)
    data = download(spec, str(folder), base.data_dir, base.drop_bad_rows)
    folds_path = make_folds(data, cfg, params.k, params.fold_seed, multi_label, str(folder))
    log.info("audit of %s: %d fold fine-tunes, %d at once, in %s", spec.name, params.k, params.max_concurrency, folder)

    with ProcessPoolTaskRunner(max_workers=params.max_concurrency, initializer=share_cores,
                               initargs=(params.max_concurrency,)) as runner:
        futures = [runner.submit(audit_fold, {"spec": spec, "cfg": cfg, "data": data, "folds_path": folds_path,
                                              "fold": fold, "pretrained": source.path,
                                              "cache_dir": str(default_cache_dir())})
                   for fold in range(params.k)]
        fold_paths = [future.result() for future in futures]

    rows, probabilities = audited_rows(data, cfg), out_of_fold(folds_path, fold_paths)
    flagged = rank_suspects(rows, data.label_names, probabilities, multi_label)
    counts = suspect_counts(flagged)
    summary = {"audited": len(rows), "flagged": len(flagged),
               "agreement": agreement(rows, data.label_names, probabilities, multi_label)}
    published = publish_audit(
        spec.name, str(folder), flagged[: params.top], SUSPECT_COLUMNS, counts, summary, uri,
        {**params.model_dump(mode="json", exclude={"base"}), "base": base.model_dump(mode="json")},
        {"prefect.flow_run_id": flow_run.id or "none", "pretrained": source.name or "default"})
    log.info("%d of %d rows flagged; %s (MLflow run %s)", len(flagged), len(rows), published["csv"],
             published["mlflow_run_id"])
    return {"task": spec.name, **summary, "listed": min(len(flagged), params.top), "counts": counts,
            "flagged_rows": [s["row"] for s in flagged], "folder": str(folder), **published}
