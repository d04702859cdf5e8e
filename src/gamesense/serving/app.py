"""Online inference: FastAPI app with the engagement router, health, Prometheus metrics and hot reload.

Hot reload: a background thread asks the registry which version holds the alias (``champion``) every
``reload_interval_s`` seconds and swaps in the new model when it moved; requests never call MLflow, they
read the current model reference (an atomic attribute swap), so latency does not depend on the registry.

Endpoints: ``POST /v1/engagement/predict``, ``GET /healthz``, ``GET /metrics``, OpenAPI at ``/docs``.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import asynccontextmanager
from typing import Any, Callable, Literal

import numpy as np
import pandas as pd
from fastapi import APIRouter, FastAPI, HTTPException, Request, Response
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field, create_model

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


class ModelHolder:
    """Holds the served model and keeps it in step with a registry alias.

    Args:
        loader: ``loader(ref) -> LoadedModel`` where ref is a version number.
        resolver: ``resolver() -> version or None``: which version the alias points at now.
        interval_s: polling period of the background thread.
    """

    def __init__(self, loader: Callable[[str], Any], resolver: Callable[[], str | None], interval_s: float = 5.0):
        self.loader, self.resolver, self.interval_s = loader, resolver, interval_s
        self.model = None
        self.last_error: str | None = None
        self.last_check = 0.0
        self.on_reload: Callable[[Any], None] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def refresh(self) -> bool:
        """Check the alias now; load and swap when it moved. Returns True when a new model was loaded."""
        with self._lock:
            self.last_check = time.time()
            try:
                version = self.resolver()
                if version is None:
                    self.last_error = "alias not set: no model to serve yet"
                    return False
                if self.model is not None and str(self.model.version) == str(version):
                    return False
                model = self.loader(str(version))
            except Exception as err:  # keep serving the old model; report on /healthz
                self.last_error = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                log.warning("model refresh failed: %s", self.last_error)
                return False
            self.model, self.last_error = model, None
        if self.on_reload:
            self.on_reload(model)
        log.info("serving %s version %s", model.name, model.version)
        return True

    def start(self) -> None:
        """Load now and start the polling thread (daemon)."""
        self.refresh()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="model-reload", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.refresh()


def registry_holder(model_name: str, alias: str, tracking_uri: str | None, interval_s: float) -> ModelHolder:
    """A :class:`ModelHolder` backed by the MLflow registry."""
    from gamesense.registry.mlflow_store import get_version_by_alias, setup_tracking
    from gamesense.training.tabular import load_model

    setup_tracking(tracking_uri)

    def resolver() -> str | None:
        mv = get_version_by_alias(model_name, alias)
        return str(mv.version) if mv is not None else None

    return ModelHolder(lambda version: load_model(model_name, version), resolver, interval_s)


def create_app(
    model_name: str = "gamesense-engagement",
    alias: str = "champion",
    tracking_uri: str | None = None,
    reload_interval_s: float = 5.0,
    holder: ModelHolder | None = None,
) -> FastAPI:
    """Build the API. The model is loaded at startup (lifespan) and followed by ``holder`` (default: the
    MLflow registry alias ``alias`` of ``model_name``, polled every ``reload_interval_s`` seconds).

    Until a model exists, ``/v1/engagement/predict`` answers 503 and ``/healthz`` says why.
    """
    holder = holder or registry_holder(model_name, alias, tracking_uri, reload_interval_s)
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
