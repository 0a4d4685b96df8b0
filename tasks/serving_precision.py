"""The `register_serving_precisions` task: after a fine-tune registered its fp32 version, each faster serving
precision asked for (`serving_precisions`: auto, bf16, int8) goes through the gate on the dev rows
(bert_core.precision_gate: the paired bootstrap of its primary metric against fp32's, on the same rows) and, when
it passes, is registered as its own version (tracking.serving_versions). A refused one registers nothing; the
reason goes to the run's tags (`serving.<precision>`) and to the flow's log either way. A precision that fails
(an error, not a refusal) is logged and tagged the same way and registers nothing; the fp32 version, registered
already, stands, and the fine-tune does not fail for an optional extra.

- `register_serving_precisions_of_run`: the same for a finished run whose fp32 version was registered after it
  ended (a sweep's best trial): the model comes back from the run's logged model, the data is read again.
- `serving_lines`: a run's `serving.<precision>` tags read back as the lines the task returned (a fine-tune
  rebuilt from MLflow); `serving_lines_of_version`: those of the run that registered a version (a fine-tune
  that trained nothing since it names them).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from bert_core.precision_gate import DevPredictions, dev_predictions, judge
from bert_core.serving_precision import resolve
from bert_core.spec import TaskSpec
from bert_core.training import TrainConfig, features_fingerprint
from tasks.data import DataInfo, download, load_split
from tasks.tokenize import row_limit
from tracking.packaging import EXAMPLE_ROWS
from tracking.parent_model import resolve_parent
from tracking.registration import LoggedModel, logged_model_of_run
from tracking.retrain import KnownVersion
from tracking.run import TrackedRun, active_again, find_run, read_run
from tracking.serving_versions import register_precision_version

TAG = "serving."  # + precision: a run tag, what became of that precision ("registered models:/...", "not ...")
LINE = "serving precision "  # + precision + ": " + the tag's value: a line for people


@task(cache_policy=NO_CACHE)
def register_serving_precisions(spec: TaskSpec, cfg: TrainConfig, data: DataInfo, model_dir: str, run: TrackedRun,
                                logged: LoggedModel, name: str, fp32_version: str, precisions: list[str],
                                margin: float, cache_dir: str | None = None) -> list[str]:
    """Gate and register each of `precisions` beside version `fp32_version` of `name`, trained into `model_dir`
    and logged in `run` (the active MLflow run, where each passing precision's model is logged too); returns a line
    per precision for people (registered as which version, or why not)."""
    rows = load_split(data, "eval", row_limit(cfg, "eval"))
    fingerprint = features_fingerprint(data.fingerprint, cfg, "eval")
    baseline = dev_predictions(model_dir, spec, rows, fingerprint, "fp32", cfg.eval_batch_size, cache_dir)

    def gate_and_register(precision: str) -> tuple[str, bool]:
        return _gate_and_register(spec, data, model_dir, rows, fingerprint, baseline, precision, margin, name,
                                  fp32_version, logged, cfg.eval_batch_size, cache_dir)

    return _each_precision(precisions, run, gate_and_register)


def register_serving_precisions_of_run(spec: TaskSpec, cfg: TrainConfig, run_id: str, name: str, fp32_version: str,
                                       precisions: list[str], margin: float, data_dir: str | None,
                                       drop_bad_rows: bool, cache_dir: str | None = None) -> list[str]:
    """`register_serving_precisions` for finished run `run_id`, whose logged model was registered as version
    `fp32_version` of `name` after the run ended (a sweep's best trial). `cfg` and `spec`: the run's own (its
    training config with the spec's defaults, the spec with the config's choices), so the dev rows and their
    features are the ones it was scored on. Its model comes back from MLflow (the cache a fine-tune from it
    reads too); the data is read again (`data_dir`, `drop_bad_rows`: the run's) into a folder removed afterwards,
    and must still be the data the run was trained on. The run is made active again, so each passing
    precision's model is logged in it beside the fp32 one. Whatever stops the gate (changed data, an error) is
    each precision's failure, said and tagged; the fp32 version stands."""
    with tempfile.TemporaryDirectory(prefix="bertflow-serving-") as work:
        try:
            data = download(spec, work, data_dir, drop_bad_rows)
            trained_on = read_run(run_id).tags.get("data_fingerprint")
            if data.fingerprint != trained_on:
                raise ValueError(f"the data changed since run {run_id} was trained (fingerprint "
                                 f"{(trained_on or 'none')[:12]}, now {data.fingerprint[:12]})")
            logged = logged_model_of_run(run_id).logged
            model_dir = resolve_parent(logged.model_uri).folder
            with active_again(run_id) as run:
                return register_serving_precisions(spec, cfg, data, model_dir, run, logged, name, fp32_version,
                                                   precisions, margin, cache_dir)
        except Exception as err:  # noqa: BLE001 (an optional extra: said and tagged, the fp32 version stands)
            return _each_precision(precisions, TrackedRun(run_id), _failing(err))


def serving_lines(run_tags: Mapping[str, str]) -> list[str]:
    """A run's `serving.<precision>` tags as the lines `register_serving_precisions` returned, by precision."""
    return [f"{LINE}{key.removeprefix(TAG)}: {value}" for key, value in sorted(run_tags.items())
            if key.startswith(TAG)]


def serving_lines_of_version(version: KnownVersion) -> list[str]:
    """`serving_lines` of the run that registered `version`: its serving precisions' versions, or why not;
    [] for a version with no run in this store."""
    run = find_run(version.run_id) if version.run_id else None
    return serving_lines(run.tags) if run else []


def _each_precision(precisions: list[str], run: TrackedRun, attempt: Callable[[str], tuple[str, bool]]) -> list[str]:
    """`attempt(precision)` -> (what became of it, registered?) once per precision asked that is not fp32 here;
    an error is that precision's failure. Each outcome goes to `run`'s tag `serving.<precision>` and to the log;
    returns a line per precision asked."""
    log = get_run_logger(bertflow_step=True)
    lines, done = [], set()
    for asked in precisions:
        precision = resolve(asked)
        if precision == "fp32" or precision in done:  # auto on a CPU without native bf16, or asked twice
            lines.append(f"{LINE}{asked}: is {precision} here, nothing more to register")
            continue
        done.add(precision)
        try:
            outcome, ok = attempt(precision)
        except Exception as err:  # noqa: BLE001 (an optional extra: said, tagged, and the next one tried)
            outcome, ok = f"not registered, it failed: {type(err).__name__}: {err}", False
        outcome = outcome[:5000]
        run.set_tag(f"{TAG}{precision}", outcome)  # read back by `serving_lines`, so the same line
        (log.info if ok else log.warning)(f"{LINE}{precision}: {outcome}")
        lines.append(f"{LINE}{precision}: {outcome}")
    return lines


def _failing(err: Exception) -> Callable[[str], tuple[str, bool]]:
    """An attempt that fails with `err`: what stopped every precision before its gate."""
    def attempt(precision: str) -> tuple[str, bool]:
        raise err
    return attempt


def _gate_and_register(spec: TaskSpec, data: DataInfo, model_dir: str, rows: list[dict], fingerprint: str,
                       baseline: DevPredictions, precision: str, margin: float, name: str, fp32_version: str,
                       logged: LoggedModel, batch_size: int, cache_dir: str | None) -> tuple[str, bool]:
    """(what became of one precision, registered?): the gate on dev, then its version if it passed."""
    candidate = dev_predictions(model_dir, spec, rows, fingerprint, precision, batch_size, cache_dir)
    gate = judge(spec, rows, candidate, baseline, margin, data.label_names)
    if not gate.passed:
        return f"not registered ({gate.reason})", False
    version = register_precision_version(gate, name, fp32_version, model_dir, spec.family,
                                         load_split(data, "eval", EXAMPLE_ROWS), logged.card_body,
                                         spec.description or spec.name)
    return f"registered models:/{name}/{version} ({gate.reason})", True
