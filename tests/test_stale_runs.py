"""A fine-tune killed with kill -9 leaves its MLflow runs RUNNING (or its parent FINISHED between steps): the
next fine-tune of the task ends them as KILLED, and never touches a run whose process is alive."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from gamesense.registry.mlflow_store import RUN_OWNER_TAG, end_stale_runs, run_owner_tags, setup_tracking
from test_llm_pipeline import tiny_recipe, write_recipe

REPO = Path(__file__).resolve().parents[1]


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_runs_of_a_dead_process_end_as_killed_and_live_ones_stay(workdir):
    setup_tracking(experiment="stale-test")
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("stale-test").experiment_id
    host = run_owner_tags()[RUN_OWNER_TAG].rpartition(":")[0]
    dead = client.create_run(exp, tags={RUN_OWNER_TAG: f"{host}:{dead_pid()}"}).info.run_id
    alive = client.create_run(exp, tags=run_owner_tags()).info.run_id
    elsewhere = client.create_run(exp, tags={RUN_OWNER_TAG: "another-host:1"}).info.run_id
    finished = client.create_run(exp, tags={RUN_OWNER_TAG: f"{host}:{dead_pid()}"}).info.run_id
    client.set_terminated(finished, "FINISHED")  # an interrupted pipeline's parent between two steps
    assert sorted(end_stale_runs("stale-test", also=finished)) == sorted([dead, finished])
    status = {r: client.get_run(r).info.status for r in (dead, alive, elsewhere, finished)}
    assert status == {dead: "KILLED", alive: "RUNNING", elsewhere: "RUNNING", finished: "KILLED"}


@pytest.mark.slow
def test_finetune_killed_with_sigkill_is_not_left_running(workdir, tiny_model_dir, viggo_dir, tmp_path):
    """Before: the killed run stayed RUNNING forever (its parent FINISHED between ZenML steps). After: the next
    fine-tune of the task ends it as KILLED, and `--resume` still continues it."""
    recipe = tiny_recipe(tiny_model_dir, viggo_dir, tmp_path, "sft.max_steps=100000", "sft.save_steps=100000")
    path = write_recipe(recipe, tmp_path / "long.yaml")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "gamesense", "finetune", "--no-zenml", "--recipe", str(path)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not list(workdir.glob("runs/viggo/*/sft/mlflow_run_id")):
            assert proc.poll() is None, "the fine-tune ended before its stage started"
            time.sleep(0.5)
        time.sleep(2)  # inside the training loop
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    [stage_id_file] = workdir.glob("runs/viggo/*/sft/mlflow_run_id")
    parent_id = stage_id_file.parent.parent.name
    stage_id = stage_id_file.read_text().strip()
    setup_tracking()
    assert mlflow.get_run(stage_id).info.status == "RUNNING"  # what the killed process left behind

    from gamesense.pipelines.llm_run import LLMRun

    LLMRun.start(tiny_recipe(tiny_model_dir, viggo_dir, tmp_path))  # the next fine-tune starts
    assert mlflow.get_run(stage_id).info.status == "KILLED"
    assert mlflow.get_run(parent_id).info.status == "KILLED"
