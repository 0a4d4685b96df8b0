"""What bertflow guarantees about untrusted weights, untrusted specs and secrets.

- Weights: safetensors, or `torch.load(..., weights_only=True)`; a pickle that runs code is refused before
  it runs (load_pretrained and resumable checkpoints), and no torch.load / pickle.load in the package
  lacks the guard (AST scan).
- Spec paths are resolved against the data root and cannot leave it lexically (absolute, drive, `..`,
  backslashes); a symlink under it leads out of it only when the data root's owner made it; spec and
  split names cannot leave the run folder.
- Secrets: with tokens and passwords in the environment and a password in the tracking URI parameter,
  nothing in the MLflow run (params, tags, metrics, artifacts), the registered version or the logged
  model holds them.
"""

from __future__ import annotations

import ast
import os
import pickle
import textwrap
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings
from prefect.testing.utilities import prefect_test_harness
from pydantic import ValidationError
from safetensors.torch import save_file

from bert_core import BertConfig, BertEncoder, get_family, load_pretrained
from bert_core.loading import load_task_data
from bert_core.spec import SpecError, load_spec
from bert_core.training import TrainConfig
from bert_core.training.optim import build_optimizer
from bert_core.training.state import load_checkpoint
from bert_core.validation import DataError
from flows.finetune import finetune
from flows.params import FinetuneParams
from tasks.data import download
from tests.tiny_models import TINY, write_tiny_checkpoint
from tests.toy_task import write_toy_task
from tests.tracking.test_tracking_failures import MlflowServer

REPO = Path(__file__).resolve().parents[2]
pytest.importorskip("transformers")


# ---------------------------------------------------------------- weights

class RunsCode:
    """Unpickling this creates a folder: a stand-in for any code an attacker could run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_the_payload_is_live_when_weights_only_is_off(tmp_path):
    """Control: the malicious file really runs code when loaded the unsafe way."""
    torch.save(RunsCode(tmp_path / "pwned"), tmp_path / "evil.bin")
    torch.load(tmp_path / "evil.bin", weights_only=False)
    assert (tmp_path / "pwned").is_dir()


def test_a_pickled_object_in_pytorch_model_bin_is_refused(tmp_path):
    folder = write_tiny_checkpoint(tmp_path / "ckpt", safetensors=False)
    assert load_pretrained(folder)[0] is not None, "a plain state dict in pytorch_model.bin loads"
    torch.save({"embeddings.word_embeddings.weight": RunsCode(tmp_path / "pwned")}, folder / "pytorch_model.bin")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_pretrained(folder)
    assert not (tmp_path / "pwned").exists(), "the payload never ran"


def test_safetensors_win_over_a_bin_next_to_them(tmp_path):
    folder = write_tiny_checkpoint(tmp_path / "ckpt")
    torch.save(RunsCode(tmp_path / "pwned"), folder / "pytorch_model.bin")
    load_pretrained(folder)
    assert not (tmp_path / "pwned").exists()


def test_a_tampered_resumable_checkpoint_is_refused(tmp_path):
    model = get_family("single_classification").build_model(BertEncoder(BertConfig(**TINY)), ["a", "b"])
    optimizer = build_optimizer(model, 1e-3, 0.01)
    step = tmp_path / "checkpoints" / "step-000004"
    step.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(step / "model.safetensors"))
    torch.save({"optimizer": RunsCode(tmp_path / "pwned"), "torch_rng": torch.get_rng_state()}, step / "trainer.pt")
    (step / "state.json").write_text('{"step": 4}')
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_checkpoint(step, model, optimizer)
    assert not (tmp_path / "pwned").exists()


UNSAFE_LOADERS = {"pickle.load", "pickle.loads", "cloudpickle.load", "cloudpickle.loads", "dill.load", "dill.loads",
                  "joblib.load", "torch.jit.load", "torch.package.PackageImporter"}


def test_no_unguarded_torch_load_or_pickle_load_in_the_package():
    """AST scan of bert_core, tasks, flows and launcher: every torch.load passes weights_only=True literally, and no
    pickle-family loader is called or imported (MLflow's own cloudpickle of the pyfunc is MLflow's)."""
    torch_loads, problems = 0, []
    for path in sorted(p for pkg in ("bert_core", "tasks", "flows", "launcher") for p in (REPO / pkg).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            where = f"{path.relative_to(REPO)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.ImportFrom) and node.module in ("pickle", "cloudpickle", "dill", "joblib"):
                problems.append(f"{where}: from {node.module} import ...")
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            if name == "torch.load":
                torch_loads += 1
                guard = next((k.value for k in node.keywords if k.arg == "weights_only"), None)
                if not (isinstance(guard, ast.Constant) and guard.value is True):
                    problems.append(f"{where}: torch.load without weights_only=True")
            elif name in UNSAFE_LOADERS:
                problems.append(f"{where}: {name}")
            elif name in ("np.load", "numpy.load") and any(k.arg == "allow_pickle" for k in node.keywords):
                problems.append(f"{where}: {name}(allow_pickle=...)")
    assert torch_loads >= 2, "the scan found the known torch.load calls (checkpoint.py, training/state.py)"
    assert not problems, problems


# ---------------------------------------------------------------- spec paths

SPEC = """
    name: {name}
    family: single_classification
    local:
      format: tsv
      files: {{train: {train}, eval: data/dev.tsv}}{extra}
    columns: {{text_a: sentence, label: label}}
    labels: ["0", "1"]
    metrics: [accuracy]
    primary_metric: accuracy
"""
TSV = "sentence\tlabel\na good film\t1\na dull plot\t0\n"


def write_task(root: Path, name="paths", train="data/train.tsv", extra="") -> Path:
    (root / "data").mkdir(parents=True, exist_ok=True)
    for file in ("train.tsv", "dev.tsv"):
        (root / "data" / file).write_text(TSV)
    spec = root / "spec.yaml"
    spec.write_text(textwrap.dedent(SPEC.format(name=name, train=train, extra=extra)))
    return spec


@pytest.mark.parametrize("path", ["/etc/passwd", "../outside.tsv", "data/../../outside.tsv", "data/./../../x.tsv",
                                  "..\\outside.tsv", "data\\..\\..\\x.tsv", "C:\\data\\train.tsv", "C:train.tsv",
                                  "\\\\server\\share\\train.tsv", " "])
def test_spec_paths_cannot_leave_the_data_root(tmp_path, path):
    with pytest.raises(SpecError, match="local.files.train"):
        load_spec(write_task(tmp_path, train=f"'{path}'"))


def test_eval_extra_paths_cannot_leave_the_data_root(tmp_path):
    with pytest.raises(SpecError, match=r"local\.eval_extra\.test"):
        load_spec(write_task(tmp_path, extra="\n      eval_extra: {test: ../../etc/passwd}"))


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", ".hidden", "a\\b", ""])
def test_a_spec_name_cannot_leave_the_run_root(tmp_path, name):
    # run folders are <run_root>/<spec name>/<run>: the name is one plain path segment
    with pytest.raises(SpecError, match="field 'name'"):
        load_spec(write_task(tmp_path, name=f"'{name}'"))


def _link_out(tmp_path, link: str):
    """A data root whose train file is reached through a symlink (to the file, or to its folder) that leads
    out of the root, to a file holding 'the shared row'. Returns (spec, root, the link)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "train.tsv").write_text(TSV.replace("a good film", "the shared row"))
    root = tmp_path / "root"
    spec = write_task(root)
    (root / "data" / "train.tsv").unlink()
    if link == "file":
        made = root / "data" / "train.tsv"
        made.symlink_to(outside / "train.tsv")
    else:
        made = root / "data" / "sub"
        made.symlink_to(outside, target_is_directory=True)
        spec = write_task(root, train="data/sub/train.tsv")
    return spec, root, made


@pytest.mark.parametrize("link", ["file", "folder"])
def test_the_data_root_owners_symlinks_are_followed_out_of_the_root(tmp_path, link):
    """A data root assembled from links to shared storage: links its owner made are followed."""
    spec, root, _ = _link_out(tmp_path, link)
    assert "the shared row" in load_task_data(spec, root).splits["train"]["text_a"]


@pytest.mark.parametrize("link", ["file", "folder"])
def test_a_symlink_someone_else_made_cannot_lead_out_of_the_data_root(tmp_path, link):
    if os.geteuid() != 0:
        pytest.fail("making a symlink owned by another user needs root; run the security tests as root (CI does)")
    spec, root, made = _link_out(tmp_path, link)
    os.lchown(made, 65534, 65534)  # nobody: another user of a shared, writable data root
    with pytest.raises(DataError) as refused:
        load_task_data(spec, root)
    message = str(refused.value)
    assert f"goes through the symlink {made}" in message and "out of the data root" in message
    assert "not by the data root's owner user 'root'" in message and "copy the file into the data root" in message


@pytest.mark.parametrize("split", ["../../escaped", "ABSOLUTE"])
def test_a_split_name_cannot_write_outside_the_run_folder(tmp_path, split):
    target = tmp_path / "outside" / "escaped" if split == "ABSOLUTE" else None
    name = str(target) if target else split
    spec_path = write_task(tmp_path / "root", extra=f"\n      eval_extra: {{'{name}': data/dev.tsv}}")
    try:
        spec = load_spec(spec_path)
    except SpecError:
        return  # refused at the spec: the guarantee holds
    run_dir = tmp_path / "runs" / "paths" / "run-1"
    run_dir.mkdir(parents=True)
    before = {p for p in tmp_path.rglob("*")}
    download.fn(spec, str(run_dir), str(tmp_path / "root"))
    written = {p for p in tmp_path.rglob("*") if p.is_file()} - before
    outside = sorted(str(p.relative_to(tmp_path)) for p in written if not p.is_relative_to(run_dir))
    assert not outside, f"wrote outside the run folder: {outside[:3]}"


# ---------------------------------------------------------------- secrets

SECRETS = {  # environment variables a CI machine or a laptop typically holds
    "HF_TOKEN": "hf_SeCrEtToKeN0123456789abcdef",
    "MLFLOW_TRACKING_USERNAME": "bertflow",
    "MLFLOW_TRACKING_PASSWORD": "mlflow-Pa55word-xyz",
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY",
    "OPENAI_API_KEY": "sk-proj-ThisIsNotARealKey0123",
}
URI_PASSWORD = "hunter2-in-the-uri"


@pytest.fixture(scope="module")
def secrets_env(tmp_path_factory):
    """Secrets in the environment, a real `mlflow server` (it ignores credentials), the Prefect harness,
    toy data and a tiny checkpoint; `params(uri)` builds a one-epoch fine-tune against `uri`."""
    root = tmp_path_factory.mktemp("secrets")
    server = MlflowServer(root / "server").start()
    spec, pretrained = write_toy_task(root / "data"), write_tiny_checkpoint(root / "tiny")

    def params(uri: str | None, run_root: str, **fields) -> FinetuneParams:
        defaults = {"task": str(spec), "data_dir": str(root / "data"), "pretrained": str(pretrained),
                    "training": TrainConfig(batch_size=16, epochs=1, progress_bar=False, log_every=1)}
        return FinetuneParams(**{**defaults, **fields, "tracking_uri": uri, "run_root": str(root / run_root)})

    with pytest.MonkeyPatch.context() as mp:
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
            mp.delenv(name, raising=False)
        for name, value in SECRETS.items():
            mp.setenv(name, value)
        mp.setenv("BERTFLOW_HOME", str(root / "home"))
        mp.setenv("BERTFLOW_CACHE_DIR", str(root / "features"))
        try:
            with prefect_test_harness(server_startup_timeout=180), \
                    temporary_settings({PREFECT_LOCAL_STORAGE_PATH: root / "prefect-results"}):
                yield {"root": root, "server": server, "client": MlflowClient(server.uri), "params": params,
                       "uri_with_password": server.uri.replace("http://", f"http://bertflow:{URI_PASSWORD}@")}
        finally:
            server.kill()
            mlflow.set_tracking_uri(None)
            mlflow.set_registry_uri(None)


@pytest.fixture(scope="module")
def secret_run(secrets_env):
    """One tiny fine-tune with the secrets in the environment."""
    return finetune(secrets_env["params"](secrets_env["server"].uri, "runs"))


def leaks(text: str) -> list[str]:
    return [name for name, value in {**SECRETS, "uri password": URI_PASSWORD}.items()
            if name != "MLFLOW_TRACKING_USERNAME" and value in text]


def mlflow_texts(client: MlflowClient, summary: dict, download_to: Path) -> dict[str, str]:
    """Everything MLflow holds about one flow run, as text: run, experiment, registry, logged model, artifacts."""
    run = client.get_run(summary["mlflow_run_id"])
    texts = {
        "params": repr(sorted(run.data.params.items())), "tags": repr(sorted(run.data.tags.items())),
        "metric names": repr(sorted(run.data.metrics)), "run info": repr(run.info),
        "experiment": repr(client.get_experiment(run.info.experiment_id)), "flow summary": repr(summary),
    }
    version = client.get_model_version(summary["model_name"], summary["model_version"])
    texts["model version"] = repr(version) + repr(version.tags)
    texts["registered model"] = repr(client.get_registered_model(summary["model_name"]))
    for model in client.search_logged_models(experiment_ids=[run.info.experiment_id]):
        texts[f"logged model {model.model_id}"] = repr(model) + repr(model.params) + repr(model.tags)
    mlflow.set_tracking_uri(client.tracking_uri)  # download_artifacts reads the global URI
    for folder in (mlflow.artifacts.download_artifacts(run_id=run.info.run_id, dst_path=str(download_to / "run")),
                   mlflow.artifacts.download_artifacts(summary["model_uri"], dst_path=str(download_to / "model"))):
        for path in Path(folder).rglob("*"):
            if path.is_file():
                texts[str(path.relative_to(download_to))] = path.read_bytes().decode("latin-1")
    return texts


@pytest.mark.slow
def test_no_secret_in_the_run_the_registry_or_the_logged_model(secrets_env, secret_run, tmp_path):
    texts = mlflow_texts(secrets_env["client"], secret_run, tmp_path)
    assert secrets_env["client"].get_run(secret_run["mlflow_run_id"]).data.params["training.epochs"] == "1.0"
    assert sum(1 for k in texts if k.startswith(("run/", "model/"))) > 10, "artifacts were downloaded and searched"
    found = {where: leaks(text) for where, text in texts.items() if leaks(text)}
    assert not found, found


@pytest.mark.slow
def test_no_secret_in_the_run_folder(secrets_env, secret_run):
    found = {str(p): leaks(p.read_bytes().decode("latin-1"))
             for p in Path(secret_run["run_dir"]).rglob("*") if p.is_file()}
    assert not {k: v for k, v in found.items() if v}


@pytest.mark.slow
def test_a_secret_echoed_by_an_error_is_masked_in_the_failed_run(secrets_env, tmp_path):
    """A data error quotes the bad value; when that value is a secret from the environment, the `error`
    tag and error.txt of the FAILED run show *** instead."""
    spec = write_toy_task(tmp_path / "data")
    train = tmp_path / "data" / "toy" / "train.tsv"
    train.write_text(train.read_text() + f"the film was good\t{SECRETS['HF_TOKEN']}\n")
    state = finetune(secrets_env["params"](secrets_env["server"].uri, "runs-failed", task=str(spec),
                                           data_dir=str(tmp_path / "data")), return_state=True)
    assert state.is_failed()
    client = secrets_env["client"]
    runs = client.search_runs([client.get_experiment_by_name("bertflow-toy_sentiment").experiment_id],
                              "attributes.status = 'FAILED'")
    failed = [r for r in runs if "toy/train.tsv:66" in r.data.tags.get("error", "")]
    assert len(failed) == 1, [r.data.tags.get("error") for r in runs]
    tag = failed[0].data.tags["error"]
    assert "field 'label': got '***'" in tag and not leaks(tag), tag
    error_txt = mlflow.artifacts.load_text(f"{failed[0].info.artifact_uri}/error.txt")
    assert "toy/train.tsv:66" in error_txt and not leaks(error_txt)


@pytest.mark.slow
def test_a_password_in_the_tracking_uri_works_and_leaks_nowhere(secrets_env, tmp_path, capfd, monkeypatch):
    # Through MLFLOW_TRACKING_URI, which stays out of Prefect's parameters (see the next test).
    monkeypatch.setenv("MLFLOW_TRACKING_URI", secrets_env["uri_with_password"])
    # `force`: the same fine-tune as secret_run's, which must train and register again through this URI.
    state = finetune(secrets_env["params"](None, "runs-uri", force=True), return_state=True)
    assert state.is_completed(), state.result(raise_on_failure=False)
    summary = state.result()
    found = {where: leaks(text) for where, text in mlflow_texts(secrets_env["client"], summary, tmp_path).items()
             if leaks(text)}
    out, err = capfd.readouterr()
    assert not found and not leaks(out + err), (found, [line for line in (out + err).splitlines() if leaks(line)][:3])


@pytest.mark.slow
def test_no_password_in_the_prefect_flow_run_parameters(secrets_env):
    try:
        params = secrets_env["params"](secrets_env["uri_with_password"], "runs-prefect")
    except ValidationError as refused:  # refusing passwords in the parameter keeps the guarantee too
        assert "MLFLOW_TRACKING_PASSWORD" in str(refused) and not leaks(str(refused)), refused
        return
    state = finetune(params, return_state=True)
    with get_client(sync_client=True) as prefect:
        stored = prefect.read_flow_run(state.state_details.flow_run_id).parameters
    assert "tracking_uri" in repr(stored), "read the stored parameters"
    assert not leaks(repr(stored)), stored
