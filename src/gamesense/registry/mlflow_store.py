"""MLflow helpers shared by every GameSense model.

Default store: SQLite ``<workdir>/mlflow.db`` with artifacts under ``<workdir>/mlartifacts`` (no server
needed); a ``tracking_uri`` (``http://mlflow:5000``, ``databricks``, ...) points everything at a remote
server instead. Aliases follow MLflow's registry API: ``champion`` serves, ``challenger`` waits.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from gamesense.settings import work_dir

CHAMPION = "champion"
CHALLENGER = "challenger"

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def setup_tracking(tracking_uri: str | None = None, experiment: str | None = None) -> str:
    """Point MLflow at ``tracking_uri`` (default: SQLite store in the working directory) and select
    ``experiment`` (created with a local artifact location when the store is local).

    Returns:
        The tracking URI in use.
    """
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    local = uri is None
    if local:
        uri = f"sqlite:///{work_dir() / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if experiment:
        client = MlflowClient()
        if client.get_experiment_by_name(experiment) is None:
            artifact_location = (work_dir() / "mlartifacts" / experiment).as_uri() if local else None
            try:
                client.create_experiment(experiment, artifact_location=artifact_location)
            except MlflowException:  # created concurrently
                pass
        mlflow.set_experiment(experiment)
    return uri


def get_version_by_alias(model_name: str, alias: str):
    """The ``ModelVersion`` holding ``alias``, or None when the model or alias does not exist."""
    try:
        return MlflowClient().get_model_version_by_alias(model_name, alias)
    except MlflowException:
        return None


def set_alias(model_name: str, version: str | int, alias: str) -> None:
    """Move ``alias`` to ``version`` of ``model_name`` (MLflow moves it atomically from any other version)."""
    MlflowClient().set_registered_model_alias(model_name, alias, str(version))


def list_model_versions(model_name: str | None = None) -> list[dict]:
    """All registered versions (of one model, or of every model), newest first.

    Returns:
        dicts with keys ``name, version, aliases, run_id, created, tags``.
    """
    client = MlflowClient()
    names = [model_name] if model_name else [m.name for m in client.search_registered_models()]
    rows = []
    for name in names:
        try:
            registered = client.get_registered_model(name)
        except MlflowException:
            continue
        aliases_by_version: dict[str, list[str]] = {}
        for alias, version in (registered.aliases or {}).items():
            aliases_by_version.setdefault(str(version), []).append(alias)
        for mv in client.search_model_versions(f"name='{name}'"):
            rows.append(
                {
                    "name": name,
                    "version": str(mv.version),
                    "aliases": sorted(aliases_by_version.get(str(mv.version), [])),
                    "run_id": mv.run_id,
                    "created": mv.creation_timestamp,
                    "tags": dict(mv.tags or {}),
                }
            )
    rows.sort(key=lambda r: (r["name"], -int(r["version"])))
    return rows


@dataclass(frozen=True)
class PromotionDecision:
    """Outcome of the promotion gate: ``alias`` is ``champion`` when ``promote`` else ``challenger``."""

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
    candidate: float,
    baselines: dict[str, float | None],
    higher_is_better: bool = True,
    min_delta: float = 0.0,
) -> PromotionDecision:
    """Promotion gate: promote only when the candidate strictly beats every baseline by more than ``min_delta``.

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


def download_version(model_name: str, version_or_alias: str, dst: str | Path | None = None) -> Path:
    """Download the artifacts of a registered version (by number or alias) and return the local path."""
    client = MlflowClient()
    if str(version_or_alias).isdigit():
        mv = client.get_model_version(model_name, str(version_or_alias))
    else:
        mv = client.get_model_version_by_alias(model_name, version_or_alias)
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(dst) if dst else None))
