"""The four heads on a tiny random encoder: shapes, finite loss, learning, save/load round trip."""

from __future__ import annotations

import pytest
import torch

from bert_core import BertConfig, BertEncoder, get_family, load_finetuned, save_finetuned
from bert_core.families import IGNORE_INDEX, best_span
from bert_core.tokenizer import BertTokenizer
from tests.tiny_models import TINY, VOCAB

B, T = 4, 12
LABELS = {
    "single_classification": ["neg", "pos"],
    "pair_classification": ["entailment", "neutral", "contradiction"],
    "pair_regression": None,
    "token_tagging": ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"],
    "extractive_qa": None,
}


def _model(family_name: str, seed: int = 0):
    torch.manual_seed(seed)
    return get_family(family_name).build_model(BertEncoder(BertConfig(**TINY)), LABELS[family_name])


def _batch(family_name: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, len(VOCAB), (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 8:] = 0  # one padded row
    batch = {"input_ids": ids, "token_type_ids": (torch.arange(T) >= 6).long().expand(B, T).clone(), "attention_mask": mask}
    if family_name in ("single_classification", "pair_classification"):
        batch["labels"] = torch.randint(0, len(LABELS[family_name]), (B,), generator=g)
    elif family_name == "pair_regression":
        batch["labels"] = torch.rand(B, generator=g) * 5
    elif family_name == "token_tagging":
        labels = torch.randint(0, 5, (B, T), generator=g)
        labels[:, 0] = IGNORE_INDEX
        labels[mask == 0] = IGNORE_INDEX
        batch["labels"] = labels
    else:
        batch["start_positions"] = torch.randint(6, 10, (B,), generator=g)
        batch["end_positions"] = batch["start_positions"] + 1
    return batch


EXPECTED_SHAPES = {
    "single_classification": (B, 2), "pair_classification": (B, 3), "pair_regression": (B,),
    "token_tagging": (B, T, 5), "extractive_qa": (B, T, 2),
}


@pytest.mark.parametrize("family_name", list(LABELS))
def test_shapes_and_finite_loss(family_name):
    model = _model(family_name)
    batch = _batch(family_name)
    out = model(**batch)
    assert out.logits.shape == EXPECTED_SHAPES[family_name]
    assert out.loss is not None and torch.isfinite(out.loss)
    inputs_only = {k: batch[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
    assert model(**inputs_only).loss is None


@pytest.mark.parametrize("family_name", list(LABELS))
def test_a_few_steps_lower_the_loss(family_name):
    model = _model(family_name).train()
    batch = _batch(family_name)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    first = model(**batch).loss.item()
    for _ in range(15):
        opt.zero_grad()
        model(**batch).loss.backward()
        opt.step()
    model.eval()
    assert model(**batch).loss.item() < 0.7 * first


@pytest.mark.parametrize("family_name", list(LABELS))
def test_save_load_round_trip(family_name, tmp_path):
    model = _model(family_name, seed=3).eval()
    tokenizer = BertTokenizer.from_vocab(_vocab_file(tmp_path))
    meta = {"family": family_name, "label_names": LABELS[family_name], "task": "demo"}
    save_finetuned(model, tokenizer, tmp_path / "model", meta)
    loaded, loaded_tok, loaded_meta = load_finetuned(tmp_path / "model")
    assert loaded_meta == meta
    assert type(loaded) is type(model)
    batch = {k: v for k, v in _batch(family_name).items() if k in ("input_ids", "token_type_ids", "attention_mask")}
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, loaded(**batch).logits)
    assert loaded_tok.encode("the movie was good").input_ids == tokenizer.encode("the movie was good").input_ids


def _vocab_file(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return path


def test_best_span_is_the_argmax_over_allowed_spans():
    torch.manual_seed(0)
    start, end = torch.randn(3, 10), torch.randn(3, 10)
    allowed = torch.zeros(3, 10, dtype=torch.bool)
    allowed[:, 4:] = True
    allowed[2, :] = False  # no passage token at all
    i, j, score = best_span(start, end, allowed, max_answer_len=3)
    for b in range(2):  # brute force over every legal span
        best = max(
            ((start[b, a] + end[b, c]).item(), a, c)
            for a in range(4, 10) for c in range(a, min(a + 3, 10))
        )
        assert (score[b].item(), i[b].item(), j[b].item()) == pytest.approx(best)
        assert 4 <= i[b] <= j[b] < i[b] + 3
    assert score[2] == float("-inf")
