"""Every built-in spec with local files loads the real data with the official row counts."""

import random
import shutil
import time

import datasets
import pytest

from bert_core import loading
from bert_core.loading import TaskData, carve_rows, load_task_data
from bert_core.spec import CarveRule, load_spec
from bert_core.validation import DataError

# (train, eval) rows as SOURCES.md states them.
COUNTS = {
    "cola": (8551, 1043),
    "sst2": (67349, 872),
    "stsb": (5749, 1500),
    "mrpc": (3668, 408),
    "rte": (2490, 277),
    "conll2003_pos": (14041, 3250),
    "conll2003_ner": (14041, 3250),
}
LABELS = {
    "cola": ["0", "1"],
    "sst2": ["0", "1"],
    "mrpc": ["0", "1"],
    "rte": ["entailment", "not_entailment"],
    "snli": ["entailment", "neutral", "contradiction"],
    "conll2003_ner": ["B-LOC", "B-MISC", "B-ORG", "I-LOC", "I-MISC", "I-ORG", "I-PER", "O"],
    "stsb": None,
    "squad": None,
}


@pytest.fixture(scope="module")
def load(data_dir):
    """Load each spec once per module: the real files take a second or two in total."""
    cache: dict[str, TaskData] = {}

    def _load(name: str) -> TaskData:
        if name not in cache:
            cache[name] = load_task_data(name, data_dir)
        return cache[name]

    return _load


@pytest.mark.parametrize("name", list(COUNTS))
def test_row_counts(load, name):
    data = load(name)
    assert (len(data.splits["train"]), len(data.splits["eval"])) == COUNTS[name]
    assert data.source.startswith("local:")
    assert data.dropped == []


@pytest.mark.parametrize("name", list(LABELS))
def test_label_names(load, name):
    assert load(name).label_names == LABELS[name]


def test_conll_token_counts_and_test_split(load):
    data = load("conll2003_ner")
    assert sum(len(t) for t in data.splits["train"]["tokens"]) == 203_621
    assert sum(len(t) for t in data.splits["eval"]["tokens"]) == 51_362
    assert len(data.splits["test"]) == 3453
    assert len(load("conll2003_pos").label_names) == 45  # Penn Treebank tags seen in train


def test_canonical_rows_carry_their_source_line(load):
    sst2 = load("sst2").splits["train"][0]
    assert sst2 == {"text_a": "hide new secretions from the parental units ", "text_b": None,
                    "label": "0", "_source": "SST-2/train.tsv:2"}
    cola = load("cola").splits["train"][0]  # no header: first row is line 1
    assert cola["_source"] == "CoLA/train.tsv:1" and cola["label"] == "1"
    mrpc = load("mrpc").splits["train"][0]  # the BOM did not leak into the header
    assert mrpc["label"] == "1" and mrpc["text_a"].startswith("Amrozi accused")
    stsb = load("stsb").splits["train"][0]
    assert stsb["label"] == 5.0 and isinstance(stsb["label"], float)
    ner = load("conll2003_ner").splits["train"][0]
    assert ner["tokens"][:3] == ["EU", "rejects", "German"] and ner["tags"][:3] == ["I-ORG", "O", "I-MISC"]
    assert ner["_source"] == "conll2003/eng.train:3"


def test_snli_carve_keeps_every_row_and_separates_premises(load):
    data = load("snli")
    train, eval_ = data.splits["train"], data.splits["eval"]
    assert len(train) + len(eval_) == 9842
    assert len(eval_) > 500 and len(train) > 5000
    assert not set(train["text_a"]) & set(eval_["text_a"])
    assert data.carve["by"] == "text_a" and data.carve["eval_rows"] == len(eval_)


def test_squad_carve_is_by_title_disjoint_and_deterministic(load, data_dir):
    data = load("squad")
    train, eval_ = data.splits["train"], data.splits["eval"]
    assert len(train) + len(eval_) == 10_570
    assert not set(train["title"]) & set(eval_["title"])
    assert data.carve["train_groups"] + data.carve["eval_groups"] == 48  # articles
    assert sum(len(a["text"]) for s in (train, eval_) for a in s["answers"]) == 34_726
    again = load_task_data("squad", data_dir)
    assert again.splits["eval"]["id"] == eval_["id"]
    assert again.carve == data.carve
    assert eval_[0]["_source"].startswith("squad_v1.1/dev-v1.1.json:data[")


def test_carve_does_not_depend_on_row_order():
    rows = [{"title": f"t{i % 40}", "n": i} for i in range(400)]
    rule = CarveRule(by="title", eval_fraction=0.25, seed=3)
    _, eval_a, _ = carve_rows(rows, rule, "f")
    shuffled = rows[:]
    random.Random(0).shuffle(shuffled)
    _, eval_b, _ = carve_rows(shuffled, rule, "f")
    assert sorted(r["n"] for r in eval_a) == sorted(r["n"] for r in eval_b)


def test_fingerprint_stable_and_sensitive_to_file_bytes(data_dir, tmp_path):
    first, second = load_task_data("rte", data_dir), load_task_data("rte", data_dir)
    assert first.fingerprint == second.fingerprint
    copy = tmp_path / "RTE"
    shutil.copytree(data_dir / "RTE", copy)
    with open(copy / "dev.tsv", "a", encoding="utf-8") as f:
        f.write("277\tOne more premise.\tOne more hypothesis.\tentailment\n")
    changed = load_task_data("rte", tmp_path)
    assert len(changed.splits["eval"]) == 278
    assert changed.fingerprint != first.fingerprint
    assert load_task_data("rte", data_dir, max_rows={"train": 10}).fingerprint != first.fingerprint


def test_sst2_full_train_loads_fast(data_dir):
    start = time.perf_counter()
    data = load_task_data("sst2", data_dir)
    assert len(data.splits["train"]) == 67_349
    assert time.perf_counter() - start < 10  # about half a second on a laptop


def test_max_rows_caps_a_split(data_dir):
    data = load_task_data("cola", data_dir, max_rows={"train": 100})
    assert (len(data.splits["train"]), len(data.splits["eval"])) == (100, 1043)
    with pytest.raises(ValueError, match="unknown split"):
        load_task_data("cola", data_dir, max_rows={"dev": 1})


def test_data_dir_defaults_to_env(data_dir, monkeypatch):
    monkeypatch.setenv("BERTFLOW_DATA_DIR", str(data_dir))
    assert len(load_task_data("rte").splits["eval"]) == 277


def test_hub_only_spec_offline_fails_fast_and_says_what_to_do(monkeypatch):
    monkeypatch.setattr(loading, "_hub_unreachable", lambda: "https://huggingface.co is unreachable (test)")
    with pytest.raises(DataError, match="BERTFLOW_DATA_DIR"):
        load_task_data("mnli")


def test_hub_rows_become_canonical(monkeypatch):
    """The hub path, with load_dataset faked: ClassLabel ids become names, label -1 rows are skipped."""
    features = datasets.Features(premise=datasets.Value("string"), hypothesis=datasets.Value("string"),
                                 label=datasets.ClassLabel(names=["entailment", "neutral", "contradiction"]))

    def split(labels):
        return datasets.Dataset.from_dict({"premise": ["A man sleeps."] * len(labels),
                                           "hypothesis": ["A person rests."] * len(labels),
                                           "label": labels}, features=features)

    fake = datasets.DatasetDict(train=split([0, 1, 2, -1]), validation_matched=split([2]),
                                validation_mismatched=split([1, 0]))
    monkeypatch.setattr(loading, "_hub_unreachable", lambda: None)
    monkeypatch.setattr(loading.datasets, "load_dataset", lambda *a, **k: fake)
    data = load_task_data(load_spec("mnli"))
    assert data.splits["train"]["label"] == ["entailment", "neutral", "contradiction"]
    assert data.splits["train"][0]["_source"] == "nyu-mll/glue[train]:row 0"
    assert len(data.splits["validation_mismatched"]) == 2
    assert data.dropped == ["nyu-mll/glue[train]: skipped 1 rows with label -1 (no gold label)"]
    assert data.source == "hub:nyu-mll/glue"
    assert data.fingerprint.startswith("hub:nyu-mll/glue:mnli@main/")
