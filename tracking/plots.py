"""PNG plots logged with each run: the learning curve, the dev-set confusion matrix, per-label F1 and the reliability
diagram (scores against frequencies, before and after temperature scaling); a sweep's metric against each searched
parameter.

Figures are drawn on matplotlib's Agg canvas directly (``Figure`` + ``FigureCanvasAgg``), never through
``pyplot``: no global backend switch, no figure registry to leak, safe in Prefect's worker threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

ANNOTATE_MAX_LABELS = 20  # beyond this (e.g. 45 POS tags) numbers in cells are unreadable
# Rows of a per-class report that average the labels rather than being one (scikit-learn's and seqeval's names).
AVERAGE_ROWS = ("accuracy", "micro avg", "macro avg", "weighted avg", "samples avg")


def learning_curve_png(history: list[dict], path: str | Path) -> Path:
    """Three panels against the optimizer step: training loss (and ``eval_loss``), learning rate, and
    every other ``eval_<metric>``. ``history`` is ``FitResult.history``: dicts with ``step`` plus
    ``loss``/``lr`` (training log events) or ``eval_*`` keys (evaluation events)."""
    fig = Figure(figsize=(12, 3.6), layout="constrained")
    loss_ax, lr_ax, eval_ax = fig.subplots(1, 3)
    _series(loss_ax, history, ["loss", "eval_loss"], "loss")
    _series(lr_ax, history, ["lr"], "learning rate")
    metrics = sorted({k for e in history for k in e if k.startswith("eval_") and k != "eval_loss"})
    _series(eval_ax, history, metrics, "dev metrics", marker="o")
    return _save(fig, path)


def _series(ax, history: list[dict], keys: list[str], title: str, marker: str | None = None) -> None:
    ax.set_title(title)
    ax.set_xlabel("step")
    drawn = False
    for key in keys:
        points = [(e["step"], e[key]) for e in history if key in e and e[key] is not None and "step" in e]
        if points:
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, marker=marker or ("o" if key.startswith("eval_") else None),
                    label=key.removeprefix("eval_"))
            drawn = True
    if drawn:
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize="small")
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="gray")


def confusion_matrix_png(gold: Sequence, pred: Sequence, label_names: Sequence[str], path: str | Path) -> Path:
    """Rows gold, columns predicted, in ``label_names`` order. Labels are names or indices into
    ``label_names``. Cells show counts; colour is the row-normalised fraction, so rare classes show too."""
    if len(gold) != len(pred):
        raise ValueError(f"confusion matrix: {len(gold)} gold labels but {len(pred)} predictions")
    names = [str(n) for n in label_names]
    index = {n: i for i, n in enumerate(names)}
    gold_ids, pred_ids = _indices(gold, index, "gold"), _indices(pred, index, "predicted")
    counts = np.zeros((len(names), len(names)), dtype=np.int64)
    np.add.at(counts, (gold_ids, pred_ids), 1)
    fractions = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)

    size = max(4.0, 0.45 * len(names) + 2)
    fig = Figure(figsize=(size + 1, size), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="fraction of gold row")
    ax.set_xticks(range(len(names)), names, rotation=45 if len(names) > 3 else 0, ha="right" if len(names) > 3 else "center")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    ax.set_title(f"{counts.sum()} examples, accuracy {accuracy:.3f}")
    if len(names) <= ANNOTATE_MAX_LABELS:
        for (i, j), n in np.ndenumerate(counts):
            ax.text(j, i, str(n), ha="center", va="center", fontsize="small",
                    color="white" if fractions[i, j] > 0.5 else "black")
    return _save(fig, path)


def per_label_rows(report: dict) -> list[dict]:
    """A family's ``per_class_report`` -> one row per label (class, entity type or tag), in the report's order:
    ``{"label", "precision", "recall", "f1", "support"}``. Reads scikit-learn's ``classification_report`` dicts
    (``f1-score``; its average rows left out) and entity reports (``per_type`` rows with ``f1``); [] when the
    report has no per-label rows."""
    entries = report.get("per_type", report)
    return [{"label": str(name), "precision": float(v["precision"]), "recall": float(v["recall"]),
             "f1": float(v.get("f1-score", v.get("f1", 0.0))), "support": int(v["support"])}
            for name, v in entries.items()
            if name not in AVERAGE_ROWS and isinstance(v, dict) and "support" in v and "precision" in v]


def per_label_f1_png(rows: list[dict], path: str | Path, title: str = "") -> Path:
    """A horizontal bar per label, its F1, labelled with its support (its gold count: rows, words or entities), in ``rows``' order top
    to bottom; ``rows`` as ``per_label_rows`` gives them. A label with support 0 is drawn hatched: its F1 is 0 by
    convention, not a measurement. Faster to read than the table when there are many labels."""
    if not rows:
        raise ValueError("per-label F1 chart: the report has no per-label rows")
    names = [f"{r['label']} (n={r['support']})" for r in rows]
    f1 = [r["f1"] for r in rows]
    fig = Figure(figsize=(7, max(2.5, 0.32 * len(rows) + 1.2)), layout="constrained")
    ax = fig.subplots()
    bars = ax.barh(range(len(rows)), f1, color="tab:blue")
    for bar, row in zip(bars, rows, strict=True):
        if row["support"] == 0:
            bar.set(hatch="//", facecolor="none", edgecolor="gray")
        ax.text(bar.get_width() + 0.01, bar.get_y() + bar.get_height() / 2, f"{row['f1']:.2f}", va="center",
                fontsize="small")
    ax.set_yticks(range(len(rows)), names, fontsize="small" if len(rows) > ANNOTATE_MAX_LABELS else None)
    ax.invert_yaxis()  # the report's first label on top
    ax.set_xlim(0, 1.08)
    ax.set_xlabel("F1")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title or f"F1 per label ({len(rows)} labels; n = support, its gold count)")
    return _save(fig, path)


def sweep_png(trials: list[dict], params: Sequence[str], metric: str, path: str | Path,
              log_scale: Sequence[str] = ()) -> Path:
    """One panel per searched parameter: each trial's `metric` against its value. ``trials``: dicts with
    ``params`` (name -> value), ``value`` (the trial's score: final, or the last reported when pruned) and
    ``state`` (``COMPLETE``, ``PRUNED``, ...). Completed trials are blue dots, pruned ones grey crosses, the
    best a red star; categorical values sit at evenly spaced positions; ``log_scale`` params get a log axis."""
    fig = Figure(figsize=(4.2 * max(len(params), 1), 3.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, max(len(params), 1)))
    scored = [t for t in trials if t.get("value") is not None]
    best = max((t for t in scored if t["state"] == "COMPLETE"), key=lambda t: t["value"], default=None)
    for ax, name in zip(axes, params, strict=False):
        values = [t["params"].get(name) for t in scored]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        ticks = None if numeric else sorted({str(v) for v in values})
        position = {t: i for i, t in enumerate(ticks or [])}  # a categorical value's place on the axis
        def x(v, numeric=numeric, position=position):  # noqa: E306
            return v if numeric else position[str(v)]
        for state, style in (("COMPLETE", dict(marker="o", color="tab:blue", label="complete")),
                             ("PRUNED", dict(marker="x", color="gray", label="pruned"))):
            points = [(x(t["params"][name]), t["value"]) for t in scored if t["state"] == state and name in t["params"]]
            if points:
                ax.scatter(*zip(*points, strict=True), **style)
        if best is not None and name in best["params"]:
            ax.scatter([x(best["params"][name])], [best["value"]], marker="*", s=180, color="tab:red", label="best")
        if ticks is not None:
            ax.set_xticks(range(len(ticks)), ticks)
        elif name in log_scale:
            ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    fig.suptitle(f"{len(scored)} trials: dev {metric} against each searched parameter")
    return _save(fig, path)


def reliability_diagram_png(report: dict, path: str | Path, title: str = "") -> Path:
    """Two panels from a ``bert_core.calibration.calibration_report``: on top, each non-empty bin's accuracy against
    its mean confidence, before (T = 1) and after temperature scaling, beside the diagonal a calibrated model would
    follow; below, how many rows (softmax) or row-label cells (sigmoid) each bin holds, before and after, on a log
    scale (most sit in the top bin)."""
    sigmoid = report["kind"] == "sigmoid"
    fig = Figure(figsize=(6, 7), layout="constrained")
    curve_ax, count_ax = fig.subplots(2, 1, height_ratios=(3, 1.3), sharex=True)
    curve_ax.plot([0, 1], [0, 1], linestyle="--", color="gray", label="calibrated (diagonal)")
    width = 1 / len(report["bins"]["uncalibrated"]) / 2.2
    series = (("uncalibrated", "tab:orange", "before (T = 1)", "ece_uncalibrated", -1),
              ("calibrated", "tab:blue", f"after (T = {report['temperature']:.3g})", "ece", 1))
    for key, color, name, ece, side in series:
        bins = report["bins"][key]
        filled = [b for b in bins if b["count"]]
        curve_ax.plot([b["confidence"] for b in filled], [b["accuracy"] for b in filled], marker="o", color=color,
                      label=f"{name}: ECE {report[ece]:.3f}")
        centres = np.array([(b["low"] + b["high"]) / 2 for b in bins])
        count_ax.bar(centres + side * width / 2, [b["count"] for b in bins], width=width, color=color, label=name)
    curve_ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="share of cells on" if sigmoid else "accuracy")
    curve_ax.grid(alpha=0.3)
    curve_ax.legend(fontsize="small", loc="upper left")
    curve_ax.set_title(title or f"Reliability on {report['rows']} rows: Brier {report['brier_uncalibrated']:.3f} "
                       f"-> {report['brier']:.3f}")
    count_ax.set_yscale("log")
    scored = "probability of each label" if sigmoid else "confidence: top-class probability"
    count_ax.set(xlabel=f"{scored} ({len(report['bins']['calibrated'])} bins)", ylabel="cells" if sigmoid else "rows")
    count_ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def _indices(labels: Sequence, index: dict[str, int], what: str) -> np.ndarray:
    ids = []
    for k, label in enumerate(labels):
        if isinstance(label, (int, np.integer)) and not isinstance(label, bool):
            if not 0 <= label < len(index):
                raise ValueError(f"{what} label {label} at position {k} is not an index into {len(index)} label names")
            ids.append(int(label))
        elif str(label) in index:
            ids.append(index[str(label)])
        else:
            raise ValueError(f"{what} label {label!r} at position {k} is not one of {list(index)}")
    return np.asarray(ids, dtype=np.int64)


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig).print_png(str(path))
    return path
