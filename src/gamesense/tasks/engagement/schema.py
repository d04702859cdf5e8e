"""The engagement data's schema: its 13 columns, allowed values and ranges, reading and writing CSV/Parquet, and
:func:`validate_frame` (rows that break the schema go to rejects with their reasons, never silently).

Data: ``online_gaming_behavior.csv`` (Kaggle "Predict Online Gaming Behavior", simulated). ``PlayerID`` is an
identifier and is never a feature.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


def split_xy(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """Features frame (raw columns; the pipeline selects and engineers) and target labels as str."""
    return df[FEATURES], df[TARGET].astype(str)
