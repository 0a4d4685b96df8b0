"""The cheaper CPU dropout mask (bert_core/dropout.py): its distribution, its output and gradient given the mask it
drew, the written-out attention against SDPA, a mask replayed by activation checkpointing, and the choice of
mask."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from bert_core import dropout as dropout_module
from bert_core.dropout import LANES, Dropout, dropout, keep_mask, mask_source
from bert_core.model import attention


@pytest.fixture
def lanes(monkeypatch):
    """This process's dropout uses the lane mask, whichever is faster here."""
    monkeypatch.setenv("BERTFLOW_DROPOUT_MASK", "lanes")
    mask_source.cache_clear()
    yield
    mask_source.cache_clear()


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_every_lane_of_a_draw_keeps_at_the_asked_rate(p):
    """Each of the four 16-bit lanes of a 64-bit draw keeps an element with probability 1 - round(p*65536)/65536,
    within 5 standard errors over 2^22 elements, and the lanes are not correlated with their neighbours."""
    keep, scale = keep_mask((1 << 22,), p, torch.Generator().manual_seed(1))
    rate = 1 - round(p * LANES) / LANES
    assert scale == pytest.approx(1 / rate)
    se = (rate * (1 - rate) / (1 << 20)) ** 0.5
    for lane in range(4):
        assert abs(keep[lane::4].double().mean().item() - rate) < 5 * se, lane
    both = (keep[:-1] & keep[1:]).double().mean().item()  # neighbours: P(both kept) = rate^2 when independent
    assert abs(both - rate**2) < 5 * (rate**2 * (1 - rate**2) / (1 << 22)) ** 0.5


def test_output_and_gradient_are_the_input_masked_and_scaled(lanes):
    """dropout(x) = x * scale where the mask drawn at that RNG state keeps, else 0; its gradient is the same mask
    times scale; the expected output is the input."""
    x = torch.randn(8, 5, 16, requires_grad=True)
    torch.manual_seed(3)
    y = dropout(x, 0.1)
    torch.manual_seed(3)
    keep, scale = keep_mask(x.shape, 0.1)
    torch.testing.assert_close(y, torch.where(keep, x.detach() * scale, torch.zeros(())), rtol=0, atol=0)
    y.backward(torch.ones_like(y))
    torch.testing.assert_close(x.grad, keep.float() * scale, rtol=0, atol=0)
    assert 0.8 < keep.float().mean() < 1.0

    ones = torch.ones(1 << 20)
    assert dropout(ones, 0.1).mean().item() == pytest.approx(1.0, abs=0.005)


def test_eval_and_zero_p_are_the_identity_and_p_near_one_is_torchs_dropout(lanes):
    x = torch.randn(4, 7)
    module = Dropout(0.3).eval()
    assert module(x) is x and dropout(x, 0.0) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    torch.manual_seed(0)  # a p that rounds to all 65536 lanes dropped: F.dropout's own, not a division by zero
    near_one = dropout(x, 0.999995)
    torch.manual_seed(0)
    assert torch.equal(near_one, F.dropout(x, 0.999995))
    with pytest.raises(ValueError, match="between 0 and 1"):
        Dropout(1.5)


def test_attention_written_out_equals_sdpa_and_its_dropout_is_the_drawn_mask(lanes):
    """Without dropout, the written-out attention is SDPA's result within float rounding (padding masked); with
    dropout, it is softmax * (the mask drawn at that RNG state) * scale, then @ v."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 6, 4) for _ in range(3))
    mask = torch.ones(2, 1, 1, 6, dtype=torch.bool)
    mask[1, ..., 4:] = False
    torch.testing.assert_close(attention(q, k, v, mask, 0.0), F.scaled_dot_product_attention(q, k, v, attn_mask=mask))

    torch.manual_seed(5)
    y = attention(q, k, v, mask, 0.2)
    torch.manual_seed(5)
    keep, scale = keep_mask((2, 3, 6, 6), 0.2)
    probs = ((q / 2) @ k.transpose(-2, -1)).masked_fill(~mask, float("-inf")).softmax(-1)
    torch.testing.assert_close(y, (probs * keep * scale) @ v)


def test_activation_checkpointing_recomputes_the_same_mask(lanes):
    """The recompute path of big attention maps (model.py) replays the RNG state: the same output and the same
    gradients as keeping the activations."""
    q, k, v = (torch.randn(2, 3, 6, 4, requires_grad=True) for _ in range(3))
    grads = []
    for recompute in (False, True):
        torch.manual_seed(9)
        y = (checkpoint(attention, q, k, v, None, 0.3, use_reentrant=False) if recompute
             else attention(q, k, v, None, 0.3))
        grads.append([y.detach(), *torch.autograd.grad(y.square().sum(), (q, k, v))])
    for kept, recomputed in zip(*grads):
        torch.testing.assert_close(kept, recomputed, rtol=0, atol=0)


def test_the_mask_is_a_rule_of_the_machine_and_the_environment_overrides_it(monkeypatch):
    """No timing: the same choice in every process of a machine (a resumed run draws the masks the uninterrupted
    one drew): torch's on Intel CPUs, the lanes elsewhere; $BERTFLOW_DROPOUT_MASK overrides, a wrong value is
    named."""
    monkeypatch.delenv("BERTFLOW_DROPOUT_MASK", raising=False)
    mask_source.cache_clear()
    try:
        for vendor, expected in (("GenuineIntel", "torch"), ("AuthenticAMD", "lanes"), (None, "lanes")):
            monkeypatch.setattr(dropout_module, "cpu_vendor", lambda vendor=vendor: vendor)
            mask_source.cache_clear()
            assert mask_source() == expected, vendor

        monkeypatch.setenv("BERTFLOW_DROPOUT_MASK", "torch")
        mask_source.cache_clear()
        assert mask_source() == "torch"
        monkeypatch.setenv("BERTFLOW_DROPOUT_MASK", "fast")
        mask_source.cache_clear()
        with pytest.raises(ValueError, match="BERTFLOW_DROPOUT_MASK='fast': expected one of lanes, torch"):
            mask_source()
    finally:
        mask_source.cache_clear()
