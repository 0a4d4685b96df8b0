"""Batch scoring (`bertflow-score`, `bertflow score`): a tiny model per family, logged with
`tracking.packaging.log_model` and registered, scores files cut from the real benchmark data in every format a
spec reads; its predictions must be what the logged pyfunc itself returns for the same rows, in order. Bad
rows are listed, not dropped; an alias is pinned to one version for the whole run; the folder mode scores
only what the pinned version has not scored; a model fine-tuned on a spec reads files in that spec's own column
names; and `bertflow score` runs as a real process."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from bert_core import BertConfig, BertEncoder, BertTokenizer, get_family, load_finetuned, save_finetuned
from bert_core.spec import load_spec
from bert_core.training import TrainConfig, fit_task
from bert_core.training.features import spec_columns
from bert_core.validation import DataError
from flows.cli import main
from flows.params import ScoreParams
from flows.score import score
from tests.conftest import REPO_ROOT
from tests.tiny_models import TINY, VOCAB, write_tiny_checkpoint
from tests.tracking.test_pyfunc import DISPLAY, EXAMPLE_ROWS, LABELS
from tracking import scoring
from tracking.packaging import log_model
from tracking.registry import register_version
from tracking.request_check import MAX_LONG_TEXT_CHARS, MAX_TEXT_CHARS
from tracking.request_file import detect_format, read_requests
from tracking.score_files import output_paths, scan_folder
from tracking.store import configure_tracking, experiment_for

NAMES = {family: "bert-score-" + family.replace("_", "-") for family in LABELS}
SINGLE, PAIR, REGRESSION, TAGGING, QA = LABELS  # the five families, in test_pyfunc's order


# ---- the models --------------------------------------------------------------------------------------
class Registry:
    """Registers tiny random models (save_finetuned -> log_model -> register_version) in the module's store."""

    def __init__(self, root: Path, uri: str):
        self.root, self.experiment = root, experiment_for("score-tests", uri)
        (root / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
        self.tokenizer = BertTokenizer.from_vocab(root / "vocab.txt")
        self.runs: dict[tuple[str, str], str] = {}  # (name, version) -> the run that logged it
        self.loaded: dict[str, mlflow.pyfunc.PyFuncModel] = {}

    def register(self, family: str, name: str, seed: int = 0, policy: str = "always") -> str:
        torch.manual_seed(seed)
        model = get_family(family).build_model(BertEncoder(BertConfig(**TINY)), LABELS[family]).eval()
        meta = {"family": family, "label_names": LABELS[family], "task": "demo", "max_seq_length": 128}
        if family == QA:
            meta |= {"doc_stride": 32, "max_answer_length": 10}
        if family == SINGLE:
            meta |= {"display_names": DISPLAY}
        return self.register_folder(save_finetuned(model, self.tokenizer, self.root / f"{name}-{seed}", meta),
                                    family, name, policy)

    def register_folder(self, folder: Path, family: str, name: str, policy: str = "always") -> str:
        """Log a saved fine-tuned model and register it as a new version of `name`; the version."""
        with mlflow.start_run(experiment_id=self.experiment) as run:
            info = log_model(folder, family, EXAMPLE_ROWS[family])
        version = register_version(info.model_uri, name, run.info.run_id, {"acc": 0.5}, "acc", "fp",
                                   policy=policy).version
        self.runs[(name, version)] = run.info.run_id
        return version

    def says(self, uri: str, requests: list[dict]) -> list[dict]:
        """What the logged pyfunc returns for these request rows, all in one call, as JSON values."""
        if uri not in self.loaded:
            self.loaded[uri] = mlflow.pyfunc.load_model(uri)
        return json.loads(self.loaded[uri].predict(pd.DataFrame(requests)).to_json(orient="records"))


@pytest.fixture(scope="module")
def registry(flow_root) -> Registry:
    """Version 1 (champion) of a tiny model per family, in the module's store (conftest's flow_root)."""
    (flow_root / "models").mkdir()
    models = Registry(flow_root / "models", configure_tracking())
    for family, name in NAMES.items():
        models.register(family, name)
    return models


def run_score(**params) -> dict:
    state = score(ScoreParams(**params), return_state=True)
    assert state.is_completed(), state.result(raise_on_failure=False)
    return state.result()


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def assert_same(lines: list[dict], expected: list[dict]) -> None:
    """Each line carries the pyfunc's response columns with its values (floats to the precision JSON keeps)."""
    assert len(lines) == len(expected)
    for line, want in zip(lines, expected, strict=True):
        for column, value in want.items():
            assert line[column] == (pytest.approx(value, rel=1e-6, abs=1e-9) if isinstance(value, float) else value), \
                (column, line, want)


# ---- files in every format, cut from the real data ------------------------------------------------------
def _tsv_head(data_dir: Path, rel: str, lines: int, out: Path) -> list[list[str]]:
    """The first `lines` lines of a real GLUE TSV copied byte for byte to `out`; its rows split on tabs."""
    raw = (data_dir / rel).read_bytes().split(b"\n")[:lines]
    out.write_bytes(b"\n".join(raw) + b"\n")
    return [line.decode("utf-8-sig").split("\t") for line in raw[1:]]


def sst2_tsv(data_dir, tmp):
    rows = _tsv_head(data_dir, "SST-2/dev.tsv", 31, tmp / "sst2_dev.tsv")
    return (SINGLE, tmp / "sst2_dev.tsv", {"columns": {"text": "sentence"}}, [{"text": r[0]} for r in rows],
            [f"sst2_dev.tsv:{n}" for n in range(2, 32)], None)


def reviews_csv(data_dir, tmp):
    """SST-2 sentences in a quoted CSV (commas and quotes inside fields) with an id column of another name."""
    sentences = [line.split("\t")[0] for line in (data_dir / "SST-2/dev.tsv").read_text("utf-8").splitlines()[40:60]]
    sentences[0] = 'he said, "fine", ' + sentences[0]
    with open(tmp / "reviews.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["review_id", "stars", "review"])
        writer.writerows([f"r{i}", 3, s] for i, s in enumerate(sentences))
    return (SINGLE, tmp / "reviews.csv", {"columns": {"text": "review", "id": "review_id"}},
            [{"text": s} for s in sentences], [f"reviews.csv:{n}" for n in range(2, 22)], [f"r{i}" for i in range(20)])


def stsb_tsv(data_dir, tmp):
    rows = _tsv_head(data_dir, "STS-B/dev.tsv", 26, tmp / "stsb_dev.tsv")
    return (REGRESSION, tmp / "stsb_dev.tsv", {"columns": {"text_a": "sentence1", "text_b": "sentence2"}},
            [{"text_a": r[7], "text_b": r[8]} for r in rows], [f"stsb_dev.tsv:{n}" for n in range(2, 27)], None)


def mrpc_tsv(data_dir, tmp):
    """MRPC's file starts with a UTF-8 byte-order mark."""
    rows = _tsv_head(data_dir, "MRPC/dev.tsv", 21, tmp / "mrpc_dev.tsv")
    return (PAIR, tmp / "mrpc_dev.tsv", {"columns": {"text_a": "#1 String", "text_pair": "#2 String"}},
            [{"text_a": r[3], "text_b": r[4]} for r in rows], [f"mrpc_dev.tsv:{n}" for n in range(2, 22)], None)


def _conll_sentences(data_dir: Path, lines: int) -> tuple[list[str], list[tuple[int, list[str]]]]:
    raw = (data_dir / "conll2003/eng.testa").read_text("utf-8").split("\n")[:lines]
    sentences, words, start = [], [], 0
    for n, line in enumerate([*raw, ""], start=1):
        if not line.split() or line.startswith("-DOCSTART-"):
            if words:
                sentences.append((start, words))
            words = []
            continue
        start = start if words else n
        words.append(line.split()[0])
    return raw, sentences


def conll_testa(data_dir, tmp):
    """A CoNLL file has no telling extension: the format is given."""
    raw, sentences = _conll_sentences(data_dir, 80)
    (tmp / "eng.testa").write_text("\n".join(raw) + "\n", encoding="utf-8")
    return (TAGGING, tmp / "eng.testa", {"input_format": "conll"}, [{"tokens": w} for _, w in sentences],
            [f"eng.testa:{start}" for start, _ in sentences], None)


def words_parquet(data_dir, tmp):
    _, sentences = _conll_sentences(data_dir, 120)
    pd.DataFrame({"sentence_id": [f"s{i}" for i in range(len(sentences))], "words": [w for _, w in sentences]}
                 ).to_parquet(tmp / "sentences.parquet")
    return (TAGGING, tmp / "sentences.parquet", {"columns": {"tokens": "words", "id": "sentence_id"}},
            [{"tokens": w} for _, w in sentences], [f"sentences.parquet:row {i}" for i in range(len(sentences))],
            [f"s{i}" for i in range(len(sentences))])


def squad_json(data_dir, tmp):
    """The official SQuAD layout (a `.json` holding an object), two paragraphs; one question without answers."""
    article = json.loads((data_dir / "squad_v1.1/dev-v1.1.json").read_text("utf-8"))["data"][0]
    article["paragraphs"] = article["paragraphs"][:2]
    del article["paragraphs"][0]["qas"][0]["answers"]
    (tmp / "squad_dev.json").write_text(json.dumps({"version": "1.1", "data": [article]}), encoding="utf-8")
    qas = [(j, k, p["context"], qa) for j, p in enumerate(article["paragraphs"]) for k, qa in enumerate(p["qas"])]
    return (QA, tmp / "squad_dev.json", {}, [{"question": qa["question"], "context": c} for _, _, c, qa in qas],
            [f"squad_dev.json:data[0].paragraphs[{j}].qas[{k}]" for j, k, _, _ in qas], [qa["id"] for *_, qa in qas])


def questions_jsonl(data_dir, tmp):
    article = json.loads((data_dir / "squad_v1.1/dev-v1.1.json").read_text("utf-8"))["data"][1]
    rows = [{"id": 100 + i, "question": qa["question"], "context": p["context"]}
            for i, (p, qa) in enumerate((p, qa) for p in article["paragraphs"][:2] for qa in p["qas"])]
    (tmp / "questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return (QA, tmp / "questions.jsonl", {}, [{"question": r["question"], "context": r["context"]} for r in rows],
            [f"questions.jsonl:{n}" for n in range(1, len(rows) + 1)], [str(r["id"]) for r in rows])


CASES = {f.__name__: f for f in (sst2_tsv, reviews_csv, stsb_tsv, mrpc_tsv, conll_testa, words_parquet, squad_json,
                                 questions_jsonl)}


@pytest.mark.parametrize("case", list(CASES))
def test_scores_each_format_as_the_pyfunc_does(registry, data_dir, tmp_path, case):
    family, path, params, requests, sources, ids = CASES[case](data_dir, tmp_path)
    name = NAMES[family]
    # The three forms of a model URI: alias, version, a run's model.
    model = {"stsb_tsv": f"models:/{name}/1", "conll_testa": f"runs:/{registry.runs[(name, '1')]}/model"}.get(
        case, f"models:/{name}@champion")
    result = run_score(model=model, file=str(path), batch_size=8, **params)
    (done,) = result["files"]
    assert (done["rows"], done["rows_scored"], done["rows_rejected"]) == (len(requests), len(requests), 0)
    label = f"run-{registry.runs[(name, '1')]}" if model.startswith("runs:/") else f"{name}-v1"
    assert done["predictions"] == str(output_paths(path, label)[0]) and done["rejected_file"] is None
    lines = jsonl(Path(done["predictions"]))
    assert [line["row"] for line in lines] == list(range(1, len(requests) + 1))
    assert [line["source"] for line in lines] == sources
    assert [line.get("id") for line in lines] == (ids or [None] * len(lines))
    assert_same(lines, registry.says(f"models:/{name}/1", requests))


# ---- bad rows ------------------------------------------------------------------------------------------
BAD_CSV = ('review_id,review\n'
           'r1,a good film\n'
           'r2,\n'
           'r3,"a bad, long film",extra\n'
           'r4,"   "\n'
           f'r5,{"a" * (MAX_TEXT_CHARS + 1)}\n'
           'r6,the plot was fun\n')


def test_bad_rows_are_listed_and_the_good_ones_scored_and_the_run_records_it(registry, tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(BAD_CSV, encoding="utf-8")
    name = NAMES[SINGLE]
    result = run_score(model=f"models:/{name}@champion", file=str(path), columns={"text": "review", "id": "review_id"})
    (done,) = result["files"]
    assert (done["rows"], done["rows_scored"], done["rows_rejected"]) == (6, 2, 4)

    rejected = jsonl(Path(done["rejected_file"]))
    assert Path(done["rejected_file"]) == output_paths(path, f"{name}-v1")[1]
    assert [(r["file"], r["row"], r["source"], r["field"]) for r in rejected] == [
        (str(path), 2, "bad.csv:3", "review"), (str(path), 3, "bad.csv:4", None),
        (str(path), 4, "bad.csv:5", "review"), (str(path), 5, "bad.csv:6", "review")]
    assert rejected[0]["error"] == "field 'review': got '', expected non-empty text"
    assert rejected[1]["error"].startswith("found 3 field(s) when split on ',', expected 2 ['review_id', 'review']")
    assert rejected[2]["error"] == "field 'review': got '   ', expected non-empty text"
    assert "expected at most 20,000 characters, the model's limit (this one has 20,001)" in rejected[3]["error"]
    assert rejected[3]["error"].endswith("; fine-tune with `long_text: {stride: 64}` in the task spec to read longer "
                                         "texts in overlapping windows")

    lines = jsonl(Path(done["predictions"]))
    assert [line["row"] for line in lines] == [1, 2, 3, 4, 5, 6], "every input row, in order"
    assert [("error" in line) for line in lines] == [False, True, True, True, True, False]
    assert lines[1] == {"row": 2, "source": "bad.csv:3", "id": "r2", "field": "review", "error": rejected[0]["error"]}
    assert_same([lines[0], lines[5]], registry.says(f"models:/{name}/1", [{"text": "a good film"},
                                                                         {"text": "the plot was fun"}]))

    # The scoring run: the version used, rows, speed, the input's fingerprint, the files as artifacts.
    client = MlflowClient()
    run = client.get_run(done["mlflow_run_id"])
    assert client.get_experiment(run.info.experiment_id).name == f"bertflow-score-{name}" == done["experiment"]
    tags, metrics = run.data.tags, run.data.metrics
    assert (tags["model_name"], tags["model_version"], tags["model_uri"], tags["model_alias"]) == (
        name, "1", f"models:/{name}/1", "champion")
    assert tags["model_requested"] == f"models:/{name}@champion" and tags["model_label"] == f"{name}-v1"
    assert tags["input_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() == done["sha256"]
    assert (tags["input_file"], tags["input_format"], tags["predictions_file"]) == (str(path), "csv", done["predictions"])
    assert (metrics["rows"], metrics["rows_scored"], metrics["rows_rejected"]) == (6, 2, 4)
    assert metrics["rows_per_second"] > 0 and metrics["predict_seconds"] > 0
    assert json.loads(run.data.params["columns"]) == {"text_a": "review", "id": "review_id"}
    artifacts = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="scoring",
                                                         dst_path=str(tmp_path / "artifacts")))
    for local in (done["predictions"], done["rejected_file"]):
        assert (artifacts / Path(local).name).read_text("utf-8") == Path(local).read_text("utf-8")


def test_a_model_trained_with_long_text_scores_a_long_document_that_others_reject(registry, tmp_path):
    """`long_text` in the model's meta (its task settings) raises the file's text limit to MAX_LONG_TEXT_CHARS, a
    bound still; the document is read in windows, and its prediction is the pyfunc's."""
    torch.manual_seed(0)
    model = get_family(SINGLE).build_model(BertEncoder(BertConfig(**TINY)), LABELS[SINGLE]).eval()
    meta = {"family": SINGLE, "label_names": LABELS[SINGLE], "task": "demo", "max_seq_length": 32,
            "long_text": {"strategy": "windows", "stride": 8, "pooling": "mean"}}
    name = "bert-score-long-text"
    registry.register_folder(save_finetuned(model, registry.tokenizer, tmp_path / "long", meta), SINGLE, name)
    document = "the movie was good " * 2_000  # 38,000 characters
    path = tmp_path / "long.csv"
    path.write_text(f"text\n{document}\n{'a' * (MAX_LONG_TEXT_CHARS + 1)}\n", encoding="utf-8")
    (done,) = run_score(model=f"models:/{name}@champion", file=str(path))["files"]
    assert (done["rows"], done["rows_scored"], done["rows_rejected"]) == (2, 1, 1)
    assert_same(jsonl(Path(done["predictions"]))[:1], registry.says(f"models:/{name}/1", [{"text": document}]))
    [rejected] = jsonl(Path(done["rejected_file"]))
    assert f"expected at most {MAX_LONG_TEXT_CHARS:,} characters, the model's limit" in rejected["error"]
    assert "long_text" not in rejected["error"]


def test_fail_on_bad_rows_fails_naming_them_and_scores_nothing(registry, tmp_path):
    path = tmp_path / "strict.csv"
    path.write_text(BAD_CSV, encoding="utf-8")
    state = score(ScoreParams(model=f"models:/{NAMES[SINGLE]}@champion", file=str(path), columns={"text": "review"},
                              fail_on_bad_rows=True), return_state=True)
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, DataError)
    assert str(error).startswith(f"{path}: 4 of 6 row(s) cannot be scored, and bad rows fail the run")
    assert "row 2 (strict.csv:3): field 'review': got '', expected non-empty text" in str(error)
    assert "row 3 (strict.csv:4): found 3 field(s)" in str(error)
    predictions, rejected = output_paths(path, f"{NAMES[SINGLE]}-v1")
    assert not predictions.exists() and not rejected.exists()
    (run,) = MlflowClient().search_runs(
        [MlflowClient().get_experiment_by_name(f"bertflow-score-{NAMES[SINGLE]}").experiment_id],
        filter_string=f"tags.input_file = '{path}'")
    assert run.info.status == "FAILED" and "4 of 6 row(s) cannot be scored" in run.data.tags["error"]


def test_a_model_the_registry_lacks_fails_naming_what_is_there(registry, tmp_path):
    (tmp_path / "x.csv").write_text("text\na good film\n", encoding="utf-8")
    state = score(ScoreParams(model="models:/bert-nothing@champion", file=str(tmp_path / "x.csv")), return_state=True)
    assert state.is_failed()
    message = str(state.result(raise_on_failure=False))
    assert message.startswith("models:/bert-nothing@champion is not in the model registry of sqlite:///")
    assert NAMES[SINGLE] in message.partition("registered models there: ")[2]


# ---- the training spec's own column names ------------------------------------------------------------------
def test_a_file_in_the_training_specs_own_columns_needs_no_column_mapping(registry, data_dir, tmp_path):
    """A tiny model fine-tuned on the built-in SST-2 spec (`columns: {text_a: sentence, ...}`) keeps the spec's
    column names in its meta; SST-2's own dev file (a `sentence` column) is then scored with no `columns`, as the
    pyfunc scores the same rows in its request names, and the served pyfunc takes `sentence` too."""
    data = tmp_path / "data"
    (data / "SST-2").mkdir(parents=True)
    for split, lines in (("train", 65), ("dev", 33)):  # the header and the first rows of the real files
        _tsv_head(data_dir, f"SST-2/{split}.tsv", lines, data / "SST-2" / f"{split}.tsv")
    cfg = TrainConfig(max_steps=2, batch_size=16, max_seq_length=64, progress_bar=False)
    trained = fit_task("sst2", cfg, tmp_path / "run", pretrained=write_tiny_checkpoint(tmp_path / "tiny"),
                       data_dir=data, cache_dir=tmp_path / "cache")
    assert load_finetuned(trained.model_dir)[2]["spec_columns"] == {"text_a": ["sentence"]}
    name = "bert-score-sst2-spec"
    registry.register_folder(trained.model_dir, SINGLE, name)

    family, path, mapping, requests, sources, _ = sst2_tsv(data_dir, tmp_path)
    assert mapping == {"columns": {"text": "sentence"}}, "what a model without the spec's names needs"
    (done,) = run_score(model=f"models:/{name}@champion", file=str(path), batch_size=8)["files"]
    assert (done["rows"], done["rows_scored"], done["rows_rejected"]) == (len(requests), len(requests), 0)
    assert done["columns"] == {"text_a": "sentence"}
    lines = jsonl(Path(done["predictions"]))
    assert [line["source"] for line in lines] == sources
    assert_same(lines, registry.says(f"models:/{name}/1", requests))
    in_spec_names = [{"sentence": r["text"]} for r in requests]
    assert registry.says(f"models:/{name}/1", in_spec_names) == registry.says(f"models:/{name}/1", requests)


def test_a_mapping_comes_first_then_the_familys_names_then_the_specs(tmp_path):
    """`--column` still maps any other file, and wins; a request column of the family's own names comes before
    the spec's; with neither, the error lists the spec's name with the others."""
    single, spec = get_family(SINGLE), spec_columns(load_spec("sst2"))
    assert spec == {"text_a": ["sentence"]}, "an identity column (label: label) adds nothing"
    assert spec_columns(load_spec("mrpc")) == {"text_a": ["#1 String", "sentence1"], "text_b": ["#2 String", "sentence2"],
                                               "label": ["Quality"]}, "the local files' names first, then the hub's"
    path = tmp_path / "reviews.csv"
    path.write_text("review,sentence,text\nr,s,t\n", encoding="utf-8")
    assert read_requests(path, single, spec_columns=spec).rows[0].fields == {"text_a": "t"}
    assert read_requests(path, single, {"text": "review"}, spec_columns=spec).rows[0].fields == {"text_a": "r"}
    path.write_text("review,sentence\nr,s\n", encoding="utf-8")
    assert read_requests(path, single, spec_columns=spec).rows[0].fields == {"text_a": "s"}
    with pytest.raises(DataError, match=r"no column for 'text'"):  # a model saved without the spec's names
        read_requests(path, single)
    path.write_text("review\nr\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"no column for 'text': the model reads 'text' or 'text_a' or 'sentence'"):
        read_requests(path, single, spec_columns=spec)
    assert read_requests(path, single, {"sentence": "review"}, spec_columns=spec).rows[0].fields == {"text_a": "r"}


# ---- pinning and the folder mode ----------------------------------------------------------------------------
def _requests_file(path: Path, texts: list[str]) -> list[dict]:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return [{"text": t} for t in texts]


def test_folder_mode_pins_one_version_and_skips_what_it_scored(registry, tmp_path, monkeypatch):
    """The champion moves while a folder is scored: every file of that run still gets the version pinned at
    its start. The next run scores them again with the new champion; then nothing is new, until a file is
    added or changed; a file still being written waits."""
    name = "bert-score-inbox"
    registry.register(SINGLE, name, seed=0)  # v1, champion
    registry.register(SINGLE, name, seed=1, policy="never")  # v2, challenger (other weights)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    sent = {"a.jsonl": _requests_file(inbox / "a.jsonl", ["a good film", "the plot"]),
            "b.jsonl": _requests_file(inbox / "b.jsonl", ["very boring", "it was fun", "not great"])}
    (inbox / "notes.txt").write_text("not an input", encoding="utf-8")
    folder = {"model": f"models:/{name}@champion", "folder": str(inbox), "pattern": "*.jsonl", "settle_seconds": 0}

    moved = []

    def predict_then_move_the_champion(*args, **kwargs):
        out = real_predict(*args, **kwargs)
        if not moved:  # after the first file: a new champion, mid-run
            MlflowClient().set_registered_model_alias(name, "champion", "2")
            moved.append(True)
        return out

    real_predict = scoring.predict_rows
    monkeypatch.setattr(scoring, "predict_rows", predict_then_move_the_champion)
    first = run_score(**folder)
    monkeypatch.undo()
    assert moved and str(MlflowClient().get_model_version_by_alias(name, "champion").version) == "2"
    assert [Path(f["input"]).name for f in first["files"]] == ["a.jsonl", "b.jsonl"]
    for done in first["files"]:
        assert MlflowClient().get_run(done["mlflow_run_id"]).data.tags["model_version"] == "1"
        assert done["predictions"] == str(output_paths(done["input"], f"{name}-v1")[0])
        lines, requests = jsonl(Path(done["predictions"])), sent[Path(done["input"]).name]
        assert_same(lines, registry.says(f"models:/{name}/1", requests))
        assert [line["score"] for line in lines] != [r["score"] for r in registry.says(f"models:/{name}/2", requests)]

    second = run_score(**folder)  # the new champion has scored nothing yet
    assert second["model"]["version"] == "2" and second["already_scored"] == []
    assert [Path(f["predictions"]).name for f in second["files"]] == [
        f"a.predictions.{name}-v2.jsonl", f"b.predictions.{name}-v2.jsonl"]
    assert (inbox / f"a.predictions.{name}-v1.jsonl").is_file(), "earlier versions' predictions stay"

    third = run_score(**folder)
    assert third["files"] == [] and [Path(p).name for p in third["already_scored"]] == ["a.jsonl", "b.jsonl"]

    sent["b.jsonl"] = _requests_file(inbox / "b.jsonl", ["very boring", "it was fun", "not great", "one more"])
    _requests_file(inbox / "c.jsonl", ["the movie"])
    for old in ("a.jsonl", "b.jsonl", "c.jsonl"):
        os.utime(inbox / old, (time.time() - 3600,) * 2)
    _requests_file(inbox / "d.jsonl", ["still being copied"])
    fourth = run_score(**folder | {"settle_seconds": 600})
    assert sorted(Path(f["input"]).name for f in fourth["files"]) == ["b.jsonl", "c.jsonl"], "changed and new"
    assert [Path(p).name for p in fourth["already_scored"]] == ["a.jsonl"]
    assert [Path(p).name for p in fourth["settling"]] == ["d.jsonl"]
    assert len(jsonl(inbox / f"b.predictions.{name}-v2.jsonl")) == 4

    # A file that fails does not stop the others; the run fails at the end, naming it.
    (inbox / "e.jsonl").write_text('{"text": "fine"}\n{"text": ""}\n', encoding="utf-8")
    state = score(ScoreParams(**folder | {"fail_on_bad_rows": True}), return_state=True)
    assert state.is_failed()
    message = str(state.result(raise_on_failure=False))
    assert message.startswith("1 of 2 file(s) failed (1 scored): ") and str(inbox / "e.jsonl") in message
    assert "row 2 (e.jsonl:2): field 'text': got '', expected non-empty text" in message
    assert (inbox / f"d.predictions.{name}-v2.jsonl").is_file()
    assert not (inbox / f"e.predictions.{name}-v2.jsonl").exists()


def test_scan_folder_leaves_out_scorings_own_files_and_shared_stems(tmp_path):
    for name in ("a.csv", "b.csv", "b.jsonl", "a.predictions.bert-x-v1.jsonl", "a.rejected.bert-x-v1.jsonl",
                 "a.predictions.run-0a1b.jsonl.tmp", "c.txt"):
        (tmp_path / name).write_text("text\nx\n", encoding="utf-8")
    scan = scan_folder(tmp_path, "*")
    assert [Path(p).name for p in scan.inputs] == ["a.csv", "c.txt"]
    assert [Path(p).name for p in scan.conflicts] == ["b.csv", "b.jsonl"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        scan_folder(tmp_path / "nowhere", "*")


# ---- reading request files (no model) ------------------------------------------------------------------
def test_the_format_comes_from_the_extension_unless_given(tmp_path):
    assert [detect_format(f"x{s}") for s in (".tsv", ".CSV", ".jsonl", ".parquet", ".conll")] == [
        "tsv", "csv", "jsonl", "parquet", "conll"]
    assert detect_format("x.json", b' [{"text": "a"}]') == "json"
    assert detect_format("x.json", b'\xef\xbb\xbf{"data": []}') == "squad"
    with pytest.raises(DataError, match=r"eng.testa: cannot tell the format from the extension '.testa'.*--format"):
        detect_format("eng.testa")


def test_what_makes_a_whole_file_unusable_is_named_with_the_fix(tmp_path):
    single, tagger = get_family(SINGLE), get_family(TAGGING)
    table = tmp_path / "reviews.tsv"
    table.write_text("review\tstars\ngood\t3\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"reviews.tsv: no column for 'text'.*the file has \['review', 'stars'\]; "
                                        r"say which column holds it with --column text=COLUMN"):
        read_requests(table, single)
    with pytest.raises(DataError, match=r"column mapping sentence=review: the model reads 'text' or 'text_a'"):
        read_requests(table, single, {"sentence": "review"})
    with pytest.raises(DataError, match=r"column\(s\) \['body'\] not found; the header has \['review', 'stars'\]"):
        read_requests(table, single, {"text": "body"})
    with pytest.raises(DataError, match=r"a conll file holds \['tokens'\]; this model reads 'text' or 'text_a'"):
        read_requests(table, single, fmt="conll")
    assert read_requests(table, tagger, {"text": "review"}).rows[0].fields == {"tokens": ["good"]}


def test_records_that_cannot_be_scored_are_rejected_in_file_order(tmp_path):
    path = tmp_path / "sentences.jsonl"
    path.write_text('{"tokens": ["John", "lives"]}\n'
                    '{"tokens": []}\n'
                    '{"tokens": ["a", " "]}\n'
                    '{"tokens": "Paris is   big"}\n'
                    '{"tokens": ["x"\n'
                    '\n'
                    '{"words": ["y"]}\n'
                    '{"tokens": 7}\n', encoding="utf-8")
    read = read_requests(path, get_family(TAGGING))
    assert [(r.row, r.source, r.fields["tokens"]) for r in read.rows] == [
        (1, "sentences.jsonl:1", ["John", "lives"]), (4, "sentences.jsonl:4", ["Paris", "is", "big"])]
    assert [(r.row, r.source, r.field) for r in read.rejected] == [
        (2, "sentences.jsonl:2", "tokens"), (3, "sentences.jsonl:3", "tokens"), (5, "sentences.jsonl:5", None),
        (6, "sentences.jsonl:7", "tokens"), (7, "sentences.jsonl:8", "tokens")]
    errors = [r.error for r in read.rejected]
    assert errors[0] == "field 'tokens': got [], expected a non-empty list of words, or a text to split on spaces"
    assert errors[1] == "field 'tokens[1]': got ' ', expected a non-empty word (word 2 of the row)"
    assert errors[2].startswith("broken JSON at line 5")
    assert errors[3].startswith("column(s) 'tokens'") and "the record has ['words']" in errors[3]
    assert read.sha256 == hashlib.sha256(path.read_bytes()).hexdigest() and read.total == 7


# ---- the command ---------------------------------------------------------------------------------------
def test_score_options_are_checked_before_anything_starts(tmp_path, capsys):
    assert main(["score", "models:/bert-x@champion"]) == 1
    assert "give a FILE to score, or --folder DIR" in capsys.readouterr().err
    assert main(["score", "models:/bert-x@champion", str(tmp_path / "nowhere.csv")]) == 1
    assert "nowhere.csv: no such file" in capsys.readouterr().err
    (tmp_path / "x.csv").write_text("text\na\n", encoding="utf-8")
    assert main(["score", "models:/bert-x@champion", str(tmp_path / "x.csv"), "--column", "text"]) == 1
    assert "--column 'text': expected NAME=COLUMN" in capsys.readouterr().err


def bertflow_score(flow_root: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """`bertflow score <args>` as a real process on the module's MLflow store, Prefect in its ephemeral mode."""
    env = {**os.environ, "BERTFLOW_HOME": str(tmp_path / "home"), "PREFECT_HOME": str(tmp_path / "prefect"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{flow_root / 'mlflow.db'}", "PREFECT_API_URL": "", "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_REGISTRY_URI", None)
    return subprocess.run([sys.executable, "-m", "flows.cli", "score", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_bertflow_score_runs_as_a_command(registry, flow_root, tmp_path):
    """The file form prints the model and version, rows scored and rejected, speed, where the predictions and
    the MLflow run are; --fail-on-bad-rows exits 1 naming the bad row; --folder skips the file scored before."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "reviews.csv").write_text("review\na good film\n\nthe plot\n\"\"\nvery fun\n", encoding="utf-8")
    (inbox / "more.csv").write_text("review\nnot great\n", encoding="utf-8")
    name = NAMES[SINGLE]
    model = f"models:/{name}@champion"
    done = bertflow_score(flow_root, tmp_path, model, str(inbox / "reviews.csv"), "--column", "text=review")
    assert done.returncode == 0, done.stderr[-3000:]
    predictions, rejected = output_paths(inbox / "reviews.csv", f"{name}-v1")
    out = done.stdout.splitlines()
    assert out[0] == f"reviews.csv with {name} v1 ({model})", done.stdout
    assert out[1] == f"  rows         3 scored, 1 rejected (listed in {rejected})"
    assert out[2].startswith("  speed        ") and " rows/s (" in out[2]
    assert out[3] == f"  predictions  {predictions}"
    run_id = out[4].split()[2]
    assert out[4] == f"  MLflow run   {run_id} in bertflow-score-{name}"
    assert MlflowClient().get_run(run_id).data.metrics["rows_scored"] == 3
    assert [line.get("error") is None for line in jsonl(predictions)] == [True, True, False, True]

    strict = bertflow_score(flow_root, tmp_path, model, str(inbox / "reviews.csv"), "--column", "text=review",
                            "--fail-on-bad-rows")
    assert strict.returncode == 1 and "Traceback" not in strict.stderr
    error = next(line for line in strict.stderr.splitlines() if line.startswith("bertflow score: error: "))
    assert "1 of 4 row(s) cannot be scored" in error
    assert "row 3 (reviews.csv:5): field 'review': got '', expected non-empty text" in error

    folder = bertflow_score(flow_root, tmp_path, model, "--folder", str(inbox), "--pattern", "*.csv",
                            "--column", "text=review", "--json")
    assert folder.returncode == 0, folder.stderr[-3000:]
    result = json.loads(folder.stdout)
    assert [Path(f["input"]).name for f in result["files"]] == ["more.csv"]
    assert result["already_scored"] == [str(inbox / "reviews.csv")]
