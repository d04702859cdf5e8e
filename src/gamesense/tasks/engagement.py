"""Player engagement (High / Medium / Low) from game telemetry: everything specific to this task.

- the schema of the 13 columns and :func:`validate_frame` (rows that break it go to rejects with a reason),
- feature lists and the engineered feature (weekly play minutes),
- the scikit-learn / LightGBM pipeline builders and the baselines,
- metrics and plots,

Data: ``online_gaming_behavior.csv`` (Kaggle "Predict Online Gaming Behavior", simulated). ``PlayerID`` is
an identifier and is never a feature.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

ID_COLUMN = "PlayerID"
TARGET = "EngagementLevel"
CLASSES = ("High", "Low", "Medium")  # sorted: the column order of predict_proba
PREDICTION = "PredictedEngagementLevel"
PROBA_PREFIX = "proba_"

CATEGORIES: dict[str, tuple[str, ...]] = {
    "Gender": ("Female", "Male"),
    "Location": ("Asia", "Europe", "Other", "USA"),
    "GameGenre": ("Action", "RPG", "Simulation", "Sports", "Strategy"),
    "GameDifficulty": ("Easy", "Hard", "Medium"),
}


@dataclass(frozen=True)
class NumericSpec:
    """An allowed numeric range (inclusive) and whether values must be whole numbers."""

    low: float
    high: float
    integer: bool
    description: str = ""


# Ranges are physical/plausible bounds, wider than the training data, so that drift is seen by monitoring
# instead of being silently rejected; only impossible values are rejects.
NUMERIC: dict[str, NumericSpec] = {
    "Age": NumericSpec(10, 100, True, "years"),
    "PlayTimeHours": NumericSpec(0, 24, False, "average hours per session"),
    "InGamePurchases": NumericSpec(0, 1, True, "0/1: made in-game purchases"),
    "SessionsPerWeek": NumericSpec(0, 168, True, "sessions per week"),
    "AvgSessionDurationMinutes": NumericSpec(0, 1440, True, "average minutes per session"),
    "PlayerLevel": NumericSpec(0, 1000, True, "current level"),
    "AchievementsUnlocked": NumericSpec(0, 10000, True, "achievements unlocked"),
}

MAX_ID_LENGTH = 128  # PlayerID characters; a longer "id" is a broken file or a hostile request

CATEGORICAL_FEATURES = list(CATEGORIES)
RAW_NUMERIC_FEATURES = list(NUMERIC)
ENGINEERED_FEATURES = ["WeeklyPlayMinutes"]
NUMERIC_FEATURES = RAW_NUMERIC_FEATURES + ENGINEERED_FEATURES
FEATURES = RAW_NUMERIC_FEATURES + CATEGORICAL_FEATURES  # raw input columns the model reads
COLUMNS = [ID_COLUMN, "Age", "Gender", "Location", "GameGenre", "PlayTimeHours", "InGamePurchases",
           "GameDifficulty", "SessionsPerWeek", "AvgSessionDurationMinutes", "PlayerLevel",
           "AchievementsUnlocked", TARGET]  # fmt: skip


class SchemaError(ValueError):
    """The file as a whole cannot be used (missing columns, unreadable format); the message names them."""


# --- reading, writing, validation -----------------------------------------------------------------------


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV or Parquet file (by suffix). ``PlayerID`` is read as text: identifiers are opaque keys, and
    parsing them as numbers would change large ones (float64 / int64 overflow).

    Raises:
        SchemaError: missing, empty, non-UTF-8 or malformed file, or an unsupported suffix (the message names
            the file and, where known, the line).
    """
    path = Path(path)
    if not path.is_file():
        raise SchemaError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        try:
            return pd.read_csv(path, dtype={ID_COLUMN: str}, encoding="utf-8")
        except pd.errors.EmptyDataError:
            raise SchemaError(f"{path}: empty file (expected a CSV header: {','.join(COLUMNS)})") from None
        except UnicodeDecodeError:
            raise SchemaError(f"{path}: {_first_non_utf8(path)}; expected UTF-8 text") from None
        except pd.errors.ParserError as err:
            raise SchemaError(f"{path}: malformed CSV ({str(err).strip().splitlines()[-1]})") from None
    if suffix in (".parquet", ".pq"):
        try:
            df = pd.read_parquet(path)
        except Exception as err:  # pyarrow raises several unrelated types for a broken file
            raise SchemaError(f"{path}: not a readable Parquet file ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
        return df
    raise SchemaError(f"{path}: unsupported format {suffix!r} (use .csv or .parquet)")


def _first_non_utf8(path: Path) -> str:
    """Where the first byte that is not UTF-8 lies, as ``line N, byte 0xNN`` (read only on the error path)."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        return f"line {line}: byte 0x{data[err.start]:02x} is not UTF-8"
    return "not UTF-8"


def write_table(df: pd.DataFrame, path: str | Path) -> Path:
    """Write ``df`` as CSV or Parquet (by suffix), creating parent directories.

    Raises:
        SchemaError: unsupported suffix, or the file cannot be written (the message names it and why).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq"):
        raise SchemaError(f"{path}: unsupported format {suffix!r} (use .csv or .parquet)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if suffix == ".csv":
            df.to_csv(path, index=False)
        else:
            df.to_parquet(path, index=False)
    except OSError as err:
        raise SchemaError(f"cannot write {path}: {err.strerror or err}") from None
    return path


def player_ids(values: pd.Series) -> pd.Series:
    """PlayerIDs as text, exactly as given: strings stay as they are, integers are written in full; integral
    floats (a Parquet column that was already float) lose their ``.0``. Missing or blank values become None.

    >>> player_ids(pd.Series(["007", 12, None, " "])).tolist()
    ['007', '12', None, None]
    """

    def one(value: Any) -> str | None:
        if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
            return None
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            return str(int(value))
        text = str(value)
        return text if text.strip() else None

    return pd.Series([one(v) for v in values.tolist()], index=values.index, dtype=object)


@dataclass
class ValidationResult:
    """Outcome of :func:`validate_frame`.

    Attributes:
        valid: rows that passed, with canonical dtypes (int64 / float64 / pandas Categorical with the
            schema's categories), in input order, index reset.
        rejects: rejected rows as read, plus ``source_row`` (0-based position in the input) and ``reason``.
        n_input: rows read; n_duplicates: exact duplicate rows dropped (counted, not rejected).
    """

    valid: pd.DataFrame
    rejects: pd.DataFrame
    n_input: int
    n_duplicates: int
    summary: dict[str, int] = field(default_factory=dict)
    rejects_file: str | None = None  # where the caller wrote ``rejects``, if it did

    def report(self) -> dict[str, Any]:
        """Counts for logs and CLI output."""
        out = {"rows": self.n_input, "valid": len(self.valid), "rejected": len(self.rejects),
               "duplicates_dropped": self.n_duplicates, "reasons": self.summary}  # fmt: skip
        if self.rejects_file:
            out["rejects_file"] = self.rejects_file
        return out


def validate_frame(df: pd.DataFrame, require_target: bool = False, require_id: bool = True) -> ValidationResult:
    """Check ``df`` against the schema, row by row (vectorised).

    Exact duplicate rows are dropped and counted. A row is rejected, with every reason joined by ``"; "``,
    when a value is missing, not numeric, not a whole number where one is required, out of range, not an
    allowed category, or when its PlayerID is longer than :data:`MAX_ID_LENGTH` or appears on more than one
    (non-identical) row. PlayerIDs are opaque text (see :func:`player_ids`). Extra columns are ignored.

    Args:
        require_target: training/evaluation: the target column must be present and valid, and is kept.
            Otherwise (scoring) the target is not used, so it is neither checked nor kept.

    Raises:
        SchemaError: required columns missing (named in the message).
    """
    required = ([ID_COLUMN] if require_id else []) + FEATURES + ([TARGET] if require_target else [])
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise SchemaError(f"missing column(s): {', '.join(missing)}")
    n_input = len(df)
    cols = [c for c in COLUMNS if c in df.columns and (c != TARGET or require_target)]
    work = df[cols].reset_index(drop=True)
    if ID_COLUMN in work.columns:
        work[ID_COLUMN] = player_ids(work[ID_COLUMN])
    dup = work.duplicated().to_numpy()
    n_dup = int(dup.sum())
    positions = np.flatnonzero(~dup)
    work = work.iloc[positions].reset_index(drop=True)
    n = len(work)
    reasons = np.full(n, "", dtype=object)
    counts: dict[str, int] = {}
    out: dict[str, Any] = {}

    def flag(mask: np.ndarray, text: str) -> None:
        if mask.any():
            reasons[mask] = reasons[mask] + (text + "; ")
            counts[text] = counts.get(text, 0) + int(mask.sum())

    def numeric(name: str, spec: NumericSpec) -> None:
        raw = work[name]
        values = pd.to_numeric(raw, errors="coerce")
        arr = values.to_numpy(dtype=np.float64, na_value=np.nan)
        missing = raw.isna().to_numpy()
        bad_type = np.isnan(arr) & ~missing
        flag(missing, f"{name} is missing")
        flag(bad_type, f"{name} is not a number")
        ok = np.isfinite(arr)
        flag(np.isinf(arr), f"{name} is not finite")
        if spec.integer:
            flag(ok & (np.floor(arr) != arr), f"{name} is not a whole number")
        flag(ok & ((arr < spec.low) | (arr > spec.high)), f"{name} out of range [{spec.low:g}, {spec.high:g}]")
        in_range = ok & (arr >= spec.low) & (arr <= spec.high)  # rejected rows get a placeholder, never cast
        out[name] = arr if not spec.integer else np.where(in_range, arr, 0).astype(np.int64)

    if ID_COLUMN in work.columns:
        ids = work[ID_COLUMN]
        present = ids.notna().to_numpy()
        flag(~present, f"{ID_COLUMN} is missing")
        lengths = np.fromiter((len(v) if v is not None else 0 for v in ids), dtype=np.int64, count=len(ids))
        flag(present & (lengths > MAX_ID_LENGTH),
             f"{ID_COLUMN} is longer than {MAX_ID_LENGTH} characters")  # fmt: skip
        flag(ids.duplicated(keep=False).to_numpy() & present, f"{ID_COLUMN} is duplicated (same id on different rows)")
        out[ID_COLUMN] = ids.to_numpy(dtype=object)
    for name, spec in NUMERIC.items():
        numeric(name, spec)
    for name, allowed in list(CATEGORIES.items()) + ([(TARGET, tuple(sorted(CLASSES)))] if TARGET in work else []):
        raw = work[name]
        cat = pd.Categorical(raw, categories=allowed)
        codes = cat.codes
        missing = raw.isna().to_numpy()
        flag(missing, f"{name} is missing")
        flag((codes < 0) & ~missing, f"{name} not in {{{', '.join(allowed)}}}")
        out[name] = cat

    bad = reasons != ""
    rejects = work.loc[bad].copy()
    rejects.insert(0, "source_row", positions[bad])
    rejects["reason"] = [r[:-2] for r in reasons[bad]]
    keep = ~bad
    valid = pd.DataFrame({c: out[c][keep] for c in cols})
    return ValidationResult(valid.reset_index(drop=True), rejects.reset_index(drop=True), n_input, n_dup, counts)


# --- features and models --------------------------------------------------------------------------------


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


def split_xy(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """Features frame (raw columns; the pipeline selects and engineers) and target labels as str."""
    return df[FEATURES], df[TARGET].astype(str)


# --- metrics and plots ----------------------------------------------------------------------------------


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


def plot_confusion_matrix(cm: list[list[int]], path: str | Path, title: str = "Confusion matrix") -> Path:
    """Save a confusion-matrix heatmap (PNG) in :data:`CLASSES` order."""
    from gamesense.plots import plot_confusion_matrix as plot

    return plot(cm, list(CLASSES), path, title)


def feature_importance(pipeline) -> pd.Series:
    """LightGBM gain importance per model input column (after one-hot), sorted descending."""
    names = pipeline.named_steps["preprocess"].get_feature_names_out()
    booster = pipeline.named_steps["model"].booster_
    return pd.Series(booster.feature_importance(importance_type="gain"), index=names).sort_values(ascending=False)


def plot_feature_importance(importance: pd.Series, path: str | Path, top: int = 20) -> Path:
    """Save a horizontal bar chart of the ``top`` importances (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    imp = importance.head(top)[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(imp) + 1))
    ax.barh(imp.index, imp.to_numpy())
    ax.set_xlabel("gain")
    ax.set_title("LightGBM feature importance")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


# --- recipe ---------------------------------------------------------------------------------------------

from pydantic import Field  # noqa: E402

from gamesense.config import StrictModel  # noqa: E402


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
