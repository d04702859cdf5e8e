"""The engagement model's promotion gate: challenger and champion evaluated on one held-out labelled file, then
the one promotion gate every model goes through (:func:`gamesense.registry.promotion.promotion_gate`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from gamesense.tasks import engagement as task


def evaluate_engagement(model, df: pd.DataFrame) -> dict[str, Any]:
    """Held-out metrics (see :func:`gamesense.tasks.engagement.compute_metrics`) of an
    :class:`~gamesense.serving.engagement.predictor.EngagementModel` on a validated labelled frame."""
    pred = model.predict_frame(df)[task.PREDICTION]
    return task.compute_metrics(df[task.TARGET].astype(str), pred.astype(str))


def _scalar(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
    return {prefix + k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


def held_out_file(recipe: task.EngagementRecipe, eval_file: str | None, challenger=None) -> Path:
    """The evaluation file for the gate: ``eval_file``, else the recipe's ``data.eval_file``.

    Raises:
        ValueError: neither is set, or the file is a training file (the recipe's ``data.train_file`` or the one
            the challenger was trained on): a score on training rows would favour overfitted models.
    """
    from gamesense.config import resolve_data_path

    chosen = eval_file or recipe.data.eval_file
    if not chosen:
        raise ValueError("promote needs a held-out labelled file: pass --eval-file FILE or set data.eval_file in the "
                         "recipe (not the training file)")  # fmt: skip
    path = resolve_data_path(chosen)
    training = [recipe.data.train_file]
    if challenger is not None and challenger.run_id:
        from mlflow import MlflowClient

        tags = MlflowClient().get_run(challenger.run_id).data.tags
        training += [t for t in (tags.get("data_path"), tags.get("data_file")) if t]
    for train in training:
        train_path = resolve_data_path(train)
        if path.exists() and train_path.exists() and path.samefile(train_path):
            raise ValueError(f"evaluation file {chosen} is the training file {train}: promote needs held-out data "
                             "(--eval-file or data.eval_file)")  # fmt: skip
    return path


def promote_engagement(recipe: task.EngagementRecipe, eval_file: str | None = None) -> dict[str, Any]:
    """Evaluate the ``challenger`` (and the ``champion``) on held-out data (``eval_file``, else the recipe's
    ``data.eval_file``; never the training file, see :func:`held_out_file`) and move ``champion`` only when the
    challenger's ``registry.metric`` is higher by more than ``registry.min_delta``.

    The decision is logged as an MLflow run (experiment ``<experiment>-promotion``), as tags on the
    challenger version and as one line of ``<workdir>/promotions.jsonl``.

    Returns:
        dict with ``promote``, ``reason``, ``challenger``/``champion`` versions and scores, ``eval_file``.

    Raises:
        LookupError: no challenger; SchemaError / ValueError: no held-out file, the training file, or an
        unusable evaluation file.
    """
    import mlflow

    from gamesense.registry.mlflow_store import get_version_by_alias, setup_tracking
    from gamesense.registry.promotion import CHALLENGER, promotion_gate
    from gamesense.serving.engagement.predictor import load_engagement_model
    from gamesense.training.engagement import load_training_frame

    reg = recipe.registry
    setup_tracking(reg.tracking_uri, reg.experiment + "-promotion")
    challenger_mv = get_version_by_alias(reg.model_name, CHALLENGER)
    path = held_out_file(recipe, eval_file, challenger_mv)
    if challenger_mv is None:
        raise LookupError(f"model {reg.model_name!r} has no {CHALLENGER!r} version: run `gamesense engagement train`")
    df, _ = load_training_frame(path)
    version = str(challenger_mv.version)
    candidate = evaluate_engagement(load_engagement_model(f"{reg.model_name}/{version}"), df)
    champion_metrics: dict[str, Any] = {}

    def champion_score(champion) -> float:
        champion_metrics.update(evaluate_engagement(load_engagement_model(f"{reg.model_name}/{champion.version}"), df))
        return champion_metrics[reg.metric]

    outcome = promotion_gate(reg.model_name, version, reg.metric, candidate[reg.metric], champion_score,
                             min_delta=reg.min_delta, audit={"eval_file": str(path), "eval_rows": len(df)})  # fmt: skip
    record = {
        "promote": outcome.promoted,
        "reason": outcome.reason,
        "metric": reg.metric,
        "challenger": version,
        "challenger_score": candidate[reg.metric],
        "champion": outcome.previous_champion,
        "champion_score": champion_metrics.get(reg.metric),
        "eval_file": str(path),
        "eval_rows": len(df),
    }
    with mlflow.start_run(run_name=f"promote-v{version}"):
        mlflow.set_tags({"task": "engagement", "decision": "promoted" if outcome.promoted else "kept",
                         "reason": outcome.reason[:5000]})  # fmt: skip
        mlflow.log_params({k: record[k] for k in ("challenger", "champion", "eval_file", "eval_rows", "metric")})
        mlflow.log_metrics(_scalar(candidate, "challenger_"))
        if champion_metrics:
            mlflow.log_metrics(_scalar(champion_metrics, "champion_"))
        mlflow.log_metric("promoted", float(outcome.promoted))
    return record
