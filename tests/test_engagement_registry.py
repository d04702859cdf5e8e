"""Training, MLflow registration, champion/challenger promotion, batch scoring, online API with hot reload.

Real parts: MLflow SQLite store in a temp dir, the FastAPI app through its test client and once through
uvicorn on 127.0.0.1. Data subsampled to keep the module at a few seconds per training run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from support import isolated_workdir, served_on_localhost
from typer.testing import CliRunner

from gamesense.cli import app as cli
from gamesense.tasks import engagement as task

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "engagement" / "online_gaming_behavior.csv"
pytestmark = pytest.mark.skipif(not DATA.is_file(), reason="engagement dataset not available")

FAST = ["--set", "data.max_rows=3000", "--set", "data.cv_folds=0", "--set", "plots=false",
        "--set", "baselines=[]"]  # fmt: skip
BAD = FAST + ["--set", "lightgbm.n_estimators=1", "--set", "lightgbm.num_leaves=2"]
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A work dir with its own MLflow store, an evaluation file and an unlabeled batch."""
    root = tmp_path_factory.mktemp("engagement")
    with isolated_workdir(root):
        full = pd.read_csv(DATA)
        eval_df = full.sample(2000, random_state=7)
        eval_df.to_csv(root / "eval.csv", index=False)
        batch = full.drop(columns=[task.TARGET]).sample(500, random_state=3)
        batch.to_parquet(root / "batch.parquet", index=False)
        yield root


def aliases():
    from gamesense.registry.mlflow_store import list_model_versions, setup_tracking

    setup_tracking()
    return {r["version"]: r["aliases"] for r in list_model_versions("gamesense-engagement")}


def test_train_logs_and_registers_challenger(env):
    res = invoke("engagement", "train", "--set", "data.max_rows=3000", "--set", "data.cv_folds=2",
                 "--set", "baselines=[logistic_regression]")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "lightgbm" in res.output and "logistic_regression" in res.output and "CV" in res.output
    assert aliases() == {"1": ["challenger"]}
    import mlflow

    run = mlflow.search_runs(experiment_names=["gamesense-engagement"], filter_string="tags.model_family='lightgbm'").iloc[0]
    assert run["metrics.test_macro_f1"] > 0.8 and "metrics.cv_macro_f1_mean" in run
    assert run["params.features"].count("PlayerID") == 0
    files = {a.path for a in mlflow.MlflowClient().list_artifacts(run["run_id"], "plots")}
    assert {"plots/confusion_matrix.png", "plots/feature_importance.png"} <= files


def test_promotion_moves_alias_only_for_a_better_model(env):
    eval_file = str(env / "eval.csv")
    # v1 has no champion to beat -> promoted
    res = invoke("engagement", "promote", "--eval-file", eval_file)
    assert res.exit_code == 0 and "PROMOTED" in res.output, res.output
    assert aliases()["1"] == ["champion"]
    # v2: a deliberately weak model stays challenger
    assert invoke("engagement", "train", *BAD).exit_code == 0
    res = invoke("engagement", "promote", "--eval-file", eval_file)
    assert "KEPT" in res.output and "does not beat champion v1" in res.output, res.output
    assert aliases() == {"1": ["champion"], "2": ["challenger"]}
    log = [json.loads(line) for line in (env / "work" / "promotions.jsonl").read_text().splitlines()]
    assert [r["promoted"] for r in log] == [True, False] and log[1]["candidate"] < log[1]["baselines"]["champion v1"]
    assert log[1]["eval_file"] == eval_file and log[1]["eval_rows"] == 2000
    from mlflow import MlflowClient

    assert MlflowClient().get_model_version("gamesense-engagement", "2").tags["promotion_decision"] == "kept"


def test_batch_predict_writes_levels_probabilities_and_rejects(env):
    batch = pd.read_parquet(env / "batch.parquet")
    batch.loc[batch.index[0], "Age"] = 300
    batch.to_csv(env / "batch_bad.csv", index=False)
    out = env / "pred.csv"
    res = invoke("engagement", "predict", "--input", str(env / "batch_bad.csv"), "--output", str(out),
                 "--rejects", str(env / "rejects.csv"))  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["valid"] == 499 and summary["rejected"] == 1 and summary["model_version"] == "1"
    pred = pd.read_csv(out)
    assert list(pred.columns) == ["PlayerID", "PredictedEngagementLevel", "proba_High", "proba_Low", "proba_Medium",
                                  "model_version"]  # fmt: skip
    assert pred[["proba_High", "proba_Low", "proba_Medium"]].sum(axis=1).round(6).eq(1).all()
    assert "Age out of range" in pd.read_csv(env / "rejects.csv")["reason"].iloc[0]
    assert Path(summary["scored_file"]).is_file()
    bad = invoke("engagement", "predict", "--input", str(env / "nope.csv"), "--output", str(out))
    assert bad.exit_code == 2 and "no such file" in bad.output


PLAYER = {"PlayerID": 1, "Age": 30, "Gender": "Male", "Location": "USA", "GameGenre": "RPG", "PlayTimeHours": 5.5,
          "InGamePurchases": 1, "GameDifficulty": "Easy", "SessionsPerWeek": 12, "AvgSessionDurationMinutes": 150,
          "PlayerLevel": 40, "AchievementsUnlocked": 20}  # fmt: skip


def test_api_predicts_rejects_bad_input_and_hot_reloads_after_promotion(env):
    from gamesense.serving.engagement.api import create_app

    app = create_app(reload_interval_s=0.2)
    with TestClient(app) as client:
        assert client.get("/healthz").json()["model_version"] == "1"
        r = client.post("/v1/engagement/predict", json={"players": [PLAYER, {**PLAYER, "PlayerID": 2, "SessionsPerWeek": 0}]})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model_version"] == "1" and len(body["predictions"]) == 2
        first = body["predictions"][0]
        assert first["player_id"] == "1" and first["engagement_level"] == "High"
        assert abs(sum(first["probabilities"].values()) - 1) < 1e-6
        assert body["predictions"][1]["engagement_level"] == "Low"
        # 422 names the offending field
        r = client.post("/v1/engagement/predict", json={"players": [{**PLAYER, "Age": 5}]})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "Age"
        r = client.post("/v1/engagement/predict", json={"players": [{**PLAYER, "Gender": "Robot"}]})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "Gender"
        bad = dict(PLAYER)
        del bad["SessionsPerWeek"]
        r = client.post("/v1/engagement/predict", json={"players": [bad]})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "SessionsPerWeek"
        assert client.post("/v1/engagement/predict", json={"players": []}).status_code == 422
        assert client.post("/v1/engagement/predict", json={"players": [{**PLAYER, "Foo": 1}]}).status_code == 422
        metrics = client.get("/metrics").text
        assert 'gamesense_requests_total{endpoint="/v1/engagement/predict",status="422"} 5.0' in metrics
        assert "gamesense_model_version" in metrics
        assert "/v1/engagement/predict" in client.get("/openapi.json").json()["paths"]

        # train a better model (v3, 4x the data), promote it: the running app follows the alias, no restart
        assert invoke("engagement", "train", "--set", "data.max_rows=12000", *FAST[2:]).exit_code == 0
        res = invoke("engagement", "promote", "--eval-file", str(env / "eval.csv"))
        assert "PROMOTED" in res.output, res.output
        deadline = time.time() + 15
        while time.time() < deadline and client.get("/healthz").json()["model_version"] != "3":
            time.sleep(0.1)
        assert client.get("/healthz").json()["model_version"] == "3"
        assert client.post("/v1/engagement/predict", json={"players": [PLAYER]}).json()["model_version"] == "3"
        assert "gamesense_model_reloads_total 2.0" in client.get("/metrics").text


def test_api_through_uvicorn_on_localhost(env):
    import httpx

    from gamesense.serving.engagement.api import create_app

    with served_on_localhost(create_app(), start_timeout_s=20) as url, httpx.Client(base_url=url, timeout=10) as client:
        assert client.get("/healthz").json()["status"] == "ok"
        r = client.post("/v1/engagement/predict", json={"players": [PLAYER]})
        assert r.status_code == 200 and r.json()["predictions"][0]["engagement_level"] in ("High", "Medium", "Low")
        assert client.post("/v1/engagement/predict", json={"players": [{**PLAYER, "Age": "old"}]}).status_code == 422
