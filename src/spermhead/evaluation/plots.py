"""Figures for the report. Figures are built with `matplotlib.figure.Figure` directly (no
pyplot): PNGs render through Agg, no global backend or figure registry is touched, so this is
safe in the server and in tests."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from spermhead.evaluation.predictions import Predictions

# Accepted spellings of the per-epoch history keys (first match wins).
HISTORY_KEYS = {
    "train_loss": ("train_loss", "loss"),
    "val_loss": ("val_loss",),
    "train_acc": ("train_acc", "train_accuracy", "acc", "accuracy"),
    "val_acc": ("val_acc", "val_accuracy"),
}
DPI = 110


def _text(s: str) -> str:
    """A class name as literal text: a pair of '$' would otherwise start matplotlib mathtext."""
    return s.replace("$", r"\$")


def _get(row: dict[str, Any], key: str) -> float | None:
    for name in HISTORY_KEYS[key]:
        if row.get(name) is not None:
            return float(row[name])
    return None


def plot_training_curves(history: Sequence[dict[str, Any]]) -> Figure:
    """Loss and accuracy per epoch, train solid and validation dashed, one colour per fold.

    Each dict is one epoch: optional `fold` and `epoch`, and any of train_loss, val_loss,
    train_acc, val_acc (train_accuracy / val_accuracy accepted too).
    """
    fig = Figure(figsize=(10, 4), dpi=DPI, layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    folds: dict[int, list[dict[str, Any]]] = {}
    for row in history:
        folds.setdefault(int(row.get("fold", -1)), []).append(row)
    for j, (fold, rows) in enumerate(sorted(folds.items())):
        colour = f"C{j % 10}"
        label = f"fold {fold}" if len(folds) > 1 else ""
        epochs = [int(r.get("epoch", i)) for i, r in enumerate(rows)]
        for ax, metric in ((ax_loss, "loss"), (ax_acc, "acc")):
            for split, style in (("train", "-"), ("val", "--")):
                values = [_get(r, f"{split}_{metric}") for r in rows]
                pts = [(e, v) for e, v in zip(epochs, values, strict=True) if v is not None]
                if pts:
                    xs, ys = zip(*pts, strict=True)
                    ax.plot(xs, ys, style, color=colour, lw=1.4, label=f"{label} {split}".strip())
    ax_loss.set(title="loss", xlabel="epoch", ylabel="cross-entropy loss")
    ax_acc.set(title="accuracy", xlabel="epoch", ylabel="accuracy", ylim=(0, 1.02))
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, ncol=2 if len(folds) > 3 else 1)
    return fig


def plot_confusion_matrix(pred: Predictions, *, normalize: bool = False) -> Figure:
    """Counts, or rows normalised to recall (each true class sums to 1)."""
    k = len(pred.classes)
    cm = np.zeros((k, k), dtype=float)
    np.add.at(cm, (pred.true_indices, pred.pred_indices), 1)
    shown = cm
    if normalize:
        rows = cm.sum(axis=1, keepdims=True)
        shown = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    size = 2.2 + 0.75 * k
    fig = Figure(figsize=(size + 1, size), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else max(1.0, shown.max()))
    fig.colorbar(im, ax=ax, shrink=0.8)
    names = [_text(c) for c in pred.classes]
    ax.set_xticks(range(k), names, rotation=35, ha="right")
    ax.set_yticks(range(k), names)
    ax.set(xlabel="predicted", ylabel="true",
           title="confusion matrix (row-normalised)" if normalize else "confusion matrix (counts)")
    hi = shown.max() if shown.size else 0
    for i in range(k):
        for j in range(k):
            text = f"{shown[i, j]:.2f}" if normalize else f"{int(cm[i, j])}"
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="white" if shown[i, j] > 0.6 * hi else "black")
    return fig


def _ovr_classes(pred: Predictions) -> list[int]:
    """Classes with both positives and negatives: the only ones with a defined curve."""
    y = pred.true_indices
    return [c for c in range(len(pred.classes)) if 0 < np.sum(y == c) < len(pred)]


def plot_roc_curves(pred: Predictions) -> Figure:
    """One-vs-rest ROC per class, AUC in the legend, chance diagonal."""
    fig = Figure(figsize=(5.5, 5), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    y = pred.true_indices
    for c in _ovr_classes(pred):
        pos = y == c
        fpr, tpr, _ = roc_curve(pos, pred.probabilities[:, c])
        auc = roc_auc_score(pos, pred.probabilities[:, c])
        ax.plot(fpr, tpr, lw=1.5, label=f"{_text(pred.classes[c])} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey", lw=1, label="chance")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, one-vs-rest",
           xlim=(0, 1), ylim=(0, 1.01))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return fig


def plot_pr_curves(pred: Predictions) -> Figure:
    """One-vs-rest precision-recall per class, average precision (AP) in the legend; the dotted
    line of each colour is that class's prevalence, what a random ranking scores."""
    fig = Figure(figsize=(5.5, 5), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    y = pred.true_indices
    for c in _ovr_classes(pred):
        pos = y == c
        precision, recall, _ = precision_recall_curve(pos, pred.probabilities[:, c])
        ap = average_precision_score(pos, pred.probabilities[:, c])
        (line,) = ax.plot(recall, precision, lw=1.5, drawstyle="steps-post",
                          label=f"{_text(pred.classes[c])} (AP {ap:.3f})")
        ax.axhline(pos.mean(), ls=":", lw=0.8, color=line.get_color())
    ax.set(xlabel="recall", ylabel="precision", title="precision-recall, one-vs-rest",
           xlim=(0, 1), ylim=(0, 1.01))
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="lower left")
    else:  # images of one class: no curve is defined
        ax.text(0.5, 0.5, "one class only: no curve", ha="center", va="center", color="grey")
    return fig


def plot_reliability(pred: Predictions) -> Figure:
    """Reliability diagram: accuracy against the confidence of the answer, per confidence bin
    (metrics' `calibration`), the diagonal where they agree, and how many images each bin holds."""
    from spermhead.evaluation.metrics import calibration

    c = calibration(pred)
    fig = Figure(figsize=(5.5, 5), dpi=DPI, layout="constrained")
    ax, counts = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    conf = [b["confidence"] for b in c["bins"]]
    ax.plot([0, 1], [0, 1], ":", color="grey", lw=1, label="calibrated")
    ax.plot(conf, [b["accuracy"] for b in c["bins"]], "o-", lw=1.5, label=f"this model (ECE {c['ece']:.3f})")
    ax.set(ylabel="accuracy", title="reliability of the answer's probability", xlim=(0, 1), ylim=(0, 1.01))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    counts.bar([(b["lower"] + b["upper"]) / 2 for b in c["bins"]], [b["count"] for b in c["bins"]],
               width=0.9 * (c["bins"][0]["upper"] - c["bins"][0]["lower"]), color="grey")
    counts.set(xlabel="probability of the class answered", ylabel="images")
    return fig


def save_figure(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def write_plots(
    pred: Predictions, history: Sequence[dict[str, Any]] | None, out_dir: Path | str
) -> dict[str, Path]:
    """Write every plot as PNG into out_dir; returns {name: path} in display order.
    The training curves are skipped when there is no history."""
    out_dir = Path(out_dir)
    figures: dict[str, Figure] = {}
    if history:
        figures["training_curves"] = plot_training_curves(history)
    figures["confusion_counts"] = plot_confusion_matrix(pred)
    figures["confusion_normalized"] = plot_confusion_matrix(pred, normalize=True)
    figures["roc"] = plot_roc_curves(pred)
    figures["pr"] = plot_pr_curves(pred)
    figures["reliability"] = plot_reliability(pred)
    return {name: save_figure(fig, out_dir / f"{name}.png") for name, fig in figures.items()}
