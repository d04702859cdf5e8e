"""The engagement model: the engineered feature (weekly play minutes), the scikit-learn pipeline around
LightGBM and the baselines, and LightGBM's feature importance."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from gamesense.plots import plot_horizontal_bars
from gamesense.tasks.engagement.schema import (CATEGORICAL_FEATURES, CATEGORIES, ENGINEERED_FEATURES, FEATURES,
                                              NUMERIC_FEATURES)  # fmt: skip


def add_features(X: pd.DataFrame) -> pd.DataFrame:
    """Model input: the raw feature columns plus engineered ones (drops PlayerID, target, extras).

    ``WeeklyPlayMinutes = SessionsPerWeek * AvgSessionDurationMinutes``: engagement on this data is, in
    essence, how much a player plays per week; trees approximate this product poorly from the two factors.
    """
    out = X[FEATURES].copy()
    out["WeeklyPlayMinutes"] = X["SessionsPerWeek"].to_numpy(np.float64) * X["AvgSessionDurationMinutes"].to_numpy(
        np.float64
    )
    return out


def _feature_step():
    from sklearn.preprocessing import FunctionTransformer

    return FunctionTransformer(add_features, validate=False, feature_names_out=_feature_names)


def _feature_names(_transformer, _input_features) -> np.ndarray:
    return np.array(FEATURES + ENGINEERED_FEATURES, dtype=object)


def build_preprocessor():
    """ColumnTransformer: StandardScaler on numeric (+engineered) columns, one-hot on categoricals.

    Categories are fixed by the schema (not learnt), so every model sees the same columns; unknown values
    (impossible after validation) encode as all zeros.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    return ColumnTransformer(
        [
            ("num", StandardScaler(), NUMERIC_FEATURES),
            ("cat", OneHotEncoder(categories=[list(CATEGORIES[c]) for c in CATEGORICAL_FEATURES],
                                  handle_unknown="ignore", sparse_output=False), CATEGORICAL_FEATURES),  # fmt: skip
        ],
        remainder="drop",
        verbose_feature_names_out=False,
    )


def build_pipeline(estimator):
    """``Pipeline(features -> preprocess -> model)`` around any scikit-learn classifier."""
    from sklearn.pipeline import Pipeline

    return Pipeline([("features", _feature_step()), ("preprocess", build_preprocessor()), ("model", estimator)])


def build_lightgbm(params: dict[str, Any], seed: int = 42):
    """The main model: LightGBM multiclass classifier in the shared pipeline."""
    from lightgbm import LGBMClassifier

    return build_pipeline(LGBMClassifier(random_state=seed, verbose=-1, **params))


BaselineName = Literal["logistic_regression", "gradient_boosting"]


def build_baseline(name: BaselineName, seed: int = 42):
    """Baselines with default-ish parameters: multinomial logistic regression, and scikit-learn's
    GradientBoostingClassifier (the reference project's choice), in the same pipeline.

    Raises:
        ValueError: unknown name.
    """
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    if name == "logistic_regression":
        return build_pipeline(LogisticRegression(max_iter=1000, random_state=seed))
    if name == "gradient_boosting":
        return build_pipeline(GradientBoostingClassifier(random_state=seed))
    raise ValueError(f"unknown baseline {name!r} (use logistic_regression or gradient_boosting)")


def feature_importance(pipeline) -> pd.Series:
    """LightGBM gain importance per model input column (after one-hot), sorted descending."""
    names = pipeline.named_steps["preprocess"].get_feature_names_out()
    booster = pipeline.named_steps["model"].booster_
    return pd.Series(booster.feature_importance(importance_type="gain"), index=names).sort_values(ascending=False)


def plot_feature_importance(importance: pd.Series, path: str | Path, top: int = 20) -> Path:
    """Save a horizontal bar chart of the ``top`` importances (PNG), the largest on top."""
    top_values = importance.head(top)
    return plot_horizontal_bars(dict(zip(top_values.index, top_values.to_numpy())), path,
                                title="LightGBM feature importance", xlabel="gain")  # fmt: skip
