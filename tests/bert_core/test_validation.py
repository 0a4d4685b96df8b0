"""Bad data and bad specs fail with messages naming file, line, field, value and expectation.

Every case writes a tiny data file and a tiny spec YAML to tmp_path: that is also how a user adds
a dataset, with no Python.
"""

import json
import math
import textwrap

import pytest

from bert_core.families import get_family
from bert_core.loading import load_task_data
from bert_core.spec import SpecError, load_spec
from bert_core.validation import DataError, validate_rows

PAIR_SPEC = """
    name: tiny_pairs
    family: pair_classification
    local:
      format: tsv
      files: {train: data/train.tsv, eval: data/dev.tsv}
    columns: {text_a: premise, text_b: hypothesis, label: label}
    labels: [pos, neg]
    metrics: [accuracy]
    primary_metric: accuracy
"""
GOOD_TSV = "premise\thypothesis\tlabel\nA cat sits.\tAn animal sits.\tpos\nA dog runs.\tA cat sleeps.\tneg\n"


def write(tmp_path, spec: str = PAIR_SPEC, **files: str | bytes):
    """Write the spec and data files (keys: paths under data/, '__' for '/'); return the spec path."""
    for name, content in files.items():
        path = tmp_path / "data" / name.replace("__", "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(textwrap.dedent(spec))
    return spec_path


def load_error(tmp_path, spec=PAIR_SPEC, **files) -> str:
    with pytest.raises(DataError) as info:
        load_task_data(write(tmp_path, spec, **files), tmp_path)
    return str(info.value)


def test_a_custom_spec_yaml_loads_with_no_python(tmp_path):
    data = load_task_data(write(tmp_path, **{"train.tsv": GOOD_TSV, "dev.tsv": GOOD_TSV}), tmp_path)
    assert data.splits["train"][0] == {"text_a": "A cat sits.", "text_b": "An animal sits.", "label": "pos",
                                       "_source": "data/train.tsv:2"}
    assert data.label_names == ["pos", "neg"]


# ---------------------------------------------------------------- row rules

def test_empty_text(tmp_path):
    bad = GOOD_TSV + "   \tA hypothesis.\tpos\n"
    message = load_error(tmp_path, **{"train.tsv": bad, "dev.tsv": GOOD_TSV})
    assert "data/train.tsv:4" in message and "'text_a'" in message and "non-empty text" in message


def test_label_outside_the_label_set(tmp_path):
    bad = GOOD_TSV + "A cat sits.\tA cat sits.\tmaybe\n"
    message = load_error(tmp_path, **{"train.tsv": GOOD_TSV, "dev.tsv": bad})
    assert "data/dev.tsv:4" in message and "'label'" in message and "'maybe'" in message
    assert "one of ['pos', 'neg']" in message


REGRESSION_SPEC = """
    name: tiny_sts
    family: pair_regression
    local:
      format: csv
      files: {train: data/train.csv, eval: data/dev.csv}
    columns: {text_a: s1, text_b: s2, label: score}
    metrics: [pearson, spearman]
    primary_metric: spearman
"""


@pytest.mark.parametrize("score", ["nan", "inf", "-inf", "high", ""])
def test_regression_label_must_be_a_finite_number(tmp_path, score):
    good = "s1,s2,score\nA man eats.,\"A man, eating.\",4.5\n"
    message = load_error(tmp_path, REGRESSION_SPEC, **{"train.csv": good + f"A.,B.,{score}\n", "dev.csv": good})
    assert "data/train.csv:3" in message and "'label'" in message and "finite number" in message


def test_regression_labels_become_floats(tmp_path):
    good = "s1,s2,score\nA man eats.,\"A man, eating.\",4.5\nA.,B.,3\n"
    data = load_task_data(write(tmp_path, REGRESSION_SPEC, **{"train.csv": good, "dev.csv": good}), tmp_path)
    assert data.splits["train"]["label"] == [4.5, 3.0]
    assert data.splits["train"]["text_b"][0] == "A man, eating."  # csv quoting honoured


TAGGING_SPEC = """
    name: tiny_tags
    family: token_tagging
    local:
      format: {format}
      files: {{train: data/train.{ext}, eval: data/dev.{ext}}}
    columns: {columns}
    labels: [O, I-PER]
    metrics: [token_accuracy]
    primary_metric: token_accuracy
"""
JSONL_TAGGING = TAGGING_SPEC.format(format="jsonl", ext="jsonl", columns="{tokens: words, tags: ner}")
CONLL_TAGGING = TAGGING_SPEC.format(format="conll", ext="txt", columns="{tokens: 0, tags: 1}")
GOOD_JSONL = json.dumps({"words": ["Ann", "sings"], "ner": ["I-PER", "O"]}) + "\n"


def test_tokens_and_tags_of_different_length(tmp_path):
    bad = GOOD_JSONL + json.dumps({"words": ["Ann", "sings"], "ner": ["I-PER"]}) + "\n"
    message = load_error(tmp_path, JSONL_TAGGING, **{"train.jsonl": bad, "dev.jsonl": GOOD_JSONL})
    assert "data/train.jsonl:2" in message and "'tags'" in message and "2 tokens but 1 tags" in message


def test_empty_token_list(tmp_path):
    bad = GOOD_JSONL + json.dumps({"words": [], "ner": []}) + "\n"
    message = load_error(tmp_path, JSONL_TAGGING, **{"train.jsonl": bad, "dev.jsonl": GOOD_JSONL})
    assert "data/train.jsonl:2" in message and "'tokens'" in message and "non-empty list" in message


def test_tag_outside_the_tag_set(tmp_path):
    good = "-DOCSTART- O\n\nAnn I-PER\nsings O\n\n"
    bad = good + "Bob I-PER\nruns I-VERB\n"
    message = load_error(tmp_path, CONLL_TAGGING, **{"train.txt": good, "dev.txt": bad})
    # the sentence starts on line 6; the bad tag is its second token (line 7)
    assert "data/dev.txt:6" in message and "'tags[1]'" in message and "'I-VERB'" in message
    assert "token 2 of the sentence" in message


QA_SPEC = """
    name: tiny_qa
    family: extractive_qa
    local:
      format: squad
      files: {train: data/qa.json, eval: data/qa.json}
      carve: {by: row_index, eval_fraction: 0.5, seed: 1}
    metrics: [exact_match, f1]
    primary_metric: f1
"""


def squad_json(answers: list[dict]) -> str:
    qas = [{"id": f"q{i}", "question": "Who sings?", "answers": [a]} for i, a in enumerate(answers)]
    return json.dumps({"data": [{"title": "T", "paragraphs": [{"context": "Ann sings.", "qas": qas}]}]})


GOOD_ANSWERS = [{"text": "Ann", "answer_start": 0}] * 8


def test_answer_start_outside_the_context(tmp_path):
    doc = squad_json(GOOD_ANSWERS + [{"text": "Ann", "answer_start": 40}])
    message = load_error(tmp_path, QA_SPEC, **{"qa.json": doc})
    assert "data/qa.json:data[0].paragraphs[0].qas[8]" in message
    assert "'answers.answer_start[0]'" in message and "40" in message


def test_answer_text_differs_from_the_context(tmp_path):
    doc = squad_json(GOOD_ANSWERS + [{"text": "Bob", "answer_start": 0}])
    message = load_error(tmp_path, QA_SPEC, **{"qa.json": doc})
    assert "data/qa.json:data[0].paragraphs[0].qas[8]" in message
    assert "'answers.text[0]'" in message and "'Bob'" in message and "'Ann'" in message


def test_validate_rows_truncates_long_values():
    row = {"text_a": "x" * 500, "text_b": "y", "label": "z" * 500, "_source": "f.tsv:9"}
    with pytest.raises(DataError) as info:
        validate_rows([row], get_family("pair_classification"), ["a"], drop_bad_rows=False)
    assert "f.tsv:9" in str(info.value) and len(str(info.value)) < 300


def test_validate_rows_rejects_nan_float():
    row = {"text_a": "a", "text_b": "b", "label": math.nan, "_source": "f:1"}
    good, dropped = validate_rows([row], get_family("pair_regression"), None, drop_bad_rows=True)
    assert good == [] and dropped[0].startswith("f:1: field 'label': got nan")


def test_drop_bad_rows_drops_and_reports(tmp_path):
    bad = GOOD_TSV + "A cat sits.\tA cat sits.\tmaybe\nonly one field\n"
    spec = write(tmp_path, **{"train.tsv": bad, "dev.tsv": GOOD_TSV})
    data = load_task_data(spec, tmp_path, drop_bad_rows=True)
    assert len(data.splits["train"]) == 2
    assert len(data.dropped) == 2
    assert any("data/train.tsv:4" in m and "'maybe'" in m for m in data.dropped)
    assert any("data/train.tsv:5" in m and "found 1 field(s)" in m for m in data.dropped)


# ---------------------------------------------------------------- file problems

def test_missing_file_names_path_and_spec_field(tmp_path):
    message = load_error(tmp_path, **{"train.tsv": GOOD_TSV})
    assert str(tmp_path / "data" / "dev.tsv") in message and "local.files.eval" in message


def test_missing_column_names_the_header_found(tmp_path):
    bad = GOOD_TSV.replace("hypothesis", "hyp", 1)
    message = load_error(tmp_path, **{"train.tsv": bad, "dev.tsv": GOOD_TSV})
    assert "data/train.tsv:1" in message and "'hypothesis'" in message and "columns.text_b" in message
    assert "['premise', 'hyp', 'label']" in message


def test_byte_order_mark_gets_a_hint(tmp_path):
    message = load_error(tmp_path, **{"train.tsv": "\ufeff" + GOOD_TSV, "dev.tsv": GOOD_TSV})
    assert "utf-8-sig" in message


def test_wrong_delimiter(tmp_path):
    header, rows = GOOD_TSV.split("\n", 1)
    commas = header + "\n" + rows.replace("\t", ",")  # a tab-separated header, comma-separated rows
    message = load_error(tmp_path, **{"train.tsv": commas, "dev.tsv": GOOD_TSV})
    assert "data/train.tsv:2" in message and "found 1 field(s)" in message and "expected 3" in message


def test_broken_json_names_line_and_column(tmp_path):
    broken = squad_json(GOOD_ANSWERS).replace('"context"', '\n"context" :: ', 1)
    message = load_error(tmp_path, QA_SPEC, **{"qa.json": broken})
    assert "data/qa.json:2" in message and "column" in message and "broken JSON" in message


def test_non_utf8_bytes_name_line_and_offset(tmp_path):
    bad = GOOD_TSV.encode() + b"Caf\xe9 au lait.\tA drink.\tpos\n"
    message = load_error(tmp_path, **{"train.tsv": bad, "dev.tsv": GOOD_TSV})
    offset = len(GOOD_TSV.encode()) + 3
    assert "data/train.tsv:4" in message and f"byte offset {offset}" in message and "utf-8" in message


def test_empty_split(tmp_path):
    message = load_error(tmp_path, **{"train.tsv": GOOD_TSV, "dev.tsv": "premise\thypothesis\tlabel\n"})
    assert "data/dev.tsv" in message and "'eval' is empty" in message


# ---------------------------------------------------------------- spec problems

def spec_error(tmp_path, old: str, new: str) -> str:
    with pytest.raises(SpecError) as info:
        load_spec(write(tmp_path, PAIR_SPEC.replace(old, new)))
    return str(info.value)


def test_unknown_family(tmp_path):
    message = spec_error(tmp_path, "family: pair_classification", "family: pair_ranking")
    assert str(tmp_path / "spec.yaml") in message and "field 'family'" in message and "'pair_ranking'" in message


def test_primary_metric_not_in_metrics(tmp_path):
    message = spec_error(tmp_path, "primary_metric: accuracy", "primary_metric: f1")
    assert "field 'primary_metric'" in message and "not in metrics ['accuracy']" in message


def test_metric_not_allowed_for_family(tmp_path):
    message = spec_error(tmp_path, "metrics: [accuracy]", "metrics: [accuracy, pearson]")
    assert "field 'metrics'" in message and "pearson" in message


@pytest.mark.parametrize("path", ["../outside.tsv", "/etc/passwd", "data/../../outside.tsv"])
def test_path_escaping_the_data_root(tmp_path, path):
    message = spec_error(tmp_path, "train: data/train.tsv", f"train: {path}")
    assert "field 'local.files.train'" in message and repr(path) in message


def test_yaml_syntax_error_names_the_line(tmp_path):
    message = spec_error(tmp_path, "labels: [pos, neg]", "labels: [yes, no")
    assert str(tmp_path / "spec.yaml") in message and "not valid YAML" in message


def test_extra_field_is_rejected(tmp_path):
    message = spec_error(tmp_path, "labels: [pos, neg]", "labels: [pos, neg]\n    lable_names: [a]")
    assert "field 'lable_names'" in message and "Extra inputs are not permitted" in message


def test_yaml_booleans_as_labels_get_a_hint(tmp_path):
    message = spec_error(tmp_path, "labels: [pos, neg]", "labels: [yes, no]")
    assert "field 'labels'" in message and "quote label names" in message
    assert load_spec(write(tmp_path, PAIR_SPEC.replace("[pos, neg]", "[0, 1]"))).labels == ["0", "1"]
