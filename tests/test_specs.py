"""Built-in task specs: all parse, and each states the metrics and sources the design asks for."""

import pytest

from bert_core.spec import FAMILY_METRICS, SpecError, TaskSpec, builtin_specs, load_spec

BUILTINS = ["cola", "conll2003_ner", "conll2003_pos", "mnli", "mrpc", "rte", "snli", "squad", "sst2", "stsb"]


def test_builtin_specs_lists_the_ten():
    assert builtin_specs() == BUILTINS


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_parses_and_is_consistent(name):
    spec = load_spec(name)
    assert isinstance(spec, TaskSpec)
    assert spec.name == name
    assert spec.primary_metric in spec.metrics
    assert set(spec.metrics) <= set(FAMILY_METRICS[spec.family])
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
