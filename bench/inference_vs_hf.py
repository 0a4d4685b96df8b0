"""Inference speed of a fine-tuned classifier in each serving precision: our eval loop, ``Predictor`` and MLflow
pyfunc vs ``transformers`` in inference mode with the same batching and the same precision, at batch 1 and batch
64, in one process and one run; then the serving gate on SST-2 dev and the pyfunc's speed-up.

    python bench/inference_vs_hf.py [--rows 872] [--batch1-rows 200] [--threads 2] [--precisions fp32,bf16,int8]
                                    [--repeats 3] [--margin 0.005] [--head-rows 2000] [--smoke]

The model: the packaged all-MiniLM-L6-v2 with an SST-2 head fitted on frozen [CLS] features of ``--head-rows``
training sentences (seed 0; a real classifier, so the gate has real margins to keep), saved by ``save_finetuned``; the
peer is ``BertForSequenceClassification`` from the same checkpoint with our head's weights copied in, so both
compute the same logits in fp32 (checked). Inputs: SST-2 dev sentences.

Precisions (``bert_core.serving_precision``), the peer in the same one: fp32; bf16 (ours: linear weights cast
once + autocast; the peer: autocast, as transformers runs bf16); int8 (ours: ``prepare(model, "int8")``; the
peer: the same ``torch.ao.quantization.quantize_dynamic`` of its ``nn.Linear`` layers). On a CPU without native
bf16 (no AVX512-BF16 / AMX) bf16 is emulated and slow: it is measured anyway, and ``auto`` serves fp32 there.

Pairs timed, each ours then the peer, interleaved, ``--repeats`` times (median, best in brackets):

  forward     token ids already built -> logits. Ours: ``predict_logits`` (length-sorted batches, padding to
              the batch's longest row, ``torch.no_grad``). Peer: the same batches through the transformers
              model under ``torch.inference_mode``.
  text        sentences -> labels with probabilities. Ours: ``Predictor.predict`` (tokenize, batch, forward,
              softmax, label names). Peer: ``BertTokenizerFast`` on the same length-sorted chunks,
              the model, softmax, argmax. Also ``transformers.pipeline("text-classification")`` as most users
              call it (``batch_size``; it does not sort by length).
  pyfunc      our model logged by ``tracking.packaging.log_model`` and loaded by ``mlflow.pyfunc.load_model``:
              what ``bertflow serve`` and ``bertflow score`` run; a DataFrame of ``batch`` rows per call.

Batch 1 runs the first ``--batch1-rows`` sentences one call each and also reports p50/p99 latency per call.

The gate (``bert_core.precision_gate.judge``, what ``serving_precisions`` runs before registering): each
precision's ``Predictor`` predictions of the ``--rows`` dev sentences against fp32's, paired bootstrap of accuracy,
passed when the 95% interval of (it - fp32) starts at or above ``-margin``. The last line,
``serving_speedup=X.XX``, is the pyfunc's examples/s at batch 64 in the fastest precision that passed, over fp32's.
``--smoke``: tiny caps (16 rows, 4 at batch 1, 1 repeat, 64 head rows) to check the script runs, not to time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def sentences(n: int, split: str = "dev") -> tuple[list[str], list[str]]:
    """The first ``n`` SST-2 sentences of ``split`` and their labels ("0" / "1")."""
    root = Path(os.environ.get("BERTFLOW_DATA_DIR") or REPO.parent / "shared" / "datasets")
    lines = (root / "SST-2" / f"{split}.tsv").read_text(encoding="utf-8").splitlines()[1:]
    pairs = [line.rstrip("\n").split("\t") for line in lines if line.strip()][:n]
    return [p[0] for p in pairs], [p[1].strip() for p in pairs]


def fit_head(model, tokenizer, n_rows: int) -> None:
    """Fit ``model``'s classifier (in place) on the frozen pooled [CLS] outputs of ``n_rows`` SST-2 training
    sentences: logistic regression by full-batch Adam. The speed is a fine-tuned model's; the margins are real."""
    from bert_core import get_family
    from bert_core.families.base import MODEL_INPUTS
    from bert_core.training.batching import make_batch

    texts, labels = sentences(n_rows, "train")
    feats = get_family("single_classification").features.build([{"text_a": t} for t in texts], tokenizer, ["0", "1"],
                                                               {"max_seq_length": 64})
    pooled = []
    with torch.no_grad():
        for s in range(0, len(feats), 64):
            batch = make_batch(feats, list(range(s, min(s + 64, len(feats)))), tokenizer.pad_id, MODEL_INPUTS)
            pooled.append(model.bert(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])[1])
    x, y = torch.cat(pooled), torch.tensor([int(label) for label in labels])
    head = model.classifier
    optimizer = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(300):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(head(x), y).backward()
        optimizer.step()


def build_models(folder: Path, head_rows: int):
    """(our model dir, transformers model, transformers tokenizer): the same weights, the same head."""
    from transformers import BertForSequenceClassification, BertTokenizerFast
    from transformers import logging as hf_logging

    from bert_core import get_family, load_pretrained, save_finetuned
    from bert_core.checkpoint import resolve_source

    torch.manual_seed(0)
    encoder, tokenizer = load_pretrained(None)
    model = get_family("single_classification").build_model(encoder, ["0", "1"]).eval()
    fit_head(model, tokenizer, head_rows)
    meta = {"family": "single_classification", "label_names": ["0", "1"], "task": "sst2", "max_seq_length": 128}
    model_dir = save_finetuned(model, tokenizer, folder / "model", meta)
    hf_logging.set_verbosity_error()
    source = str(resolve_source(None))
    peer = BertForSequenceClassification.from_pretrained(source, num_labels=2).eval()
    with torch.no_grad():
        peer.classifier.weight.copy_(model.classifier.weight)
        peer.classifier.bias.copy_(model.classifier.bias)
    return model_dir, peer, BertTokenizerFast.from_pretrained(source)


def log_pyfunc(model_dir: Path, folder: Path):
    import mlflow

    from tracking.packaging import log_model
    from tracking.store import configure_tracking

    configure_tracking(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = mlflow.create_experiment("inference-bench", (folder / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        info = log_model(model_dir, "single_classification", [{"text_a": "a fine film", "text_b": None}])
    return info.model_uri  # loaded once per precision (its model_config)


def timed_calls(fn, chunks) -> tuple[float, list[float]]:
    """(total seconds, per-call seconds) of ``fn(chunk)`` over the chunks."""
    per_call = []
    for chunk in chunks:
        start = time.perf_counter()
        fn(chunk)
        per_call.append(time.perf_counter() - start)
    return sum(per_call), per_call


def peer_in(peer, precision: str):
    """The transformers model for ``precision``: itself (fp32; bf16 runs it under autocast) or a dynamically
    quantized copy (int8: the same call as ``bert_core.serving_precision``'s)."""
    if precision != "int8":
        return peer
    import copy
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*deprecated")  # as in bert_core.serving_precision
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(peer), {torch.nn.Linear}, dtype=torch.qint8)


def peer_calls(peer, hf_tokenizer, pad: int, precision: str, batch_size: int):
    """(forward on features, text -> labels) of the transformers model, batched and sorted as ours."""
    from bert_core.training.batching import eval_batches, make_batch
    from bert_core.training.inference import autocast

    def forward(feats):
        out = []
        lengths = [len(f["input_ids"]) for f in feats]
        with torch.inference_mode(), autocast(precision, torch.device("cpu")):
            for idx in eval_batches(lengths, batch_size):
                out.append(peer(**make_batch(feats, idx, pad, ("input_ids", "token_type_ids", "attention_mask"))).logits)
        return out

    def text(chunk):
        order = sorted(range(len(chunk)), key=lambda i: -len(chunk[i]))  # as ours: longest first
        labels = [None] * len(chunk)
        with torch.inference_mode(), autocast(precision, torch.device("cpu")):
            for s in range(0, len(order), batch_size):
                idx = order[s:s + batch_size]
                enc = hf_tokenizer([chunk[i] for i in idx], padding=True, truncation=True, max_length=128,
                                   return_tensors="pt")
                probs = peer(**enc).logits.float().softmax(-1)
                for i, p in zip(idx, probs.tolist(), strict=True):
                    labels[i] = (int(np.argmax(p)), p)
        return labels

    return forward, text


def pipeline_call(pipe, precision: str, batch_size: int):
    from bert_core.training.inference import autocast

    def run(chunk):
        with autocast(precision, torch.device("cpu")):
            return pipe(chunk, batch_size=batch_size)
    return run


def gate_on_dev(predictors: dict, texts: list[str], labels: list[str], margin: float) -> dict:
    """precision -> GateResult of its Predictor's dev predictions against fp32's (paired bootstrap of accuracy)."""
    from bert_core.precision_gate import DevPredictions, judge
    from bert_core.spec import load_spec

    spec = load_spec("sst2")
    rows = [{"text_a": t, "text_b": None, "label": y} for t, y in zip(texts, labels, strict=True)]
    dev = {}
    for precision, predictor in predictors.items():
        predictions = predictor.predict([{"text_a": t} for t in texts])
        metrics = spec_metrics(predictor, predictions, rows)
        dev[precision] = DevPredictions(precision, metrics, predictions)
    return {p: judge(spec, rows, d, dev["fp32"], margin, ["0", "1"]) for p, d in dev.items() if p != "fp32"} | {
        "fp32": judge(spec, rows, dev["fp32"], dev["fp32"], margin, ["0", "1"])}


def spec_metrics(predictor, predictions: list[dict], rows: list[dict]) -> dict[str, float]:
    return predictor.family.predictions.compute_metrics(predictions, rows, ["accuracy"], ["0", "1"], predictor.settings)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=872, help="SST-2 dev sentences for batch 64 (default all 872)")
    parser.add_argument("--batch1-rows", type=int, default=200, help="sentences sent one at a time (default 200)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--precisions", default=None, help="comma-separated; fp32 always runs (default fp32,bf16,int8 "
                        "on a CPU with native bf16, else fp32,int8: emulated bf16 is ~5x slower than fp32)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--margin", type=float, default=0.005, help="the gate's margin (default half a point)")
    parser.add_argument("--head-rows", type=int, default=2000, help="SST-2 training sentences the head is fitted on")
    parser.add_argument("--smoke", action="store_true", help="tiny caps: checks the script runs, times nothing")
    args = parser.parse_args()
    if args.smoke:
        args.rows, args.batch1_rows, args.repeats, args.head_rows = 16, 4, 1, 64
    if args.precisions is None:
        from bert_core.training.config import cpu_has_native_bf16

        args.precisions = "fp32,bf16,int8" if cpu_has_native_bf16() else "fp32,int8"
    args.precisions = ["fp32", *(p for p in args.precisions.split(",") if p and p != "fp32")]
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import mlflow
    import pandas as pd
    import transformers

    from bert_core.predict import Predictor
    from bert_core.training.batching import make_batch
    from bert_core.training.inference import predict_logits
    from tracking.packaging import PRECISION_KEY

    texts, labels = sentences(args.rows)
    with tempfile.TemporaryDirectory(prefix="inference-bench-") as tmp:
        model_dir, peer, hf_tokenizer = build_models(Path(tmp), args.head_rows)
        pyfunc_uri = log_pyfunc(model_dir, Path(tmp))
        predictors = {p: Predictor(model_dir, precision=p) for p in args.precisions}
        base = predictors["fp32"]
        rows = [{"text_a": t} for t in texts]
        features = base.family.features.build(rows, base.tokenizer, ["0", "1"], {"max_seq_length": 128})
        pad = base.tokenizer.pad_id

        # Same logits from both models on the same batch in fp32: the comparison is of the same computation.
        check = make_batch(features, list(range(min(16, len(features)))), pad, ("input_ids", "token_type_ids",
                                                                                "attention_mask"))
        with torch.no_grad():
            diff = (base.model(**check).logits - peer(**check).logits).abs().max().item()
        if diff > 1e-3:
            raise SystemExit(f"our logits differ from transformers' by {diff}: not the same computation")

        cases = {}  # (what, precision, batch) -> (ours, peer, chunks of the work)
        for precision, predictor in predictors.items():
            theirs = peer_in(peer, precision)
            pipe = transformers.pipeline("text-classification", model=theirs, tokenizer=hf_tokenizer, device="cpu",
                                         truncation=True, max_length=128)
            pyfunc = mlflow.pyfunc.load_model(pyfunc_uri, model_config={PRECISION_KEY: precision})
            for b, n in ((1, args.batch1_rows), (args.batch_size, len(texts))):
                chunk = [texts[i:i + b] for i in range(0, n, b)]
                fchunk = [features[i:i + b] for i in range(0, n, b)]
                forward, text = peer_calls(theirs, hf_tokenizer, pad, precision, b)
                cases["forward", precision, b] = (
                    lambda fs, b=b, m=predictor.model, p=predictor.precision: predict_logits(m, fs, pad, b, p),
                    forward, fchunk)
                cases["text", precision, b] = (lambda c, b=b, pr=predictor: predict_batch(pr, c, b), text, chunk)
                cases["pipeline", precision, b] = (None, pipeline_call(pipe, precision, b), chunk)
                cases["pyfunc", precision, b] = (lambda c, f=pyfunc: f.predict(pd.DataFrame({"text": c})), None, chunk)

        print(f"torch {torch.__version__}, transformers {transformers.__version__}, {args.threads} threads, "
              f"cpu capability {torch.backends.cpu.get_cpu_capability()}; {len(texts)} SST-2 dev sentences at batch "
              f"{args.batch_size}, the first {args.batch1_rows} at batch 1; max |logit difference| ours vs "
              f"transformers (fp32) {diff:.2e}; load avg {os.getloadavg()[0]:.1f}", flush=True)
        results = time_cases(cases, args.repeats)
        rates = report(results, args)
        gates = gate_on_dev(predictors, texts, labels, args.margin)
        for precision, gate in gates.items():
            if precision != "fp32":
                print(f"gate {precision}: {gate.reason}")
        passed = [p for p in args.precisions if gates[p].passed]
        fastest = max(passed, key=lambda p: rates["pyfunc", p, args.batch_size])
        print(f"load avg at the end {os.getloadavg()[0]:.1f}; fastest precision that passed the gate: {fastest}")
        speedup = rates["pyfunc", fastest, args.batch_size] / rates["pyfunc", "fp32", args.batch_size]
        print(f"serving_speedup={speedup:.2f}")


def predict_batch(predictor, chunk: list[str], batch_size: int):
    predictor.batch_size = batch_size
    return predictor.predict([{"text_a": t} for t in chunk])


def time_cases(cases: dict, repeats: int) -> dict[tuple, list]:
    """(what, precision, batch, side) -> [(total s, per-call s)] per repeat; ours then the peer, interleaved."""
    results: dict[tuple, list] = {}
    for _ in range(repeats):
        for (name, precision, b), (mine, theirs, chunks) in cases.items():
            for side, fn in (("ours", mine), ("transformers", theirs)):
                if fn is None:
                    continue
                fn(chunks[0])  # warm-up call
                results.setdefault((name, precision, b, side), []).append(timed_calls(fn, chunks))
    return results


def report(results: dict[tuple, list], args) -> dict[tuple, float]:
    """Print a row per (what, precision, batch, side); returns ours' median examples/s by (what, precision, batch)."""
    print(f"\n{'what':<10}{'precision':>10}{'batch':>6}{'side':>14}{'ex/s med [best]':>20}{'p50 ms':>9}{'p99 ms':>9}")
    medians = {}
    for (name, precision, b, side), runs in sorted(results.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][1])):
        n = args.batch1_rows if b == 1 else args.rows
        rates = [n / total for total, _ in runs]
        calls = sorted(c for _, per_call in runs for c in per_call)
        p50, p99 = (1000 * calls[int(q * (len(calls) - 1))] for q in (0.5, 0.99))
        if side == "ours":
            medians[name, precision, b] = statistics.median(rates)
        print(f"{name:<10}{precision:>10}{b:>6}{side:>14}{f'{statistics.median(rates):.1f} [{max(rates):.1f}]':>20}"
              f"{p50:>9.1f}{p99:>9.1f}")
    return medians


if __name__ == "__main__":
    main()
