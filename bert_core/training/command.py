"""``python -m bert_core.training``: a whole fine-tune in one call (``fit_task``), for plain-Python users and ``torchrun``:

    torchrun --nproc-per-node 2 -m bert_core.training sst2 --output-dir runs/sst2 --max-train-samples 512

The Prefect pipeline calls the same pieces one task at a time instead.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from bert_core.loading import load_task_data
from bert_core.spec import TaskSpec, load_spec
from bert_core.training import distributed
from bert_core.training.config import TrainConfig
from bert_core.training.features import effective_spec
from bert_core.training.recipe import FitResult, fit


def fit_task(spec: TaskSpec | str, cfg: TrainConfig, output_dir: str | Path, *, pretrained=None, data_dir=None,
             callbacks=(), cache_dir=None) -> FitResult:
    """load data -> fit, for one task spec (a built-in name, a YAML path or a TaskSpec)."""
    spec = spec if isinstance(spec, TaskSpec) else load_spec(spec)
    cfg = cfg.with_defaults(spec.defaults)
    spec = effective_spec(spec, cfg)  # the config's class weights and threshold, checked before the data loads
    data = load_task_data(spec, data_dir)
    return fit(spec, cfg, output_dir, data.splits["train"].to_list(), data.splits["eval"].to_list(), data.label_names,
               pretrained=pretrained, data_fingerprint=data.fingerprint, callbacks=callbacks, cache_dir=cache_dir,
               extra_meta={"data_fingerprint": data.fingerprint})


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bert_core.training", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", help="built-in task name or spec YAML path")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--pretrained", default=None)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--config", default="{}", help="TrainConfig fields as JSON, e.g. '{\"epochs\": 1}'")
    for name in ("max_train_samples", "max_eval_samples", "max_steps", "batch_size", "seed"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int)
    parser.add_argument("--epochs", type=float)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items()
                 if k in TrainConfig.model_fields and v is not None}
    cfg = TrainConfig(**{**json.loads(args.config), **overrides})
    result = fit_task(args.task, cfg, args.output_dir, pretrained=args.pretrained, data_dir=args.data_dir)
    # On success only: after an error, other ranks may still wait in a collective, and destroying the group then
    # can hang (torchtitan#1342); torchrun ends them instead.
    in_group = distributed.leave()
    if result.best_metric is not None and os.environ.get("RANK", "0") == "0":  # one line per run, not per process
        print(json.dumps({"best_metric": result.best_metric, "primary_metric": result.primary_metric,
                          "eval_metrics": result.eval_metrics, "final_step": result.final_step,
                          "resumed_from_step": result.resumed_from_step}))
    if in_group:
        distributed.exit_now(0)


