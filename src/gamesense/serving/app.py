"""Online inference: FastAPI app with the engagement router, health, Prometheus metrics and hot reload.

Hot reload: a background thread asks the registry which version holds the alias (``champion``) every
``reload_interval_s`` seconds and swaps in the new model when it moved; requests never call MLflow, they
read the current model reference (an atomic attribute swap), so latency does not depend on the registry.

Endpoints: ``POST /v1/engagement/predict``, ``GET /healthz``, ``GET /metrics``, OpenAPI at ``/docs``.
"""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager
from typing import Any, Literal

import numpy as np
import pandas as pd
from fastapi import APIRouter, FastAPI, HTTPException, Request, Response
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field, create_model

from gamesense.serving.holder import AliasFollower, registry_follower
from gamesense.tasks import engagement as task

log = logging.getLogger(__name__)


def _player_model() -> type[BaseModel]:
    fields: dict[str, Any] = {
        task.ID_COLUMN: (int | None, Field(None, ge=0, description="identifier, echoed back; not a feature"))
    }
    for name, spec in task.NUMERIC.items():
        typ = int if spec.integer else float
        fields[name] = (typ, Field(..., ge=spec.low, le=spec.high, description=spec.description))
    for name, allowed in task.CATEGORIES.items():
        fields[name] = (Literal[allowed], Field(..., description=f"one of {', '.join(allowed)}"))  # type: ignore[valid-type]
    return create_model("PlayerFeatures", __config__=ConfigDict(extra="forbid"), **fields)


PlayerFeatures = _player_model()


class PredictRequest(BaseModel):
    """One or many players to score."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"players": [{
        "PlayerID": 9000, "Age": 43, "Gender": "Male", "Location": "Other", "GameGenre": "Strategy",
        "PlayTimeHours": 16.27, "InGamePurchases": 0, "GameDifficulty": "Medium", "SessionsPerWeek": 6,
        "AvgSessionDurationMinutes": 108, "PlayerLevel": 79, "AchievementsUnlocked": 25}]}]})  # fmt: skip

    players: list[PlayerFeatures] = Field(..., min_length=1, max_length=10_000)  # type: ignore[valid-type]


class PlayerPrediction(BaseModel):
    player_id: int | None
    engagement_level: Literal["High", "Medium", "Low"]
    probabilities: dict[str, float]


class PredictResponse(BaseModel):
    model_name: str
    model_version: str
    predictions: list[PlayerPrediction]


def create_app(
    model_name: str = "gamesense-engagement",
    alias: str = "champion",
    tracking_uri: str | None = None,
    reload_interval_s: float = 5.0,
    holder: AliasFollower | None = None,
) -> FastAPI:
    """Build the API. The model is loaded at startup (lifespan) and followed by ``holder`` (default: the
    MLflow registry alias ``alias`` of ``model_name``, polled every ``reload_interval_s`` seconds).

    Until a model exists, ``/v1/engagement/predict`` answers 503 and ``/healthz`` says why.
    """
    if holder is None:
        from gamesense.serving.tabular import load_tabular_model

        holder = registry_follower(model_name, alias, lambda version: load_tabular_model(model_name, version),
                                   tracking_uri, reload_interval_s)  # fmt: skip
    registry = CollectorRegistry()
    requests = Counter("gamesense_requests_total", "HTTP requests", ["endpoint", "status"], registry=registry)
    latency = Histogram("gamesense_request_latency_seconds", "predict latency (in-process)", ["endpoint"],
                        buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0), registry=registry)  # fmt: skip
    predictions = Counter("gamesense_predictions_total", "players scored", ["level"], registry=registry)
    version_gauge = Gauge("gamesense_model_version", "registered version being served", ["model"], registry=registry)
    reloads = Counter("gamesense_model_reloads_total", "models loaded (startup + hot reloads)", registry=registry)

    def on_reload(model) -> None:
        reloads.inc()
        if str(model.version).isdigit():
            version_gauge.labels(model.name).set(int(model.version))

    holder.on_reload = on_reload

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        holder.start()
        yield
        holder.stop()

    app = FastAPI(
        title="GameSense engagement API",
        version="1.0",
        description="Predict player engagement (High / Medium / Low) from telemetry.",
        lifespan=lifespan,
    )
    app.state.holder = holder
    app.state.metrics_registry = registry

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        requests.labels(request.url.path, "422").inc()
        return await request_validation_exception_handler(request, exc)

    router = APIRouter(prefix="/v1/engagement", tags=["engagement"])

    @router.post("/predict", response_model=PredictResponse)
    def predict(body: PredictRequest) -> PredictResponse:
        """Score one or many players: predicted level, class probabilities and the model version."""
        start = time.perf_counter()
        model = holder.model
        if model is None:
            requests.labels("/v1/engagement/predict", "503").inc()
            raise HTTPException(503, detail=f"no model loaded ({holder.last_error})")
        rows = [p.__dict__ for p in body.players]
        frame = pd.DataFrame.from_records(rows, columns=[task.ID_COLUMN] + task.FEATURES)
        if model.predictor is not None:
            proba = model.predictor.predict_proba(frame)
            classes = model.predictor.classes
        else:
            out = model.predict_frame(frame)
            classes = [c[len(task.PROBA_PREFIX):] for c in out.columns if c.startswith(task.PROBA_PREFIX)]
            proba = out[[task.PROBA_PREFIX + c for c in classes]].to_numpy()
        best = np.asarray(classes)[proba.argmax(axis=1)]
        result = PredictResponse(
            model_name=model.name,
            model_version=str(model.version),
            predictions=[
                PlayerPrediction(player_id=r[task.ID_COLUMN], engagement_level=level,
                                 probabilities={c: float(p) for c, p in zip(classes, probs)})  # fmt: skip
                for r, level, probs in zip(rows, best, proba.tolist())
            ],
        )
        for level, count in zip(*np.unique(best, return_counts=True)):
            predictions.labels(str(level)).inc(int(count))
        requests.labels("/v1/engagement/predict", "200").inc()
        latency.labels("/v1/engagement/predict").observe(time.perf_counter() - start)
        return result

    app.include_router(router)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        """Liveness/readiness: ``status`` is ``ok`` once a model is loaded."""
        model = holder.model
        return {
            "status": "ok" if model is not None else "no_model",
            "model_name": model.name if model else model_name,
            "model_version": str(model.version) if model else None,
            "alias": alias,
            "last_check": holder.last_check,
            "error": holder.last_error,
        }

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        """Prometheus exposition format."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app
