"""Threads that follow the machine vs threads decided once: a real fine-tune beside a competing process.

    python bench/threads_follow_load.py [--train-rows 1500] [--eval-rows 200] [--busy-seconds 3] [--repeats 1]

Two cases, each run with both rules, every run in a fresh subprocess (no OMP_NUM_THREADS, no num_threads):

  (a) quiet after busy   a busy-loop process starts just before the fine-tune and stops --busy-seconds later,
                         as a previous job's teardown or a server starting would: the machine is quiet for
                         the rest of the run;
  (b) sustained          the same busy loop runs for the whole fine-tune, as another job would.

  decide-once   the old rule: the cores free during a 0.2 s sample at the start (``default_threads``), fixed
                for the whole run (given as ``num_threads``);
  follow-load   the default now: the same start, then ``ThreadController`` re-decides during the first steps
                and every 10 s (bert_core/training/threads.py).

On an idle 2-core box, decide-once picks 1 thread in both cases; the right answer is 2 threads in (a) once the
loop has stopped and 1 thread in (b), where 2 threads sharing a busy core crawl (docs/benchmarks.md).
The fine-tune: the packaged all-MiniLM-L6-v2 on the first N SST-2 train rows (BERTFLOW_DATA_DIR, default
../shared/datasets; synthetic sentences when SST-2 is absent), one epoch, batch 32, fp32, one evaluation at the
end on the first M dev rows. Printed per run: training examples/s (``FitResult``, evaluation left out), the
fit's wall time, and the thread count at the start and at each change (``threads@step``). The last line is
``follow_vs_once quiet_after_busy=X.XX sustained=Y.YY``: follow-load's examples/s over decide-once's per case
(medians over --repeats). Time it on an otherwise idle box: other load is a third competitor.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CASES = {"a": "quiet after busy", "b": "sustained"}
RULES = ("decide-once", "follow-load")
BUSY_LOOP = "import sys, time\nend = time.monotonic() + float(sys.argv[1])\nwhile time.monotonic() < end:\n    pass\n"


def data_dir() -> Path:
    return Path(os.environ.get("BERTFLOW_DATA_DIR") or REPO_ROOT.parent / "shared" / "datasets")


def task_rows(train_rows: int, eval_rows: int):
    """(spec, train rows, eval rows, label names, fingerprint): SST-2's first rows, else synthetic ones."""
    from bert_core.loading import load_task_data
    from bert_core.spec import TaskSpec, load_spec

    if (data_dir() / "SST-2" / "train.tsv").is_file():
        spec = load_spec("sst2")
        data = load_task_data(spec, data_dir())
        return (spec, data.splits["train"].to_list()[:train_rows], data.splits["eval"].to_list()[:eval_rows],
                data.label_names, data.fingerprint)
    spec = TaskSpec(name="synthetic_sentiment", family="single_classification", labels=["neg", "pos"],
                    local={"format": "tsv", "files": {"train": "train.tsv", "eval": "dev.tsv"}},
                    columns={"text_a": "sentence", "label": "label"}, metrics=["accuracy"],
                    primary_metric="accuracy", max_seq_length=64)
    return spec, synthetic_rows(train_rows, 1), synthetic_rows(eval_rows, 2), ["neg", "pos"], "synthetic-v1"


def synthetic_rows(n: int, seed: int) -> list[dict]:
    """Film-review-like sentences of 8-30 words whose label is set by one sentiment word."""
    rng = random.Random(seed)
    fill = "the a movie film plot acting was is very quite story scenes cast director and but with its".split()
    rows = []
    for i in range(n):
        label = rng.choice(["neg", "pos"])
        words = rng.choices(fill, k=rng.randint(8, 30)) + [rng.choice(["good", "great"] if label == "pos" else
                                                                      ["bad", "dull"])]
        rng.shuffle(words)
        rows.append({"text_a": " ".join(words), "text_b": None, "label": label, "_source": f"synthetic:{i}"})
    return rows


# ---- one run (a child process) -------------------------------------------------------------------
def run_one(case: str, rule: str, args) -> dict:
    """Start the competitor, then fine-tune under ``rule``; the run's figures."""
    from bert_core.training import TrainConfig, fit
    from bert_core.training.threads import default_threads

    spec, train, dev, labels, fingerprint = task_rows(args.train_rows, args.eval_rows)
    if case == "warm":  # fills the feature cache, so every timed run starts alike
        cfg = TrainConfig(max_steps=1, batch_size=32, precision="fp32", progress_bar=False, checkpoint_every=10**9)
        with tempfile.TemporaryDirectory() as out:
            fit(spec, cfg, Path(out) / "run", train, dev, labels, data_fingerprint=fingerprint, cache_dir=args.cache_dir)
        return {}
    busy_for = args.busy_seconds if case == "a" else 24 * 3600.0
    competitor = subprocess.Popen([sys.executable, "-c", BUSY_LOOP, str(busy_for)])
    try:
        time.sleep(0.3)  # the busy moment is under way when the fine-tune looks at the machine
        threads = default_threads() if rule == "decide-once" else None
        cfg = TrainConfig(epochs=1, batch_size=32, learning_rate=5e-5, seed=42, precision="fp32",
                          progress_bar=False, log_every=10, checkpoint_every=10**9, num_threads=threads)
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as out:
            result = fit(spec, cfg, Path(out) / "run", train, dev, labels, data_fingerprint=fingerprint,
                         cache_dir=args.cache_dir)
        wall = time.perf_counter() - start
    finally:
        competitor.kill()
        competitor.wait()
    return {"case": case, "rule": rule, "examples_per_second": result.examples_per_second,
            "train_seconds": result.train_seconds, "wall_seconds": wall, "threads_used": result.threads_used,
            "steps": result.final_step}


def run_child(case: str, rule: str, args) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    cmd = [sys.executable, __file__, "--only", f"{case}:{rule}", "--train-rows", str(args.train_rows),
           "--eval-rows", str(args.eval_rows), "--busy-seconds", str(args.busy_seconds), "--cache-dir", args.cache_dir]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{case}:{rule} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def thread_story(used: list[dict]) -> str:
    """``1@0 -> 2@37``: the count at the start and at each change, with the step it happened at."""
    return " -> ".join(f"{u['threads']}@{u['step']}" for u in used)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-rows", type=int, default=1500)
    parser.add_argument("--eval-rows", type=int, default=200)
    parser.add_argument("--busy-seconds", type=float, default=3.0, help="case (a): how long the busy moment lasts")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved repeats; medians reported")
    parser.add_argument("--cases", default="ab")
    parser.add_argument("--cache-dir", help="feature cache shared by the runs (default: a temporary folder)")
    parser.add_argument("--only", help=argparse.SUPPRESS)  # the child process: "case:rule"
    args = parser.parse_args()
    if args.only:
        case, rule = args.only.split(":")
        print(json.dumps(run_one(case, rule, args)))
        return
    with tempfile.TemporaryDirectory() as cache:
        args.cache_dir = args.cache_dir or cache
        print(f"{len(os.sched_getaffinity(0))} usable cores, load average {os.getloadavg()[0]:.2f}; "
              f"{args.train_rows} train rows, busy moment {args.busy_seconds:g} s", flush=True)
        run_child("warm", "follow-load", args)
        runs = []
        for repeat in range(args.repeats):
            for case in args.cases:
                for rule in RULES:
                    r = run_child(case, rule, args)
                    runs.append(r)
                    print(f"  {repeat + 1}/{args.repeats} {CASES[case]:17} {rule:12} {r['examples_per_second']:7.1f} ex/s"
                          f"  train {r['train_seconds']:6.1f} s  wall {r['wall_seconds']:6.1f} s"
                          f"  threads {thread_story(r['threads_used'])}", flush=True)
    print(f"\n{'case':17} {'rule':12} {'ex/s (median)':>14}   threads (count@step) of the last repeat")
    ratios = {}
    for case in args.cases:
        rates = {}
        for rule in RULES:
            mine = [r for r in runs if r["case"] == case and r["rule"] == rule]
            rates[rule] = statistics.median(r["examples_per_second"] for r in mine)
            print(f"{CASES[case]:17} {rule:12} {rates[rule]:14.1f}   {thread_story(mine[-1]['threads_used'])}")
        ratios[CASES[case].replace(" ", "_")] = rates["follow-load"] / rates["decide-once"]
    print("follow_vs_once " + " ".join(f"{k}={v:.2f}" for k, v in ratios.items()))


if __name__ == "__main__":
    main()
