"""Held-out metrics of an engagement model and their confusion matrix."""

from __future__ import annotations

from typing import Any

import numpy as np

from gamesense.tasks.engagement.schema import CLASSES


def compute_metrics(y_true, y_pred) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix (rows: true, cols: pred,
    order :data:`CLASSES`).

    Returns:
        dict with float metrics ``accuracy``, ``macro_f1``, ``precision_<cls>``, ``recall_<cls>``,
        ``f1_<cls>`` and ``confusion_matrix`` (list of lists of ints).
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    y_true, y_pred = np.asarray(y_true).astype(str), np.asarray(y_pred).astype(str)
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=list(CLASSES), zero_division=0)
    out: dict[str, Any] = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=list(CLASSES), average="macro", zero_division=0)),
    }
    for i, cls in enumerate(CLASSES):
        out[f"precision_{cls}"], out[f"recall_{cls}"], out[f"f1_{cls}"] = float(p[i]), float(r[i]), float(f[i])
    out["confusion_matrix"] = confusion_matrix(y_true, y_pred, labels=list(CLASSES)).tolist()
    return out

