"""Regression tests of issue 10 (bad input, concurrent promotion, honest exit codes) against real parts: the
CLI on a SQLite MLflow store, concurrent ``gamesense`` processes, uvicorn on 127.0.0.1. Each test names the
item and what happened before."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pandas as pd
import pytest
from support import isolated_workdir, served_on_localhost
from typer.testing import CliRunner

from gamesense.cli import app as cli
from gamesense.tasks import engagement as task

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "datasets" / "engagement" / "online_gaming_behavior.csv"
pytestmark = pytest.mark.skipif(not DATA.is_file(), reason="engagement dataset not available")
FAST = ["--set", "data.cv_folds=0", "--set", "plots=false", "--set", "baselines=[]"]
PLAYER = {"PlayerID": "1", "Age": 30, "Gender": "Male", "Location": "USA", "GameGenre": "RPG", "PlayTimeHours": 5.5,
          "InGamePurchases": 1, "GameDifficulty": "Easy", "SessionsPerWeek": 12, "AvgSessionDurationMinutes": 150,
          "PlayerLevel": 40, "AchievementsUnlocked": 20}  # fmt: skip
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(cli, list(args))


def one_line_error(result, *words: str) -> None:
    """Exit 2 with exactly one line of output, containing ``words``: no traceback."""
    out = result.output.strip()
    assert result.exit_code == 2 and len(out.splitlines()) == 1 and "Traceback" not in out, result.output
    for word in words:
        assert word in out, out


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A work dir with a champion (v1) trained on train.csv; held-out, batch and broken files beside it."""
    root = tmp_path_factory.mktemp("hardening")
    with isolated_workdir(root):
        full = pd.read_csv(DATA).sample(6000, random_state=4)
        full.iloc[:3000].to_csv(root / "train.csv", index=False)
        full.iloc[3000:4000].to_csv(root / "heldout.csv", index=False)
        full.iloc[4000:].drop(columns=[task.TARGET]).to_csv(root / "batch.csv", index=False)
        (root / "empty.csv").write_text("")
        (root / "header.csv").write_text(",".join(task.COLUMNS) + "\n")
        (root / "latin1.csv").write_bytes(",".join(task.COLUMNS).encode() + b"\n1,30,M\xe4nnlich\n")
        invalid = full.iloc[4000:4150].copy()
        invalid["Gender"] = "Robot"
        invalid.to_csv(root / "invalid.csv", index=False)
        full.iloc[4000:4001].to_csv(root / "one.csv", index=False)
        assert invoke("engagement", "train", "--data", str(root / "train.csv"), *FAST).exit_code == 0
        assert invoke("engagement", "promote", "--eval-file", str(root / "heldout.csv")).exit_code == 0
        yield root


# --- 1. PlayerIDs are opaque keys ---------------------------------------------------------------------------


def test_batch_predict_keeps_large_player_ids_exact(env):
    """Before: 1234567890123456789 and ...788 both came out as 1234567890123456768, 2**70 as -2**63, and the
    duplicate check missed the collision."""
    batch = pd.read_csv(env / "batch.csv").head(6).astype({task.ID_COLUMN: object})
    ids = ["1234567890123456789", "1234567890123456788", str(2**70), "007", "player-α", str(2**70)]
    batch[task.ID_COLUMN] = ids
    batch.loc[batch.index[5], "Age"] = 77  # same id as row 2, different content: both rejected
    batch.to_csv(env / "ids.csv", index=False)
    res = invoke("engagement", "predict", "--input", str(env / "ids.csv"), "--output", str(env / "ids_out.csv"))
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["valid"] == 4 and summary["rejected"] == 2
    assert pd.read_csv(env / "ids_out.csv", dtype=str)[task.ID_COLUMN].tolist() == ids[:2] + ids[3:5]
    rejects = pd.read_csv(summary["rejects_file"], dtype={task.ID_COLUMN: str})
    assert rejects[task.ID_COLUMN].tolist() == [str(2**70)] * 2 and rejects["reason"].str.contains("duplicated").all()
    # Parquet with an int64 id column: written in full
    batch.iloc[:2].astype({task.ID_COLUMN: "int64"}).to_parquet(env / "ids.parquet", index=False)
    res = invoke("engagement", "predict", "--input", str(env / "ids.parquet"), "--output", str(env / "ids_out.parquet"))
    assert pd.read_parquet(env / "ids_out.parquet")[task.ID_COLUMN].tolist() == ids[:2], res.output


# --- 2. one promotion decision at a time, whatever runs beside it -------------------------------------------


def _gamesense(env: Path, *args: str) -> subprocess.Popen:
    environ = {**os.environ, "GAMESENSE_WORKDIR": str(env / "work"), "PYTHONPATH": str(REPO / "src")}
    return subprocess.Popen([sys.executable, "-m", "gamesense", *args], env=environ, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip


def _aliases() -> dict[str, list[str]]:
    from gamesense.registry.mlflow_store import list_model_versions, setup_tracking

    setup_tracking()
    return {r["version"]: r["aliases"] for r in list_model_versions("gamesense-engagement")}


def test_four_promotes_beside_a_train_decide_once_and_keep_the_new_challenger(env):
    """Before: a promote beside a train deleted the new version's `challenger` alias; four promotes at once
    crashed one with `UNIQUE constraint failed: model_version_tags` (its audit line lost) and two printed PROMOTED."""
    assert invoke("engagement", "train", "--data", str(env / "train.csv"), *FAST,
                  "--set", "lightgbm.n_estimators=80", "--set", "lightgbm.learning_rate=0.1").exit_code == 0  # fmt: skip
    audit = env / "work" / "promotions.jsonl"
    before = len(audit.read_text().splitlines())
    jobs = [_gamesense(env, "engagement", "promote", "--eval-file", str(env / "heldout.csv")) for _ in range(4)]
    jobs.append(_gamesense(env, "engagement", "train", "--data", str(env / "train.csv"), *FAST,
                           "--set", "data.max_rows=1000"))  # fmt: skip
    outputs = [(job.wait(timeout=300), job.stdout.read()) for job in jobs]
    assert all(code == 0 and "Traceback" not in out for code, out in outputs), outputs
    lines = [json.loads(line) for line in audit.read_text().splitlines()[before:]]
    assert len(lines) == 4  # one line per decision, none lost
    promoted = [line["version"] for line in lines if line["promoted"]]
    assert len(promoted) == len(set(promoted)) == sum("PROMOTED" in out for _, out in outputs[:4]) >= 1
    aliases = _aliases()
    newest = max(aliases, key=int)
    assert aliases[newest] in (["challenger"], ["champion"]), aliases  # the concurrent train's version kept its alias
    assert sum("champion" in a for a in aliases.values()) == 1


def test_promotion_gives_back_a_challenger_taken_between_read_and_delete(workdir, monkeypatch):
    """The last race a remote store has no lock for: a train moves `challenger` to v2 after the gate read it on
    v1 and before the gate deletes it; the alias must end on v2, not on nothing."""
    from mlflow import MlflowClient

    from gamesense.registry.mlflow_store import get_version_by_alias, register_version, set_alias, setup_tracking
    from gamesense.registry.promotion import CHALLENGER, promotion_gate

    setup_tracking()
    name = "gamesense-race-test"
    v1 = register_version(name, "file:///nowhere", None, {}).version
    set_alias(name, v1, CHALLENGER)
    delete = MlflowClient.delete_registered_model_alias

    def train_lands_first(self, model, alias):
        v2 = register_version(name, "file:///nowhere", None, {}).version
        set_alias(name, v2, CHALLENGER)
        return delete(self, model, alias)

    monkeypatch.setattr(MlflowClient, "delete_registered_model_alias", train_lands_first)
    assert promotion_gate(name, v1, "accuracy", 0.9, lambda champion: 0.0).promoted
    assert str(get_version_by_alias(name, CHALLENGER).version) == "2"


def test_promote_needs_held_out_data_and_refuses_the_training_file(env):
    """Before: `promote` without --eval-file silently scored the models on the training file."""
    one_line_error(invoke("engagement", "promote"), "--eval-file", "data.eval_file")
    one_line_error(invoke("engagement", "pipeline", "monitor"), "data.eval_file")  # it would retrain, then promote
    assert invoke("engagement", "train", "--data", str(env / "train.csv"), *FAST).exit_code == 0
    one_line_error(invoke("engagement", "promote", "--eval-file", str(env / "train.csv")), "training file")


def test_models_list_shows_the_engagement_gate_metric(env):
    res = invoke("models", "list", "gamesense-engagement")
    assert res.exit_code == 0 and "macro_f1=0." in res.output, res.output


# --- 3. monitor: 0 no drift, 1 retrain due, 2 bad input -------------------------------------------------------


@pytest.mark.parametrize("name, words", [
    ("empty.csv", ["empty file"]), ("header.csv", ["0 valid row(s)", "drift.min_rows"]),
    ("invalid.csv", ["0 valid row(s) of 150", "Gender not in"]), ("latin1.csv", ["line 2", "not UTF-8"]),
    ("one.csv", ["1 valid row(s)", "at least 100"]),
])  # fmt: skip
def test_monitor_exits_2_on_a_batch_it_cannot_judge(env, name, words):
    """Before: exit 1 ("retrain") with a traceback for the first four; a 1-row batch reported 11/11 columns drifted."""
    one_line_error(invoke("engagement", "monitor", "--current", str(env / name)), *words)


def test_readme_cron_line_retrains_only_on_exit_1():
    readme = (REPO / "README.md").read_text()
    assert "monitor || (" not in readme and "[ $? -eq 1 ]" in readme


# --- 4-6. the API ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api(env):
    """The real app on uvicorn, 127.0.0.1, small limits (3 players, 64 KiB)."""
    from gamesense.serving.engagement.api import create_app

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GAMESENSE_WORKDIR", str(env / "work"))
        app = create_app(reload_interval_s=60, max_batch=3, max_body_bytes=64 * 1024)
        with served_on_localhost(app) as url, httpx.Client(base_url=url, timeout=30) as client:
            yield client


def post_raw(api, text: str):
    return api.post("/v1/engagement/predict", content=text, headers={"content-type": "application/json"})


def test_nan_and_infinity_get_422_and_are_counted_as_422(api):
    """Before: HTTP 500 (the 422 handler could not serialise the echoed NaN) while /metrics counted a 422."""
    for bad in (math.nan, math.inf, -math.inf):
        r = post_raw(api, json.dumps({"players": [{**PLAYER, "PlayTimeHours": bad}]}))
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "PlayTimeHours", r.text
    assert 'status="500"' not in api.get("/metrics").text


def test_large_bodies_get_413_and_422s_never_echo_large_inputs(api):
    """Before: a 108 MB body was accepted and answered with 99 MB (the whole input echoed)."""
    big = json.dumps({"players": [dict(PLAYER, PlayerID=str(i)) for i in range(500)]})  # ~110 KiB > 64 KiB
    r = post_raw(api, big)
    assert r.status_code == 413 and len(r.content) < 200
    r = api.post("/v1/engagement/predict", content=iter([big.encode()[i:i + 4096] for i in range(0, len(big), 4096)]),
                 headers={"content-type": "application/json"})  # chunked, no Content-Length  # fmt: skip
    assert r.status_code == 413
    long_id = {"players": [{**PLAYER, "PlayerID": "x" * 50_000, "Age": 5}]}
    r = post_raw(api, json.dumps(long_id))
    assert r.status_code == 422 and len(r.content) < 1000
    many = {"players": [{**PLAYER, "PlayerID": str(i), "Age": "old"} for i in range(3)]}
    assert all(len(json.dumps(e.get("input"))) <= 200 for e in post_raw(api, json.dumps(many)).json()["detail"])
    assert 'status="413"} 2.0' in api.get("/metrics").text


def test_limits_types_ids_readiness_and_schema(api, env):
    """Before: serving.max_batch ignored, "43"/true accepted for integers, duplicate ids accepted, 2**70 echoed
    as a JSON number, /healthz 200 without a model, 400/413/503 missing from the OpenAPI schema."""
    assert post_raw(api, json.dumps({"players": [dict(PLAYER, PlayerID=str(i)) for i in range(4)]})).status_code == 422
    for field, value in (("Age", "43"), ("InGamePurchases", True), ("Age", 43.5)):
        r = post_raw(api, json.dumps({"players": [{**PLAYER, field: value}]}))
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == field, r.text
    r = post_raw(api, json.dumps({"players": [PLAYER, {**PLAYER, "PlayerID": 1}]}))
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "duplicate_player_id"
    assert r.json()["detail"][0]["loc"] == ["body", "players", 1, "PlayerID"]
    r = post_raw(api, json.dumps({"players": [{**PLAYER, "PlayerID": 2**70}, {**PLAYER, "PlayerID": "1234567890123456789"}]}))
    assert [p["player_id"] for p in r.json()["predictions"]] == [str(2**70), "1234567890123456789"]
    assert post_raw(api, "{not json").status_code == 400
    spec = api.get("/openapi.json").json()
    responses = spec["paths"]["/v1/engagement/predict"]["post"]["responses"]
    assert {"200", "400", "413", "422", "503"} <= set(responses)
    assert "503" in spec["paths"]["/healthz"]["get"]["responses"]
    assert api.get("/healthz").status_code == 200

    from fastapi.testclient import TestClient

    from gamesense.serving.engagement.api import create_app
    from gamesense.serving.alias_follower import AliasFollower

    empty = AliasFollower(lambda version: None, lambda: None, interval_s=3600)
    with TestClient(create_app(follower=empty)) as client:
        r = client.get("/healthz")
        assert r.status_code == 503 and r.json()["status"] == "no_model"
        assert client.get("/livez").status_code == 200
        assert client.post("/v1/engagement/predict", json={"players": [PLAYER]}).status_code == 503


def test_serve_uses_the_recipe_limits(monkeypatch):
    from gamesense.cli import engagement as engagement_cli

    seen = {}
    monkeypatch.setattr("gamesense.serving.engagement.api.create_app", lambda *a, **kw: seen.update(kw) or object())
    monkeypatch.setattr("uvicorn.run", lambda *a, **kw: None)
    engagement_cli.serve(host="127.0.0.1", port=0, recipe="engagement", set_=["serving.max_batch=7"],
                         reload_interval=None, api_key=["sk-engagement-1"], api_keys_file=None, no_auth=False,
                         public=None, log_level="warning")  # fmt: skip
    assert seen["max_batch"] == 7 and seen["max_body_bytes"] == 8 * 1024 * 1024
    assert seen["api_keys"] == ("sk-engagement-1",)


# --- 7-8. one error boundary; predict and train say what they rejected ----------------------------------------


@pytest.mark.parametrize("args, words", [
    (["engagement", "predict", "--input", "{d}/empty.csv", "--output", "{d}/o.csv"], ["empty file", "empty.csv"]),
    (["engagement", "predict", "--input", "{d}/latin1.csv", "--output", "{d}/o.csv"], ["line 2", "not UTF-8"]),
    (["engagement", "predict", "--input", "{d}/header.csv", "--output", "{d}/o.csv"], ["no rows"]),
    (["engagement", "predict", "--input", "{d}/batch.csv", "--output", "{d}/missing_dir_file/o.txt"], ["unsupported"]),
    (["engagement", "predict", "--input", "{d}/batch.csv", "--output", "/proc/no/o.csv"], ["cannot write", "/proc/no"]),
    (["engagement", "simulate-drift", "--input", "{d}/empty.csv", "--output", "{d}/d.csv"], ["empty file"]),
    (["engagement", "simulate-drift", "--input", "{d}/batch.csv", "--output", "/proc/no/d.csv"], ["cannot write"]),
    (["engagement", "train", "--data", "{d}/latin1.csv"], ["not UTF-8"]),
])  # fmt: skip
def test_bad_files_give_one_line_and_exit_2(env, args, words):
    """Before: raw tracebacks (EmptyDataError, UnicodeDecodeError, FileNotFoundError) and exit 1."""
    one_line_error(invoke(*[a.format(d=env) for a in args]), *words)


def test_debug_shows_the_traceback_and_unexpected_errors_are_one_line_too(env, monkeypatch):
    res = invoke("--debug", "engagement", "predict", "--input", str(env / "empty.csv"), "--output", str(env / "o.csv"))
    assert res.exit_code != 0 and isinstance(res.exception, task.SchemaError)
    monkeypatch.setattr("gamesense.monitoring.engagement.simulate_drift", lambda *a, **k: 1 / 0)
    res = invoke("engagement", "simulate-drift", "--input", str(env / "batch.csv"), "--output", str(env / "d.csv"))
    assert res.exit_code == 2 and "internal error (ZeroDivisionError)" in res.output and "Traceback" not in res.output


def test_predict_fails_when_every_row_is_rejected_and_ignores_the_target(env):
    """Before: exit 0 with nothing scored; a row with an unknown (unused) target label was rejected."""
    res = invoke("engagement", "predict", "--input", str(env / "invalid.csv"), "--output", str(env / "inv.csv"))
    one_line_error(res, "all 150 rows rejected", "Gender not in")
    rejects = Path(res.output.strip().rsplit(" ", 1)[-1])
    assert len(pd.read_csv(rejects)) == 150 and not (env / "inv.csv").exists()
    labelled = pd.read_csv(env / "heldout.csv").head(20)
    labelled[task.TARGET] = labelled[task.TARGET].astype(object)
    labelled.loc[labelled.index[0], task.TARGET] = "Extreme"
    labelled.to_csv(env / "labelled.csv", index=False)
    res = invoke("engagement", "predict", "--input", str(env / "labelled.csv"), "--output", str(env / "lab_out.csv"))
    assert res.exit_code == 0 and json.loads(res.output)["valid"] == 20, res.output


def test_output_equal_to_input_is_refused(env):
    """Before: `--output` equal to `--input` overwrote the input."""
    original = (env / "batch.csv").read_bytes()
    one_line_error(invoke("engagement", "predict", "--input", str(env / "batch.csv"), "--output", str(env / "batch.csv")),
                   "is the input file")  # fmt: skip
    one_line_error(invoke("engagement", "simulate-drift", "--input", str(env / "batch.csv"), "--output",
                          str(env / "." / "batch.csv")), "is the input file")  # fmt: skip
    assert (env / "batch.csv").read_bytes() == original


def test_training_reports_and_writes_the_rows_it_drops(env):
    """Before: invalid training rows were dropped without a word or a rejects file."""
    train = pd.read_csv(env / "train.csv")
    train.loc[:9, "Age"] = 500
    train.to_csv(env / "train_bad.csv", index=False)
    res = invoke("engagement", "train", "--data", str(env / "train_bad.csv"), *FAST, "--no-register")
    assert res.exit_code == 0 and "10 of 3000 rows rejected" in res.output, res.output
    rejects = Path(re.search(r"reasons per row in (\S+\.csv)", res.output).group(1))  # log lines may come first
    assert pd.read_csv(rejects)["reason"].str.contains("Age out of range").sum() == 10


# --- 9. the LLM commands --------------------------------------------------------------------------------------


def test_evaluate_names_a_missing_local_model_and_an_empty_file(workdir, tmp_path):
    """Before: a missing local path showed the Hub's "Repo id must be in the form..."; an empty evaluation file
    a traceback ("no evaluation examples") after loading the model."""
    validation = REPO.parent / "shared" / "datasets" / "viggo" / "validation.csv"
    if not validation.is_file():
        pytest.skip("ViGGO data not available")
    one_line_error(invoke("evaluate", "--model", str(tmp_path / "no-such-model"), "--data", str(validation),
                          "--max-rows", "2"), "no such file or directory")  # fmt: skip
    (tmp_path / "header.csv").write_text("mr,ref\n")
    one_line_error(invoke("evaluate", "--model", str(tmp_path / "no-such-model"), "--data", str(tmp_path / "header.csv")),
                   "no usable rows")  # fmt: skip


@pytest.mark.slow
def test_finetune_with_a_missing_or_broken_data_file_is_one_line_under_zenml(workdir, tmp_path):
    """Before: 42-187 lines, the reason on line 3 of ZenML's failed-step log."""
    one_line_error(invoke("finetune", "--set", f"data.train_file={tmp_path / 'nope.csv'}"), "nope.csv", "not found")
    (tmp_path / "latin1.csv").write_bytes(b"mr,ref\n\xff\xfe,x\n")
    one_line_error(invoke("finetune", "--set", f"data.train_file={tmp_path / 'latin1.csv'}"), "latin1.csv")
