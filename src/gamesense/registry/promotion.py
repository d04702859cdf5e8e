"""The one promotion gate (champion / challenger) for every registered GameSense model.

A new version is registered with alias ``challenger``. :func:`promotion_gate` then compares it with the
current ``champion`` (and any baselines, e.g. the base model) on the same evaluation data with the task's
gate metric, and moves ``champion`` only on a real improvement (more than ``min_delta``). The decision is
one atomic step per model name: on a local store (SQLite/file) a file lock serialises concurrent gates, and
on every store the aliases are re-read after the move to confirm it. The decision and its reason are kept
as tags on the version and as one line of ``<workdir>/promotions.jsonl``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from mlflow import MlflowClient

from gamesense.registry.mlflow_store import get_version_by_alias, is_local_store, set_alias
from gamesense.registry.refs import CHALLENGER, CHAMPION
from gamesense.settings import work_dir

__all__ = ["CHALLENGER", "CHAMPION", "ConcurrentPromotionError", "PromotionDecision", "PromotionOutcome",
           "decide_promotion", "promotion_gate", "promotion_lock"]


class ConcurrentPromotionError(RuntimeError):
    """Another job moved ``champion`` while this gate decided: nothing was changed; run the promote again."""


@dataclass(frozen=True)
class PromotionDecision:
    """Outcome of :func:`decide_promotion`: ``alias`` is ``champion`` when ``promote`` else ``challenger``."""

    promote: bool
    reason: str
    metric: str
    candidate: float
    baselines: dict[str, float | None]

    @property
    def alias(self) -> str:
        return CHAMPION if self.promote else CHALLENGER


def decide_promotion(
    metric: str,
    candidate: float | None,
    baselines: dict[str, float | None],
    higher_is_better: bool = True,
    min_delta: float = 0.0,
) -> PromotionDecision:
    """Promote only when the candidate beats every baseline by more than ``min_delta`` (a pure function).

    Args:
        metric: name of the metric compared (for the reason text).
        candidate: the new model's score on the evaluation data.
        baselines: named scores on the same data, e.g. ``{"base model": 0.02, "champion v3": 0.61}``;
            a None value (no champion yet) is skipped.

    Returns:
        A :class:`PromotionDecision` whose ``reason`` states every comparison.
    """
    if candidate is None or (isinstance(candidate, float) and math.isnan(candidate)):
        return PromotionDecision(False, f"candidate has no {metric}", metric, float("nan"), baselines)
    parts, beats_all = [], True
    for name, score in baselines.items():
        if score is None:
            parts.append(f"no {name}")
            continue
        delta = (candidate - score) if higher_is_better else (score - candidate)
        ok = delta > min_delta
        beats_all &= ok
        parts.append(f"{'beats' if ok else 'does not beat'} {name} ({candidate:.4f} vs {score:.4f})")
    verdict = "promoted to champion" if beats_all else "kept as challenger"
    return PromotionDecision(beats_all, f"{metric}: " + "; ".join(parts) + f" -> {verdict}", metric, candidate, baselines)


@dataclass
class PromotionOutcome:
    """What the gate did to one version.

    Attributes:
        alias: the alias the version holds afterwards (``champion`` or ``challenger``).
        previous_champion: version that was champion when the gate decided (None: there was none).
    """

    model_name: str
    version: str
    alias: str
    promoted: bool
    reason: str
    metric: str
    candidate: float
    baselines: dict[str, float | None]
    previous_champion: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextlib.contextmanager
def promotion_lock(model_name: str):
    """Exclusive lock for one model name's alias moves, across processes on this machine (local stores);
    a no-op for remote tracking servers, where the gate re-reads the aliases instead."""
    if not is_local_store():
        yield
        return
    safe_name = re.sub(r"[^\w.-]+", "_", model_name)
    path = work_dir() / "locks" / f"promote-{safe_name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def promotion_gate(
    model_name: str,
    version: str,
    metric: str,
    candidate: float,
    champion_score: Callable[[Any], float],
    baselines: dict[str, float | None] | None = None,
    higher_is_better: bool = True,
    min_delta: float = 0.0,
    audit: dict[str, Any] | None = None,
) -> PromotionOutcome:
    """Champion/challenger decision for ``version`` of ``model_name`` (already registered as challenger).

    Args:
        candidate: the version's ``metric`` on the evaluation data.
        champion_score: ``champion_score(model_version) -> float``: the current champion's ``metric`` on the
            same evaluation data (read from its tags or measured now); called inside the lock.
        baselines: other scores to beat on the same data, e.g. ``{"base model": 0.0}``.
        audit: extra fields for the audit line (evaluation file, rows, run id).

    Returns:
        :class:`PromotionOutcome`. ``champion`` moves only when the version beats every score by more than
        ``min_delta``; ``challenger`` is removed from the version once it is champion (only if it still
        points there: a newer challenger is left alone).

    Raises:
        ConcurrentPromotionError: on a remote store, another job moved ``champion`` while this gate decided.
    """
    client = MlflowClient()
    version = str(version)
    with promotion_lock(model_name):
        champion = get_version_by_alias(model_name, CHAMPION)
        previous = str(champion.version) if champion is not None else None
        if previous == version:  # e.g. a concurrent promote of the same challenger moved it first
            decision = PromotionDecision(False, f"{metric}: v{version} is already champion -> nothing to change",
                                         metric, candidate, dict(baselines or {}))  # fmt: skip
            return _record(PromotionOutcome(model_name, version, CHAMPION, False, decision.reason, metric,
                                            decision.candidate, decision.baselines, previous), audit)  # fmt: skip
        scores = dict(baselines or {})
        scores[CHAMPION if champion is None else f"{CHAMPION} v{previous}"] = (
            None if champion is None else float(champion_score(champion)))  # fmt: skip
        decision = decide_promotion(metric, candidate, scores, higher_is_better, min_delta)
        if decision.promote:
            _move_champion(client, model_name, version, previous)
        client.set_model_version_tag(model_name, version, "promotion_decision",
                                     "promoted" if decision.promote else "kept")  # fmt: skip
        client.set_model_version_tag(model_name, version, "promotion_reason", decision.reason[:5000])
        return _record(PromotionOutcome(model_name, version, decision.alias, decision.promote, decision.reason, metric,
                                        decision.candidate, decision.baselines, previous), audit)  # fmt: skip


def _move_champion(client: MlflowClient, model_name: str, version: str, previous: str | None) -> None:
    """Compare-and-move: ``champion`` from ``previous`` to ``version``, then ``challenger`` off ``version``.

    Every alias is re-read right before and after its move, which is what protects a remote store (no lock
    there): the move is refused when ``champion`` is no longer ``previous``, and ``challenger`` is removed
    only while it still points at ``version``; if a train moved it to a newer version in between and the
    removal took it, the newest version (which then holds no alias) gets it back.

    Raises:
        ConcurrentPromotionError: another job moved ``champion`` during the decision or right after the move.
    """
    now = get_version_by_alias(model_name, CHAMPION)
    if (str(now.version) if now is not None else None) != previous:
        raise ConcurrentPromotionError(f"{model_name}: champion moved to v{now.version if now else None} while v{version} was "
                           "evaluated: run promote again")  # fmt: skip
    set_alias(model_name, version, CHAMPION)
    challenger = get_version_by_alias(model_name, CHALLENGER)
    if challenger is not None and str(challenger.version) == version:
        client.delete_registered_model_alias(model_name, CHALLENGER)
        _restore_newer_challenger(client, model_name, version)
    moved = get_version_by_alias(model_name, CHAMPION)
    if moved is None or str(moved.version) != version:
        raise ConcurrentPromotionError(f"{model_name}: champion is v{moved.version if moved else None} right after "
                           f"moving it to v{version}: another job promoted concurrently")  # fmt: skip


def _restore_newer_challenger(client: MlflowClient, model_name: str, promoted: str) -> None:
    """A version newer than ``promoted`` with no alias can only have lost ``challenger`` to our removal (a train
    registered it between our read and our delete): give the alias back."""
    if get_version_by_alias(model_name, CHALLENGER) is not None:
        return
    versions = client.search_model_versions(f"name='{model_name}'")
    newest = max(versions, key=lambda mv: int(mv.version), default=None)
    if newest is not None and int(newest.version) > int(promoted) and not (newest.aliases or []):
        set_alias(model_name, newest.version, CHALLENGER)


def _record(outcome: PromotionOutcome, audit: dict[str, Any] | None) -> PromotionOutcome:
    """Append the decision to ``<workdir>/promotions.jsonl`` (called once per gate, inside the lock)."""
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **outcome.to_dict(), **(audit or {})}
    with (work_dir() / "promotions.jsonl").open("a") as handle:
        handle.write(json.dumps(record, default=str) + "\n")
    return outcome
