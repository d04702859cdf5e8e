"""ZenML pipelines (local orchestrator, store in the temp work dir): monitor-then-retrain fires on drift."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from gamesense.config import load_recipe
from gamesense.tasks import engagement as task

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "engagement" / "online_gaming_behavior.csv"


@pytest.mark.slow
@pytest.mark.skipif(not DATA.is_file(), reason="engagement dataset not available")
def test_zenml_train_promote_monitor_retrain(tmp_path, monkeypatch):
    monkeypatch.setenv("GAMESENSE_WORKDIR", str(tmp_path / "work"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("ZENML_CONFIG_PATH", raising=False)
    from gamesense.monitoring.engagement import simulate_drift
    from gamesense.pipelines import engagement as pipes

    full = pd.read_csv(DATA).sample(5000, random_state=2)
    full.iloc[:4000].to_csv(tmp_path / "train.csv", index=False)
    full.iloc[4000:].to_csv(tmp_path / "heldout.csv", index=False)
    simulate_drift(full.head(2000)).to_csv(tmp_path / "drift.csv", index=False)
    recipe = load_recipe("engagement", task.EngagementRecipe, [
        f"data.train_file={tmp_path / 'train.csv'}", f"data.eval_file={tmp_path / 'heldout.csv'}", "data.cv_folds=0",
        "plots=false", "baselines=[]"])  # fmt: skip
    trained = pipes.run("train", recipe)
    assert trained["version"] == "1"
    assert pipes.run("promote", recipe)["promote"] is True
    scored = pipes.run("predict", recipe, input_file=str(tmp_path / "drift.csv"), output_file=str(tmp_path / "p.csv"))
    assert scored["valid"] == 2000
    drift = pipes.run("monitor", recipe, current_file=None, retrain=True)
    assert drift["retrain"] is True
    from gamesense.registry.mlflow_store import list_model_versions

    assert [r["version"] for r in list_model_versions("gamesense-engagement")][0] == "2"  # retrained
    assert task.PREDICTION in pd.read_csv(tmp_path / "p.csv").columns
