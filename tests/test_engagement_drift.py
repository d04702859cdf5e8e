"""Drift monitoring with Evidently on real frames: the rule fires on simulated drift, stays quiet on a
clean split of the same data; the CLI exits non-zero on drift."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from gamesense.cli import app as cli
from gamesense.monitoring.engagement import ColumnDrift, decide_retraining, run_drift, simulate_drift
from gamesense.config import load_recipe
from gamesense.tasks import engagement as task

RULE = load_recipe("engagement", task.EngagementRecipe).drift  # the shipped retraining rule

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "engagement" / "online_gaming_behavior.csv"
pytestmark = pytest.mark.skipif(not DATA.is_file(), reason="engagement dataset not available")


@pytest.fixture(scope="module")
def halves():
    valid = task.validate_frame(pd.read_csv(DATA).sample(8000, random_state=11), require_target=True).valid
    ref, cur = valid.iloc[:4000].reset_index(drop=True), valid.iloc[4000:].reset_index(drop=True)
    # predictions stand in via the label: same distribution in a clean split
    ref[task.PREDICTION], cur[task.PREDICTION] = ref[task.TARGET].astype(str), cur[task.TARGET].astype(str)
    return ref, cur


def test_clean_split_stays_quiet(halves, tmp_path):
    ref, cur = halves
    result = run_drift(ref, cur, RULE, tmp_path)
    assert not result.retrain and result.reasons == [] and result.n_drifted == 0
    assert set(result.columns) == set(task.FEATURES) | {task.PREDICTION}
    assert Path(result.html_report).stat().st_size > 10_000
    saved = json.loads(Path(result.json_report).read_text())
    assert saved["decision"]["retrain"] is False and saved["evidently"]["metrics"]


def test_simulated_drift_fires(halves, tmp_path):
    ref, cur = halves
    drifted = task.validate_frame(simulate_drift(cur)).valid
    assert len(drifted) == len(cur)  # the perturbation stays inside the schema
    drifted[task.PREDICTION] = cur[task.PREDICTION].replace({"High": "Low"})
    result = run_drift(ref, drifted, RULE, tmp_path)
    assert result.retrain and result.prediction_drifted
    assert result.columns["AvgSessionDurationMinutes"].drifted and result.columns["SessionsPerWeek"].drifted
    assert any("key column SessionsPerWeek" in r for r in result.reasons)


def test_rule_is_configurable():
    cols = {c: ColumnDrift(c, "Wasserstein distance (normed)", 0.0, 0.1, False) for c in task.FEATURES}
    cols["Age"] = ColumnDrift("Age", "Wasserstein distance (normed)", 0.5, 0.1, True)
    assert decide_retraining(cols, None, RULE)[0] is False  # 1/11 < 0.3, not a key column
    assert decide_retraining(cols, None, RULE.model_copy(update={"key_columns": ["Age"]}))[0] is True
    assert decide_retraining(cols, None, RULE.model_copy(update={"drift_share": 0.05}))[0] is True
    cols["p"] = ColumnDrift("p", "K-S p_value", 0.01, 0.05, True)
    assert decide_retraining(cols, "p", RULE.model_copy(update={"prediction_drift": False}))[0] is False
    assert decide_retraining(cols, "p", RULE)[0] is True


def test_monitor_cli_exit_codes(tmp_path, monkeypatch):
    """monitor exits 0 on a clean batch and 1 on a simulated-drift batch (predictions by a trained model)."""
    monkeypatch.setenv("GAMESENSE_WORKDIR", str(tmp_path / "work"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    full = pd.read_csv(DATA).sample(7000, random_state=5)
    full.iloc[:3000].to_csv(tmp_path / "ref.csv", index=False)
    full.iloc[3000:6000].drop(columns=[task.TARGET]).to_csv(tmp_path / "clean.csv", index=False)
    full.iloc[6000:].to_csv(tmp_path / "heldout.csv", index=False)
    runner = CliRunner()
    fast = ["--set", f"data.train_file={tmp_path / 'ref.csv'}", "--set", "data.cv_folds=0", "--set", "plots=false",
            "--set", "baselines=[]"]  # fmt: skip
    assert runner.invoke(cli, ["engagement", "train", *fast]).exit_code == 0
    assert runner.invoke(cli, ["engagement", "promote", "--eval-file", str(tmp_path / "heldout.csv"), *fast]).exit_code == 0
    res = runner.invoke(cli, ["engagement", "predict", "--input", str(tmp_path / "clean.csv"), "--output",
                              str(tmp_path / "p.parquet"), *fast])  # fmt: skip
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["engagement", "monitor", *fast])  # newest scored batch vs training file
    assert res.exit_code == 0 and "OK: no retraining needed" in res.output, res.output
    res = runner.invoke(cli, ["engagement", "simulate-drift", "--input", str(tmp_path / "clean.csv"), "--output",
                              str(tmp_path / "drift.csv")])  # fmt: skip
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["engagement", "monitor", "--current", str(tmp_path / "drift.csv"), *fast])
    assert res.exit_code == 1 and "RETRAIN" in res.output and "SessionsPerWeek" in res.output, res.output
    assert len(list((tmp_path / "work" / "engagement" / "reports").glob("*.html"))) == 2
