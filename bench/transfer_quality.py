"""Intermediate-task transfer (STILTs, Phang et al. 2018): RTE fine-tuned from an SNLI model vs from the base checkpoint.

    BERTFLOW_DATA_DIR=../shared/datasets .venv/bin/python bench/transfer_quality.py                # the measurement
    BERTFLOW_DATA_DIR=../shared/datasets .venv/bin/python bench/transfer_quality.py --table-only   # its table again
    # a smoke test of the script (minutes; results elsewhere):
    BERTFLOW_DATA_DIR=../shared/datasets .venv/bin/python bench/transfer_quality.py --max-train-samples 64 \\
        --max-eval-samples 64 --parent-epochs 1 --epochs 1 --seeds 1 --results /tmp/transfer.jsonl --work-dir /tmp/transfer

Question: does starting RTE (2.5k training pairs) from a model fine-tuned on SNLI beat starting it from the
pretrained checkpoint, as Phang et al. found for BERT, and by how much over seeds? Same recipe on both sides.

  1. parent   SNLI (built-in spec: train/eval carved out of the one local file by premise), --parent-epochs 2,
              seed --parent-seed 1, the spec's other defaults (lr 2e-5, batch 32). Or --parent URI: reuse one.
  2. base     RTE from the packaged all-MiniLM-L6-v2: --epochs 3, lr 2e-5 (the spec's), seeds --seeds 1 2 3.
  3. transfer RTE the same way from the parent: its encoder, a new head (RTE's labels are not SNLI's).

--via pipeline (default): each run is `bertflow run` in a subprocess, all on one MLflow store under --work-dir,
as a user runs them; the parent is registered as bert-snli vN and the transfer runs take `--pretrained
models:/bert-snli/N` (pinned to that version, not the alias, in case the store holds a better older champion).
--via bert_core: the same fine-tunes with `bert_core.training.fit_task` in this process, the parent as its best
folder (how the issue's hand measurement was made).

Each run appends one JSON line to --results (default bench/results/transfer_quality.jsonl): which run, its
settings, the RTE dev accuracy of its best epoch, every metric, train seconds, the parent, commit and time. A
rerun skips runs the file holds with the same settings. The table: per start, each seed's accuracy, the mean,
the sample standard deviation and the range, the difference of the means, and whether every transfer seed
beat every base seed. Timings are as good as the machine is quiet: the record keeps the load average.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS = REPO_ROOT / "bench" / "results" / "transfer_quality.jsonl"
sys.path.insert(0, str(REPO_ROOT))  # --via bert_core imports this checkout's bert_core


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--via", choices=("pipeline", "bert_core"), default="pipeline")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="RTE seeds, each from both starts")
    p.add_argument("--epochs", type=float, default=3, help="RTE epochs")
    p.add_argument("--learning-rate", type=float, default=2e-5, help="RTE learning rate")
    p.add_argument("--parent-epochs", type=float, default=2, help="SNLI epochs")
    p.add_argument("--parent-seed", type=int, default=1)
    p.add_argument("--parent", default=None, help="reuse this parent (models:/... with --via pipeline, a folder "
                   "with --via bert_core) instead of fine-tuning SNLI")
    p.add_argument("--max-train-samples", type=int, default=None, help="cap on every run's training rows (a test)")
    p.add_argument("--max-eval-samples", type=int, default=None, help="cap on every run's eval rows (a test)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads per run; default: bertflow's")
    p.add_argument("--data-dir", default=os.environ.get("BERTFLOW_DATA_DIR"))
    p.add_argument("--work-dir", type=Path, default=Path.home() / ".bertflow" / "bench" / "transfer",
                   help="BERTFLOW_HOME of the runs: their MLflow store, run folders and feature cache")
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    p.add_argument("--table-only", action="store_true", help="print the table of what --results holds")
    return p.parse_args(argv)


def settings(args: argparse.Namespace) -> dict:
    """What makes two records comparable (and a rerun's record the same run)."""
    return {"via": args.via, "epochs": args.epochs, "learning_rate": args.learning_rate,
            "parent_epochs": args.parent_epochs, "parent_seed": args.parent_seed,
            "max_train_samples": args.max_train_samples, "max_eval_samples": args.max_eval_samples}


# ---- one fine-tune, either way ---------------------------------------------------------------------------------
def caps(args: argparse.Namespace) -> dict:
    found = {"max_train_samples": args.max_train_samples, "max_eval_samples": args.max_eval_samples,
             "num_threads": args.threads}
    return {k: v for k, v in found.items() if v is not None}


def run_pipeline(args: argparse.Namespace, task: str, training: dict, pretrained: str | None) -> dict:
    """`bertflow run <task> --json` in a subprocess on the bench's store; its summary plus what it started from."""
    options = [f"--{k.replace('_', '-')}={v}" for k, v in {**training, **caps(args)}.items()]
    command = [sys.executable, "-m", "flows.cli", "run", task, "--json", "--no-progress-bar", *options]
    command += ["--pretrained", pretrained] if pretrained else []
    env = {**os.environ, "BERTFLOW_HOME": str(args.work_dir), "PYTHONPATH": str(REPO_ROOT),
           "MLFLOW_TRACKING_URI": f"sqlite:///{args.work_dir / 'mlflow.db'}", "BERTFLOW_DATA_DIR": args.data_dir}
    env.pop("MLFLOW_REGISTRY_URI", None)
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    summary = json.loads(done.stdout[done.stdout.index("{"):])
    return {"score": summary["score"], "metrics": summary["metrics"], "train_seconds": summary["train_seconds"],
            "model": summary["model_uri"], "mlflow_run_id": summary["mlflow_run_id"]}


def run_bert_core(args: argparse.Namespace, task: str, training: dict, pretrained: str | None, name: str) -> dict:
    """`fit_task` here, in a folder of the work dir; its best dev score and the best model's folder."""
    from bert_core.training import TrainConfig, fit_task

    cfg = TrainConfig(progress_bar=False, checkpoint_every=None, checkpoint_minutes=None, **training, **caps(args))
    result = fit_task(task, cfg, args.work_dir / "fits" / name, pretrained=pretrained, data_dir=args.data_dir,
                      cache_dir=args.work_dir / "cache")
    return {"score": result.best_metric, "metrics": result.eval_metrics, "train_seconds": result.train_seconds,
            "model": str(result.model_dir)}


def fine_tune(args, task: str, training: dict, pretrained: str | None, name: str) -> dict:
    if args.via == "pipeline":
        return run_pipeline(args, task, training, pretrained)
    return run_bert_core(args, task, training, pretrained, name)


# ---- the measurement -------------------------------------------------------------------------------------------
def read_records(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def append(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def record(args, run: str, seed: int, result: dict, parent: str | None, seconds: float) -> dict:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()
    return {"bench": "transfer_quality", "run": run, "seed": seed, "settings": settings(args), **result,
            "parent": parent, "wall_seconds": round(seconds, 1), "load_average": os.getloadavg()[0],
            "work_dir": str(args.work_dir), "commit": commit,
            "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}


def the_parent(args, held: list[dict]) -> str:
    """The SNLI model the transfer runs start from: --parent, one a record of these settings names (and that is
    still there), or a new SNLI fine-tune."""
    if args.parent:
        return args.parent
    def still_there(r: dict) -> bool:  # a registered version in this work dir's store, or a best model's folder
        return Path(r["work_dir"]) == args.work_dir if args.via == "pipeline" else Path(r["model"]).is_dir()

    if found := [r for r in held if r["run"] == "parent" and still_there(r)]:
        return found[-1]["model"]
    start = time.perf_counter()
    result = fine_tune(args, "snli", {"epochs": args.parent_epochs, "seed": args.parent_seed}, None, "snli")
    append(args.results, record(args, "parent", args.parent_seed, result, None, time.perf_counter() - start))
    print(f"parent: SNLI dev accuracy {result['score']:.4f}, {result['model']}", flush=True)
    return result["model"]


def measure(args: argparse.Namespace) -> None:
    held = [r for r in read_records(args.results) if r["settings"] == settings(args)]
    parent = the_parent(args, held)
    recipe = {"epochs": args.epochs, "learning_rate": args.learning_rate}
    for seed in args.seeds:
        for run, pretrained in (("base", None), ("transfer", parent)):
            if any(r["run"] == run and r["seed"] == seed and (run == "base" or r["parent"] == parent) for r in held):
                continue
            start = time.perf_counter()
            result = fine_tune(args, "rte", {**recipe, "seed": seed}, pretrained, f"rte-{run}-{seed}")
            append(args.results, record(args, run, seed, result, pretrained, time.perf_counter() - start))
            print(f"rte from {run}, seed {seed}: dev accuracy {result['score']:.4f}", flush=True)


def table(args: argparse.Namespace) -> str:
    """Markdown: per start, each seed's RTE dev accuracy (%), mean, sample std, range; then the gap."""
    held = [r for r in read_records(args.results) if r["settings"] == settings(args)]
    parents = [r for r in held if r["run"] == "parent"]
    rows = {run: {r["seed"]: 100 * r["score"] for r in held if r["run"] == run and r["seed"] in args.seeds}
            for run in ("base", "transfer")}
    lines = ["| RTE from | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean | std | range |",
             "|---|" + "---|" * (len(args.seeds) + 3)]
    for run, label in (("base", "base checkpoint (all-MiniLM-L6-v2)"), ("transfer", "SNLI model (new head)")):
        scores = [rows[run].get(s) for s in args.seeds]
        have = [x for x in scores if x is not None]
        mean = f"{statistics.mean(have):.1f}" if have else "-"
        std = f"{statistics.stdev(have):.1f}" if len(have) > 1 else "-"
        spread = f"{min(have):.1f}-{max(have):.1f}" if have else "-"
        cells = " | ".join("-" if x is None else f"{x:.1f}" for x in scores)
        lines.append(f"| {label} | {cells} | {mean} | {std} | {spread} |")
    base, transfer = list(rows["base"].values()), list(rows["transfer"].values())
    if base and transfer:
        lines += ["", f"Difference of the means: {statistics.mean(transfer) - statistics.mean(base):+.1f} points; "
                  f"every transfer seed above every base seed: {'yes' if min(transfer) > max(base) else 'no'}."]
    if parents:
        lines += [f"Parent: SNLI dev accuracy {100 * parents[-1]['score']:.1f}, {parents[-1]['model']}."]
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    if not args.table_only:
        if not args.data_dir:
            raise SystemExit("set BERTFLOW_DATA_DIR (or --data-dir) to the shared datasets folder")
        args.work_dir.mkdir(parents=True, exist_ok=True)
        measure(args)
    print(table(args))


if __name__ == "__main__":
    main()
