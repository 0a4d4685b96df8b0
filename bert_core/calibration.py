"""How far a classifier's scores are from frequencies, and temperature scaling to bring them closer.

A fine-tuned network's softmax (or sigmoid) outputs are over-confident: of the answers scored 0.95, fewer than 95%
are right. Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks", section 4.2) divides
every logit by one scalar T > 0 fitted on held-out labelled rows (the eval split) by minimising their negative
log-likelihood. One scalar for all classes cannot reorder a row's logits, so the argmax (and a sigmoid's side of
0.5) is unchanged: accuracy and every label the model answers stay the same, only the scores move.

Two kinds of scores (``kind``):
- ``"softmax"``: logits (N, C), targets (N,) class ids; one answer per row.
- ``"sigmoid"``: logits (N, L), targets (N, L) 0/1; every row-label cell a yes/no question of its own.

Measures, on probabilities (``probabilities(logits, kind, T)``):
- expected calibration error (ECE), Guo et al.'s definition: ``bins`` equal-width bins of confidence over [0, 1],
  each (low, high] (0 falls in the first), ECE = sum over bins of |bin accuracy - bin mean confidence| weighted by
  the share of items in the bin. Softmax items are rows, their confidence the top-class probability and their
  accuracy whether the top class is the target; sigmoid items are the row-label cells, their confidence the
  probability of "on" and their accuracy the share of cells that are on.
- Brier score, scikit-learn's ``brier_score_loss``: softmax, the mean over rows of sum_c (p_c - y_c)^2 (Brier's own,
  0 to 2; for two labels twice the usual binary form); sigmoid, the mean over cells of (p - y)^2 (0 to 1).
scikit-learn's ``calibration_curve`` draws the same diagram but gives no bin counts and closes its bins on the
left, so the bins are computed here, once, for both the ECE and the reliability diagram.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import expit, softmax
from sklearn.metrics import brier_score_loss

BINS = 15  # Guo et al.'s number of bins
MIN_ROWS = 10  # fewer labelled rows: no temperature is fitted (T = 1)
# Temperatures outside this range come from a split the model gets (nearly) all right, where the likelihood keeps
# rising as T -> 0: clamped, so one lucky dev split cannot make every later score 0 or 1.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0
CALIBRATION_METRICS = ("ece", "ece_uncalibrated", "brier", "brier_uncalibrated")


def scaled(logits: np.ndarray, settings: dict) -> np.ndarray:
    """Logits divided by the temperature saved with the model (``settings["temperature"]``; 1 when there is none)."""
    return logits / float(settings.get("temperature") or 1.0)


def probabilities(logits, kind: str, temperature: float = 1.0) -> np.ndarray:
    """logits (N, C) or (N, L) -> float64 probabilities of ``logits / temperature``: softmax per row, or sigmoid per
    cell."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    return softmax(z, axis=-1) if kind == "softmax" else expit(z)


def nll(logits: torch.Tensor, targets: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean negative log-likelihood: cross-entropy of rows (softmax) or binary cross-entropy of cells (sigmoid)."""
    if kind == "softmax":
        return F.cross_entropy(logits, targets)
    return F.binary_cross_entropy_with_logits(logits, targets)


def fit_temperature(logits, targets, kind: str) -> float:
    """The T > 0 minimising the NLL of ``logits / T`` on these labelled rows (LBFGS on log T, so T stays positive).

    logits: (N, C) softmax or (N, L) sigmoid; targets: (N,) class ids or (N, L) 0/1. Returns 1.0 when there is
    nothing to fit on (fewer than ``MIN_ROWS`` rows, or every target the same class or value: the NLL then only
    rewards T -> 0) or when the fitted T does not lower the NLL; else T clamped to [MIN_TEMPERATURE, MAX_TEMPERATURE].
    """
    check_kind(kind)
    z = torch.as_tensor(np.asarray(logits, dtype=np.float64))
    y = torch.as_tensor(np.asarray(targets), dtype=torch.int64 if kind == "softmax" else torch.float64)
    if len(z) < MIN_ROWS or len(torch.unique(y)) < 2 or not torch.isfinite(z).all():
        return 1.0
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = nll(z / log_t.exp(), y, kind)
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature = min(max(math.exp(log_t.item()), MIN_TEMPERATURE), MAX_TEMPERATURE)
    with torch.no_grad():
        better = nll(z / temperature, y, kind) < nll(z, y, kind)
    return temperature if math.isfinite(temperature) and better else 1.0


def confidences(probs, targets, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, correct), each (M,) float: softmax, M = N rows, the top-class probability and whether the top
    class is the target; sigmoid, M = N * L cells, each cell's probability and whether it is on."""
    probs = np.asarray(probs, dtype=np.float64)
    if kind == "softmax":
        return probs.max(axis=1), (probs.argmax(axis=1) == np.asarray(targets)).astype(np.float64)
    return probs.ravel(), np.asarray(targets, dtype=np.float64).ravel()


def reliability_bins(probs, targets, kind: str, bins: int = BINS) -> list[dict]:
    """One dict per equal-width confidence bin, (low, high], lowest first: ``{"low", "high", "count",
    "confidence", "accuracy"}`` (mean confidence and accuracy of its items; None for an empty bin).
    probs: (N, C) softmax or (N, L) sigmoid probabilities; targets as for ``fit_temperature``."""
    check_kind(kind)
    confidence, correct = confidences(probs, targets, kind)
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)  # bin m holds (m/bins, (m+1)/bins]
    counts = np.bincount(index, minlength=bins)
    conf_sum = np.bincount(index, weights=confidence, minlength=bins)
    correct_sum = np.bincount(index, weights=correct, minlength=bins)
    return [{"low": m / bins, "high": (m + 1) / bins, "count": int(counts[m]),
             "confidence": float(conf_sum[m] / counts[m]) if counts[m] else None,
             "accuracy": float(correct_sum[m] / counts[m]) if counts[m] else None} for m in range(bins)]


def expected_calibration_error(probs, targets, kind: str = "softmax", bins: int = BINS) -> float:
    """Sum over bins of (items in the bin / all items) * |accuracy - mean confidence| (module docstring), in [0, 1].
    probs: (N, C) softmax or (N, L) sigmoid probabilities; targets as for ``fit_temperature``."""
    table = reliability_bins(probs, targets, kind, bins)
    total = sum(b["count"] for b in table)
    return float(sum(b["count"] / total * abs(b["accuracy"] - b["confidence"]) for b in table if b["count"]))


def brier_score(probs, targets, kind: str = "softmax") -> float:
    """Softmax: mean over rows of sum_c (p_c - y_c)^2, probs (N, C), targets (N,) class ids; sigmoid: mean over
    cells of (p - y)^2, probs and targets (N, L). Lower is better."""
    check_kind(kind)
    probs = np.asarray(probs, dtype=np.float64)
    if kind == "softmax":
        return brier_score_loss(np.asarray(targets), probs, labels=np.arange(probs.shape[1]), scale_by_half=False)
    return brier_score_loss(np.asarray(targets).ravel(), probs.ravel(), pos_label=1)


def calibration_report(logits, targets, kind: str, temperature: float, bins: int = BINS) -> dict:
    """How calibrated the scores are before (T = 1) and after dividing ``logits`` by ``temperature``:
    ``{"kind", "temperature", "rows", "ece", "ece_uncalibrated", "brier", "brier_uncalibrated",
    "bins": {"uncalibrated": [...], "calibrated": [...]}}`` (bins as ``reliability_bins``); plain JSON, kept in a
    fine-tuned model's meta and drawn as its reliability diagram."""
    before, after = probabilities(logits, kind), probabilities(logits, kind, temperature)
    return {"kind": kind, "temperature": float(temperature), "rows": len(before),
            "ece": expected_calibration_error(after, targets, kind, bins),
            "ece_uncalibrated": expected_calibration_error(before, targets, kind, bins),
            "brier": brier_score(after, targets, kind), "brier_uncalibrated": brier_score(before, targets, kind),
            "bins": {"uncalibrated": reliability_bins(before, targets, kind, bins),
                     "calibrated": reliability_bins(after, targets, kind, bins)}}


def fit_and_measure(logits, targets, kind: str, settings: dict) -> tuple[dict, dict[str, float], dict]:
    """Fit the temperature on these labelled rows unless the spec says ``calibration: none``, and measure it:
    (learnt ``{"temperature": T}``, or {} with none; the four ``CALIBRATION_METRICS``; ``calibration_report``).
    logits and targets as for ``fit_temperature``."""
    fitted = settings.get("calibration", "temperature") != "none"
    temperature = fit_temperature(logits, targets, kind) if fitted else 1.0
    report = calibration_report(logits, targets, kind, temperature)
    return ({"temperature": temperature} if fitted else {}), metrics_of(report), report


def measure(logits, targets, kind: str, settings: dict) -> tuple[dict[str, float], dict]:
    """The four ``CALIBRATION_METRICS`` and the ``calibration_report`` with the temperature in ``settings`` (a saved
    model's; 1 without one)."""
    report = calibration_report(logits, targets, kind, float(settings.get("temperature") or 1.0))
    return metrics_of(report), report


def metrics_of(report: dict) -> dict[str, float]:
    """The four ``CALIBRATION_METRICS`` of a ``calibration_report``."""
    return {name: report[name] for name in CALIBRATION_METRICS}


def turned_off(spec) -> dict:
    """A family's task setting for a spec's ``calibration``: ``{"calibration": "none"}`` when the spec turns it off, {}
    for the default (so the settings, and the feature cache keyed on them, stay as they were without the field)."""
    return {"calibration": "none"} if spec.calibration == "none" else {}


def check_kind(kind: str) -> None:
    if kind not in ("softmax", "sigmoid"):
        raise ValueError(f"kind must be 'softmax' or 'sigmoid', got {kind!r}")
