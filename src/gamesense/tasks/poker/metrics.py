"""PokerBench's metric (Zhuang et al. 2025): each answer scored 1 (the solver's move), 0.5 (the right bet/raise
with another size) or 0; action accuracy = mean of ceil(score), exact match = mean of floor(score), per file kind
and pooled; the authors' own substring scorer beside it, and the confusion counts of action types."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from gamesense.tasks.poker.actions import ACTION_KINDS, SIZED_KINDS, Action, parse_action
from gamesense.tasks.poker.pokerbench import FILE_KINDS, PokerSpot, SpotLabel

if TYPE_CHECKING:
    from numpy.typing import NDArray

CONFUSION_LABELS: tuple[str, ...] = ACTION_KINDS + ("invalid",)



def reference_label(spot: PokerSpot | SpotLabel) -> str:
    """The label as the authors phrase it (``SFT/poker_csv_to_json.py``): preflop ``3.0bb`` ->
    ``raise 3.0``, ``allin`` -> ``all in``, other preflop moves lower case; postflop as in the file."""
    raw = spot.raw_label or spot.label
    if spot.kind == "preflop":
        if "bb" in raw:
            return f"raise {raw.split('bb')[0]}"
        return "all in" if raw.lower() == "allin" else raw.lower()
    return raw


_FIRST_NUMBER = re.compile(r"\d+\.\d+|\d+")
_REFERENCE_WORDS = ("call", "all in", "allin", "fold", "check")  # a shared one of these scores 1


def reference_match_score(response: str, label: str) -> float:
    """The authors' per-answer score, re-implemented from ``check_match`` in
    github.com/richardzhuang0412/PokerBench ``untrained_eval/report_eval_result.py``.

    Case-insensitive substring tests on the whole response: 1 if the label occurs in it, or both
    mention the same one of ``call`` / ``all in`` / ``allin`` / ``fold`` / ``check``; else, if both
    mention ``raise`` (or both ``bet``), 1 when the first number in each is equal and 0.5 otherwise
    (also 0.5 when the response has no number); else 0.

    Args:
        response: the model's raw answer.
        label: the label as the authors phrase it (:func:`reference_label`).

    Returns:
        0.0, 0.5 or 1.0.
    """
    said, want = response.lower(), label.lower()
    if want in said or any(word in want and word in said for word in _REFERENCE_WORDS):
        return 1.0
    if any(word in want and word in said for word in ("raise", "bet")):
        said_size, want_size = _FIRST_NUMBER.search(said), _FIRST_NUMBER.search(want)
        if said_size and want_size and float(said_size.group()) == float(want_size.group()):
            return 1.0
        return 0.5
    return 0.0


def match_score(predicted: Action | None, label: Action) -> float:
    """PokerBench score of one parsed answer against the label (Zhuang et al. 2025; see module doc).

    Returns:
        1.0 same kind (and for bet/raise the same size); 0.5 bet/raise with another or no size;
        0.0 other kind or ``predicted is None``.
    """
    if predicted is None or predicted.kind != label.kind:
        return 0.0
    if label.kind not in SIZED_KINDS:
        return 1.0
    return 1.0 if predicted.same_move(label) else 0.5


def row_scores(prediction: str, spot: PokerSpot | SpotLabel) -> dict[str, Any]:
    """Per-answer scores, stored with each prediction.

    Returns:
        ``{"score": 0/0.5/1, "exact_match": 0/1 (floor), "action_accuracy": 0/1 (ceil), "valid": parsed at all,
        "legal": parsed and among the legal moves, "predicted": canonical text or None,
        "label": canonical label, "reference_score": the authors' substring score}``.
    """
    predicted = parse_action(prediction)
    score = match_score(predicted, spot.label_action)
    return {
        "score": score,
        "exact_match": math.floor(score),
        "action_accuracy": math.ceil(score),
        "valid": predicted is not None,
        "legal": predicted is not None and any(predicted.same_move(move) for move in spot.legal_actions),
        "predicted": predicted.text if predicted else None,
        "label": spot.label,
        "reference_score": reference_match_score(prediction, reference_label(spot)),
    }


def _summary(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    n = len(rows)
    if n == 0:
        nan = float("nan")
        names = ("action_accuracy", "exact_match", "score", "illegal_action_rate", "invalid_rate",
                 "reference_action_accuracy", "reference_exact_match")
        return dict.fromkeys(names, nan) | {"n": 0.0}
    return {
        "action_accuracy": sum(r["action_accuracy"] for r in rows) / n,
        "exact_match": sum(r["exact_match"] for r in rows) / n,
        "score": sum(r["score"] for r in rows) / n,
        "illegal_action_rate": sum(not r["legal"] for r in rows) / n,
        "invalid_rate": sum(not r["valid"] for r in rows) / n,
        "reference_action_accuracy": sum(math.ceil(r["reference_score"]) for r in rows) / n,
        "reference_exact_match": sum(math.floor(r["reference_score"]) for r in rows) / n,
        "n": float(n),
    }


def compute_metrics(predictions: Sequence[str], spots: Sequence[PokerSpot | SpotLabel]) -> dict[str, float]:
    """PokerBench metrics over answers, per file kind and pooled.

    Action accuracy (``action_accuracy``) = mean of ceil(score), exact match (``exact_match``) = mean of
    floor(score), the score as in :func:`match_score` (Zhuang et al. 2025; ``untrained_eval/report_eval_result.py``
    and ``main/analyze_eval_result.py`` of github.com/richardzhuang0412/PokerBench). The pooled figures are micro
    averages over all spots, as the authors' "Total" lines.

    Args:
        predictions: raw model answers, one per spot.
        spots: the spots answered, same order.

    Returns:
        For each prefix ``""`` (pooled), ``"preflop_"``, ``"postflop_"``: ``action_accuracy``, ``exact_match``,
        ``score`` (mean raw score), ``illegal_action_rate`` (unparseable or not a legal move), ``invalid_rate``
        (unparseable), ``reference_action_accuracy`` / ``reference_exact_match`` (the authors' substring scorer,
        :func:`reference_match_score`), ``n``; rates are NaN when ``n`` is 0.

    Raises:
        ValueError: the two sequences differ in length.
    """
    if len(predictions) != len(spots):
        raise ValueError(f"{len(predictions)} predictions for {len(spots)} spots")
    rows = [row_scores(text, spot) | {"kind": spot.kind} for text, spot in zip(predictions, spots)]
    metrics = _summary(rows)
    for kind in FILE_KINDS:
        subset = _summary([row for row in rows if row["kind"] == kind])
        metrics.update({f"{kind}_{name}": value for name, value in subset.items()})
    return metrics


def action_confusion(predictions: Sequence[str], spots: Sequence[PokerSpot | SpotLabel]) -> tuple[list[str], NDArray]:
    """Confusion counts over action types.

    Returns:
        ``(labels, matrix)``: ``labels`` = :data:`CONFUSION_LABELS` (the six kinds then ``invalid``);
        ``matrix`` an ``int64`` numpy array of shape ``(7, 7)``, rows = label kind, columns =
        predicted kind (``invalid`` when unparseable); the ``invalid`` row stays 0.

    Raises:
        ValueError: the two sequences differ in length.
    """
    import numpy as np

    if len(predictions) != len(spots):
        raise ValueError(f"{len(predictions)} predictions for {len(spots)} spots")
    labels = list(CONFUSION_LABELS)
    matrix = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for prediction, spot in zip(predictions, spots):
        predicted = parse_action(prediction)
        column = labels.index(predicted.kind if predicted else "invalid")
        matrix[labels.index(spot.label_action.kind), column] += 1
    return labels, matrix
