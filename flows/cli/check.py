"""`bertflow check`: everything `bertflow run` does before its first training step, without training."""

from __future__ import annotations

import argparse

from flows.cli.finetune_options import finetune_options
from flows.cli.flags import add_verbose

# What shapes the fine-tune and where its data is; where results would go does not matter to a dry run.
OPTIONS = finetune_options(only=("task", "pretrained", "training", "data_dir", "drop_bad_rows"))


def add(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "check", help="dry run: load and check a task's data, build its features, estimate the training time; "
        "trains nothing and writes nothing",
        description="Everything `bertflow run` does before its first training step, in seconds: every split "
        "loaded and validated, the spec's metrics checked against the labels, tags against tag_scheme, features "
        "built, settings checked against the checkpoint; then rows, label distribution, token lengths and "
        "truncation per split, and a training time estimated from a few timed steps here. Exit status 0 when "
        "everything passes, else 1.")
    OPTIONS.add_to(p)
    add_verbose(p)
    p.set_defaults(handle=handle, name="check")


def params(args: argparse.Namespace):
    return OPTIONS.build(args)


def handle(args: argparse.Namespace) -> int:
    from bert_core.dry_run import dry_run
    from bert_core.spec import load_spec
    from flows.check_report import report
    from tracking.parent_model import is_model_uri, resolve_pretrained_source
    from tracking.store import configure_tracking

    spec = load_spec(args.task)  # a bad spec is named first
    checked = params(args)
    cfg = checked.training.with_defaults(spec.defaults)
    pretrained = checked.pretrained
    if is_model_uri(pretrained):  # a registered model: its fine-tuned folder, from the default store
        configure_tracking()
        pretrained = resolve_pretrained_source(pretrained).path
    print(report(dry_run(spec, cfg, checked.data_dir, pretrained, checked.drop_bad_rows)))
    return 0
