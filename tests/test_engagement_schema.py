"""Schema validation, features and the fast predict path of the engagement task."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gamesense.serving.engagement.predictor import FastPredictor
from gamesense.tasks import engagement as task

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "engagement" / "online_gaming_behavior.csv"
pytestmark = pytest.mark.skipif(not DATA.is_file(), reason="engagement dataset not available")


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return pd.read_csv(DATA, nrows=3000)


def test_clean_data_passes_with_canonical_dtypes(frame):
    result = task.validate_frame(frame, require_target=True)
    assert len(result.valid) == len(frame) and result.rejects.empty and result.n_duplicates == 0
    assert result.valid["Age"].dtype == np.int64
    assert isinstance(result.valid["Gender"].dtype, pd.CategoricalDtype)


def test_rejects_carry_a_reason_per_row_and_duplicates_are_counted(frame):
    bad = frame.head(8).copy()
    bad["SessionsPerWeek"] = bad["SessionsPerWeek"].astype(object)
    bad.loc[0, "Age"] = 5
    bad.loc[1, "Gender"] = "Robot"
    bad.loc[2, "SessionsPerWeek"] = 2.5
    bad.loc[3, "PlayTimeHours"] = np.nan
    bad.loc[4, "SessionsPerWeek"] = "often"
    bad.loc[5, "EngagementLevel"] = "Extreme"
    bad.loc[6, "PlayerID"] = bad.loc[7, "PlayerID"]  # same id, different content
    dupes = pd.concat([bad, frame.iloc[[20, 20]]], ignore_index=True)  # one exact duplicate pair
    result = task.validate_frame(dupes, require_target=True)
    reasons = dict(zip(result.rejects["source_row"], result.rejects["reason"]))
    assert reasons[0] == "Age out of range [10, 100]"
    assert "Gender not in {Female, Male}" in reasons[1]
    assert reasons[2] == "SessionsPerWeek is not a whole number"
    assert reasons[3] == "PlayTimeHours is missing"
    assert reasons[4] == "SessionsPerWeek is not a number"
    assert "EngagementLevel not in" in reasons[5]
    assert "PlayerID is duplicated" in reasons[6] and "PlayerID is duplicated" in reasons[7]
    assert result.n_duplicates == 1
    assert len(result.valid) == 1 and result.report()["rejected"] == 8


def test_target_is_optional_at_scoring_time_but_required_for_training(frame):
    unlabeled = frame.drop(columns=[task.TARGET]).head(50)
    assert len(task.validate_frame(unlabeled).valid) == 50
    with pytest.raises(task.SchemaError, match="EngagementLevel"):
        task.validate_frame(unlabeled, require_target=True)
    with pytest.raises(task.SchemaError, match="missing column\\(s\\): Age"):
        task.validate_frame(frame.drop(columns=["Age"]))


def test_player_id_is_never_a_feature_and_fast_path_matches_pipeline(frame):
    valid = task.validate_frame(frame, require_target=True).valid
    X, y = task.split_xy(valid)
    assert task.ID_COLUMN not in X.columns and task.ID_COLUMN not in task.add_features(valid).columns
    pipe = task.build_lightgbm({"n_estimators": 10, "num_leaves": 7, "n_jobs": 1}).fit(X, y)
    plain = FastPredictor(pipe, compiled=False)
    fast = plain.predict_proba(valid)
    np.testing.assert_allclose(fast, pipe.predict_proba(X), atol=1e-9)
    compiled = FastPredictor(pipe)
    if compiled.compiled is not None:  # lleaves is installed and compiled the trees
        np.testing.assert_allclose(compiled.predict_proba(valid), fast, atol=1e-9)
        big = pd.concat([valid] * 10, ignore_index=True)  # threaded chunks
        np.testing.assert_allclose(compiled.predict_proba(big), np.tile(fast, (10, 1)), atol=1e-9)
    # categoricals given as plain strings take the same path
    as_str = valid.astype({c: str for c in task.CATEGORICAL_FEATURES})
    np.testing.assert_allclose(FastPredictor(pipe).predict_proba(as_str), fast, atol=1e-12)
    m = task.compute_metrics(y, pipe.predict(X))
    assert set(m) >= {"accuracy", "macro_f1", "precision_High", "recall_Low", "f1_Medium", "confusion_matrix"}
