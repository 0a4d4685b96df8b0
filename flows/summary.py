"""What one fine-tune produced, as the finetune flow returns it (a dict, so Prefect stores it as JSON), as the
suite rebuilds it from the MLflow run of a fine-tune that ran on another worker, and as `bertflow run`
prints it for people. A fine-tune that trained nothing (nothing changed since a registered version) has
`unchanged_since` set, and reports that version's model and dev scores, and the serving precisions that version's
run registered beside it.
"""

from __future__ import annotations

import dataclasses
import math

from bert_core.spec import TaskSpec
from tasks.evaluate import Evaluation
from tasks.register import Registered
from tasks.serving_precision import LINE as SERVING_LINE
from tasks.serving_precision import serving_lines
from tasks.tokenize import FeaturesInfo
from tasks.train import Trained
from tracking.registration import LoggedModel
from tracking.registry import CHAMPION
from tracking.retrain import KnownVersion
from tracking.run import RunRecord
from tracking.training_log import TRAINING_METRICS


@dataclasses.dataclass
class FinetuneSummary:
    task: str
    family: str
    mlflow_run_id: str
    tracking_uri: str  # secrets masked
    model_name: str | None  # the model fields are None when nothing was registered (a sweep's trial)
    model_version: str | None
    model_uri: str | None
    alias: str | None  # champion or challenger
    champion: bool | None
    decision: str | None  # why it got its alias
    primary_metric: str
    score: float  # the eval split's primary metric
    interval: tuple[float, float] | None  # its 95% bootstrap interval
    champion_score_before: float | None
    metrics: dict[str, float]  # `<split>_<metric>` of every split but train
    train_rows: int | None
    eval_rows: int | None
    steps: int | None
    train_seconds: float
    examples_per_second: float
    run_dir: str | None
    run_dir_bytes: int | None  # what the run folder keeps after the run
    feature_cache: dict | None = None  # tokenize's and fit's cache hits (a local run only)
    logged_model_uri: str | None = None  # the model logged in the run (None: a pruned sweep trial)
    pruned_at: int | None = None  # a sweep trial stopped by the pruner: at this evaluation
    unchanged_since: str | None = None  # models:/<name>/<N>: nothing changed since it, so nothing was trained
    serving: list[str] = dataclasses.field(default_factory=list)  # per serving precision asked: its version or why not

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_steps(cls, spec: TaskSpec, run_id: str, tracking_uri: str, run_dir: str, features: FeaturesInfo,
                   trained: Trained, evaluation: Evaluation, logged: LoggedModel | None,
                   registered: Registered | None, serving: list[str] | None = None) -> FinetuneSummary:
        """From what the finetune flow's tasks returned (`run_dir_bytes` is filled in once the folder is tidied);
        `serving`: register_serving_precisions' line per precision asked."""
        decision = registered.decision if registered else None
        return cls(
            task=spec.name, family=spec.family, mlflow_run_id=run_id, tracking_uri=tracking_uri,
            model_name=decision.name if decision else None, model_version=decision.version if decision else None,
            model_uri=registered.model_uri if registered else None, alias=decision.alias if decision else None,
            champion=decision.became_champion if decision else None, decision=decision.reason if decision else None,
            primary_metric=spec.primary_metric, score=evaluation.splits["eval"][spec.primary_metric],
            interval=evaluation.intervals[spec.primary_metric],
            champion_score_before=decision.champion_score if decision else None,
            metrics=evaluation.metrics, train_rows=trained.train_rows, eval_rows=trained.eval_rows,
            steps=trained.final_step, train_seconds=trained.train_seconds,
            examples_per_second=trained.examples_per_second, run_dir=run_dir, run_dir_bytes=None,
            # tokenize found its features cached; fit found tokenize's (False there = a key mismatch, a bug).
            feature_cache={"tokenize_hit": features.cache_hit, "fit_hit": trained.feature_cache_hit},
            logged_model_uri=logged.model_uri if logged else None, pruned_at=trained.pruned_at,
            serving=list(serving or []))

    @classmethod
    def unchanged(cls, spec: TaskSpec, run_id: str, tracking_uri: str, since: KnownVersion,
                  serving: list[str]) -> FinetuneSummary:
        """A fine-tune that trained nothing: nothing changed since version `since`, whose model and dev scores
        it reports (`score` NaN if the version has no score of the primary metric); `serving`: the lines of
        `since`'s run on its serving precisions (tasks.serving_precision.serving_lines_of_version)."""
        alias = CHAMPION if CHAMPION in since.aliases else (since.aliases[0] if since.aliases else None)
        return cls(
            task=spec.name, family=spec.family, mlflow_run_id=run_id, tracking_uri=tracking_uri,
            model_name=since.name, model_version=since.version, model_uri=since.uri, alias=alias, champion=None,
            decision=f"no change since {since.uri}", primary_metric=spec.primary_metric,
            score=since.metrics.get(spec.primary_metric, math.nan), interval=None, champion_score_before=None,
            metrics={f"eval_{k}": v for k, v in since.metrics.items()}, train_rows=None, eval_rows=None, steps=None,
            train_seconds=0.0, examples_per_second=0.0, run_dir=None, run_dir_bytes=None,
            unchanged_since=since.uri, serving=list(serving))

    @classmethod
    def from_run(cls, spec: TaskSpec, run: RunRecord) -> FinetuneSummary:
        """From the FINISHED MLflow run of a finetune flow run (tags, metrics and params it logged)."""
        metrics, tags, params = run.metrics, run.tags, run.params
        low, high = (metrics.get(f"interval/eval_{spec.primary_metric}_{end}") for end in ("low", "high"))
        return cls(
            task=spec.name, family=spec.family, mlflow_run_id=run.run_id, tracking_uri="",
            model_name=tags.get("model_name"), model_version=tags.get("model_version"),
            model_uri=f"models:/{tags['model_name']}/{tags['model_version']}" if "model_name" in tags else None,
            alias=tags.get("model_alias"), champion=tags["model_alias"] == "champion" if "model_alias" in tags else None,
            decision=tags.get("model_decision"),
            primary_metric=spec.primary_metric, score=metrics[f"eval_{spec.primary_metric}"],
            interval=(low, high) if low is not None else None, champion_score_before=None,
            # The evaluate task's `<split>_<metric>` scores: not per-step curves (`train/...`), intervals,
            # system metrics or the training summary.
            metrics={k: v for k, v in metrics.items() if "/" not in k and k not in TRAINING_METRICS},
            train_rows=_int(metrics.get("train_rows")), eval_rows=_int(metrics.get("eval_rows")),
            steps=_int(metrics.get("final_step")),
            train_seconds=metrics["train_seconds"], examples_per_second=metrics["examples_per_second"],
            run_dir=params.get("run_dir"), run_dir_bytes=None, logged_model_uri=tags.get("logged_model_uri"),
            pruned_at=_int(tags.get("sweep_pruned_at")), serving=serving_lines(tags))

    def text(self) -> str:
        """A few lines for people: the score, the model and its alias, the training, where things are."""
        serving = [f"  serving     {line.removeprefix(SERVING_LINE)}" for line in self.serving]
        if self.unchanged_since:
            return "\n".join([f"{self.task}: {self.decision} ({self.alias or 'no alias'}, {self.primary_metric} "
                              f"{self.score:.4f}): nothing trained, nothing registered; --force trains anyway",
                              *serving,
                              f"  MLflow run  {self.mlflow_run_id} in {self.tracking_uri or 'the tracking store'}"])
        interval = f" (95% interval {self.interval[0]:.4f} to {self.interval[1]:.4f})" if self.interval else ""
        rows = f" on {self.eval_rows:,} dev rows" if self.eval_rows else ""
        lines = [f"{self.task}: {self.primary_metric} {self.score:.4f}{interval}{rows}"]
        if self.model_uri:
            lines.append(f"  model       {self.model_uri}: {self.alias}, {self.decision}")
        elif self.pruned_at:
            lines.append(f"  model       none: pruned by the sweep at evaluation {self.pruned_at}")
        else:
            lines.append(f"  model       {self.logged_model_uri} (logged, not registered)")
        lines += serving
        trained = f"{self.train_rows:,} rows, " if self.train_rows else ""
        steps = f"{self.steps:,} steps in " if self.steps else ""
        lines.append(f"  training    {trained}{steps}{self.train_seconds:.0f} s ({self.examples_per_second:.1f} examples/s)")
        if self.run_dir:
            size = f" ({self.run_dir_bytes / 1e6:,.1f} MB)" if self.run_dir_bytes is not None else ""
            lines.append(f"  run folder  {self.run_dir}{size}")
        lines.append(f"  MLflow run  {self.mlflow_run_id} in {self.tracking_uri or 'the tracking store'} "
                     "(browse: bertflow ui)")
        return "\n".join(lines)


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)
