"""The bad-input corpus (tests/data/bad/): every case fails before training, naming what to fix.

Each case is a folder holding `spec.yaml` and, unless the spec itself is the problem, a `data/` folder;
the case folder is the data root. `EXPECTED` says, per case, which error and which substrings: the file
(and line, record or JSON path), the field, and what was expected. Problems of a whole file (empty,
missing, not parquet, not the SQuAD layout) have no line or field: the message names the file and
the spec field or layout instead. Every data case also runs through the whole `finetune` flow, all of
them sharing one BERTFLOW_HOME, which must fail at once, record the error in its run folder, end its
MLflow run FAILED with the error as the `error` tag, and register nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from prefect import get_client

from bert_core.loading import load_task_data
from bert_core.spec import SpecError, load_spec
from bert_core.training import TrainConfig
from bert_core.validation import DataError
from flows.finetune import finetune
from flows.params import FinetuneParams
from flows.run_folder import read_record
from tests.tiny_models import write_tiny_checkpoint

CORPUS = Path(__file__).parents[1] / "data" / "bad"
D, S = DataError, SpecError
ROW_HINT = "pass drop_bad_rows=True"  # row-level problems say how to skip them instead
# case -> (error type, substrings of its message: where, field, what was expected)
EXPECTED: dict[str, tuple[type[Exception], list[str]]] = {
    # single-text classification
    "cls_tsv_empty_text": (D, ["data/train.tsv:4", "field 'text_a'", "got ''", "expected non-empty text", ROW_HINT]),
    "cls_tsv_blank_text": (D, ["data/dev.tsv:3", "field 'text_a'", "got '   '", "expected non-empty text"]),
    "cls_csv_missing_column": (D, ["data/train.csv:1", "column 'label'", "columns.label", "not found",
                                   "the header has ['sentence', 'sentiment']"]),
    "cls_tsv_label_outside_set": (D, ["data/dev.tsv:4", "field 'label'", "got '2'", "expected one of ['0', '1']"]),
    "cls_tsv_wrong_delimiter": (D, ["data/train.tsv:1", "found 1 field(s) when split on '\\t'",
                                    "expected 2 ['sentence', 'label']", "wrong delimiter"]),
    "cls_tsv_non_utf8": (D, ["data/train.tsv:4", "b'\\xe9'", "byte offset 50", "column 4", "not valid utf-8",
                             "set local.encoding"]),
    "cls_tsv_byte_order_mark": (D, ["data/train.tsv:1", "column 'sentence'", "columns.text_a", "utf-8-sig"]),
    "cls_tsv_empty_split": (D, ["data/dev.tsv", "split 'eval' is empty", "expected at least one row"]),
    "cls_csv_empty_file": (D, ["data/train.csv", "the file is empty", "expected a header line", "local.header"]),
    "cls_missing_file": (D, ["local file not found", "cls_missing_file/data/dev.tsv", "spec field local.files.eval"]),
    "cls_parquet_damaged": (D, ["data/train.parquet", "not a readable parquet file"]),
    "cls_tsv_label_only_in_eval": (D, ["data/dev.tsv:4", "field 'label'", "got '2'", "expected one of ['0', '1']",
                                       "the labels found in the training split", "spec's `labels`"]),
    "cls_tsv_binary_metric_on_three_labels": (D, ["metrics ['f1']", "spec field `metrics`", "3 labels",
                                                  "['neg', 'neutral', 'pos']", "use f1_macro"]),
    "cls_tsv_extra_split_missing_column": (D, ["data/test.tsv:1", "column 'sentence'", "columns.text_a",
                                               "the header has ['text', 'label']"]),
    # text-pair classification
    "pair_jsonl_missing_field": (D, ["data/train.jsonl:2", "'hypothesis' (columns.text_b)", "not found",
                                     "the record has ['premise', 'label']"]),
    "pair_jsonl_broken_json": (D, ["data/train.jsonl:3", "broken JSON at line 3, column 83", "Expecting ','"]),
    "pair_json_not_a_list": (D, ["data/train.json", "expected a JSON list of records", "got dict"]),
    "pair_json_label_outside_set": (D, ["data/dev.json:[1]", "field 'label'", "got 'maybe'",
                                        "expected one of ['entailment', 'neutral', 'contradiction']"]),
    "pair_json_null_text_b": (D, ["data/train.json:[1]", "field 'text_b'", "got None", "expected non-empty text"]),
    # pair regression
    "reg_csv_nan_score": (D, ["data/train.csv:4", "field 'label'", "got 'nan'", "expected a finite number"]),
    "reg_tsv_text_score": (D, ["data/dev.tsv:3", "field 'label'", "got 'high'", "expected a finite number"]),
    "reg_tsv_constant_eval_scores": (D, ["data/dev.tsv", "every score of split 'eval' is 3.0",
                                         "at least two different gold scores"]),
    "reg_jsonl_nan_literal": (D, ["data/train.jsonl:2", "field 'label'", "got nan", "expected a finite number"]),
    # token tagging
    "tag_conll_missing_tag": (D, ["data/train.txt:11", "found 1 space-separated column(s) in 'Paris'",
                                  "expected at least 2", "columns.tags=1"]),
    "tag_conll_tag_outside_set": (D, ["data/dev.txt:9", "field 'tags[1]'", "got 'B-ORG'",
                                      "expected one of ['O', 'B-PER', 'I-PER', 'B-LOC']", "token 2 of the sentence"]),
    "tag_jsonl_unequal_length": (D, ["data/train.jsonl:2", "field 'tags'", "one tag per token",
                                     "3 tokens but 2 tags"]),
    "tag_jsonl_empty_tokens": (D, ["data/dev.jsonl:2", "field 'tokens'", "got []", "a non-empty list of tokens"]),
    "tag_conll_breaks_iob2": (D, ["data/train.txt:6", "field 'tags[2]'", "token 3 of the sentence, 'Paris'",
                                  "'I-LOC' after 'O' breaks tag_scheme IOB2", "'B-LOC'", "repair_tags: true"]),
    "tag_jsonl_tokens_not_a_list": (D, ["data/train.jsonl:1", "field 'tokens'", "got 'Ann visited Paris'",
                                        "a non-empty list of tokens"]),
    # multi-label classification: the three ways of spelling a row's labels
    "ml_tsv_empty_label": (D, ["data/train.tsv:3", "field 'labels'", "got 'joy;;anger'", "separated by ';'",
                               "no empty label between separators", ROW_HINT]),
    "ml_csv_indicator_not_0_1": (D, ["data/dev.csv:4", "field 'joy'", "got '2'", "expected 0 or 1",
                                     "label_columns"]),
    "ml_jsonl_label_only_in_eval": (D, ["data/dev.jsonl:2", "field 'labels'", "got 'surprise'",
                                        "expected one of ['anger', 'joy']", "the labels found in the training split",
                                        "spec's `labels`"]),
    "ml_jsonl_labels_not_a_list": (D, ["data/train.jsonl:2", "field 'labels'", "got 'anger;joy'",
                                       "a list of label names", "label_separator"]),
    # extractive QA (rows are named by their JSON path)
    "qa_answer_not_at_offset": (D, ["data/train.json:data[0].paragraphs[0].qas[1]", "field 'answers.text[0]'",
                                    "got '1990'", "the context's text at answer_start 20, which is 's in'"]),
    "qa_answer_start_beyond_context": (D, ["data/dev.json:data[0].paragraphs[0].qas[1]",
                                           "field 'answers.answer_start[0]'", "got 400",
                                           "a character offset in 0..26"]),
    "qa_missing_answers": (D, ["data/train.json:data[0].paragraphs[0].qas[1]", "field 'answers'", "got None",
                               "expected a list of {'text'"]),
    "qa_empty_question": (D, ["data/train.json:data[0].paragraphs[0].qas[1]", "field 'question'", "got ''",
                              "expected non-empty text"]),
    "qa_broken_json": (D, ["data/train.json:5", "broken JSON at line 5, column 19", "Expecting property name"]),
    "qa_not_squad_layout": (D, ["data/train.json", "expected the SQuAD layout"]),
    # the spec itself (message: the spec file, the field, what it should be)
    "spec_unknown_family": (S, ["spec_unknown_family/spec.yaml", "field 'family'", "got 'pair_ranking'",
                                "Input should be 'single_classification'"]),
    "spec_unknown_format": (S, ["spec_unknown_format/spec.yaml", "field 'local.format'", "got 'xlsx'",
                                "Input should be 'tsv'"]),
    "spec_path_escapes_root": (S, ["spec_path_escapes_root/spec.yaml", "field 'local.files.train'",
                                   "'data/../../outside.tsv' escapes the data root"]),
    "spec_absolute_path": (S, ["spec_absolute_path/spec.yaml", "field 'local.files.eval'", "'/etc/passwd' is absolute",
                               "give a path relative to the data root"]),
    "spec_broken_yaml": (S, ["spec_broken_yaml/spec.yaml:9:1", "not valid YAML", "expected ',' or ']'"]),
    "spec_unknown_training_field": (S, ["spec_unknown_training_field/spec.yaml", "field 'defaults'",
                                        "['lr'] are not training fields", "'learning_rate'"]),
    "spec_multi_label_two_label_forms": (S, ["spec_multi_label_two_label_forms/spec.yaml",
                                             "label_separator and label_columns", "not both"]),
    "spec_column_not_a_field": (S, ["spec_column_not_a_field/spec.yaml", "field 'columns'",
                                    "['sentence'] are not fields of 'single_classification'",
                                    "fields: ['text_a', 'label']"]),
}
CASES = sorted(p.name for p in CORPUS.iterdir() if p.is_dir())


def test_the_corpus_has_20_cases_each_with_an_expectation():
    assert len(CASES) >= 20
    assert sorted(EXPECTED) == CASES, "every corpus folder needs an EXPECTED entry, and vice versa"
    families = {name.split("_")[0] for name in CASES}
    assert families == {"cls", "pair", "reg", "tag", "qa", "ml", "spec"}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_fails_at_loading_naming_where_and_what(case):
    error, substrings = EXPECTED[case]
    folder = CORPUS / case
    with pytest.raises((DataError, SpecError)) as info:
        load_task_data(folder / "spec.yaml", folder)  # the spec, then every split, then every row
    assert type(info.value) is error, f"{case}: {type(info.value).__name__}: {info.value}"
    message = str(info.value)
    missing = [s for s in substrings if s not in message]
    assert not missing, f"{case}: {missing} not in the message:\n{message}"
    assert len(message) < 1000, "one bad value must not flood the log"


# ---------------------------------------------------------------- the whole flow

# Every data case through the whole flow, the way one user meets them: all cases share one BERTFLOW_HOME
# (runs root, feature cache), each gets a fresh MLflow store, and the data root comes from
# BERTFLOW_DATA_DIR, which is not a flow parameter. Each must still fail with its own clear error, at once
# (the flow allows a retry, which must not be used), record it in its run folder and register nothing.
FLOW_CASES = [case for case in CASES if EXPECTED[case][0] is DataError] + ["spec_unknown_family"]


@pytest.fixture(scope="module")
def flow_env(flow_root):
    """Prefect test harness, BERTFLOW_HOME shared by every case, a tiny random checkpoint."""
    return {"root": flow_root, "pretrained": write_tiny_checkpoint(flow_root / "tiny")}


@pytest.mark.parametrize("case", FLOW_CASES)
def test_the_flow_fails_at_once_records_the_error_and_registers_nothing(flow_env, case, monkeypatch):
    error, substrings = EXPECTED[case]
    folder = CORPUS / case
    monkeypatch.setenv("BERTFLOW_DATA_DIR", str(folder))
    store = f"sqlite:///{flow_env['root'] / 'stores' / case}.db"
    params = FinetuneParams(task=str(folder / "spec.yaml"), pretrained=str(flow_env["pretrained"]), tracking_uri=store,
                            training=TrainConfig(epochs=1, progress_bar=False))
    state = finetune(params, return_state=True)
    assert state.is_failed()
    raised = state.result(raise_on_failure=False)
    assert isinstance(raised, error) and all(s in str(raised) for s in substrings), raised
    with get_client(sync_client=True) as prefect:
        assert prefect.read_flow_run(state.state_details.flow_run_id).run_count == 1, "an input error is not retried"

    client = MlflowClient(store)
    assert client.search_model_versions() == [], "a failed run registers no model version"
    runs_root = Path(os.environ["BERTFLOW_HOME"]) / "runs"
    mine = [p for p in runs_root.glob("*/*") if (read_record(p) or {}).get("identity", {}).get("data_root")
            == str(folder.resolve())]
    if error is SpecError:  # the spec is read before the run folder and the MLflow run: neither exists
        assert not mine and client.search_experiments(filter_string="name LIKE 'bertflow-%'") == []
        return
    (run_folder,) = mine
    record = read_record(run_folder)
    assert record["status"] == "failed" and all(s in record["error"] for s in substrings), record
    assert not (run_folder / "training").exists(), "nothing was trained"
    experiment = client.get_experiment_by_name(f"bertflow-{load_spec(folder / 'spec.yaml').name}")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"] and runs[0].info.run_id == record["mlflow_run_id"]
    tag = runs[0].data.tags["error"]
    assert tag.startswith("DataError: ") and all(s in tag for s in substrings), tag
    assert "error.txt" in {a.path for a in client.list_artifacts(runs[0].info.run_id)}
