"""Training the engagement model (tabular: LightGBM and baselines), logged to MLflow.

``train_engagement`` fits LightGBM plus the baselines on one stratified split, cross-validates LightGBM on
the train part, logs params/metrics/plots (baselines as nested runs), logs the sklearn pipeline with
signature and input example, registers it and points ``challenger`` at the new version; the promotion gate
(:mod:`gamesense.pipelines.engagement_gate`) decides later whether it becomes ``champion``.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from gamesense.config import resolve_data_path
from gamesense.plots import plot_confusion_matrix
from gamesense.tasks import engagement as task

log = logging.getLogger(__name__)

# skops (MLflow's safe default format) refuses types not on this allow-list; it is stored with the model.
SKOPS_TRUSTED_TYPES = [
    "collections.OrderedDict",
    "gamesense.tasks.engagement.model._feature_names",
    "gamesense.tasks.engagement.model.add_features",
    "lightgbm.basic.Booster",
    "lightgbm.sklearn.LGBMClassifier",
]
PIP_REQUIREMENTS = ["scikit-learn==1.9.1", "lightgbm==4.7.0", "pandas==2.3.3", "numpy", "gamesense"]


@dataclass
class EngagementTrainResult:
    """What one training run produced. ``metrics``: held-out metrics per model name."""

    run_id: str
    model_name: str
    version: str | None
    metrics: dict[str, dict[str, Any]]
    cv: dict[str, float]
    seconds: float
    validation: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_training_frame(path: str | Path, max_rows: int | None = None, seed: int = 42) -> tuple[pd.DataFrame, Any]:
    """Read and validate a labelled file; optionally a stratified subsample of ``max_rows``.

    Rows that break the schema are not used: they are written with their reason to
    ``<workdir>/engagement/rejects/<file>-<time>.csv`` (named in the report as ``rejects_file``) and a
    warning says how many, so a training or evaluation set never shrinks unnoticed.

    Returns:
        (valid frame, :class:`~gamesense.tasks.engagement.ValidationResult`).

    Raises:
        SchemaError: unreadable file or missing columns; ValueError: no valid rows.
    """
    from gamesense.settings import work_dir

    resolved = resolve_data_path(path)
    result = task.validate_frame(task.read_table(resolved), require_target=True)
    if len(result.rejects):
        stamp = time.strftime("%Y%m%dT%H%M%S") + f"-{time.time_ns() % 1_000_000:06d}"
        rejects = task.write_table(result.rejects, work_dir() / "engagement" / "rejects" / f"{Path(resolved).stem}-{stamp}.csv")
        result.rejects_file = str(rejects)
        log.warning("%s: %d of %d rows rejected and not used (%s); reasons per row in %s", path, len(result.rejects),
                    result.n_input, "; ".join(f"{k}: {v}" for k, v in result.summary.items()), rejects)  # fmt: skip
    df = result.valid
    if df.empty:
        raise ValueError(f"{path}: no valid rows ({result.n_input} read, {len(result.rejects)} rejected"
                         + (f"; reasons per row in {result.rejects_file}" if result.rejects_file else "") + ")")  # fmt: skip
    if max_rows and len(df) > max_rows:
        from sklearn.model_selection import train_test_split

        df, _ = train_test_split(df, train_size=max_rows, stratify=df[task.TARGET], random_state=seed)
        df = df.reset_index(drop=True)
    return df, result


def _scalar_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    return {prefix + k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


def train_engagement(recipe: task.EngagementRecipe, data_file: str | None = None,
                     register: bool = True) -> EngagementTrainResult:  # fmt: skip
    """Train LightGBM + baselines, log everything to MLflow and register LightGBM as ``challenger``.

    Args:
        recipe: the engagement recipe; ``data_file`` overrides ``recipe.data.train_file``.
        register: register the model and set the ``challenger`` alias.

    Raises:
        SchemaError / ValueError: unusable data.
    """
    import mlflow
    from mlflow.models import infer_signature
    from sklearn.model_selection import StratifiedKFold, cross_validate, train_test_split

    from gamesense.registry.mlflow_store import set_alias, setup_tracking
    from gamesense.registry.promotion import CHALLENGER, promotion_lock

    t0 = time.perf_counter()
    cfg = recipe.data
    path = data_file or cfg.train_file
    df, validation = load_training_frame(path, cfg.max_rows, cfg.seed)
    train_df, test_df = train_test_split(df, test_size=cfg.test_size, stratify=df[task.TARGET], random_state=cfg.seed)
    X_train, y_train = task.split_xy(train_df)
    X_test, y_test = task.split_xy(test_df)
    setup_tracking(recipe.registry.tracking_uri, recipe.registry.experiment)
    params = recipe.lightgbm.model_dump()
    all_metrics: dict[str, dict[str, Any]] = {}
    cv_summary: dict[str, float] = {}
    version = None
    with mlflow.start_run(run_name="engagement-lightgbm") as run, tempfile.TemporaryDirectory() as tmp:
        mlflow.set_tags({"task": "engagement", "model_family": "lightgbm", "data_file": str(path),
                         "data_path": str(resolve_data_path(path).resolve())})  # fmt: skip
        if validation.rejects_file:
            mlflow.log_artifact(validation.rejects_file, "rejects")
        mlflow.log_params({f"lgbm_{k}": v for k, v in params.items()})
        mlflow.log_params({"data_file": str(path), "rows_valid": len(df), "rows_rejected": len(validation.rejects),
                           "rows_train": len(train_df), "rows_test": len(test_df), "test_size": cfg.test_size,
                           "cv_folds": cfg.cv_folds, "seed": cfg.seed,
                           "features": ",".join(task.FEATURES + task.ENGINEERED_FEATURES)})  # fmt: skip
        model = task.build_lightgbm(params, seed=cfg.seed)
        if cfg.cv_folds and cfg.cv_folds > 1:
            cv = cross_validate(
                task.build_lightgbm(params, seed=cfg.seed), X_train, y_train,
                cv=StratifiedKFold(cfg.cv_folds, shuffle=True, random_state=cfg.seed),
                scoring={"accuracy": "accuracy", "macro_f1": "f1_macro"}, n_jobs=1,
            )  # fmt: skip
            for name in ("accuracy", "macro_f1"):
                scores = cv[f"test_{name}"]
                cv_summary[f"cv_{name}_mean"], cv_summary[f"cv_{name}_std"] = float(scores.mean()), float(scores.std())
            mlflow.log_metrics(cv_summary)
        fit_start = time.perf_counter()
        model.fit(X_train, y_train)
        mlflow.log_metric("fit_seconds", time.perf_counter() - fit_start)
        metrics = task.compute_metrics(y_test, model.predict(X_test))
        all_metrics["lightgbm"] = metrics
        mlflow.log_metrics(_scalar_metrics(metrics, "test_"))
        tmpdir = Path(tmp)
        (tmpdir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        mlflow.log_artifact(str(tmpdir / "metrics.json"))
        if recipe.plots:
            plot_confusion_matrix(metrics["confusion_matrix"], task.CLASSES, tmpdir / "confusion_matrix.png",
                                  "LightGBM (held-out)")  # fmt: skip
            imp = task.feature_importance(model)
            task.plot_feature_importance(imp, tmpdir / "feature_importance.png")
            imp.to_csv(tmpdir / "feature_importance.csv", header=["gain"])
            for name in ("confusion_matrix.png", "feature_importance.png", "feature_importance.csv"):
                mlflow.log_artifact(str(tmpdir / name), artifact_path="plots")

        for name in recipe.baselines:
            with mlflow.start_run(run_name=f"engagement-{name}", nested=True):
                mlflow.set_tags({"task": "engagement", "model_family": name, "role": "baseline"})
                start = time.perf_counter()
                baseline = task.build_baseline(name, seed=cfg.seed).fit(X_train, y_train)
                mlflow.log_metric("fit_seconds", time.perf_counter() - start)
                bm = task.compute_metrics(y_test, baseline.predict(X_test))
                all_metrics[name] = bm
                mlflow.log_metrics(_scalar_metrics(bm, "test_"))
                if recipe.plots:
                    png = tmpdir / f"confusion_matrix_{name}.png"
                    plot_confusion_matrix(bm["confusion_matrix"], task.CLASSES, png, f"{name} (held-out)")
                    mlflow.log_artifact(str(png), artifact_path="plots")
            mlflow.log_metric(f"baseline_{name}_macro_f1", bm["macro_f1"])
            mlflow.log_metric(f"baseline_{name}_accuracy", bm["accuracy"])

        example = X_test.head(5).astype({c: str for c in task.CATEGORICAL_FEATURES})
        with warnings.catch_warnings():  # "integer columns cannot hold missing values": validated upstream
            warnings.simplefilter("ignore", UserWarning)
            signature = infer_signature(example, model.predict(example))
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=signature,
            input_example=example,
            pip_requirements=PIP_REQUIREMENTS,
            skops_trusted_types=SKOPS_TRUSTED_TYPES,
            registered_model_name=recipe.registry.model_name if register else None,
        )
        if register:
            version = str(info.registered_model_version)
            client = mlflow.MlflowClient()
            tags = {"task": "engagement", "gate_metric": recipe.registry.metric,
                    **{k: f"{v:.6f}" for k, v in _scalar_metrics(metrics).items()}}  # fmt: skip
            for key, value in tags.items():
                client.set_model_version_tag(recipe.registry.model_name, version, key, value)
            with promotion_lock(recipe.registry.model_name):  # never between a promote's check and its move
                set_alias(recipe.registry.model_name, version, CHALLENGER)
            mlflow.set_tag("registered_version", version)
        seconds = time.perf_counter() - t0
        mlflow.log_metric("train_seconds", seconds)
    return EngagementTrainResult(run.info.run_id, recipe.registry.model_name, version, all_metrics, cv_summary, seconds,
                       validation.report())  # fmt: skip
