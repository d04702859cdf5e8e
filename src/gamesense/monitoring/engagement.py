"""The engagement model's monitoring: data and prediction drift with Evidently 0.7, and the rule that triggers
retraining.

Reference: the training data scored by the serving model; current: a scored batch (inputs + predictions).
Evidently's ``DataDriftPreset`` picks a per-column test by column type and size (above 1000 rows:
normed Wasserstein distance for numeric, Jensen-Shannon for categorical, threshold 0.1; below: K-S /
chi-squared p-values at 0.05). The predicted level is one more categorical column: its drift is the
prediction drift. The retraining rule is :class:`~gamesense.tasks.engagement.DriftRule`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gamesense.tasks import engagement as task

DRIFT_FEATURES = task.FEATURES  # raw model inputs; PlayerID and target never


@dataclass
class ColumnDrift:
    """One column's test: ``score`` is a distance (drift when >= threshold) or a p-value (drift when <)."""

    column: str
    method: str
    score: float
    threshold: float
    drifted: bool


@dataclass
class DriftResult:
    """Outcome of :func:`run_drift`: per-column tests, share of drifted feature columns, the retraining
    decision with its reasons, and the report files written."""

    columns: dict[str, ColumnDrift]
    drift_share: float
    n_drifted: int
    prediction_drifted: bool | None
    retrain: bool = False
    reasons: list[str] = field(default_factory=list)
    html_report: str | None = None
    json_report: str | None = None
    rows_reference: int = 0
    rows_current: int = 0
    rows_current_rejected: int = 0  # rows of the current batch left out because they break the schema

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["columns"] = {k: asdict(v) for k, v in self.columns.items()}
        return out


def _drifted(method: str, score: float, threshold: float) -> bool:
    # Evidently: p-value tests flag drift below the threshold, distances at or above it.
    if "p_value" in method.lower() or "p-value" in method.lower():
        return score < threshold
    return score >= threshold


def decide_retraining(columns: dict[str, ColumnDrift], prediction_col: str | None, rule: task.DriftRule) -> tuple[bool, list[str], float, int]:
    """Apply the retraining rule.

    Returns:
        (retrain, reasons, drift_share over feature columns, number of drifted feature columns).
    """
    features = [c for c in columns if c != prediction_col]
    drifted = [c for c in features if columns[c].drifted]
    share = len(drifted) / max(len(features), 1)
    reasons = []
    if share > rule.drift_share:
        reasons.append(f"{len(drifted)}/{len(features)} columns drifted (share {share:.2f} > {rule.drift_share})")
    if rule.prediction_drift and prediction_col and columns.get(prediction_col) and columns[prediction_col].drifted:
        c = columns[prediction_col]
        reasons.append(f"predictions drifted ({c.method} {c.score:.3f} vs {c.threshold})")
    for key in rule.key_columns:
        if key in columns and columns[key].drifted:
            c = columns[key]
            reasons.append(f"key column {key} drifted ({c.method} {c.score:.3f} vs {c.threshold})")
    return bool(reasons), reasons, share, len(drifted)


def run_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    rule: task.DriftRule,
    reports_dir: str | Path | None = None,
    prediction_col: str | None = task.PREDICTION,
    name: str = "engagement-drift",
) -> DriftResult:
    """Compare ``current`` with ``reference`` (both with the raw feature columns, and ``prediction_col``
    when given), decide on retraining, and write ``<name>-<time>.html`` / ``.json`` to ``reports_dir``.

    Raises:
        KeyError: a feature column is missing from either frame.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    cats = list(task.CATEGORICAL_FEATURES)
    cols = list(DRIFT_FEATURES)
    if prediction_col and prediction_col in reference and prediction_col in current:
        cats.append(prediction_col)
        cols.append(prediction_col)
    else:
        prediction_col = None
    nums = [c for c in cols if c not in cats]
    missing = [c for c in cols if c not in reference or c not in current]
    if missing:
        raise KeyError(f"drift: column(s) missing: {', '.join(missing)}")
    if rule.max_reference_rows and len(reference) > rule.max_reference_rows:
        reference = reference.sample(rule.max_reference_rows, random_state=0)

    def prep(df: pd.DataFrame) -> pd.DataFrame:
        out = df[cols].copy()
        for c in cats:
            out[c] = out[c].astype(str)
        for c in nums:
            out[c] = out[c].astype(np.float64)
        return out

    definition = DataDefinition(numerical_columns=nums, categorical_columns=cats)
    ref_ds = Dataset.from_pandas(prep(reference), data_definition=definition)
    cur_ds = Dataset.from_pandas(prep(current), data_definition=definition)
    kwargs: dict[str, Any] = {"columns": cols, "drift_share": rule.drift_share}
    if rule.method_threshold is not None:
        kwargs["threshold"] = rule.method_threshold
    snapshot = Report([DataDriftPreset(**kwargs)]).run(cur_ds, ref_ds)
    payload = snapshot.dict()
    columns: dict[str, ColumnDrift] = {}
    for metric in payload["metrics"]:
        conf = metric.get("config", {})
        if conf.get("type", "").endswith("ValueDrift") and conf.get("column") in cols:
            method, thr, score = str(conf.get("method")), float(conf.get("threshold")), float(metric["value"])
            columns[conf["column"]] = ColumnDrift(conf["column"], method, score, thr, _drifted(method, score, thr))
    retrain, reasons, share, n_drifted = decide_retraining(columns, prediction_col, rule)
    result = DriftResult(columns, share, n_drifted, columns[prediction_col].drifted if prediction_col else None,
                         retrain, reasons, rows_reference=len(reference), rows_current=len(current))  # fmt: skip
    if reports_dir is not None:
        reports = Path(reports_dir)
        reports.mkdir(parents=True, exist_ok=True)
        stem = f"{name}-{time.strftime('%Y%m%dT%H%M%S')}-{time.time_ns() % 1_000_000:06d}"
        html, js = reports / f"{stem}.html", reports / f"{stem}.json"
        snapshot.save_html(str(html))
        result.html_report, result.json_report = str(html), str(js)
        js.write_text(json.dumps({"decision": result.to_dict(), "evidently": payload}, indent=2, default=str))
    return result


def simulate_drift(df: pd.DataFrame, strength: float = 1.0, seed: int = 0) -> pd.DataFrame:
    """A perturbed copy of ``df`` that looks like players drifting away (stays inside the schema):
    shorter and fewer sessions, older players, more on Hard difficulty. ``strength`` in [0, 1] scales it.

    The target column, if any, is dropped: it would no longer match the perturbed inputs.
    """
    rng = np.random.default_rng(seed)
    out = df.drop(columns=[task.TARGET], errors="ignore").copy()
    n = len(out)
    s = float(np.clip(strength, 0.0, 1.0))
    out["AvgSessionDurationMinutes"] = np.maximum(
        10, np.round(out["AvgSessionDurationMinutes"].to_numpy(np.float64) * (1 - 0.5 * s))
    ).astype(np.int64)
    out["SessionsPerWeek"] = np.maximum(
        0, np.round(out["SessionsPerWeek"].to_numpy(np.float64) * (1 - 0.5 * s) - rng.integers(0, 2, n) * s)
    ).astype(np.int64)
    out["Age"] = np.clip(out["Age"].to_numpy(np.int64) + np.round(6 * s).astype(np.int64), 10, 100)
    hard = rng.random(n) < 0.4 * s
    diff = out["GameDifficulty"].astype(object).to_numpy()
    diff[hard] = "Hard"
    out["GameDifficulty"] = diff
    return out


def reports_dir() -> Path:
    """Default reports directory: ``<workdir>/engagement/reports``."""
    from gamesense.settings import work_dir

    path = work_dir() / "engagement" / "reports"
    path.mkdir(parents=True, exist_ok=True)
    return path


def monitor_engagement(
    recipe: task.EngagementRecipe,
    current_file: str | Path | None = None,
    reference_file: str | Path | None = None,
    out_dir: str | Path | None = None,
    model=None,
) -> DriftResult:
    """Nightly check: reference = training data (``reference_file`` or the recipe's), current =
    ``current_file`` or the newest kept scored batch. Frames without predictions are scored with ``model``
    (default: the ``serving.alias`` version). Rows failing the schema are left out (counted in
    ``rows_current_rejected``).

    Raises:
        FileNotFoundError: no current batch; LookupError: a model is needed and none is registered;
        SchemaError: an unreadable file, or fewer than ``drift.min_rows`` valid rows in the current batch (a
        handful of rows "drifts" on every column by chance, so no decision is made on them).
    """
    from gamesense.config import resolve_data_path
    from gamesense.serving.engagement.batch import latest_scored_batch

    if current_file is None:
        current_file = latest_scored_batch()
        if current_file is None:
            raise FileNotFoundError("no scored batch yet: run `gamesense engagement predict` or pass --current")
    reference_path = resolve_data_path(reference_file or recipe.data.train_file)
    reference = task.validate_frame(task.read_table(reference_path)).valid
    raw_current = task.read_table(current_file)
    checked = task.validate_frame(raw_current)
    current = checked.valid
    minimum = recipe.drift.min_rows
    for label, path, frame, read in (("current batch", current_file, current, len(raw_current)),
                                     ("reference", reference_path, reference, None)):  # fmt: skip
        if len(frame) < minimum:
            rejected = ""
            if read is not None:
                rejected = f" of {read}" + (f" ({len(checked.rejects)} rejected: {'; '.join(checked.summary)})" if len(checked.rejects) else "")
            raise task.SchemaError(f"{label} {path}: {len(frame)} valid row(s){rejected}; a drift decision needs at "
                                   f"least {minimum} (drift.min_rows)")  # fmt: skip
    if task.PREDICTION in raw_current and len(raw_current) == len(current):  # a kept scored batch
        current[task.PREDICTION] = raw_current[task.PREDICTION].astype(str).to_numpy()
    frames = [f for f in (reference, current) if task.PREDICTION not in f]
    if frames:
        if model is None:
            from gamesense.registry.mlflow_store import setup_tracking
            from gamesense.serving.engagement.predictor import load_engagement_model

            setup_tracking(recipe.registry.tracking_uri)
            model = load_engagement_model(recipe.served_model)
        for f in frames:
            f[task.PREDICTION] = model.predict_frame(f)[task.PREDICTION].astype(str).to_numpy()
    result = run_drift(reference, current, recipe.drift, out_dir or reports_dir())
    result.rows_current_rejected = len(checked.rejects)
    return result
