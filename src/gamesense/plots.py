"""PNG plots for run artifacts (matplotlib, headless Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_loss_curve(log_history: list[dict], path: str | Path, title: str = "training loss") -> Path:
    """Training loss (and learning rate on a second axis) against optimizer step.

    Args:
        log_history: trainer log records; those with ``loss`` and ``step`` are plotted.
        path: PNG to write (parent directories are created).
        title: plot title (e.g. the stage name).

    Returns:
        ``path``.
    """
    records = [r for r in log_history if "loss" in r and "step" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot([r["step"] for r in records], [r["loss"] for r in records], marker="o", ms=3, label="train loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (completion tokens)")
    ax.grid(alpha=0.3)
    lr = [(r["step"], r["learning_rate"]) for r in records if "learning_rate" in r]
    if lr:
        ax2 = ax.twinx()
        ax2.plot(*zip(*lr), color="tab:orange", alpha=0.5, label="learning rate")
        ax2.set_ylabel("learning rate")
    ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_confusion_matrix(matrix, labels: list[str], path: str | Path, title: str = "Confusion matrix") -> Path:
    """Confusion-matrix heatmap with counts in the cells.

    Args:
        matrix: square counts, rows = true label, columns = predicted label, in ``labels`` order.
        labels: class names.
        path: PNG to write (parent directories are created).
    """
    import numpy as np

    arr = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(labels), 0.6 + 0.8 * len(labels)))
    ax.imshow(arr, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 4 else 0)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(arr.shape[0]):
        for j in range(arr.shape[1]):
            ax.text(j, i, str(arr[i, j]), ha="center", va="center", color="white" if arr[i, j] > arr.max() / 2 else "black")
    ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
