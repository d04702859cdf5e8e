"""The engagement recipe (``recipes/engagement.yaml``, which holds every default): data and split, LightGBM's
hyperparameters, baselines, the drift rule that triggers retraining, registry and serving settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from gamesense.config import StrictModel

class EngagementData(StrictModel):
    """Training data and split."""

    train_file: str = Field(description="labelled CSV/Parquet")
    eval_file: str | None = Field(description="held-out labelled file for the promotion gate (never the training "
                                  "file); null: promote needs --eval-file")  # fmt: skip
    max_rows: int | None = Field(ge=100, description="stratified subsample of N rows (tests, smoke runs); null: all")
    test_size: float = Field(gt=0, lt=1, description="held-out share (stratified)")
    cv_folds: int = Field(ge=0, description="stratified K-fold CV of LightGBM on the train split; 0/1: off")
    seed: int = Field(description="split, CV and model seed")


class LightGBMParams(StrictModel):
    """LightGBM hyperparameters (``LGBMClassifier`` names). Few shallow-ish trees: the signal is mostly
    weekly play minutes, and prediction cost grows with the number of trees."""

    n_estimators: int = Field(ge=1)
    learning_rate: float = Field(gt=0)
    num_leaves: int = Field(ge=2)
    min_child_samples: int = Field(ge=1)
    subsample: float = Field(gt=0, le=1)
    colsample_bytree: float = Field(gt=0, le=1)
    reg_lambda: float = Field(ge=0)
    n_jobs: int = Field(description="training threads (1: share the CPU politely)")


class DriftRule(StrictModel):
    """When monitoring triggers retraining (any condition suffices)."""

    drift_share: float = Field(ge=0, le=1, description="retrain when share of drifted feature columns > this")
    prediction_drift: bool = Field(description="retrain when the prediction distribution drifted")
    key_columns: list[str] = Field(description="retrain when any of these drifted")
    method_threshold: float | None = Field(gt=0, description="override Evidently's per-column threshold")
    max_reference_rows: int | None = Field(ge=100, description="subsample reference for speed")
    min_rows: int = Field(ge=1, description="fewest valid rows in the current batch for a drift decision "
                          "(fewer: monitor exits 2 instead of calling drift on noise)")  # fmt: skip


class EngagementRegistry(StrictModel):
    """MLflow tracking and model registry."""

    tracking_uri: str | None = Field(description="null: SQLite store in the working directory")
    experiment: str = Field(description="MLflow experiment of the runs")
    model_name: str = Field(description="registered model name")
    metric: str = Field(description="promotion metric (higher is better)")
    min_delta: float = Field(ge=0, description="challenger must beat champion by more than this")


class EngagementServing(StrictModel):
    """Online API."""

    alias: str = Field(description="registry alias served")
    reload_interval_s: float = Field(gt=0, description="how often the server checks the alias")
    max_batch: int = Field(ge=1, description="players per request (more: 422)")
    max_body_bytes: int = Field(ge=1024, description="request body size limit (larger: 413)")


class EngagementRecipe(StrictModel):
    """Recipe for the engagement model (see ``recipes/engagement.yaml``, which holds every default)."""

    task: Literal["engagement"]
    data: EngagementData
    lightgbm: LightGBMParams
    baselines: list[Literal["logistic_regression", "gradient_boosting"]]
    plots: bool
    drift: DriftRule
    registry: EngagementRegistry
    serving: EngagementServing
    zenml: bool = Field(description="run CLI commands as ZenML pipelines")

    @property
    def served_model(self) -> str:
        """The registry name of the version that serves: ``<registry.model_name>@<serving.alias>``."""
        return f"{self.registry.model_name}@{self.serving.alias}"
