"""The model card of a registered version: what it is, what it learned from, how good it is, how to call it,
and what it cannot do. The register task sets it as the version's description and logs it as
`model_card.md`; `task_description` is the registered model's description.

A card is written in two steps: `card_body` when the model is logged (everything the run knows), and
`model_card` when a version exists (its name, version and registry decision on top, its URI in the
calls). A sweep's trials log only the body; the trial registered after the sweep gets its card then.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pandas as pd

from bert_core.checkpoint import read_finetuned_meta
from bert_core.families import get_family
from bert_core.spec import TaskSpec
from bert_core.training import TrainConfig
from bert_core.training.features import TASK_SETTINGS

RECIPE = ("learning_rate", "batch_size", "epochs", "max_steps", "warmup_ratio", "weight_decay", "max_seq_length",
          "seed", "precision", "max_train_samples", "max_eval_samples")


def task_description(spec: TaskSpec, policy: str) -> str:
    """The registered model's description: the task, and what its versions and aliases mean."""
    return (f"{spec.description or spec.name}\n\nBERT fine-tuned by bertflow for the task spec `{spec.name}` "
            f"({spec.family}), one version per fine-tune. Alias `champion`: the version with the best dev "
            f"`{spec.primary_metric}` so far (promotion policy `{policy}`); `challenger`: the newest that did not "
            "beat it. Each version's description is its model card.")


MODEL_URI = "<MODEL_URI>"  # in a card's body; `model_card` puts the version's URI there


def model_card(body: str, name: str, version: str, alias: str, reason: str, description: str, why: str = "") -> str:
    """A version's card: its name, version and registry decision (and `why_this_version`), then the body with its
    URI filled in."""
    return (f"# {name} v{version}: {description}\n\n**{alias}**: {reason}\n\n" + (f"{why}\n\n" if why else "")
            + body.replace(MODEL_URI, f"models:/{name}/{version}"))


def why_this_version(changed_since: str | None, changes: str | None) -> str:
    """The card's line on why this version was trained, from its run's tags `changed_since` (the champion it was
    compared with, or `none`) and `changes` (the differences in words, `; `-joined, or `none`; tracking/retrain.py);
    "" for a run that recorded neither."""
    if not changed_since:
        return ""
    if changed_since == "none":
        return "**Why this version**: there was no champion to compare with."
    if not changes or changes == "none":
        return (f"**Why this version**: nothing changed since {changed_since}; trained because it was asked to "
                "(`force`, or a sweep's trial).")
    return f"**Why this version**: since {changed_since}, {changes}."


def card_body(spec: TaskSpec, cfg: TrainConfig, data, trained: dict, evaluation: dict, example: pd.DataFrame,
              pretrained: str, language: str | None, run_id: str, parent: str | None = None) -> str:
    """Markdown for people: task, labels, data, recipe, dev metrics with intervals, the family's own section (how
    the saved settings turn scores into answers, e.g. multi-label thresholds), calls, limits.
    ``data``: the download task's DataInfo (rows per split, source, fingerprint, carve, dropped, labels);
    ``trained``: the train task's Trained as a dict (``model_dir``: the saved model, whose meta holds its
    settings); ``evaluation``: the evaluate task's Evaluation as a dict (``files["report_eval"]``: the eval
    split's per-class report); ``parent``: the pinned URI of the model it started from, when it did (the card then
    says which, from the model's meta: the task, and whether its head was kept)."""
    uri = MODEL_URI
    lines = ["| | |", "|---|---|",
             f"| task | `{spec.name}` ({spec.family}), primary metric `{spec.primary_metric}` |"]
    if data.label_names is not None:
        shown = ", ".join(f"`{n}`" + (f" {spec.display_name(n)}" if spec.display_name(n) != n else "")
                          for n in data.label_names[:30])
        more = f", ... ({len(data.label_names)} in all)" if len(data.label_names) > 30 else ""
        lines.append(f"| {'tags' if 'tags' in get_family(spec.family).rows.fields else 'labels'} | {shown}{more} |")
    lines += [f"| pretrained | {pretrained} |", f"| MLflow run | `{run_id}` |", ""]
    lines += _lineage(trained["model_dir"], parent or pretrained)
    lines += _data(data, cfg) + _recipe(spec, cfg, trained) + _metrics(spec, evaluation)
    lines += _family_section(spec, data.label_names, trained["model_dir"], evaluation)
    lines += _calibration(read_finetuned_meta(trained["model_dir"]), evaluation, run_id)
    lines += _calls(get_family(spec.family).rows.request, uri, example) + _limits(spec, cfg, data, language)
    return "\n".join(lines) + "\n"


def _lineage(model_dir: str, parent: str) -> list[str]:
    """One line for a model started from another fine-tuned model (its meta's ``parent``); none otherwise."""
    started_from = read_finetuned_meta(model_dir).get("parent")
    if not started_from:
        return []
    return [f"Fine-tuned from {parent} (task {started_from.get('task') or 'unknown'}; head {started_from['head']}).",
            ""]


def _data(data, cfg: TrainConfig) -> list[str]:
    def used(split: str, n: int) -> str:
        cap = cfg.max_train_samples if split == "train" else cfg.max_eval_samples
        return f"{split} {min(n, cap or n):,}" + (f" (of {n:,})" if cap and cap < n else "")

    rows = ", ".join(used(split, n) for split, n in data.rows.items())
    lines = ["## Data", "", f"- source: {data.source}", f"- data fingerprint: `{data.fingerprint}`",
             f"- rows used: {rows}"]
    if data.carve:
        lines.append(f"- train/eval carved out of `{data.carve['file']}` by `{data.carve['by']}` "
                     f"({data.carve['eval_fraction']:.0%} of the groups to eval, seed {data.carve['seed']})")
    if data.dropped:
        lines.append(f"- {data.dropped} bad row(s) dropped (`drop_bad_rows`), listed in the run's data folder")
    return [*lines, ""]


def _recipe(spec: TaskSpec, cfg: TrainConfig, trained: dict) -> list[str]:
    values = {k: getattr(cfg, k) for k in RECIPE} | {"max_seq_length": cfg.max_seq_length or spec.max_seq_length}
    recipe = ", ".join(f"{k} {v}" for k, v in values.items() if v is not None)
    return ["## Training", "", f"{recipe}; {trained['final_step']} optimizer steps, best dev score at step "
            f"{trained['best_step']}; {trained['train_seconds']:.0f} s of training at "
            f"{trained['examples_per_second']:.1f} examples/s ({trained['precision']}).", ""]


def _metrics(spec: TaskSpec, evaluation: dict) -> list[str]:
    intervals = evaluation.get("intervals", {})
    lines = ["## Dev metrics", "", "Scores of this version on the eval split (the split it was selected on), "
             "with 95% percentile bootstrap intervals over its rows; other splits without intervals.", "",
             "| split | metric | score | 95% interval |", "|---|---|---|---|"]
    for split, scores in evaluation["splits"].items():
        for metric, value in scores.items():
            low_high = intervals.get(metric) if split == "eval" else None
            interval = f"[{low_high[0]:.4f}, {low_high[1]:.4f}]" if low_high else "-"
            primary = " (primary)" if metric == spec.primary_metric and split == "eval" else ""
            lines.append(f"| {split} | {metric}{primary} | {value:.4f} | {interval} |")
    return [*lines, ""]


def _family_section(spec: TaskSpec, label_names, model_dir: str, evaluation: dict) -> list[str]:
    """The family's `card_lines`, from the settings saved with the model (what predict and serving apply)."""
    meta = read_finetuned_meta(model_dir)
    settings = {k: meta[k] for k in TASK_SETTINGS if k in meta}
    report_path = evaluation.get("files", {}).get("report_eval")
    report = json.loads(Path(report_path).read_text(encoding="utf-8")) if report_path else None
    return get_family(spec.family).predictions.card_lines(label_names, settings, report)


def _calibration(meta: dict, evaluation: dict, run_id: str) -> list[str]:
    """How far the scores are from frequencies on the eval split, before and after the temperature saved with the
    model (its meta's ``calibration_report``), and the reliability diagram; [] for a model without one."""
    report = meta.get("calibration_report")
    if not report:
        return []
    t = report["temperature"]
    if "temperature" not in meta:
        how = "Scores are not calibrated (spec `calibration: none`): they are the plain softmax or sigmoid outputs."
    elif t == 1.0:
        how = ("No temperature was applied (T = 1): the eval split was too small or one-class, or no temperature "
               "lowered its negative log-likelihood.")
    else:
        how = (f"Every score is a temperature-scaled probability: the logits are divided by T = {t:.4g}, fitted on the "
               f"eval split by minimising its negative log-likelihood ({'under' if t < 1 else 'over'}-confident "
               "before). One scalar for all labels never changes an answer (the top label, or a label's side of "
               "0.5), only how sure the model says it is.")
    lines = ["## Calibration", "", how, "",
             f"| eval split ({report['rows']} rows) | before (T = 1) | after (T = {t:.4g}) |", "|---|---|---|",
             f"| expected calibration error ({len(report['bins']['calibrated'])} bins) | "
             f"{report['ece_uncalibrated']:.4f} | {report['ece']:.4f} |",
             f"| Brier score | {report['brier_uncalibrated']:.4f} | {report['brier']:.4f} |", ""]
    if picture := evaluation.get("files", {}).get("reliability_diagram"):
        path = f"evaluation/{Path(picture).name}"
        lines += [f"![Reliability diagram: accuracy against confidence per bin, before and after]({path})", "",
                  f"(`{path}` in MLflow run `{run_id}`.)", ""]
    return lines


def _calls(request: dict[str, tuple[str, ...]], uri: str, example: pd.DataFrame) -> list[str]:
    records = json.loads(example.head(1).to_json(orient="records", force_ascii=False))
    first = records[0]
    flags = {"text": "--text", "text_a": "--text", "text_b": "--text-b", "question": "--question",
             "context": "--context"}
    if "tokens" in request:
        options = "--tokens " + " ".join(shlex.quote(w) for w in first["tokens"])
    else:
        options = " ".join(f"{flags[k]} {shlex.quote(str(v))}" for k, v in first.items() if k in flags)
    body = json.dumps({"dataframe_records": records}, ensure_ascii=False)
    return ["## How to call it", "", "```bash",
            f"bertflow predict {uri} {options}",
            f"bertflow serve {uri} --port 5001       # then, from another shell:",
            f"curl -s http://127.0.0.1:5001/invocations -H 'Content-Type: application/json' -d {shlex.quote(body)}",
            "```", "", "```python", "import mlflow, pandas as pd",
            f"mlflow.pyfunc.load_model({uri!r}).predict(pd.DataFrame({records!r}))", "```", ""]


def _limits(spec: TaskSpec, cfg: TrainConfig, data, language: str | None) -> list[str]:
    reach = get_family(spec.family).predictions.input_limit(spec, cfg.max_seq_length or spec.max_seq_length, data.label_names)
    return ["## Limits", "", f"- {reach}.",
            f"- language: {language or 'not stated by the pretrained checkpoint'} (the pretrained checkpoint's own "
            "model card); other languages are not supported.",
            f"- it knows only what its training data showed: {data.source}; scores are dev scores on data "
            "of that kind, not on yours.", ""]
