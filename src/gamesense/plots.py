"""PNG plots for run artifacts (matplotlib, headless Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _save(fig, path: str | Path, dpi: int | None = None) -> Path:
    """Lay out, write the PNG (parent directories created), close the figure; returns the path."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi or fig.dpi)
    plt.close(fig)
    return path


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
    return _save(fig, path)


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
    return _save(fig, path, dpi=100)


def plot_grouped_bars(values: dict[str, dict[str, float]], path: str | Path, title: str, ylabel: str) -> Path:
    """Grouped bar chart: one group per category (e.g. board size), one bar per series (e.g. player).

    Args:
        values: series name -> {category -> value}; categories are shown in first-seen order, a missing
            value as no bar.
        path: PNG to write (parent directories are created).

    Returns:
        ``path``.
    """
    categories = list(dict.fromkeys(c for series in values.values() for c in series))
    width = 0.8 / max(len(values), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(categories)), 4), dpi=110)
    for i, (name, series) in enumerate(values.items()):
        xs = [j + (i - (len(values) - 1) / 2) * width for j, c in enumerate(categories) if c in series]
        ys = [series[c] for c in categories if c in series]
        bars = ax.bar(xs, ys, width=width, label=name)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(range(len(categories)), categories)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_horizontal_bars(values: dict[str, float], path: str | Path, title: str, xlabel: str) -> Path:
    """Horizontal bar chart, the first value on top (e.g. feature importances, largest first).

    Args:
        values: label -> value, in the order to show from the top.
        path: PNG to write (parent directories are created).

    Returns:
        ``path``.
    """
    labels, numbers = list(values)[::-1], list(values.values())[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(labels) + 1))
    ax.barh(labels, numbers)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    return _save(fig, path, dpi=100)
