"""The `register_serving_precisions` task: after a fine-tune registered its fp32 version, each faster serving
precision asked for (`serving_precisions`: auto, bf16, int8) goes through the gate on the dev rows
(bert_core.precision_gate: the paired bootstrap of its primary metric against fp32's, on the same rows) and, when
it passes, is registered as its own version (tracking.serving_versions). A refused one registers nothing; the
reason goes to the run's tags (`serving.<precision>`) and to the flow's log either way. A precision that fails
(an error, not a refusal) is logged and tagged the same way and registers nothing; the fp32 version, registered
already, stands, and the fine-tune does not fail for an optional extra.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from bert_core.precision_gate import DevPredictions, dev_predictions, judge
from bert_core.serving_precision import resolve
from bert_core.spec import TaskSpec
from bert_core.training import TrainConfig, features_fingerprint
from tasks.data import DataInfo, load_split
from tasks.register import Registered
from tasks.tokenize import row_limit
from tasks.train import Trained
from tracking.packaging import EXAMPLE_ROWS
from tracking.registration import LoggedModel
from tracking.run import TrackedRun
from tracking.serving_versions import register_precision_version


@task(cache_policy=NO_CACHE)
def register_serving_precisions(spec: TaskSpec, cfg: TrainConfig, data: DataInfo, trained: Trained, run: TrackedRun,
                                logged: LoggedModel, registered: Registered, precisions: list[str], margin: float,
                                cache_dir: str | None = None) -> list[str]:
    """Gate and register each of `precisions` beside `registered` (the fp32 version); returns a line per
    precision for people (registered as which version, or why not)."""
    log = get_run_logger(bertflow_step=True)
    rows = load_split(data, "eval", row_limit(cfg, "eval"))
    fingerprint = features_fingerprint(data.fingerprint, cfg, "eval")
    name, fp32_version = registered.decision.name, registered.decision.version
    baseline = dev_predictions(trained.model_dir, spec, rows, fingerprint, "fp32", cfg.eval_batch_size, cache_dir)
    lines, done = [], set()
    for asked in precisions:
        precision = resolve(asked)
        if precision == "fp32" or precision in done:  # auto on a CPU without native bf16, or asked twice
            lines.append(f"serving precision {asked}: is {precision} here, nothing more to register")
            continue
        done.add(precision)
        try:
            line, tag, ok = _gate_and_register(spec, data, trained, rows, fingerprint, baseline, precision, margin,
                                               name, fp32_version, logged, cfg.eval_batch_size, cache_dir)
        except Exception as err:  # noqa: BLE001 (an optional extra: said, tagged, and the next one tried)
            line = f"serving precision {precision}: not registered, it failed: {type(err).__name__}: {err}"
            tag, ok = line, False
        run.set_tag(f"serving.{precision}", tag[:5000])
        (log.info if ok else log.warning)(line)
        lines.append(line)
    return lines


def _gate_and_register(spec: TaskSpec, data: DataInfo, trained: Trained, rows: list[dict], fingerprint: str,
                       baseline: DevPredictions, precision: str, margin: float, name: str, fp32_version: str,
                       logged: LoggedModel, batch_size: int, cache_dir: str | None) -> tuple[str, str, bool]:
    """(line for people, run tag, registered?) of one precision: the gate on dev, then its version if it passed."""
    candidate = dev_predictions(trained.model_dir, spec, rows, fingerprint, precision, batch_size, cache_dir)
    gate = judge(spec, rows, candidate, baseline, margin, data.label_names)
    if not gate.passed:
        return f"serving precision {precision}: not registered ({gate.reason})", gate.reason, False
    version = register_precision_version(gate, name, fp32_version, trained.model_dir, spec.family,
                                         load_split(data, "eval", EXAMPLE_ROWS), logged.card_body,
                                         spec.description or spec.name)
    return (f"serving precision {precision}: registered models:/{name}/{version} ({gate.reason})",
            f"v{version}: {gate.reason}", True)
