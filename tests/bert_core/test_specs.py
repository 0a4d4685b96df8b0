"""Built-in task specs: all parse, and each states the metrics and sources the design asks for."""

import pytest

from bert_core.families import get_family
from bert_core.spec import SpecError, TaskSpec, builtin_specs, load_spec

BUILTINS = ["cola", "conll2003_ner", "conll2003_pos", "mnli", "mrpc", "rte", "semeval2018_ec", "snli", "squad",
            "squad_v2", "sst2", "stsb"]


def test_builtin_specs_lists_them_all():
    assert builtin_specs() == BUILTINS


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_parses_and_is_consistent(name):
    spec = load_spec(name)
    assert isinstance(spec, TaskSpec)
    assert spec.name == name
    assert spec.primary_metric in spec.metrics
    assert set(spec.metrics) <= set(get_family(spec.family).predictions.metrics)
    assert spec.hub is not None or spec.local is not None
    assert {"learning_rate", "batch_size", "epochs"} <= set(spec.defaults)


@pytest.mark.parametrize("name, family, primary", [
    ("cola", "single_classification", "matthews_corr"),
    ("sst2", "single_classification", "accuracy"),
    ("mrpc", "pair_classification", "f1"),
    ("rte", "pair_classification", "accuracy"),
    ("mnli", "pair_classification", "accuracy"),
    ("snli", "pair_classification", "accuracy"),
    ("stsb", "pair_regression", "pearson"),
    ("conll2003_pos", "token_tagging", "token_accuracy"),
    ("conll2003_ner", "token_tagging", "entity_f1"),
    ("squad", "extractive_qa", "f1"),
    ("squad_v2", "extractive_qa_with_no_answer", "f1"),
    ("semeval2018_ec", "multi_label_classification", "f1_macro"),
])
def test_family_and_primary_metric(name, family, primary):
    spec = load_spec(name)
    assert (spec.family, spec.primary_metric) == (family, primary)


def test_mnli_is_hub_only_with_an_extra_eval_split():
    spec = load_spec("mnli")
    assert spec.local is None
    assert spec.hub.splits.eval == "validation_matched"
    assert spec.hub.eval_extra == {"validation_mismatched": "validation_mismatched"}


def test_squad_qa_settings_and_carve():
    spec = load_spec("squad")
    assert (spec.max_seq_length, spec.doc_stride, spec.max_answer_length) == (384, 128, 30)
    assert spec.local.carve.by == "title"
    assert set(spec.metrics) == {"exact_match", "f1"}


def test_conll_columns_pick_the_tag_column():
    assert load_spec("conll2003_ner").columns == {"tokens": 0, "tags": 3}
    assert load_spec("conll2003_pos").columns == {"tokens": 0, "tags": 1}
    assert load_spec("conll2003_ner").tag_scheme == "IOB1"


def test_load_spec_by_path_and_unknown_name(tmp_path):
    from importlib import resources

    path = tmp_path / "my_sst2.yaml"
    path.write_text((resources.files("bert_core") / "specs" / "sst2.yaml").read_text())
    assert load_spec(path).name == "sst2"
    assert load_spec(str(path)).name == "sst2"
    with pytest.raises(SpecError, match="unknown built-in spec 'nope'.*sst2"):
        load_spec("nope")
    with pytest.raises(SpecError, match="spec file not found"):
        load_spec(tmp_path / "absent.yaml")


BASE = {"name": "t", "local": {"format": "jsonl", "files": {"train": "a.jsonl", "eval": "b.jsonl"}}, "primary_metric": "accuracy",
        "metrics": ["accuracy"]}


@pytest.mark.parametrize("fields, problem", [
    ({"family": "single_classification", "labels": ["a", "b", "c"], "metrics": ["accuracy", "f1"]},
     "`labels` has 3; use f1_macro"),
    ({"family": "token_tagging", "metrics": ["entity_f1"], "primary_metric": "entity_f1"},
     "metrics ['entity_f1'] count entities, which needs a tag_scheme"),
    ({"family": "token_tagging", "tag_scheme": "IOX", "metrics": ["token_accuracy"], "primary_metric": "token_accuracy"},
     "unknown tag scheme 'IOX'"),
    ({"family": "single_classification", "tag_scheme": "IOB2"}, "tag_scheme is for token_tagging, not 'single_classification'"),
    ({"family": "single_classification", "defaults": {"lr": 1e-4}}, "['lr'] are not training fields"),
    ({"family": "single_classification", "defaults": {"epochs": -1}}, "epochs: Input should be greater than 0"),
    ({"family": "extractive_qa", "max_seq_length": 128, "doc_stride": 100, "metrics": ["f1"], "primary_metric": "f1"},
     "doc_stride 100 leaves no new passage tokens per window: it must be below max_seq_length - 67 = 61"),
    ({"family": "single_classification", "labels": ["0", "1"], "display_names": {"2": "maybe"}},
     "display_names: ['2'] are not among the labels"),
    ({"family": "single_classification", "display_names": {"0": "same", "1": "same"}}, "distinct names"),
    ({"family": "pair_regression", "metrics": ["pearson"], "primary_metric": "pearson", "display_names": {"0": "x"}},
     "display_names is for single_classification and pair_classification, not 'pair_regression'"),
])
def test_spec_problems_that_need_no_data_fail_when_the_spec_loads(tmp_path, fields, problem):
    import json

    path = tmp_path / "spec.yaml"
    path.write_text(json.dumps({**BASE, **fields}), encoding="utf-8")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert problem in str(info.value), str(info.value)


def test_short_qa_windows_get_a_stride_that_fits_and_display_names_map_labels():
    qa = TaskSpec(**{**BASE, "family": "extractive_qa", "max_seq_length": 128, "metrics": ["f1"], "primary_metric": "f1"})
    assert qa.doc_stride == (128 - 67) // 2
    spec = load_spec("sst2")
    assert (spec.display_name("1"), spec.display_name("0"), spec.display_name("x")) == ("positive", "negative", "x")
    ner = load_spec("conll2003_ner")
    assert ner.repair_tags and get_family(ner.family).rows.task_settings(ner) == {"tag_scheme": "IOB1"}
