"""How well the label audit finds wrong labels: flip a seeded 5% of SST-2's training labels, audit, and count.

    BERTFLOW_DATA_DIR=../shared/datasets .venv/bin/python bench/audit_quality.py          # the measurement
    # a smoke test of the script (minutes; results elsewhere):
    BERTFLOW_DATA_DIR=../shared/datasets .venv/bin/python bench/audit_quality.py --rows 200 --k 2 \\
        --max-eval-samples 64 --results /tmp/audit_quality.json --work-dir /tmp/audit_quality

  1. data     the first --rows (4,000) rows of SST-2/train.tsv, written to a temporary data root (--work-dir)
              with a seeded --flip-share (5%) of their labels swapped (0 <-> 1), every other byte as it was;
              SST-2/dev.tsv copied as it is (it chooses each fold model's best checkpoint).
  2. audit    the audit flow (flows/audit.py) on that root: --k (5) folds, --epochs (1), the spec's other
              defaults, the packaged all-MiniLM-L6-v2, --max-concurrency (1) folds at once; its own MLflow store
              and BERTFLOW_HOME under --work-dir.
  3. count    flagged = the rows cleanlab's find_label_issues flags. Precision: the share of flagged rows that were
              flipped; recall: the share of flipped rows that were flagged. Also the precision of the
              len(flipped) most suspect rows (the ranking's own quality, whatever cleanlab's cut). SST-2 has label
              errors of its own, so precision counts some real finds as false.

The JSON (default bench/results/audit_quality.json) holds the settings, the counts, the figures, the seconds, the
commit, the time and the load average (the timing is as good as the machine was quiet).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS = REPO_ROOT / "bench" / "results" / "audit_quality.json"
OTHER = {"0": "1", "1": "0"}  # SST-2's labels, flipped
sys.path.insert(0, str(REPO_ROOT))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=4000, help="training rows audited (the first of SST-2/train.tsv)")
    p.add_argument("--flip-share", type=float, default=0.05, help="share of those rows whose label is flipped")
    p.add_argument("--flip-seed", type=int, default=0)
    p.add_argument("--k", type=int, default=5, help="folds")
    p.add_argument("--fold-seed", type=int, default=0)
    p.add_argument("--epochs", type=float, default=1, help="each fold's fine-tune")
    p.add_argument("--max-eval-samples", type=int, default=None, help="cap on the dev rows (a test)")
    p.add_argument("--max-concurrency", type=int, default=1, help="fold fine-tunes at once")
    p.add_argument("--data-dir", default=os.environ.get("BERTFLOW_DATA_DIR"), help="holds SST-2/train.tsv, dev.tsv")
    p.add_argument("--work-dir", default=None, help="the flipped data root, MLflow store and runs; default: a "
                   "temporary folder, deleted after")
    p.add_argument("--results", default=str(DEFAULT_RESULTS))
    return p.parse_args(argv)


def write_flipped_sst2(source: Path, root: Path, rows: int, share: float, seed: int) -> set[int]:
    """root/SST-2/{train,dev}.tsv: train's first `rows` rows with a seeded `share` of labels flipped; returns the
    flipped rows' indices (0 = the first row after the header)."""
    lines = (source / "SST-2" / "train.tsv").read_text(encoding="utf-8").splitlines()
    header, body = lines[0], lines[1: rows + 1]
    flipped = set(random.Random(seed).sample(range(len(body)), round(share * len(body))))
    for i in flipped:
        text, _, label = body[i].rpartition("\t")
        body[i] = f"{text}\t{OTHER[label]}"
    (root / "SST-2").mkdir(parents=True, exist_ok=True)
    (root / "SST-2" / "train.tsv").write_text("\n".join([header, *body]) + "\n", encoding="utf-8")
    shutil.copyfile(source / "SST-2" / "dev.tsv", root / "SST-2" / "dev.tsv")
    return flipped


def figures(flagged: list[int], flipped: set[int]) -> dict:
    found = len(set(flagged) & flipped)
    top = set(flagged[: len(flipped)])
    return {"flipped": len(flipped), "flagged": len(flagged), "flipped_and_flagged": found,
            "precision": found / len(flagged) if flagged else 0.0, "recall": found / len(flipped) if flipped else 0.0,
            "precision_at_flipped": len(top & flipped) / len(flipped) if flipped else 0.0}


def run_audit(args: argparse.Namespace, work: Path) -> dict:
    """The audit flow in this process, on the flipped root, with its own MLflow store and BERTFLOW_HOME."""
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    os.environ["BERTFLOW_HOME"] = str(work / "home")
    from flows.cli.local_flow import prefect_settings

    prefect_settings()
    from bert_core.training import TrainConfig
    from flows.audit import audit
    from flows.params import AuditParams, FinetuneParams

    training = TrainConfig(epochs=args.epochs, max_train_samples=args.rows, max_eval_samples=args.max_eval_samples,
                           progress_bar=False)
    params = AuditParams(base=FinetuneParams(task="sst2", data_dir=str(work / "data"), training=training),
                         k=args.k, fold_seed=args.fold_seed, top=args.rows, max_concurrency=args.max_concurrency)
    return audit(params)


def main(argv=None) -> None:
    args = parse_args(argv)
    if not args.data_dir:
        raise SystemExit("set BERTFLOW_DATA_DIR (or --data-dir) to the folder holding SST-2/")
    work = Path(args.work_dir) if args.work_dir else Path(__import__("tempfile").mkdtemp(prefix="audit-quality-"))
    try:
        flipped = write_flipped_sst2(Path(args.data_dir), work / "data", args.rows, args.flip_share, args.flip_seed)
        started = time.perf_counter()
        result = run_audit(args, work)
        seconds = time.perf_counter() - started
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    found = figures(result["flagged_rows"], flipped)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                            text=True).stdout.strip()
    record = {"settings": {k: v for k, v in vars(args).items() if k not in ("results", "work_dir", "data_dir")},
              **found, "audited": result["audited"], "counts": result["counts"], "seconds": round(seconds, 1),
              "commit": commit, "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
              "load_average": os.getloadavg()}
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"{found['flipped']} of {result['audited']} labels flipped, {found['flagged']} rows flagged: precision "
          f"{found['precision']:.3f}, recall {found['recall']:.3f}, precision at {found['flipped']} "
          f"{found['precision_at_flipped']:.3f}; {seconds:.0f} s; {args.results}")


if __name__ == "__main__":
    main()
