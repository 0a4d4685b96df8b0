"""A bounded loopback load against a served bertflow pyfunc: errors, p50/p99 latency, requests per second.

    # serve the packaged MiniLM with a fresh SST-2 head, then 1,000 one-sentence requests, 4 at a time
    python bench/serving_load.py --serve --requests 1000 --concurrency 4
    # the same against the same model served through MLflow's transformers flavor (the peer), one after the other
    python bench/serving_load.py --serve --peer --requests 1000 --concurrency 1
    # or load a server that is already running (`mlflow models serve -m models:/bert-sst2@champion ...`)
    python bench/serving_load.py --url http://127.0.0.1:5000 --requests 1000 --concurrency 4

`--serve` needs no data and no training: the real MiniLM weights with a fresh classification head have
the latency of a fine-tuned model (same encoder, same head shape). The model is logged through
`tracking.packaging.log_model`, registered in a throw-away sqlite store and served by
`mlflow models serve --env-manager local` on 127.0.0.1, exactly as users serve a registered version.
Request texts are SST-2 dev sentences when $BERTFLOW_DATA_DIR (or ../shared/datasets) has them, else a
fixed list; one sentence per request, like an online caller. Standard library only (threads + urllib).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FALLBACK_SENTENCES = [
    "a gripping , beautifully shot film .", "the plot is thin and the jokes fall flat .",
    "it 's a charming and often affecting journey .", "unfunny and lame .",
    "one of the most original american productions this year , you 'll find yourself remembering this refreshing "
    "visit to a sunshine state .", "the acting , costumes , music , cinematography and sound are all astounding "
    "given the production 's austere locales .", "too long , too loud , and too often dull .", "a masterpiece .",
]


@dataclass
class LoadResult:
    requests: int
    concurrency: int
    seconds: float
    latencies_ms: list[float] = field(repr=False)
    errors: Counter  # "HTTP 500: <message start>" / "URLError: ..." -> count

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def percentile(self, q: float) -> float:
        """Latency percentile in ms, nearest-rank over all requests (failed ones included)."""
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]

    def summary(self) -> dict:
        return {"requests": self.requests, "concurrency": self.concurrency, "errors": self.error_count,
                "p50_ms": round(self.percentile(50), 1), "p90_ms": round(self.percentile(90), 1),
                "p99_ms": round(self.percentile(99), 1), "max_ms": round(max(self.latencies_ms), 1),
                "mean_ms": round(statistics.fmean(self.latencies_ms), 1),
                "requests_per_second": round(self.requests / self.seconds, 2), "seconds": round(self.seconds, 1)}


def sentences(limit: int = 200) -> list[str]:
    """SST-2 dev sentences if the shared data is there, else FALLBACK_SENTENCES."""
    root = Path(os.environ.get("BERTFLOW_DATA_DIR") or REPO.parent / "shared" / "datasets")
    dev = root / "SST-2" / "dev.tsv"
    if dev.is_file():
        lines = dev.read_text(encoding="utf-8").splitlines()[1:]
        found = [line.split("\t")[0] for line in lines if line.strip()][:limit]
        if found:
            return found
    return FALLBACK_SENTENCES


def post(url: str, body: bytes, timeout: float = 60) -> tuple[int, bytes]:
    """POST JSON to `url`; (HTTP status, body). Connection failures raise OSError."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def run_load(base_url: str, bodies: list[bytes], requests: int, concurrency: int, timeout: float = 60) -> LoadResult:
    """`requests` POSTs to `<base_url>/invocations`, cycling through `bodies`, `concurrency` in flight."""
    url = base_url.rstrip("/") + "/invocations"
    latencies = [0.0] * requests
    errors: Counter = Counter()
    lock = threading.Lock()

    def one(i: int) -> None:
        start = time.perf_counter()
        try:
            status, body = post(url, bodies[i % len(bodies)], timeout)
            problem = None if status == 200 and b'"predictions"' in body else f"HTTP {status}: {body[:120]!r}"
        except OSError as err:  # refused, reset, timed out
            problem = f"{type(err).__name__}: {err}"
        latencies[i] = (time.perf_counter() - start) * 1000
        if problem:
            with lock:
                errors[problem] += 1

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(one, range(requests)))
    return LoadResult(requests, concurrency, time.perf_counter() - start, latencies, errors)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(model_uri: str, tracking_uri: str, log_path: Path, workers: int = 1,
          startup_timeout: float = 300) -> Iterator[tuple[str, subprocess.Popen]]:
    """`mlflow models serve -m <model_uri> --env-manager local` on 127.0.0.1:<free port>; yields
    (base URL, process) once /ping answers, and stops the server (its process group) on exit."""
    bin_dir = str(Path(sys.executable).parent)  # `mlflow` and the `uvicorn` it execs live next to python
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_REGISTRY_URI": tracking_uri,
           "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    port = free_port()
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [str(Path(bin_dir) / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local",
             "-h", "127.0.0.1", "-p", str(port), "-w", str(workers)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + startup_timeout
            while not ping(base):
                if server.poll() is not None:
                    raise RuntimeError(f"mlflow models serve exited with {server.returncode}:\n"
                                       f"{Path(log_path).read_text()[-3000:]}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"mlflow models serve did not answer /ping in {startup_timeout:.0f} s")
                time.sleep(0.5)
            yield base, server
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGTERM)  # the server and its uvicorn workers, started above
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(30)


def ping(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(base_url + "/ping", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def register_minilm(folder: Path) -> tuple[str, str]:
    """The packaged MiniLM + a fresh SST-2 head, logged and registered in a sqlite store under `folder`;
    returns (models:/ URI, tracking URI)."""
    sys.path.insert(0, str(REPO))
    import mlflow
    import torch

    from bert_core import get_family, load_pretrained, save_finetuned
    from tracking.packaging import log_model
    from tracking.store import configure_tracking

    uri = configure_tracking(f"sqlite:///{folder / 'mlflow.db'}")
    # Artifacts under `folder` too: with a sqlite store MLflow would otherwise write ./mlruns.
    experiment_id = mlflow.create_experiment("serving-load", (folder / "artifacts").as_uri())
    torch.manual_seed(0)
    encoder, tokenizer = load_pretrained(None)
    model = get_family("single_classification").build_model(encoder, ["0", "1"]).eval()
    meta = {"family": "single_classification", "label_names": ["0", "1"], "task": "sst2", "max_seq_length": 128}
    model_dir = save_finetuned(model, tokenizer, folder / "model", meta)
    with mlflow.start_run(experiment_id=experiment_id, run_name="serving-load"):
        info = log_model(model_dir, "single_classification", [{"text_a": s, "text_b": None} for s in sentences(3)],
                         registered_model_name="bert-serving-load")
    return f"models:/bert-serving-load/{info.registered_model_version}", uri


def register_transformers_peer(folder: Path) -> tuple[str, str]:
    """The peer: the same MiniLM as a transformers text-classification pipeline, logged with MLflow's own
    transformers flavor (how one serves a Hugging Face model with MLflow) and registered in a sqlite store under
    `folder`; returns (models:/ URI, tracking URI)."""
    sys.path.insert(0, str(REPO))
    import mlflow
    import torch
    import transformers

    from bert_core.checkpoint import resolve_source
    from tracking.store import configure_tracking

    uri = configure_tracking(f"sqlite:///{folder / 'mlflow.db'}")
    experiment_id = mlflow.create_experiment("serving-load-peer", (folder / "artifacts").as_uri())
    torch.manual_seed(0)
    source = str(resolve_source(None))
    transformers.logging.set_verbosity_error()
    pipe = transformers.pipeline(
        "text-classification", device="cpu",
        model=transformers.BertForSequenceClassification.from_pretrained(source, num_labels=2),
        tokenizer=transformers.BertTokenizerFast.from_pretrained(source))
    with mlflow.start_run(experiment_id=experiment_id, run_name="serving-load-peer"):
        # Requirements given: inferring them asks for torchvision, which a text model does not need.
        info = mlflow.transformers.log_model(pipe, name="model", registered_model_name="hf-serving-load",
                                             input_example=sentences(3), pip_requirements=["torch", "transformers"])
    return f"models:/hf-serving-load/{info.registered_model_version}", uri


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="base URL of a running scoring server, e.g. http://127.0.0.1:5000")
    where.add_argument("--serve", action="store_true", help="serve the packaged MiniLM with a fresh head first")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=20, help="requests sent (and not counted) before timing")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers with --serve")
    parser.add_argument("--peer", action="store_true", help="with --serve: then the same load against the same "
                        "model as a transformers pipeline served through MLflow's transformers flavor")
    args = parser.parse_args(argv)
    bodies = [json.dumps({"dataframe_records": [{"text": s}]}).encode() for s in sentences()]

    def measure(base: str, side: str = "bertflow", bodies: list[bytes] = bodies) -> None:
        run_load(base, bodies, args.warmup, args.concurrency)
        load_before = os.getloadavg()
        result = run_load(base, bodies, args.requests, args.concurrency)
        report = {"side": side, **result.summary(), "cpus": os.cpu_count(),
                  "loadavg_1min_before_after": [round(load_before[0], 1), round(os.getloadavg()[0], 1)]}
        print(json.dumps(report))
        for problem, count in result.errors.most_common(5):
            print(f"  {count} x {problem}", file=sys.stderr)

    if args.url:
        measure(args.url)
        return
    with tempfile.TemporaryDirectory(prefix="serving-load-") as tmp:
        model_uri, tracking_uri = register_minilm(Path(tmp))
        with serve(model_uri, tracking_uri, Path(tmp) / "serve.log", workers=args.workers) as (base, _):
            measure(base)
    if args.peer:
        with tempfile.TemporaryDirectory(prefix="serving-load-peer-") as tmp:
            model_uri, tracking_uri = register_transformers_peer(Path(tmp))
            with serve(model_uri, tracking_uri, Path(tmp) / "serve.log", workers=args.workers) as (base, _):
                # The flavor's signature is a list of strings (its input example): the same sentence, in that form.
                measure(base, "transformers flavor", [json.dumps({"inputs": [s]}).encode() for s in sentences()])


if __name__ == "__main__":
    main()
