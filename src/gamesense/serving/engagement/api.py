"""Online inference: FastAPI app with the engagement router, health, Prometheus metrics and hot reload.

Hot reload: a background thread asks the registry which version holds the alias (``champion``) every
``reload_interval_s`` seconds and swaps in the new model when it moved; requests never call MLflow, they
read the current model reference (an atomic attribute swap), so latency does not depend on the registry.

Endpoints: ``POST /v1/engagement/predict``, ``GET /healthz``, ``GET /livez``, ``GET /metrics``, OpenAPI at ``/docs``.
With API keys set, every path but ``/livez`` (and the ``public_paths`` the operator opens) needs
``Authorization: Bearer <key>`` (401 without, :class:`~gamesense.serving.access.APIKeyAuth`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from fastapi import APIRouter, FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field, create_model

from gamesense.registry.refs import CHAMPION
from gamesense.serving.access import APIKeyAuth, declare_bearer_auth, route_label
from gamesense.serving.alias_follower import AliasFollower, registry_follower
from gamesense.serving.body_limit import BodySizeLimit
from gamesense.serving.engagement.predictor import load_engagement_model
from gamesense.tasks import engagement as task

log = logging.getLogger(__name__)


#: largest ``input`` echoed back in a 422 (JSON characters); larger inputs are left out of the answer
MAX_ECHO_CHARS = 200
#: errors listed in one 422 answer; the rest are counted in a last ``too_many_errors`` item
MAX_ERRORS = 50

PlayerId = Annotated[
    Annotated[str, Field(strict=True, min_length=1, max_length=task.MAX_ID_LENGTH, pattern=r"\S")]
    | Annotated[int, Field(strict=True, ge=0)],
    Field(description="opaque identifier, echoed back as a string; not a feature. A JSON string "
          f"(1-{task.MAX_ID_LENGTH} characters, not blank) or a non-negative integer (send large ids as strings: "
          "many JSON clients round integers above 2**53)"),
]  # fmt: skip


def _player_model() -> type[BaseModel]:
    """The request schema of one player: the engagement schema with strict types (an integer field takes a JSON
    integer, not ``"43"`` or ``true``; a number field a finite JSON number, not NaN or Infinity)."""
    fields: dict[str, Any] = {task.ID_COLUMN: (PlayerId | None, None)}
    for name, spec in task.NUMERIC.items():
        typ = int if spec.integer else float
        extra = {} if spec.integer else {"allow_inf_nan": False}
        fields[name] = (typ, Field(..., ge=spec.low, le=spec.high, strict=True, description=spec.description, **extra))
    for name, allowed in task.CATEGORIES.items():
        fields[name] = (Literal[allowed], Field(..., description=f"one of {', '.join(allowed)}"))  # type: ignore[valid-type]
    return create_model("PlayerFeatures", __config__=ConfigDict(extra="forbid"), **fields)


PlayerFeatures = _player_model()
EXAMPLE = {"players": [{"PlayerID": "9000", "Age": 43, "Gender": "Male", "Location": "Other", "GameGenre": "Strategy",
                        "PlayTimeHours": 16.27, "InGamePurchases": 0, "GameDifficulty": "Medium", "SessionsPerWeek": 6,
                        "AvgSessionDurationMinutes": 108, "PlayerLevel": 79, "AchievementsUnlocked": 25}]}  # fmt: skip


def predict_request_model(max_batch: int) -> type[BaseModel]:
    """``PredictRequest``: one to ``max_batch`` players (``serving.max_batch``)."""
    return create_model(
        "PredictRequest",
        __config__=ConfigDict(extra="forbid", json_schema_extra={"examples": [EXAMPLE]}),
        __doc__="One or many players to score (PlayerIDs unique within the request).",
        players=(list[PlayerFeatures], Field(..., min_length=1, max_length=max_batch)),  # type: ignore[valid-type]
    )


class PlayerPrediction(BaseModel):
    player_id: str | None
    engagement_level: Literal["High", "Medium", "Low"]
    probabilities: dict[str, float]


class PredictResponse(BaseModel):
    model_name: str
    model_version: str
    predictions: list[PlayerPrediction]


class ErrorMessage(BaseModel):
    """Body of 400, 413, 500 and 503 answers."""

    detail: str


class Health(BaseModel):
    """``/healthz``: ``status`` is ``ok`` once a model is loaded (HTTP 200), else ``no_model`` (HTTP 503)."""

    status: Literal["ok", "no_model"]
    model_name: str
    model_version: str | None
    alias: str
    last_check: float
    error: str | None


def _small_json(value: Any) -> Any | None:
    """``value`` when it serialises to strict JSON (no NaN/Infinity) in at most :data:`MAX_ECHO_CHARS`, else None."""
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return None
    return value if len(text) <= MAX_ECHO_CHARS else None


def safe_validation_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """Validation errors as JSON-safe dicts (``loc``, ``msg``, ``type``, and ``input``/``ctx`` only when small and
    finite): a NaN in the input must not turn a 422 into a 500, and a large body is never echoed back."""
    out = []
    for err in errors[:MAX_ERRORS]:
        item: dict[str, Any] = {"type": str(err.get("type", "value_error")), "loc": list(err.get("loc", ())),
                                "msg": str(err.get("msg", ""))}  # fmt: skip
        echoed = _small_json(err.get("input"))
        if echoed is not None:
            item["input"] = echoed
        ctx = {k: v if _small_json(v) is not None else str(v)[:MAX_ECHO_CHARS] for k, v in (err.get("ctx") or {}).items()}
        if ctx:
            item["ctx"] = ctx
        out.append(item)
    if len(errors) > MAX_ERRORS:
        out.append({"type": "too_many_errors", "loc": ["body"], "msg": f"{len(errors) - MAX_ERRORS} more errors not listed"})
    return out


def create_app(
    model_name: str = "gamesense-engagement",
    alias: str = CHAMPION,
    tracking_uri: str | None = None,
    reload_interval_s: float = 5.0,
    follower: AliasFollower | None = None,
    max_batch: int = 10_000,
    max_body_bytes: int = 8 * 1024 * 1024,
    api_keys: Sequence[str] = (),
    public_paths: Sequence[str] = (),
) -> FastAPI:
    """Build the API. The model is loaded at startup (lifespan) and followed by ``follower`` (default: the
    MLflow registry alias ``alias`` of ``model_name``, polled every ``reload_interval_s`` seconds).

    Limits (``serving.*`` in the recipe): at most ``max_batch`` players per request (422 above), bodies of at
    most ``max_body_bytes`` (413 above). Until a model exists, ``/v1/engagement/predict`` and ``/healthz``
    answer 503 (``/healthz`` says why). Answers: 200, 400 (not JSON), 413, 422 (field errors with their
    location; inputs echoed only when small), 503 (no model yet); with ``api_keys``, 401 for a request without
    one of them (every path but ``/livez`` and ``public_paths``). Metrics are labelled by route template.
    """
    if follower is None:
        follower = registry_follower(model_name, alias,
                                     lambda version: load_engagement_model(f"{model_name}/{version}"),
                                     tracking_uri, reload_interval_s)  # fmt: skip
    registry = CollectorRegistry()
    requests = Counter("gamesense_requests_total", "HTTP requests", ["endpoint", "status"], registry=registry)
    latency = Histogram("gamesense_request_latency_seconds", "predict latency (in-process)", ["endpoint"],
                        buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0), registry=registry)  # fmt: skip
    predictions = Counter("gamesense_predictions_total", "players scored", ["level"], registry=registry)
    version_gauge = Gauge("gamesense_model_version", "registered version being served", ["model"], registry=registry)
    reloads = Counter("gamesense_model_reloads_total", "models loaded (startup + hot reloads)", registry=registry)
    PredictRequest = predict_request_model(max_batch)

    def on_reload(model) -> None:
        reloads.inc()
        if str(model.version).isdigit():
            version_gauge.labels(model.name).set(int(model.version))

    follower.on_reload = on_reload

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        follower.start()
        yield
        follower.stop()

    app = FastAPI(
        title="GameSense engagement API",
        version="1.0",
        description="Predict player engagement (High / Medium / Low) from telemetry.",
        lifespan=lifespan,
    )
    app.state.follower = follower
    app.state.metrics_registry = registry
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes, hint="serving.max_body_bytes",
                       on_reject=lambda route, status: requests.labels(route, str(status)).inc())  # fmt: skip
    app.add_middleware(APIKeyAuth, keys=api_keys, public_paths=public_paths,
                       on_reject=lambda route: requests.labels(route, "401").inc())  # fmt: skip
    if api_keys:
        declare_bearer_auth(app, public_paths)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errors = safe_validation_errors(exc.errors())
        if any(e["type"] == "json_invalid" for e in errors):  # not JSON at all: a bad request, not a bad field
            requests.labels(route_label(request.scope), "400").inc()
            first = next(e for e in errors if e["type"] == "json_invalid")
            reason = (first.get("ctx") or {}).get("error", "")
            return JSONResponse({"detail": f"request body is not valid JSON: {reason}".strip()}, status_code=400)
        requests.labels(route_label(request.scope), "422").inc()
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(Exception)
    async def _crashed(request: Request, exc: Exception):
        log.exception("unhandled error on %s", request.url.path)
        requests.labels(route_label(request.scope), "500").inc()
        return JSONResponse({"detail": f"internal error ({type(exc).__name__})"}, status_code=500)

    router = APIRouter(prefix="/v1/engagement", tags=["engagement"])
    errors_doc = {400: {"model": ErrorMessage, "description": "the body is not JSON"},
                  413: {"model": ErrorMessage, "description": f"the body is larger than {max_body_bytes} bytes"},
                  503: {"model": ErrorMessage, "description": "no model loaded yet"}}  # fmt: skip

    def predict(body) -> PredictResponse:
        """Score one or many players: predicted level, class probabilities and the model version."""
        start = time.perf_counter()
        ids = [None if p.PlayerID is None else str(p.PlayerID) for p in body.players]
        _reject_duplicate_ids(ids)
        model = follower.model
        if model is None:
            requests.labels("/v1/engagement/predict", "503").inc()
            raise HTTPException(503, detail=f"no model loaded ({follower.last_error})")
        rows = [p.__dict__ for p in body.players]
        frame = pd.DataFrame.from_records(rows, columns=task.FEATURES)
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
                PlayerPrediction(player_id=player_id, engagement_level=level,
                                 probabilities={c: float(p) for c, p in zip(classes, probs)})  # fmt: skip
                for player_id, level, probs in zip(ids, best, proba.tolist())
            ],
        )
        for level, count in zip(*np.unique(best, return_counts=True)):
            predictions.labels(str(level)).inc(int(count))
        requests.labels("/v1/engagement/predict", "200").inc()
        latency.labels("/v1/engagement/predict").observe(time.perf_counter() - start)
        return result

    predict.__annotations__["body"] = PredictRequest  # built per app (max_batch), so not a static annotation
    router.post("/predict", response_model=PredictResponse, responses=errors_doc)(predict)
    app.include_router(router)

    @app.get("/healthz", response_model=Health, responses={503: {"model": Health, "description": "no model loaded yet"}})
    def healthz() -> JSONResponse:
        """Readiness: 200 with ``status: ok`` once a model is loaded, else 503 with ``status: no_model`` and why."""
        model = follower.model
        body = Health(
            status="ok" if model is not None else "no_model",
            model_name=model.name if model else model_name,
            model_version=str(model.version) if model else None,
            alias=alias,
            last_check=follower.last_check,
            error=follower.last_error,
        )
        return JSONResponse(body.model_dump(), status_code=200 if model is not None else 503)

    @app.get("/livez", include_in_schema=False)
    def livez() -> dict[str, str]:
        """Liveness: the process answers (whether or not a model is loaded)."""
        return {"status": "alive"}

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        """Prometheus exposition format."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _reject_duplicate_ids(ids: list[str | None]) -> None:
    """422 when a PlayerID appears twice in one request (batch scoring rejects such rows too).

    Raises:
        RequestValidationError: located at the second occurrence, naming the first.
    """
    first_seen: dict[str, int] = {}
    errors = []
    for i, player_id in enumerate(ids):
        if player_id is None:
            continue
        if player_id in first_seen:
            errors.append({"type": "duplicate_player_id", "loc": ("body", "players", i, task.ID_COLUMN),
                           "msg": f"PlayerID also on players[{first_seen[player_id]}]: ids must be unique",
                           "input": player_id})  # fmt: skip
        else:
            first_seen[player_id] = i
    if errors:
        raise RequestValidationError(errors)
