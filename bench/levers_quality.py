"""What issue 23's levers buy on real data: class weights, decision threshold, long-text windows, calibration.

    .venv/bin/python bench/prepare_levers_data.py                  # once: the data under $BERTFLOW_HOME/bench-data
    nice .venv/bin/python bench/levers_quality.py --experiment rare   # then long, ece; --table-only reprints

Each run fine-tunes the packaged all-MiniLM-L6-v2 through ``bert_core.training.fit`` exactly as the pipeline does
(rows from ``load_task_data``, the recipe from ``TrainConfig.with_defaults(spec.defaults)``, the best epoch on
the dev split kept), with the task spec edited by one variant, then scores the kept model on the dev split
(what fit reports) and on the held-out test split with ``evaluate_model_dir`` (the settings saved with the model
applied: decision threshold, temperature, long-text windows). Mean ± standard deviation over seeds.

  rare   bench/specs/hate_speech.yaml (Davidson et al. 2017 tweets, 5.8% hate speech; primary: F1 of that class)
         baseline | class_weights: balanced | decision_threshold: tune | both. F1, precision, recall, MCC on test.
         The threshold of ``threshold`` and ``both`` is tuned on dev for the saved model of ``baseline`` and
         ``class_weights`` (``DERIVED``): a threshold changes no weight, so it needs no fine-tune of its own (fit with
         ``tune`` would also select the epoch on the tuned F1; here the epoch is the one selected at 0.5).
  long   bench/specs/imdb_long.yaml (IMDB reviews of 384+ tokens, max_seq_length 128)
         truncation (long_text off) | windows, stride 64, mean pooling | windows, max pooling | head_tail |
         windows_pooled_loss: windows, mean pooling, ``train_on: document``.
         Every window is a training example of its review's label, so max pooling is the mean-pooling model's
         windows pooled otherwise when it answers (``DERIVED``), not a fine-tune of its own. windows_pooled_loss
         trains on whole reviews instead: a step's loss is each review's cross-entropy on its windows' mean logits,
         and the spec's batch_size (32) counts reviews, so a step reads ~8x the windows in ~1/8 the steps;
         pooled_loss_4_reviews is the same with 4 reviews a step (about the windows of a windows_mean step, as
         many steps).
         Accuracy on test; the training loop's seconds, the whole fit's wall seconds (features and dev
         evaluations included), training features (windows), and the wall seconds to score the test split.
  ece    SST-2 (first 10,000 training rows, 1 epoch), MRPC (full, 3 epochs), hate_speech (the rare baseline
         runs): ECE (15 equal-width bins on the top-class confidence) and Brier (mean over rows of
         sum_c (p_c - y_c)^2) before and after temperature scaling, as ``evaluate_model_dir`` reports them for the
         saved model (bert_core/calibration.py), on dev (where the temperature was fitted: optimistic) and on
         held-out rows: hate_speech's test split; for SST-2 the
         2,000 training rows after the cap (phrases never trained on; GLUE's test labels are hidden); MRPC has
         none. Fit's own ``ece``/``brier`` metrics on dev are kept beside them in the JSON when it reports them.

Variants are spec edits validated as a spec (``TaskSpec.model_validate``): a field not on this branch yet fails
that variant only (its error printed), except ``long_text: null``, which is what "off" means anyway. Every
(task, variant, seed) runs in a fresh interpreter and appends one JSON line to --results; a rerun skips what the
file holds for the same epochs and caps. Timings are as good as the machine is quiet: each record keeps the
1-minute load average before and after (above --threads: other processes shared the cores).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
SPECS = REPO_ROOT / "bench" / "specs"
DEFAULT_RESULTS = REPO_ROOT / "bench" / "results" / "levers.jsonl"
# Tried after --data-dir / $BERTFLOW_DATA_DIR: prepare_levers_data.py's default output, then the shared data.
DATA_ROOTS = [Path(os.environ.get("BERTFLOW_HOME") or Path.home() / ".bertflow") / "bench-data",
              REPO_ROOT.parent / "shared" / "datasets"]
TASK_SPECS = {"hate_speech": str(SPECS / "hate_speech.yaml"), "imdb_long": str(SPECS / "imdb_long.yaml"),
              "sst2": "sst2", "mrpc": "mrpc"}
WINDOWS = {"strategy": "windows", "stride": 64}
IMDB_DEFAULTS = {"learning_rate": 2.0e-5, "batch_size": 32, "epochs": 3, "warmup_ratio": 0.1, "weight_decay": 0.01}
EXPERIMENTS = {  # task -> its settings (defaults for caps/epochs), variant -> spec fields it sets
    "rare": {"tasks": {"hate_speech": {}},
             "variants": {"baseline": {}, "class_weights": {"class_weights": "balanced"}}},
    "long": {"tasks": {"imdb_long": {}},
             "variants": {"truncation": {"long_text": None}, "windows_mean": {"long_text": {**WINDOWS, "pooling": "mean"}},
                          "head_tail": {"long_text": {"strategy": "head_tail"}},
                          "windows_pooled_loss": {"long_text": {**WINDOWS, "pooling": "mean", "train_on": "document"}},
                          "pooled_loss_4_reviews": {"long_text": {**WINDOWS, "pooling": "mean", "train_on": "document"},
                                                    "defaults": {**IMDB_DEFAULTS, "batch_size": 4}}}},
    "ece": {"tasks": {"sst2": {"epochs": 1, "max_train_samples": 10_000, "heldout_from_train": 2_000},
                      "mrpc": {}, "hate_speech": {}},
            "variants": {"baseline": {}}},
}
# Variants that differ from a trained one only in how its model answers, scored from that variant's model instead of
# a fine-tune of their own: a tuned decision threshold changes no weight, and pooling is applied after the windows'
# logits (training is the same per-window cross-entropy either way). derived -> (trained variant, how to answer).
DERIVED = {
    "rare": {"threshold": ("baseline", {"decision_threshold": "tune"}),
             "both": ("class_weights", {"decision_threshold": "tune"})},
    "long": {"windows_max": ("windows_mean", {"long_text": {**WINDOWS, "pooling": "max"}})},
    "ece": {},
}
CALIBRATION = {"ece_uncalibrated": "ECE before", "ece": "ECE after", "brier_uncalibrated": "Brier before",
               "brier": "Brier after"}  # metric -> table header


# ---- one run (in a child interpreter) ----------------------------------------------------------------
def data_root(task: str, given: str | None) -> Path:
    """The first data root holding the task's files: --data-dir / $BERTFLOW_DATA_DIR, then ``DATA_ROOTS``."""
    from bert_core.loading import has_local_data

    roots = [Path(given)] if given else []
    for root in roots + DATA_ROOTS:
        if has_local_data(TASK_SPECS[task], root):
            return root
    raise SystemExit(f"{task}: no data under {[str(r) for r in roots + DATA_ROOTS]}; for hate_speech and imdb_long "
                     "run bench/prepare_levers_data.py first")


def variant_spec(task: str, update: dict):
    """The task's spec with the variant's fields set, validated like a spec file. A field this code does not
    know yet fails, except a None (off) one, which is dropped: it is every field's default."""
    from bert_core.spec import TaskSpec, load_spec

    base = load_spec(TASK_SPECS[task]).model_dump(exclude_unset=True)
    missing = [k for k, v in update.items() if v is not None and k not in TaskSpec.model_fields]
    if missing:
        raise SystemExit(f"{task}: the spec has no field {missing} in this code (bert_core/spec.py): this variant "
                         "needs the branch that adds it")
    update = {k: v for k, v in update.items() if k in TaskSpec.model_fields}
    return TaskSpec.model_validate({**base, **update})


def load_splits(job: dict, spec):
    """(fingerprint, label names, {"train", "dev", held-out name: rows}), caps applied to the first rows."""
    from bert_core.loading import load_task_data

    data = load_task_data(spec, data_root(job["task"], job["data_dir"]))
    train = data.splits["train"].to_list()
    splits = {"train": train[: job["max_train_samples"]], "dev": data.splits["eval"].to_list()[: job["max_eval_samples"]]}
    if "test" in data.splits:
        splits["test"] = data.splits["test"].to_list()[: job["max_test_samples"]]
    elif job.get("heldout_from_train") and job["max_train_samples"] and len(train) > job["max_train_samples"]:
        rest = train[job["max_train_samples"]:][: job["heldout_from_train"]]
        splits["train_heldout"] = rest[: job["max_test_samples"]]
    return data.fingerprint, data.label_names, splits


class _Progress:
    def on_evaluate(self, step, metrics):
        print(f"    eval at step {step}: {json.dumps({k: round(v, 4) for k, v in metrics.items()})}", flush=True)


def positive_class_scores(predictions: list[dict], rows: list[dict], label_names: list[str]) -> dict:
    """Precision and recall of label_names[1] (binary tasks), the class `f1` scores."""
    if len(label_names) != 2:
        return {}
    positive = label_names[1]
    predicted = np.array([p["label"] == positive for p in predictions])
    gold = np.array([r["label"] == positive for r in rows])
    hits = int((predicted & gold).sum())
    return {"precision": hits / predicted.sum() if predicted.any() else 0.0, "recall": hits / gold.sum() if gold.any() else 0.0,
            "predicted_positive": int(predicted.sum()), "gold_positive": int(gold.sum())}


def score_split(model_dir: Path, spec, rows, fingerprint: str, split: str, meta: dict, precision: str, cache: Path):
    """The saved model on one labelled split, as `bertflow score` would: metrics, the positive class's precision
    and recall, calibration, and the wall seconds (features + inference)."""
    from bert_core.training import evaluate_model_dir

    start = time.perf_counter()
    metrics, predictions = evaluate_model_dir(model_dir, spec, rows, f"{fingerprint}|{split}|{len(rows)}", split=split,
                                              precision=precision, cache_dir=cache)
    seconds = time.perf_counter() - start
    # evaluate_model_dir's metrics hold ece / brier with the saved temperature and without it (bert_core.calibration)
    calibration = {name: metrics.pop(name) for name in CALIBRATION if name in metrics}
    return {"rows": len(rows), "metrics": metrics, **positive_class_scores(predictions, rows, meta["label_names"]),
            **calibration, "seconds": seconds}


def answering_as(model_dir: Path, spec, dev: list[dict], fingerprint: str, how: dict, precision: str, cache: Path,
                 folder: Path) -> Path:
    """A copy of the saved model (weights linked, not copied) whose meta answers ``how``: a decision threshold
    ``tune``d on ``dev`` here as fit would (bert_core/families/imbalance.py, on the calibrated probabilities), or
    another ``long_text`` pooling."""
    from bert_core.checkpoint import read_finetuned_meta
    from bert_core.families import get_family
    from bert_core.training import evaluate_model_dir

    meta = read_finetuned_meta(model_dir)
    if how.get("decision_threshold") == "tune":
        settings = {"decision_threshold": "tune", "decision_threshold_tuned_for": spec.primary_metric}
        _, predictions = evaluate_model_dir(model_dir, spec, dev, f"{fingerprint}|dev|{len(dev)}", split="dev",
                                            precision=precision, cache_dir=cache)
        meta |= settings | get_family(spec.family).predictions.tune(predictions, dev, settings)
    if "long_text" in how:
        meta["long_text"] = how["long_text"]
    folder.mkdir(parents=True)
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    (folder / "config.json").write_text(json.dumps({**config, "bertflow": meta}), encoding="utf-8")
    for name in ("model.safetensors", "tokenizer.json"):
        (folder / name).symlink_to(model_dir / name)
    return folder


def scored_model(model_dir: Path, spec, splits: dict, fingerprint: str, precision: str, cache: Path) -> dict:
    """The model on every split but train, and what it learnt or was told (threshold, temperature, windows)."""
    from bert_core.checkpoint import read_finetuned_meta

    meta = read_finetuned_meta(model_dir)
    scored = {split: score_split(model_dir, spec, rows, fingerprint, split, meta, precision, cache)
              for split, rows in splits.items() if split != "train"}
    learnt = {k: meta[k] for k in ("decision_threshold", "temperature", "long_text", "class_weights") if k in meta}
    return {"scored": scored, "learnt": learnt}


def run_job(job: dict) -> dict:
    """Fine-tune one (task, variant, seed); score the best model on every split but train, and score it again
    answering as each variant derived from this one (``DERIVED``)."""
    from bert_core.training import TrainConfig, fit

    spec = variant_spec(job["task"], job["update"])
    fingerprint, label_names, splits = load_splits(job, spec)
    given = {"epochs": job["epochs"]} if job["epochs"] else {}
    cfg = TrainConfig(seed=job["seed"], num_threads=job["threads"], progress_bar=False, checkpoint_every=None,
                      checkpoint_minutes=None, **given).with_defaults(spec.defaults)
    with tempfile.TemporaryDirectory(prefix="levers-") as tmp:
        start = time.perf_counter()
        result = fit(spec, cfg, Path(tmp) / "run", splits["train"], splits["dev"], label_names,
                     data_fingerprint=f"{fingerprint}|{len(splits['train'])}|{len(splits['dev'])}",
                     cache_dir=Path(tmp) / "cache", callbacks=[_Progress()])
        fit_seconds = time.perf_counter() - start
        cache = Path(tmp) / "cache"
        own = scored_model(result.model_dir, spec, splits, fingerprint, result.precision, cache)
        derived = {}
        for name, how in job.get("derived", {}).items():
            folder = answering_as(result.model_dir, spec, splits["dev"], fingerprint, how, result.precision, cache,
                                  Path(tmp) / name)
            derived[name] = scored_model(folder, spec, splits, fingerprint, result.precision, cache)
    return {"epochs": cfg.epochs, "learning_rate": cfg.learning_rate, "batch_size": cfg.batch_size,
            "max_seq_length": spec.max_seq_length, "primary_metric": spec.primary_metric, "precision": result.precision,
            "fit_dev_metrics": result.eval_metrics, "best_step": result.best_step, "final_step": result.final_step,
            **own, "derived": derived, "train_seconds": result.train_seconds, "fit_wall_seconds": fit_seconds,
            "examples_per_second": result.examples_per_second, "feature_stats": result.feature_stats,
            "rows": {split: len(rows) for split, rows in splits.items()}}


def child_main(job: dict, out: str) -> None:
    import datasets
    import torch

    datasets.disable_progress_bars()  # the feature cache's save_to_disk draws one
    torch.set_num_threads(job["threads"])
    result = run_job(job)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    Path(out).write_text(json.dumps(result), encoding="utf-8")


# ---- the parent: which runs, in order; results; tables ----------------------------------------------
def job_key(record: dict) -> tuple:
    """What makes two runs the same measurement (threads change speed only; a rerun with more threads reuses)."""
    return (record["task"], record["variant"], record["seed"], record["epochs_asked"], record["max_train_samples"],
            record["max_eval_samples"], record["max_test_samples"], json.dumps(record["update"], sort_keys=True))


def read_results(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plan(args) -> list[dict]:
    """Every (task, variant, seed) of the experiment; the task's own caps/epochs unless the command sets them."""
    experiment, jobs = EXPERIMENTS[args.experiment], []
    for task, own in experiment["tasks"].items():
        for variant, update in experiment["variants"].items():
            for seed in args.seeds:
                epochs = args.epochs if args.epochs is not None else own.get("epochs")
                jobs.append({"task": task, "variant": variant, "update": update, "seed": seed,
                             "epochs_asked": epochs, "epochs": epochs, "threads": args.threads,
                             "max_train_samples": args.max_train_samples or own.get("max_train_samples"),
                             "max_eval_samples": args.max_eval_samples, "max_test_samples": args.max_test_samples,
                             "heldout_from_train": own.get("heldout_from_train"),
                             "derived": {name: how for name, (base, how) in DERIVED[args.experiment].items()
                                         if base == variant and (not args.variants or name in args.variants)},
                             "data_dir": str(args.data_dir) if args.data_dir else None})
    wanted = set(args.variants or ()) | {base for name, (base, _) in DERIVED[args.experiment].items()
                                         if name in (args.variants or ())}
    return [j for j in jobs if (not args.variants or j["variant"] in wanted)
            and (not args.tasks or j["task"] in args.tasks)]


def derived_jobs(job: dict) -> list[dict]:
    """What tells apart each record of a variant derived from this job's (``DERIVED``): its name, how it answers,
    the variant it was scored from."""
    return [{"variant": name, "update": {**job["update"], **how}, "derived_from": job["variant"]}
            for name, how in job.get("derived", {}).items()]


def run_child(job: dict) -> dict | None:
    """One job in a fresh interpreter; its result, or None when it failed (its error is on the console)."""
    with tempfile.TemporaryDirectory(prefix="levers-job-") as tmp:
        out = Path(tmp) / "result.json"
        env = {**os.environ, "OMP_NUM_THREADS": str(job["threads"]), "RAYON_NUM_THREADS": str(job["threads"])}
        start, load_before = time.perf_counter(), os.getloadavg()[0]
        proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(job), "--child-out", str(out)],
                              env=env, cwd=REPO_ROOT)
        if proc.returncode != 0 or not out.is_file():
            print(f"!! {job['task']} {job['variant']} seed {job['seed']} failed (exit {proc.returncode})", flush=True)
            return None
        return {**json.loads(out.read_text()), "wall_seconds": time.perf_counter() - start,
                "load_avg_1min": [load_before, os.getloadavg()[0]]}


def provenance() -> dict:
    import torch

    def git(*argv):
        return subprocess.run(["git", *argv], capture_output=True, text=True, cwd=REPO_ROOT).stdout.strip()

    return {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, *sys.argv]), "commit": git("rev-parse", "HEAD"),
            "bert_core_dirty": bool(git("status", "--porcelain", "bert_core")), "python": platform.python_version(),
            "torch": torch.__version__, "cpu_count": os.cpu_count()}


def run_all(args, jobs: list[dict]) -> list[str]:
    done, failed, where = {job_key(r) for r in read_results(args.results)}, [], provenance()
    for job in jobs:
        name = f"{job['task']} {job['variant']} seed {job['seed']}"
        if job_key(job) in done:
            print(f"-- {name}: already in {args.results}, skipped", flush=True)
            continue
        print(f"== {name}: {json.dumps(job['update'])}", flush=True)
        result = run_child(job)
        if result is None:
            failed.append(name)
            continue
        record = {**job, "experiment": args.experiment, **result, **where}
        derived = [{**record, **as_derived, **result["derived"][as_derived["variant"]]} for as_derived in derived_jobs(job)]
        args.results.parent.mkdir(parents=True, exist_ok=True)
        with args.results.open("a", encoding="utf-8") as f:
            for one in (record, *derived):
                f.write(json.dumps({k: v for k, v in one.items() if k != "derived"}) + "\n")
        held = [s for s in result["scored"] if s != "dev"]
        shown = result["scored"][held[0]] if held else result["scored"]["dev"]
        print(f"   {held[0] if held else 'dev'} {result['primary_metric']} "
              f"{100 * shown['metrics'][result['primary_metric']]:.2f}; {result['train_seconds']:.0f} s training, "
              f"{result['fit_wall_seconds']:.0f} s fit, {shown['seconds']:.0f} s scoring", flush=True)
    return failed


def spread(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    """mean ± sample standard deviation, or the one value."""
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return "-"
    mean = f"{scale * statistics.mean(values):.{digits}f}"
    return mean if len(values) == 1 else f"{mean} ± {scale * statistics.stdev(values):.{digits}f}"


def held_out(record: dict) -> str | None:
    return next((s for s in record["scored"] if s != "dev"), None)


def table_columns(experiment: str) -> list[tuple[str, object]]:
    """(header, value of one record) for the experiment's table."""
    def on(split, key, metric=True):
        def get(r):
            name = held_out(r) if split == "held" else split
            scored = r["scored"].get(name) if name else None
            return None if scored is None else (scored["metrics"] if metric else scored).get(key)
        return get

    if experiment == "rare":
        return [("test f1", on("held", "f1")), ("test precision", on("held", "precision", False)),
                ("test recall", on("held", "recall", False)), ("test mcc", on("held", "matthews_corr")),
                ("dev f1", on("dev", "f1")), ("threshold", lambda r: r["learnt"].get("decision_threshold")),
                ("train s", lambda r: r["train_seconds"])]
    if experiment == "long":
        return [("test accuracy", on("held", "accuracy")), ("dev accuracy", on("dev", "accuracy")),
                ("train features", lambda r: r["feature_stats"].get("train_features")),
                ("train s", lambda r: r["train_seconds"]), ("fit wall s", lambda r: r["fit_wall_seconds"]),
                ("test scoring s", on("held", "seconds", False))]
    return [*[(f"dev {CALIBRATION[c]}", on("dev", c, False)) for c in CALIBRATION],
            ("fit's dev ECE", lambda r: r["fit_dev_metrics"].get("ece")), ("held-out", held_out),
            *[(f"held-out {CALIBRATION[c]}", on("held", c, False)) for c in CALIBRATION],
            ("temperature", lambda r: r["learnt"].get("temperature"))]


UNSCALED = {"threshold", "train s", "fit wall s", "test scoring s", "train features", "temperature", "held-out"}


def print_table(args, records: list[dict], jobs: list[dict]) -> None:
    """One row per (task, variant): mean ± sd over the seeds found; scores in %, ECE/Brier x100."""
    every = [*jobs, *({**j, **d} for j in jobs for d in derived_jobs(j))]
    wanted = {job_key(j) for j in every}
    mine = [r for r in records if job_key(r) in wanted]
    columns = table_columns(args.experiment)
    print("| task | variant | seeds | " + " | ".join(h for h, _ in columns) + " |")
    print("|---" * (3 + len(columns)) + "|")
    for task, variant in dict.fromkeys((j["task"], j["variant"]) for j in every):
        runs = [r for r in mine if (r["task"], r["variant"]) == (task, variant)]
        if not runs:
            continue
        cells = []
        for header, get in columns:
            values = [get(r) for r in runs]
            if header == "held-out":
                cells.append(values[0] or "-")
            elif header in UNSCALED:
                digits = 3 if header in ("threshold", "temperature") else 0
                cells.append(spread(values, 1.0, digits))
            else:
                cells.append(spread(values))
        print(f"| {task} | {variant} | {len(runs)} | " + " | ".join(cells) + " |")
    print(f"\nMean ± standard deviation over seeds ({', '.join(map(str, args.seeds))}); scores in %, ECE and Brier x 100. "
          "test = the held-out split scored once by evaluate_model_dir with the settings saved with the model; "
          "dev = the split fit selected the epoch (and tuned threshold / temperature) on.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", choices=list(EXPERIMENTS), help="required, except in a child run")
    parser.add_argument("--variants", nargs="+", metavar="NAME", help="only these variants (default: all)")
    parser.add_argument("--tasks", nargs="+", metavar="TASK", help="only these of the experiment's tasks (default: all)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=float, help="epochs for every task (default: the task's: spec 3, sst2 1)")
    parser.add_argument("--max-train-samples", type=int, help="first N training rows (default: all; sst2 10,000)")
    parser.add_argument("--max-eval-samples", type=int, help="first N dev rows")
    parser.add_argument("--max-test-samples", type=int, help="first N held-out rows")
    parser.add_argument("--data-dir", type=Path, default=os.environ.get("BERTFLOW_DATA_DIR"),
                        help="data root tried first (then $BERTFLOW_HOME/bench-data, then ../shared/datasets)")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--table-only", action="store_true", help="print the table of --results and exit")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(json.loads(args.child), args.child_out)
        return
    if args.experiment is None:
        parser.error("--experiment is required")
    for option, given in (("variants", args.variants), ("tasks", args.tasks)):
        known = list(EXPERIMENTS[args.experiment][option]) + (list(DERIVED[args.experiment]) if option == "variants" else [])
        if set(given or ()) - set(known):
            parser.error(f"--{option} {sorted(set(given) - set(known))}: not {option} of {args.experiment}: {known}")
    jobs = plan(args)
    failed = [] if args.table_only else run_all(args, jobs)
    print()
    print_table(args, read_results(args.results), jobs)
    if failed:
        raise SystemExit(f"{len(failed)} runs failed (a rerun retries them): {', '.join(failed)}")


if __name__ == "__main__":
    main()
