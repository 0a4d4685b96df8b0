"""The run plots render to real PNG files, cope with missing series, and reject unknown labels."""

from __future__ import annotations

import matplotlib.image
import pytest

from tracking.plots import confusion_matrix_png, learning_curve_png

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HISTORY = [
    {"step": 10, "loss": 0.9, "lr": 2e-5, "examples_per_second": 50.0, "epoch": 0.5},
    {"step": 20, "loss": 0.6, "lr": 4e-5, "examples_per_second": 52.0, "epoch": 1.0},
    {"step": 20, "eval_mcc": 0.31, "eval_accuracy": 0.70},
    {"step": 30, "loss": 0.4, "lr": 1e-5, "examples_per_second": 51.0, "epoch": 1.5},
    {"step": 30, "eval_mcc": 0.42, "eval_accuracy": 0.76},
]


def _is_png(path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC


def test_learning_curve_has_three_panels_worth_of_pixels(tmp_path):
    path = learning_curve_png(HISTORY, tmp_path / "plots" / "learning_curve.png")
    assert _is_png(path)
    height, width, _ = matplotlib.image.imread(path).shape
    assert width > 2 * height  # three panels side by side


def test_learning_curve_without_evaluations_still_renders(tmp_path):
    assert _is_png(learning_curve_png([e for e in HISTORY if "loss" in e], tmp_path / "a.png"))
    assert _is_png(learning_curve_png([], tmp_path / "empty.png"))


@pytest.mark.parametrize(("gold", "pred"), [
    (["pos", "neg", "pos", "pos"], ["pos", "pos", "neg", "pos"]),
    ([1, 0, 1, 1], [1, 1, 0, 1]),
])
def test_confusion_matrix_from_names_or_indices(tmp_path, gold, pred):
    assert _is_png(confusion_matrix_png(gold, pred, ["neg", "pos"], tmp_path / "cm.png"))


def test_confusion_matrix_with_many_labels(tmp_path):
    names = [f"TAG{i}" for i in range(45)]
    gold = [names[i % 45] for i in range(300)]
    pred = [names[(i * 7) % 45] for i in range(300)]
    assert _is_png(confusion_matrix_png(gold, pred, names, tmp_path / "pos.png"))


def test_confusion_matrix_names_an_unknown_label(tmp_path):
    with pytest.raises(ValueError, match="'maybe' at position 1"):
        confusion_matrix_png(["pos", "neg"], ["pos", "maybe"], ["neg", "pos"], tmp_path / "cm.png")
    with pytest.raises(ValueError, match="2 gold labels but 1"):
        confusion_matrix_png(["pos", "neg"], ["pos"], ["neg", "pos"], tmp_path / "cm.png")
