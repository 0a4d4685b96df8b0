"""Serving precisions on a tiny random model: what `prepare` does to the model, what `auto` picks, and the gate's
verdict (bert_core.serving_precision, bert_core.precision_gate)."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from torch import nn

from bert_core import BertConfig, BertEncoder, BertTokenizer, get_family, save_finetuned
from bert_core.precision_gate import DevPredictions, judge
from bert_core.predict import Predictor
from bert_core.serving_precision import prepare, resolve
from bert_core.spec import load_spec
from bert_core.training import TrainConfig
from bert_core.training import config as training_config
from bert_core.training.inference import autocast
from tests.tiny_models import TINY, VOCAB

ROWS = [{"text_a": t} for t in ("the movie was good", "a terrible boring plot", "very fun , not bad !",
                                "john visited paris", "the film", "it was not a great movie at all")]


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return get_family("single_classification").build_model(BertEncoder(BertConfig(**TINY)), ["neg", "pos"]).eval()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    (root / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    meta = {"family": "single_classification", "label_names": ["neg", "pos"], "task": "demo", "max_seq_length": 128}
    return save_finetuned(_model(), BertTokenizer.from_vocab(root / "vocab.txt"), root / "model", meta)


def _probabilities(predictions: list[dict]) -> torch.Tensor:
    return torch.tensor([[p["probabilities"][k] for k in ("neg", "pos")] for p in predictions])


def test_int8_predictor_quantizes_every_linear_layer_and_stays_close_to_fp32(model_dir):
    fp32, int8 = Predictor(model_dir), Predictor(model_dir, precision="int8")
    quantized = [m for m in int8.model.modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]
    # 2 layers x (qkv, out, up, down) + the pooler + the classifier: the encoder's and the head's
    assert len(quantized) == 2 * 4 + 2 and not any(isinstance(m, nn.Linear) for m in int8.model.modules())
    assert int8.precision == "int8" and not any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear)
                                                for m in fp32.model.modules())
    p32, p8 = _probabilities(fp32.predict(ROWS)), _probabilities(int8.predict(ROWS))
    assert not torch.equal(p32, p8), "int8 predicts from int8 weights, not the fp32 ones"
    torch.testing.assert_close(p8, p32, atol=0.02, rtol=0)


def test_bf16_casts_linear_weights_once_and_predicts_what_autocast_does():
    """bf16 serving = training's autocast math: the linear weights hold exactly the bf16 values autocast rounds
    them to on every call, so the logits are identical; LayerNorm and embeddings stay fp32."""
    reference, served = _model(), prepare(_model(), "bf16")
    assert served.classifier.weight.dtype == torch.bfloat16
    assert served.bert.embeddings.LayerNorm.weight.dtype == torch.float32
    ids = torch.randint(5, len(VOCAB), (3, 11))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    with torch.no_grad(), autocast("bf16", torch.device("cpu")):
        expected, got = reference(**inputs).logits, served(**inputs).logits
    assert torch.equal(got, expected)


def test_fp32_leaves_the_model_as_it_was():
    model = _model()
    before = copy.deepcopy(model.state_dict())
    prepare(model, "fp32")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_auto_is_bf16_only_where_the_cpu_has_it_natively_as_training_decides(monkeypatch):
    monkeypatch.setattr(training_config, "cpu_has_native_bf16", lambda: False)
    assert resolve("auto") == "fp32" == TrainConfig(precision="auto").resolved_precision(torch.device("cpu"))
    monkeypatch.setattr(training_config, "cpu_has_native_bf16", lambda: True)
    assert resolve("auto") == "bf16" == TrainConfig(precision="auto").resolved_precision(torch.device("cpu"))
    assert [resolve(p) for p in ("fp32", "bf16", "int8")] == ["fp32", "bf16", "int8"]
    with pytest.raises(ValueError, match="unknown serving precision 'fp16'"):
        resolve("fp16")


def test_the_gate_predicts_the_dev_rows_in_the_precision_it_judges(tmp_path, monkeypatch):
    """dev_predictions goes through evaluate_model_dir in the precision asked: int8's scores are int8's own."""
    from bert_core.precision_gate import dev_predictions

    monkeypatch.setenv("BERTFLOW_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    meta = {"family": "single_classification", "label_names": ["0", "1"], "task": "sst2", "max_seq_length": 128}
    torch.manual_seed(0)
    model = get_family("single_classification").build_model(BertEncoder(BertConfig(**TINY)), ["0", "1"]).eval()
    folder = save_finetuned(model, BertTokenizer.from_vocab(tmp_path / "vocab.txt"), tmp_path / "m", meta)
    rows = [{**r, "text_b": None, "label": str(i % 2)} for i, r in enumerate(ROWS)]
    fp32, int8 = (dev_predictions(folder, load_spec("sst2"), rows, "fp", p) for p in ("fp32", "int8"))
    assert (fp32.precision, int8.precision) == ("fp32", "int8") and "accuracy" in int8.metrics
    scores = [[p["score"] for p in d.predictions] for d in (fp32, int8)]
    assert scores[0] != scores[1] and max(abs(a - b) for a, b in zip(*scores, strict=True)) < 0.02


# ---- the gate ---------------------------------------------------------------------------------------------
def _dev(n: int, wrong: int, seed: int = 0) -> tuple[list[dict], DevPredictions]:
    """n rows and predictions with the first `wrong` of them wrong."""
    rng = random.Random(seed)
    rows = [{"text_a": f"s{i}", "text_b": None, "label": rng.choice("01"), "_source": f"x:{i}"} for i in range(n)]
    predictions = [{"label": ("1" if r["label"] == "0" else "0") if i < wrong else r["label"], "score": 0.9,
                    "probabilities": {}} for i, r in enumerate(rows)]
    return rows, DevPredictions("int8", {"accuracy": 1 - wrong / n}, predictions)


def test_the_gate_passes_the_same_answers_and_refuses_a_margin_below_them():
    spec = load_spec("sst2")
    rows, fp32 = _dev(400, 40)
    same = judge(spec, rows, fp32, fp32, margin=0.005, label_names=["0", "1"], n_resamples=200)
    assert same.passed and same.delta == same.low == same.high == 0 and same.n_rows == 400
    assert "passed" in same.reason and same.tags()["gate.passed"] == "true"
    refused = judge(spec, rows, fp32, fp32, margin=-1, label_names=["0", "1"], n_resamples=200)
    assert not refused.passed and "refused" in refused.reason


def test_the_gate_refuses_a_candidate_worse_by_more_than_the_margin():
    spec = load_spec("sst2")
    rows, fp32 = _dev(400, 40)
    _, worse = _dev(400, 60)  # 20 more mistakes on the same rows: 5 points lower
    gate = judge(spec, rows, worse, fp32, margin=0.005, label_names=["0", "1"], n_resamples=200)
    assert not gate.passed and gate.delta == pytest.approx(-0.05) and gate.low < -0.005
    assert judge(spec, rows, worse, fp32, margin=0.2, label_names=["0", "1"], n_resamples=200).passed


FAMILY_ROWS = {
    "single_classification": ({"text_a": "a good film"}, ["neg", "pos"]),
    "pair_classification": ({"text_a": "john visited paris", "text_b": "john played"}, ["e", "n", "c"]),
    "pair_regression": ({"text_a": "a good film", "text_b": "a great movie"}, None),
    "token_tagging": ({"tokens": ["john", "visited", "paris"]}, ["O", "B-PER", "B-LOC"]),
    "extractive_qa": ({"question": "who visited paris ?", "context": "john visited paris ."}, None),
    "multi_label_classification": ({"text_a": "a good film"}, ["joy", "anger", "fear"]),
}


@pytest.mark.parametrize("family", list(FAMILY_ROWS))
@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_every_family_serves_in_each_precision(tmp_path, family, precision):
    row, labels = FAMILY_ROWS[family]
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    torch.manual_seed(0)
    model = get_family(family).build_model(BertEncoder(BertConfig(**TINY)), labels).eval()
    meta = {"family": family, "label_names": labels, "task": "demo", "max_seq_length": 128}
    if family == "extractive_qa":
        meta |= {"doc_stride": 32, "max_answer_length": 10}
    folder = save_finetuned(model, BertTokenizer.from_vocab(tmp_path / "vocab.txt"), tmp_path / "m", meta)
    fp32, other = Predictor(folder).predict([row]), Predictor(folder, precision=precision).predict([row])
    assert len(other) == len(fp32) == 1 and other[0].keys() == fp32[0].keys()
