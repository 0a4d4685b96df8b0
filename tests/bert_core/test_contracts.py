"""Contracts pinned where they live, so that a plausible bug fails here and not three layers away:
the regression loss is MSE, regression scores are not clipped, a span never ends before it starts, and
segment ids reach the encoder in training, evaluation, prediction and serving."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from bert_core import BertConfig, BertEncoder, get_family, save_finetuned
from bert_core.families.qa import best_span, window_best_span
from bert_core.predict import Predictor
from bert_core.spec import TaskSpec
from bert_core.tokenizer import BertTokenizer
from bert_core.training import TrainConfig, evaluate_model_dir, fit
from tests.tiny_models import TINY, VOCAB, write_tiny_checkpoint

pytest.importorskip("transformers")


def test_the_regression_loss_is_mean_squared_error():
    torch.manual_seed(0)
    model = get_family("pair_regression").build_model(BertEncoder(BertConfig(**TINY)), None).eval()
    ids = torch.randint(5, len(VOCAB), (3, 7))
    labels = torch.tensor([0.5, 4.0, 2.5])
    out = model(ids, torch.zeros_like(ids), torch.ones_like(ids), labels=labels)
    assert out.loss.item() == pytest.approx(F.mse_loss(out.logits, labels).item())
    assert out.loss.item() != pytest.approx(F.l1_loss(out.logits, labels).item())


def test_regression_scores_are_not_clipped_to_the_label_range():
    family = get_family("pair_regression")
    rows = [{"text_a": "a", "text_b": "b"}] * 3
    features = [{"example_index": i} for i in range(3)]
    scores = family.predictions.postprocess([np.array(7.25), np.array(-1.5), np.array(2.0)], features, rows, None, {})
    assert [p["score"] for p in scores] == [7.25, -1.5, 2.0]


def test_a_span_never_ends_before_it_starts():
    # The best start is at 7 and the best end at 5: the unconstrained best pair (7, 5) is illegal.
    start = torch.full((1, 10), -5.0)
    end = torch.full((1, 10), -5.0)
    start[0, 7], start[0, 3] = 9.0, 1.0
    end[0, 5], end[0, 8] = 9.0, 2.0
    allowed = torch.ones(1, 10, dtype=torch.bool)
    i, j, score = best_span(start, end, allowed, max_answer_len=5)
    assert (i.item(), j.item(), score.item()) == (7, 8, 11.0)  # 9 + 2 beats 1 + 9 = 10 at (3, 5)
    logits = torch.stack([start[0], end[0]], dim=-1).numpy()
    for n_best in (1, 2, 20):  # the n-best search (and its exhaustive fallback) obey the same rule
        assert window_best_span(logits, np.ones(10, dtype=bool), n_best, 5) == (11.0, 7, 8)


class SegmentSpy:
    """Records the token_type_ids every forward pass of the encoder receives."""

    def __init__(self, encoder: torch.nn.Module):
        self.seen: list[torch.Tensor] = []
        encoder.register_forward_pre_hook(self.record, with_kwargs=True)

    def record(self, module, args, kwargs):
        token_type_ids = args[1] if len(args) > 1 else kwargs.get("token_type_ids")
        self.seen.append(None if token_type_ids is None else token_type_ids.detach().clone())

    def second_segment_seen(self) -> bool:
        return bool(self.seen) and all(t is not None and t.max().item() == 1 for t in self.seen)


PAIR_SPEC = TaskSpec(name="pairs", family="pair_classification", labels=["no", "yes"],
                     local={"format": "tsv", "files": {"train": "a.tsv", "eval": "b.tsv"}},
                     metrics=["accuracy"], primary_metric="accuracy", max_seq_length=32)
PAIRS = [{"text_a": "john visited paris", "text_b": "john played in the city", "label": ("no", "yes")[i % 2],
          "_source": f"x:{i}"} for i in range(16)]


def test_segment_ids_reach_the_encoder_in_training_evaluation_prediction_and_serving(tmp_path, monkeypatch):
    """A pair's second text has segment id 1 all the way from the features to the encoder: dropping
    token_type_ids anywhere (the batch keys, collate, a head's forward) makes every forward see zeros."""
    seen = {}
    original = get_family("pair_classification").build_model

    def build_and_spy(encoder, label_names):
        model = original(encoder, label_names)
        seen.setdefault("spies", []).append(SegmentSpy(model.bert))
        return model

    monkeypatch.setattr(get_family("pair_classification"), "build_model", build_and_spy)
    cfg = TrainConfig(batch_size=8, epochs=1, precision="fp32", progress_bar=False, checkpoint_every=100)
    result = fit(PAIR_SPEC, cfg, tmp_path / "out", PAIRS, PAIRS[:4], ["no", "yes"],
                 pretrained=write_tiny_checkpoint(tmp_path / "tiny"), data_fingerprint="pairs", cache_dir=tmp_path / "c")
    (training,) = seen["spies"]  # training steps and the evaluations inside fit
    assert len(training.seen) >= 3 and training.second_segment_seen()

    evaluate_model_dir(result.model_dir, PAIR_SPEC, PAIRS[:4], "pairs", cache_dir=tmp_path / "c")
    assert seen["spies"][-1].second_segment_seen(), "evaluation"

    predictor = Predictor(result.model_dir)
    spy = SegmentSpy(predictor.model.bert)
    predictor.predict([{"text_a": "john visited paris", "text_b": "the city"}])
    assert spy.second_segment_seen(), "prediction"


def test_the_pyfunc_predicts_what_the_model_itself_predicts(tmp_path):
    """The served model's label and score for a row are the fine-tuned model's own, computed here by hand
    from its logits: request columns, the tokenizer, segment ids and softmax all line up."""
    from mlflow.pyfunc import PythonModelContext

    from tracking.packaging import BertPyfunc

    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer.from_vocab(tmp_path / "vocab.txt")
    torch.manual_seed(3)
    model = get_family("pair_classification").build_model(BertEncoder(BertConfig(**TINY)), ["no", "yes"]).eval()
    folder = save_finetuned(model, tokenizer, tmp_path / "model",
                            {"family": "pair_classification", "label_names": ["no", "yes"], "max_seq_length": 32})
    served = BertPyfunc()
    served.load_context(PythonModelContext(artifacts={"model_dir": str(folder)}, model_config={}))
    rows = [("john visited paris", "the city"), ("a good film", "a bad movie"), ("the cafe", "john played")]
    answer = served.predict(None, pd.DataFrame({"text_a": [a for a, _ in rows], "text_b": [b for _, b in rows]}))
    for (a, b), (_, got) in zip(rows, answer.iterrows(), strict=True):
        enc = tokenizer.encode(a, b, max_length=32)
        assert max(enc.token_type_ids) == 1
        with torch.no_grad():
            logits = model(torch.tensor([enc.input_ids]), torch.tensor([enc.token_type_ids]),
                           torch.ones(1, len(enc), dtype=torch.long)).logits[0]
        probs = torch.softmax(logits.double(), -1)
        assert got["label_value"] == ["no", "yes"][int(probs.argmax())]
        assert got["score"] == pytest.approx(float(probs.max()), abs=1e-6)


def test_recomputed_attention_gives_the_same_loss_and_gradients(monkeypatch):
    """Large attention maps are recomputed in backward to bound memory (bert_core.model.RECOMPUTE_ATTENTION_ABOVE);
    the RNG state is replayed, so the dropout masks and hence every gradient are those of the plain path."""
    import bert_core.model as model_module

    def loss_and_grads(threshold, dropout_seed=1):
        monkeypatch.setattr(model_module, "RECOMPUTE_ATTENTION_ABOVE", threshold)
        torch.manual_seed(0)
        model = get_family("extractive_qa").build_model(
            BertEncoder(BertConfig(**{**TINY, "attention_probs_dropout_prob": 0.3})), None).train()
        ids = torch.randint(5, len(VOCAB), (4, 24))
        mask = torch.ones_like(ids)
        mask[1, 20:] = 0
        positions = torch.tensor([1, 2, 3, 0])
        torch.manual_seed(dropout_seed)
        out = model(ids, torch.zeros_like(ids), mask, start_positions=positions, end_positions=positions)
        out.loss.backward()
        return out.loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    calls = []
    real_checkpoint = model_module.checkpoint
    monkeypatch.setattr(model_module, "checkpoint", lambda *a, **k: calls.append(1) or real_checkpoint(*a, **k))
    kept_loss, kept = loss_and_grads(float("inf"))
    assert not calls
    recomputed_loss, recomputed = loss_and_grads(0)
    assert len(calls) == TINY["num_hidden_layers"]  # every layer took the recompute path
    assert recomputed_loss == kept_loss and kept.keys() == recomputed.keys()
    for name, grad in kept.items():
        assert torch.equal(grad, recomputed[name]), name
    assert loss_and_grads(float("inf"), dropout_seed=2)[0] != kept_loss  # dropout acts: the replay matters


@pytest.mark.parametrize("family_name, labels, target", [
    ("pair_classification", ["no", "maybe", "yes"], torch.tensor([0, 2, 1, 1])),
    ("pair_regression", None, torch.tensor([0.5, 4.0, 2.5, 1.0])),
])
def test_the_cls_only_last_layer_gives_the_full_layers_logits_and_gradients(family_name, labels, target):
    """[CLS] heads run the encoder's last layer for the [CLS] position alone (``SequenceClassifier.cls_only``):
    the same logits, loss and gradients as the whole layer, with padding and segment ids in the batch."""
    torch.manual_seed(0)
    config = BertConfig(**{**TINY, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0})
    model = get_family(family_name).build_model(BertEncoder(config), labels).train()
    ids = torch.randint(5, len(VOCAB), (4, 11))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    segments = torch.zeros_like(ids)
    segments[:, 5:] = 1

    def run(cls_only):
        model.cls_only = cls_only
        model.zero_grad()
        out = model(ids, segments, mask, labels=target)
        out.loss.backward()
        return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    (short, short_grads), (full, full_grads) = run(True), run(False)
    torch.testing.assert_close(short.logits, full.logits, rtol=1e-5, atol=1e-6)
    assert short.loss.item() == pytest.approx(full.loss.item(), rel=1e-5)
    assert short_grads.keys() == full_grads.keys()
    for name, grad in full_grads.items():
        torch.testing.assert_close(short_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    sequence, _ = model.bert(ids, segments, mask, cls_only=True)
    assert sequence.shape == (4, 1, TINY["hidden_size"])  # the last layer computed one position
