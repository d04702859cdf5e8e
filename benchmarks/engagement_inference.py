"""Engagement inference benchmark: batch throughput (rows/s on 1M rows) and online latency (p50/p99).

    .venv/bin/python benchmarks/engagement_inference.py [--rows 1000000] [--rate 100] [--requests 1000]

Uses the ``champion`` of the MLflow store in ``--workdir`` (default: a fresh temp dir, where a model is
trained and promoted first). Batch: 1M rows synthesized by resampling the validated data; timed separately
for schema validation and model scoring (best of ``--repeat``), plus the sklearn Pipeline on 100k rows for
comparison. Online: ``gamesense serve`` in a subprocess on 127.0.0.1, single-player requests sent at a fixed
rate by a bounded open-loop schedule over one keep-alive connection, once without and once with an API key
(``Authorization: Bearer``, as in production), side by side.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "engagement" / "online_gaming_behavior.csv"


def ensure_champion(recipe) -> None:
    from gamesense.pipelines.engagement_gate import promote_engagement
    from gamesense.registry.mlflow_store import get_version_by_alias, setup_tracking
    from gamesense.registry.promotion import CHAMPION
    from gamesense.training.engagement import train_engagement

    setup_tracking(recipe.registry.tracking_uri, recipe.registry.experiment)
    if get_version_by_alias(recipe.registry.model_name, CHAMPION) is None:
        print("no champion: training one on 80% of the data (no baselines, no CV), gated on the other 20%...", flush=True)
        import pandas as pd

        frame = pd.read_csv(recipe.data.train_file).sample(frac=1.0, random_state=0)
        split = int(len(frame) * 0.8)
        work = Path(os.environ["GAMESENSE_WORKDIR"])
        work.mkdir(parents=True, exist_ok=True)
        frame.iloc[:split].to_csv(work / "bench-train.csv", index=False)
        frame.iloc[split:].to_csv(work / "bench-heldout.csv", index=False)
        cfg = recipe.model_copy(update={"baselines": [], "plots": False}, deep=True)
        cfg.data.cv_folds, cfg.data.train_file = 0, str(work / "bench-train.csv")
        cfg.data.eval_file = str(work / "bench-heldout.csv")
        train_engagement(cfg)
        promote_engagement(cfg)


def bench_batch(recipe, data: Path, rows: int, repeat: int) -> dict:
    from gamesense.tasks import engagement as task
    from gamesense.serving.engagement.predictor import load_engagement_model

    model = load_engagement_model(recipe.registry.model_name)  # its champion
    base = task.read_table(data).drop(columns=[task.TARGET])
    raw = base.sample(rows, replace=True, random_state=0).reset_index(drop=True)
    raw["PlayerID"] = np.arange(len(raw))  # resampled rows would clash on PlayerID
    t = time.perf_counter()
    valid = task.validate_frame(raw).valid
    t_validate = time.perf_counter() - t
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        model.predict_frame(valid)
        times.append(time.perf_counter() - t)
    t_score = min(times)
    sub = valid.head(100_000).astype({c: str for c in task.CATEGORICAL_FEATURES})
    t = time.perf_counter()
    model.pipeline.predict_proba(sub[task.FEATURES])
    t_pipe = time.perf_counter() - t
    out = {
        "rows": rows,
        "model_version": model.version,
        "score_rows_per_s": rows / t_score,
        "validate_rows_per_s": rows / t_validate,
        "end_to_end_rows_per_s": rows / (t_score + t_validate),
        "sklearn_pipeline_rows_per_s": len(sub) / t_pipe,
        "predictor": ("compiled trees" if model.predictor.compiled else "LightGBM predict") if model.predictor else "sklearn",
    }
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_online(rate: float, n: int, warmup: int = 50, api_key: str | None = None) -> dict:
    import httpx

    port = free_port()
    cmd = [sys.executable, "-c", "from gamesense.cli import app; app()", "serve", "engagement", "--port", str(port)]
    env = {**os.environ, "GAMESENSE_API_KEYS": api_key or ""}
    proc = subprocess.Popen(cmd, env=env)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    player = {"PlayerID": 1, "Age": 30, "Gender": "Male", "Location": "USA", "GameGenre": "RPG",
              "PlayTimeHours": 5.5, "InGamePurchases": 1, "GameDifficulty": "Easy", "SessionsPerWeek": 12,
              "AvgSessionDurationMinutes": 150, "PlayerLevel": 40, "AchievementsUnlocked": 20}  # fmt: skip
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10, headers=headers) as client:
            deadline = time.time() + 60
            while True:
                try:
                    if client.get("/healthz").json().get("status") == "ok":
                        break
                except httpx.TransportError:
                    pass
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError("server did not come up")
                time.sleep(0.2)
            body = {"players": [player]}
            for _ in range(warmup):
                client.post("/v1/engagement/predict", json=body)
            lat = np.empty(n)
            start = time.perf_counter()
            for i in range(n):  # open-loop schedule: request i is due at start + i/rate
                due = start + i / rate
                now = time.perf_counter()
                if due > now:
                    time.sleep(due - now)
                r = client.post("/v1/engagement/predict", json=body)
                lat[i] = time.perf_counter() - due  # includes any queueing behind a late request
                if r.status_code != 200:
                    raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
            wall = time.perf_counter() - start
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    ms = lat * 1000
    return {"requests": n, "rate_target": rate, "rate_achieved": n / wall, "p50_ms": float(np.percentile(ms, 50)),
            "p90_ms": float(np.percentile(ms, 90)), "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max())}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default=None, help="GAMESENSE_WORKDIR holding the MLflow store (default: temp)")
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rate", type=float, default=100.0, help="requests per second")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--skip-online", action="store_true")
    ap.add_argument("--skip-batch", action="store_true")
    args = ap.parse_args()
    os.environ["GAMESENSE_WORKDIR"] = args.workdir or tempfile.mkdtemp(prefix="gamesense-bench-")
    from gamesense.config import load_recipe
    from gamesense.tasks.engagement import EngagementRecipe

    recipe = load_recipe("engagement", EngagementRecipe, [f"data.train_file={args.data}"])
    ensure_champion(recipe)
    b = None if args.skip_batch else bench_batch(recipe, Path(args.data), args.rows, args.repeat)
    if b:
        print(f"batch ({b['rows']:,} rows, model v{b['model_version']}, {b['predictor']}): "
              f"scoring {b['score_rows_per_s']:,.0f} rows/s | validation {b['validate_rows_per_s']:,.0f} rows/s | "
              f"validate+score {b['end_to_end_rows_per_s']:,.0f} rows/s | sklearn Pipeline "
              f"{b['sklearn_pipeline_rows_per_s']:,.0f} rows/s")  # fmt: skip
    if not args.skip_online:
        for label, key in (("no API key", None), ("with an API key", "sk-bench-engagement-key")):
            o = bench_online(args.rate, args.requests, api_key=key)
            print(f"online, {label} ({o['requests']} single-player requests at {o['rate_target']:.0f}/s, achieved "
                  f"{o['rate_achieved']:.1f}/s): p50 {o['p50_ms']:.2f} ms | p90 {o['p90_ms']:.2f} ms | "
                  f"p99 {o['p99_ms']:.2f} ms | max {o['max_ms']:.2f} ms", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
