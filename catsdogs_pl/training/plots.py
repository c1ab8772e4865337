"""Figures logged with every run: learning curves, confusion matrix, ROC, confidently wrong images."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only: training boxes have no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def learning_curves(history: dict[str, list[tuple[int, float]]]) -> Figure:
    """Loss and accuracy against the step, one line per logged metric key."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for key, points in sorted(history.items()):
        if not points:
            continue
        ax = axes[0] if "loss" in key else axes[1]
        steps, values = zip(*points, strict=True)
        ax.plot(steps, values, marker="." if len(points) < 50 else None, label=key)
    for ax, title in zip(axes, ("loss", "accuracy"), strict=True):
        ax.set(title=title, xlabel="step")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def confusion_matrix(targets: np.ndarray, preds: np.ndarray, classes: list[str]) -> Figure:
    n = len(classes)
    counts = np.zeros((n, n), dtype=int)
    np.add.at(counts, (targets, preds), 1)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(counts, cmap="Blues")
    for i in range(n):
        for j in range(n):
            color = "white" if counts[i, j] > counts.max() / 2 else "black"
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", color=color)
    ax.set(xticks=range(n), yticks=range(n), xticklabels=classes, yticklabels=classes)
    ax.set(xlabel="predicted", ylabel="true", title="test confusion matrix")
    fig.tight_layout()
    return fig


def roc_curve(targets: np.ndarray, scores: np.ndarray, positive: str) -> Figure:
    """ROC of `scores` (probability of the positive class) with its AUC."""
    order = np.argsort(-scores, kind="stable")
    hits = targets[order] == 1
    tpr = np.concatenate([[0], np.cumsum(hits) / max(hits.sum(), 1)])
    fpr = np.concatenate([[0], np.cumsum(~hits) / max((~hits).sum(), 1)])
    auc = float(np.trapezoid(tpr, fpr))
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.plot(fpr, tpr, label=f"AUC = {auc:.4f}")
    ax.plot([0, 1], [0, 1], ls="--", color="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC ({positive})")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def confident_mistakes(
    images: np.ndarray, targets: np.ndarray, probs: np.ndarray, classes: list[str], k: int = 16
) -> Figure:
    """The k wrong test predictions with the highest confidence: where to look for label noise."""
    preds = probs.argmax(1)
    wrong = np.flatnonzero(preds != targets)
    wrong = wrong[np.argsort(-probs[wrong, preds[wrong]])][:k]
    cols = 4
    rows = max(1, -(-len(wrong) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.8 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, wrong, strict=False):
        ax.imshow(images[i])
        p = probs[i, preds[i]]
        ax.set_title(f"true {classes[targets[i]]}\npred {classes[preds[i]]} {p:.2f}", fontsize=9)
    if not len(wrong):
        axes.flat[0].set_title("no mistakes")
    fig.suptitle("most confident mistakes (test)")
    fig.tight_layout()
    return fig
