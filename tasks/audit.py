"""The label audit's Prefect tasks over `bert_core.audit` and `tracking.audit_log`: the audited rows and their
folds, one fold's fine-tune and out-of-fold probabilities (run in a worker process of the audit flow's pool), and
the suspects published as files, an MLflow run and Prefect artifacts.

The rows travel as the `download` task's saved splits (tasks/data.py) and the folds as a `.npy` file in the audit's
folder: no task passes rows between processes."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from datasets import load_from_disk
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from bert_core.audit import assign_folds
from bert_core.spec import TaskSpec
from bert_core.training import TrainConfig
from tasks.data import DataInfo
from tasks.retry_policy import retry_if_transient
from tracking.audit_log import write_and_log_audit

FOLDS_FILE = "folds.npy"


def audited_rows(data: DataInfo, cfg: TrainConfig) -> list[dict]:
    """The training rows the audit scores: the train split's first `max_train_samples` (all when unset), as
    `run` caps its training rows."""
    return load_from_disk(data.split_paths["train"]).to_list()[: cfg.max_train_samples]


@task(cache_policy=NO_CACHE)
def make_folds(data: DataInfo, cfg: TrainConfig, k: int, seed: int, multi_label: bool, folder: str) -> str:
    """Each audited row's fold (bert_core.audit.assign_folds), saved as `<folder>/folds.npy`; returns its path."""
    folds = assign_folds(audited_rows(data, cfg), k, seed, multi_label)
    path = Path(folder) / FOLDS_FILE
    np.save(path, folds)
    return str(path)


@task(cache_policy=NO_CACHE, task_run_name="audit-fold-{fold}")
def audit_fold(spec: TaskSpec, cfg: TrainConfig, data: DataInfo, folds_path: str, fold: int, pretrained,
               cache_dir=None) -> str:
    """Fine-tune on every fold but `fold`, score `fold`'s rows; returns the path of their (n_held, C)
    probabilities (`fold-<i>.npy` beside the folds). The fold's model and checkpoints are deleted after: folds
    register nothing. A retried fold resumes from its checkpoints."""
    # Imported here, in the worker process (as the suite's `finetune_here`): the task is shipped by value.
    from bert_core.audit import fold_probabilities

    folder = Path(folds_path).parent
    rows = audited_rows(data, cfg)
    eval_rows = load_from_disk(data.split_paths["eval"]).to_list()
    probabilities = fold_probabilities(spec, cfg, folder / f"fold-{fold}", rows, np.load(folds_path), fold,
                                       eval_rows, data.label_names, pretrained=pretrained,
                                       data_fingerprint=data.fingerprint, cache_dir=cache_dir)
    path = folder / f"fold-{fold}.npy"
    np.save(path, probabilities)
    shutil.rmtree(folder / f"fold-{fold}", ignore_errors=True)
    return str(path)


def out_of_fold(folds_path: str, fold_paths: list[str]) -> np.ndarray:
    """(N, C): every audited row's probabilities, from the model of the fold that held it out, in row order."""
    folds = np.load(folds_path)
    parts = [np.load(path) for path in fold_paths]
    probabilities = np.zeros((len(folds), parts[0].shape[1]))
    for fold, part in enumerate(parts):
        probabilities[folds == fold] = part  # a fold's rows, in row order, as fold_probabilities returns them
    return probabilities


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10, retry_condition_fn=retry_if_transient)
def publish_audit(task_name: str, folder: str, suspects: list[dict], columns: tuple[str, ...], counts: dict,
                  summary: dict, tracking_uri: str | None, params: dict, tags: dict[str, str]) -> dict:
    """The CSV, markdown and MLflow run (tracking.audit_log), then the Prefect table and markdown artifacts."""
    published = write_and_log_audit(task_name, folder, suspects, columns, counts, summary, tracking_uri, params,
                                     tags)
    key = f"label-audit-{task_name}".lower().replace("_", "-")  # Prefect keys: lowercase letters, digits, dashes
    create_table_artifact(suspects, key=key, description=published["title"])
    create_markdown_artifact(Path(published["markdown"]).read_text(encoding="utf-8"), key=f"{key}-summary",
                             description=published["title"])
    return published
