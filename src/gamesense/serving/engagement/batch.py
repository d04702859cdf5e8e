"""Batch inference: validate a CSV/Parquet file, score it with a registered model, write predictions.

Rejected rows go to a rejects file (with the reason per row); the validated inputs plus predictions are
kept under ``<workdir>/engagement/scored/`` so monitoring can compare them with the training data.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd

from gamesense.settings import same_file, work_dir
from gamesense.tasks import engagement as task


def scored_dir() -> Path:
    """Where scored batches are kept for monitoring (``<workdir>/engagement/scored``)."""
    path = work_dir() / "engagement" / "scored"
    path.mkdir(parents=True, exist_ok=True)
    return path


def latest_scored_batch() -> Path | None:
    """Newest kept scored batch, or None."""
    files = sorted(scored_dir().glob("*.parquet"))
    return files[-1] if files else None


def score_file(recipe: task.EngagementRecipe, input_path: str | Path, output_path: str | Path,
               model_ref: str | None = None, rejects_path: str | Path | None = None,
               keep_scored: bool = True) -> dict[str, Any]:  # fmt: skip
    """:func:`predict_batch` with the version the recipe serves (``registry.model_name@serving.alias``) or
    ``model_ref`` (any reference :func:`~gamesense.serving.engagement.predictor.load_engagement_model` takes),
    tracked where the recipe says.

    Raises:
        as :func:`predict_batch`; LookupError: no such version.
    """
    from gamesense.registry.mlflow_store import setup_tracking
    from gamesense.serving.engagement.predictor import load_engagement_model

    setup_tracking(recipe.registry.tracking_uri)
    model = load_engagement_model(model_ref or recipe.served_model)
    return predict_batch(input_path, output_path, model, rejects_path, keep_scored)


def predict_batch(
    input_path: str | Path,
    output_path: str | Path,
    model,
    rejects_path: str | Path | None = None,
    keep_scored: bool = True,
) -> dict[str, Any]:
    """Score ``input_path`` with ``model`` (a :class:`~gamesense.serving.engagement.predictor.EngagementModel`).

    Output columns: ``PlayerID``, ``PredictedEngagementLevel``, ``proba_High``, ``proba_Low``,
    ``proba_Medium``, ``model_version``. The target column, when present, is ignored for scoring.

    PlayerIDs are written exactly as read (text). Rejected rows go to ``rejects_path`` (default
    ``<workdir>/engagement/rejects/<input>-<time>.csv``) with the reason per row.

    Returns:
        summary dict: counts, output/rejects/scored paths, seconds, rows_per_s.

    Raises:
        SchemaError: unreadable file, unsupported suffix, missing columns, an output path that is the input,
            or no valid row at all (the rejects file is written first and named in the message).
    """
    t0 = time.perf_counter()
    input_path, output_path = Path(input_path), Path(output_path)
    if output_path.suffix.lower() not in (".csv", ".parquet", ".pq"):
        raise task.SchemaError(f"{output_path}: unsupported format (use .csv or .parquet)")
    for name, path in (("--output", output_path), ("--rejects", rejects_path)):
        if path is not None and same_file(path, input_path):
            raise task.SchemaError(f"{name} {path} is the input file: choose another path (the input would be overwritten)")
    raw = task.read_table(input_path)
    result = task.validate_frame(raw, require_target=False)
    valid = result.valid
    stamp = time.strftime("%Y%m%dT%H%M%S") + f"-{time.time_ns() % 1_000_000:06d}"
    if len(result.rejects):
        rejects_path = Path(rejects_path) if rejects_path else work_dir() / "engagement" / "rejects" / f"{input_path.stem}-{stamp}.csv"
        task.write_table(result.rejects, rejects_path)
    if valid.empty:
        if result.n_input == 0:
            raise task.SchemaError(f"{input_path}: no rows to score (only a header)")
        top = ", ".join(f"{reason} ({count})" for reason, count in sorted(result.summary.items(), key=lambda kv: -kv[1])[:3])
        raise task.SchemaError(f"{input_path}: all {result.n_input} rows rejected ({top}); reasons per row in {rejects_path}")
    preds = model.predict_frame(valid)
    out = pd.concat([valid[[task.ID_COLUMN]], preds], axis=1)
    out[task.PREDICTION] = out[task.PREDICTION].astype(str)
    out["model_version"] = str(model.version)
    task.write_table(out, output_path)
    summary: dict[str, Any] = {**result.report(), "output": str(output_path), "model_version": str(model.version)}
    if len(result.rejects):
        summary["rejects_file"] = str(rejects_path)
    if keep_scored and len(valid):
        scored = pd.concat([valid, preds], axis=1)
        scored["model_version"] = str(model.version)
        path = scored_dir() / f"{stamp}-{input_path.stem}.parquet"
        scored.to_parquet(path, index=False)
        summary["scored_file"] = str(path)
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    summary["rows_per_s"] = round(len(valid) / max(summary["seconds"], 1e-9))
    summary["predicted_levels"] = out[task.PREDICTION].value_counts().to_dict()
    return summary
