"""Inference speed of a fine-tuned classifier: our eval loop, ``Predictor`` and MLflow pyfunc vs ``transformers``
in inference mode with the same batching, at batch 1 and batch 64, in one process and one run.

    python bench/inference_vs_hf.py [--rows 872] [--batch1-rows 200] [--threads 2] [--precision fp32] [--repeats 3]

The model: the packaged all-MiniLM-L6-v2 with a fresh SST-2 head (seed 0; the speed of a fine-tuned model),
saved by ``save_finetuned``; the peer is ``BertForSequenceClassification`` from the same checkpoint with our
head's weights copied in, so both compute the same logits (checked). Inputs: SST-2 dev sentences.

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


def sentences(n: int) -> list[str]:
    root = Path(os.environ.get("BERTFLOW_DATA_DIR") or REPO.parent / "shared" / "datasets")
    lines = (root / "SST-2" / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:]
    return [line.split("\t")[0] for line in lines if line.strip()][:n]


def build_models(folder: Path):
    """(our model dir, transformers model, transformers tokenizer): the same weights, the same head."""
    from transformers import BertForSequenceClassification, BertTokenizerFast
    from transformers import logging as hf_logging

    from bert_core import get_family, load_pretrained, save_finetuned
    from bert_core.checkpoint import resolve_source

    torch.manual_seed(0)
    encoder, tokenizer = load_pretrained(None)
    model = get_family("single_classification").build_model(encoder, ["0", "1"]).eval()
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
    return mlflow.pyfunc.load_model(info.model_uri)


def timed_calls(fn, chunks) -> tuple[float, list[float]]:
    """(total seconds, per-call seconds) of ``fn(chunk)`` over the chunks."""
    per_call = []
    for chunk in chunks:
        start = time.perf_counter()
        fn(chunk)
        per_call.append(time.perf_counter() - start)
    return sum(per_call), per_call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=872, help="SST-2 dev sentences for batch 64 (default all 872)")
    parser.add_argument("--batch1-rows", type=int, default=200, help="sentences sent one at a time (default 200)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import pandas as pd
    import transformers

    from bert_core.predict import Predictor
    from bert_core.training.batching import eval_batches, make_batch
    from bert_core.training.inference import autocast, predict_logits

    texts = sentences(args.rows)
    with tempfile.TemporaryDirectory(prefix="inference-bench-") as tmp:
        model_dir, peer, hf_tokenizer = build_models(Path(tmp))
        pyfunc = log_pyfunc(model_dir, Path(tmp))
        predictors = {b: Predictor(model_dir, batch_size=b, precision=args.precision) for b in (1, args.batch_size)}
        ours = predictors[1].model
        rows = [{"text_a": t} for t in texts]
        features = predictors[1].family.features.build(rows, predictors[1].tokenizer, ["0", "1"], {"max_seq_length": 128})
        pad = predictors[1].tokenizer.pad_id
        pipe = transformers.pipeline("text-classification", model=peer, tokenizer=hf_tokenizer, device="cpu",
                                     truncation=True, max_length=128)

        def peer_forward(batch_size):
            def run(feats):
                out = []
                lengths = [len(f["input_ids"]) for f in feats]
                with torch.inference_mode(), autocast(args.precision, torch.device("cpu")):
                    for idx in eval_batches(lengths, batch_size):
                        out.append(peer(**make_batch(feats, idx, pad, ("input_ids", "token_type_ids", "attention_mask"))).logits)
                return out
            return run

        def peer_text(batch_size):
            def run(chunk):
                order = sorted(range(len(chunk)), key=lambda i: -len(chunk[i]))  # as ours: longest first
                labels = [None] * len(chunk)
                with torch.inference_mode(), autocast(args.precision, torch.device("cpu")):
                    for s in range(0, len(order), batch_size):
                        idx = order[s:s + batch_size]
                        enc = hf_tokenizer([chunk[i] for i in idx], padding=True, truncation=True, max_length=128,
                                           return_tensors="pt")
                        probs = peer(**enc).logits.float().softmax(-1)
                        for i, p in zip(idx, probs.tolist(), strict=True):
                            labels[i] = (int(np.argmax(p)), p)
                return labels
            return run

        # Same logits from both models on the same batch: the comparison is of the same computation.
        check = make_batch(features, list(range(min(16, len(features)))), pad, ("input_ids", "token_type_ids",
                                                                                "attention_mask"))
        with torch.no_grad():
            diff = (ours(**check).logits - peer(**check).logits).abs().max().item()
        if diff > 1e-3:
            raise SystemExit(f"our logits differ from transformers' by {diff}: not the same computation")

        b1 = args.batch1_rows
        cases = {  # name -> (ours, peer, chunks of the work)
            "forward": {},
            "text": {},
            "pipeline": {},
            "pyfunc": {},
        }
        for b, n in ((1, b1), (args.batch_size, len(texts))):
            feats, sub = features[:n], texts[:n]
            chunk = [sub[i:i + b] for i in range(0, n, b)]
            fchunk = [feats[i:i + b] for i in range(0, n, b)]
            cases["forward"][b] = (lambda fs, b=b: predict_logits(ours, fs, pad, b, args.precision), peer_forward(b), fchunk)
            cases["text"][b] = (lambda c, b=b: predictors[b].predict([{"text_a": t} for t in c]), peer_text(b), chunk)
            cases["pipeline"][b] = (None, lambda c, b=b: pipe(c, batch_size=b), chunk)
            cases["pyfunc"][b] = (lambda c: pyfunc.predict(pd.DataFrame({"text": c})), None, chunk)

        print(f"torch {torch.__version__}, transformers {transformers.__version__}, {args.threads} threads, "
              f"{args.precision}; {len(texts)} SST-2 dev sentences at batch {args.batch_size}, the first {b1} at batch "
              f"1; max |logit difference| ours vs transformers {diff:.2e}; load avg {os.getloadavg()[0]:.1f}", flush=True)
        results: dict[tuple, list] = {}
        for _ in range(args.repeats):
            for name, by_batch in cases.items():
                for b, (mine, theirs, chunks) in by_batch.items():
                    for side, fn in (("ours", mine), ("transformers", theirs)):
                        if fn is None:
                            continue
                        fn(chunks[0])  # warm-up call
                        results.setdefault((name, b, side), []).append(timed_calls(fn, chunks))
        print(f"\n{'what':<10}{'batch':>6}{'side':>14}{'ex/s med [best]':>20}{'p50 ms':>9}{'p99 ms':>9}")
        for (name, b, side), runs in results.items():
            n = b1 if b == 1 else len(texts)
            rates = [n / total for total, _ in runs]
            calls = sorted(c for _, per_call in runs for c in per_call)
            p50, p99 = (1000 * calls[int(q * (len(calls) - 1))] for q in (0.5, 0.99))
            lat = f"{p50:>9.1f}{p99:>9.1f}" if b == 1 else f"{'':>9}{'':>9}"
            print(f"{name:<10}{b:>6}{side:>14}{f'{statistics.median(rates):.1f} [{max(rates):.1f}]':>20}{lat}")
        print(f"load avg at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
