"""OpenAI-compatible HTTP API over :class:`~gamesense.serving.llm.engine.LLMEngine`: the base model and every
served registry adapter behind one endpoint that the ``openai`` SDK, LangChain or a game server can call.

Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions`` (``stream: true`` as server-sent events),
``POST /v1/completions``, ``GET /healthz``, ``GET /livez``, ``GET /metrics`` (Prometheus).

Answers: OpenAI's (:mod:`gamesense.serving.llm.protocol`). Errors are OpenAI's error object: 401
``invalid_api_key`` without a valid key (when keys are set), 404 ``model_not_found`` for an unknown model, 400
for a request this server cannot serve (``n`` > 1, a prompt that fills the context, an adapter of another base,
a field it does not honour, ``max_tokens`` over the server's cap, a stop string over its length cap), 422 for a
body that breaks the schema (``param`` is the field path), 429 ``queue_full`` with ``Retry-After`` when
``max_queued`` requests wait already, 504 ``timeout`` past the request deadline, 500 when generation fails.
A request whose client went away (stream or not) leaves the batch at the next decode step (counted as 499).
Unknown body fields are logged at most once per request, new names only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from gamesense.models.base import BUILTIN_MODEL_ID
from gamesense.registry.mlflow_store import setup_tracking
from gamesense.serving.access import APIKeyAuth, declare_bearer_auth, route_label
from gamesense.serving.body_limit import BodySizeLimit
from gamesense.serving.llm.engine import LLMEngine
from gamesense.serving.llm.metrics import ServerMetrics
from gamesense.serving.llm.protocol import (APIError, ChatCompletionRequest, CompletionRequest, GenerationBody, error_body,
                                            field_path)  # fmt: skip
from gamesense.serving.llm.requests import (Completion, GenerationRequest, QueueFull, RequestError, SamplingParams,
                                            StreamEvent)  # fmt: skip
from gamesense.serving.llm.resolver import ModelNotFound, ModelResolver, process_cache_dir
from gamesense.settings import work_dir

log = logging.getLogger(__name__)

#: unknown field names remembered as logged (beyond it, nothing more is logged about unknown fields)
MAX_LOGGED_FIELDS = 256
#: seconds between two checks that a non-streaming client is still connected
DISCONNECT_POLL_S = 0.5


class ClientGone(Exception):
    """The client closed its connection before its answer was ready."""


def create_app(
    base: str = BUILTIN_MODEL_ID,
    models: Sequence[str] | None = None,
    dtype: str = "auto",
    max_batch: int = 16,
    max_adapters: int = 8,
    batch_wait_ms: float = 5.0,
    alias_ttl_s: float = 5.0,
    mixed_batches: bool = True,
    default_max_tokens: int = 512,
    lora_kernel: str = "batched",
    tracking_uri: str | None = None,
    cache_dir: str | Path | None = None,
    max_body_bytes: int = 8 * 1024 * 1024,
    api_keys: Sequence[str] = (),
    public_paths: Sequence[str] = (),
    max_queued: int = 256,
    max_tokens_cap: int = 2048,
    max_stop_chars: int = 256,
    request_timeout_s: float = 300.0,
) -> FastAPI:
    """Build the OpenAI-compatible app; the base model is loaded here, the scheduler starts with the app.

    Args:
        base: base model id or path.
        models: registry models to serve (None: every registered model whose versions carry a ``task`` tag and
            this base, see :class:`~gamesense.serving.llm.resolver.ModelResolver`).
        dtype, max_batch, max_adapters, batch_wait_ms, mixed_batches, default_max_tokens, lora_kernel: see
            :class:`~gamesense.serving.llm.engine.LLMEngine`.
        alias_ttl_s: seconds an alias -> version answer is reused (an alias move is served after at most this).
        tracking_uri: MLflow tracking URI (default: the working directory's SQLite store).
        max_body_bytes: largest request body; a larger one is answered 413 before it is parsed.
        cache_dir: where adapter versions are downloaded, in a directory per server process deleted when it stops
            (default ``<workdir>/llm-serving/adapters``); at most ``2 * max_adapters`` versions are kept.
        api_keys: accepted API keys (``Authorization: Bearer``); empty: no authentication.
        public_paths: paths open without a key besides ``/livez`` (e.g. ``/metrics``).
        max_queued: most requests waiting to join a batch (429 beyond; 0: no limit).
        max_tokens_cap: largest ``max_tokens`` a request may ask (400 beyond).
        max_stop_chars: longest stop string (400 beyond): each is searched at every decode step.
        request_timeout_s: deadline of a request from its arrival, queueing included (504 beyond, or an error
            event in a stream).

    Raises:
        OSError: the base model cannot be loaded.
    """
    setup_tracking(tracking_uri)
    metrics = ServerMetrics()
    engine = LLMEngine(base, dtype=dtype, max_batch=max_batch, max_adapters=max_adapters, batch_wait_ms=batch_wait_ms,
                       mixed_batches=mixed_batches, default_max_tokens=min(default_max_tokens, max_tokens_cap),
                       lora_kernel=lora_kernel, observer=metrics, max_queued=max_queued)  # fmt: skip
    downloads = process_cache_dir(Path(cache_dir) if cache_dir else work_dir() / "llm-serving" / "adapters")
    resolver = ModelResolver(base, models, alias_ttl_s, downloads, max_cached=2 * max_adapters)
    metrics.queue.set_function(engine.queue_length)
    started_at = int(time.time())
    ignored_fields: set[str] = set()

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        engine.start()
        try:
            await run_in_threadpool(resolver.served, True)  # list the registry once before the first request
        except Exception as err:  # an unreachable registry must not stop the base model from serving
            log.warning("cannot list the registry: %s", err)
        yield
        engine.stop()
        resolver.close()

    app = FastAPI(title="GameSense LLM API (OpenAI-compatible)", version="1.0", lifespan=lifespan,
                  description="The base model and the registry's LoRA adapters behind OpenAI's chat and completions API.")  # fmt: skip
    app.state.engine, app.state.resolver, app.state.metrics = engine, resolver, metrics
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes, hint="--max-body-bytes",
                       on_reject=lambda route, status: metrics.requests.labels(route, "unknown", str(status)).inc(),
                       error_body=lambda status, message: error_body(message, param="body"))  # fmt: skip
    # added last, so it runs first: a caller without a key is refused before its body is read
    app.add_middleware(APIKeyAuth, keys=api_keys, public_paths=public_paths,
                       error_body=lambda message: error_body(message, code="invalid_api_key"),
                       on_reject=lambda route: metrics.requests.labels(route, "unknown", "401").inc())  # fmt: skip
    if api_keys:
        declare_bearer_auth(app, public_paths)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        if first.get("type") == "json_invalid":
            metrics.requests.labels(route_label(request.scope), "unknown", "400").inc()
            return APIError(400, "the request body is not valid JSON", param="body").response()
        metrics.requests.labels(route_label(request.scope), "unknown", "422").inc()
        path = field_path(first.get("loc", ()))
        more = f" (and {len(errors) - 1} more errors)" if len(errors) > 1 else ""
        return APIError(422, f"{path}: {first.get('msg', 'invalid')}{more}", param=path).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        code = "not_found" if exc.status_code == 404 else None
        return APIError(exc.status_code, str(exc.detail), param=None, code=code).response()

    def log_ignored(body: BaseModel) -> None:
        """One line per request at most, naming up to 5 field names not logged before (a bounded set)."""
        new = [name for name in (body.model_extra or {}) if name not in ignored_fields]
        if not new or len(ignored_fields) >= MAX_LOGGED_FIELDS:
            return
        ignored_fields.update(new[: MAX_LOGGED_FIELDS - len(ignored_fields)])
        more = f" and {len(new) - 5} more" if len(new) > 5 else ""
        log.info("request fields accepted and ignored: %s%s", ", ".join(repr(n[:64]) for n in new[:5]), more)

    async def prepare(body: GenerationBody, endpoint: str):
        """Checks that need no model, then the model name -> adapter (registry look-ups in a worker thread)."""
        log_ignored(body)
        refused = body.refused_field()
        if refused is not None:
            metrics.requests.labels(endpoint, "unknown", "400").inc()
            raise APIError(400, f"{refused} is not supported by this server: leave it out", param=refused,
                           code="unsupported_parameter")  # fmt: skip
        if body.n != 1:
            raise APIError(400, "n > 1 is not supported: send one request per completion", param="n", code="unsupported_value")
        if body.logprobs:
            raise APIError(400, "logprobs are not supported", param="logprobs", code="unsupported_value")
        asked = getattr(body, "max_completion_tokens", None) or body.max_tokens
        if asked is not None and asked > max_tokens_cap:
            metrics.requests.labels(endpoint, "unknown", "400").inc()
            raise APIError(400, f"max_tokens {asked} is over this server's cap of {max_tokens_cap} (--max-tokens-cap)",
                           param="max_tokens", code="max_tokens_too_large")  # fmt: skip
        try:
            stops = body.stops(max_stop_chars)
            adapter = await run_in_threadpool(resolver.resolve, body.model)
        except ModelNotFound as err:
            metrics.requests.labels(endpoint, "unknown", "404").inc()
            raise APIError(404, str(err), param="model", code="model_not_found") from None
        except RequestError as err:
            metrics.requests.labels(endpoint, "unknown", "400").inc()
            raise APIError(400, str(err), param=err.param, code=err.code) from None
        return adapter, stops

    def sampling(body: GenerationBody, max_tokens: int | None, stops: tuple[str, ...]) -> SamplingParams:
        return SamplingParams(max_tokens=max_tokens or engine.default_max_tokens, temperature=body.temperature,
                              top_p=body.top_p, seed=body.seed, repetition_penalty=body.repetition_penalty,
                              stop=stops, ignore_eos=body.ignore_eos)  # fmt: skip

    async def next_event(events: asyncio.Queue[StreamEvent], deadline: float, client: Request | None) -> StreamEvent:
        """The engine's next event for a request.

        Raises:
            APIError: 504, the deadline passed first.
            ClientGone: ``client`` (given for answers sent whole) closed its connection while waiting.
        """
        while True:
            now = time.monotonic()
            if now >= deadline:
                raise APIError(504, f"the request took longer than {request_timeout_s:g} s (--request-timeout)",
                               type_="timeout", code="timeout")  # fmt: skip
            # by the clock, not on a quiet queue: a decoding row sends an event every step
            if client is not None and now - client.state.checked_at >= DISCONNECT_POLL_S:
                client.state.checked_at = now
                if await client.is_disconnected():
                    raise ClientGone
            try:
                return await asyncio.wait_for(events.get(), min(deadline - now, DISCONNECT_POLL_S))
            except TimeoutError:
                continue

    async def generate(endpoint: str, body: GenerationBody, prompt_ids: list[int], adapter, params: SamplingParams,
                       chat: bool, client: Request, arrived: float):  # fmt: skip
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[StreamEvent] = asyncio.Queue()
        started = time.perf_counter()
        deadline = arrived + request_timeout_s
        client.state.checked_at = time.monotonic()
        model_label = adapter.model if adapter else "base"
        request = GenerationRequest(prompt_ids, params, lambda ev: loop.call_soon_threadsafe(events.put_nowait, ev), adapter)
        try:
            engine.submit(request)
        except QueueFull as err:
            metrics.requests.labels(endpoint, model_label, "429").inc()
            raise APIError(429, str(err), type_="rate_limit_error", code=err.code, headers={"Retry-After": "1"}) from None
        except RequestError as err:
            metrics.requests.labels(endpoint, model_label, "400").inc()
            raise APIError(400, str(err), param=err.param, code=err.code) from None
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        created = int(time.time())

        def finished(done: Completion) -> None:
            metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
            metrics.ttft.labels(endpoint).observe(done.first_token_s)
            metrics.requests.labels(endpoint, model_label, "200").inc()

        def usage(done: Completion) -> dict[str, int]:
            return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
                    "total_tokens": done.prompt_tokens + done.completion_tokens}  # fmt: skip

        if not body.stream:
            try:
                while True:
                    event = await next_event(events, deadline, client)
                    if event.error:
                        metrics.requests.labels(endpoint, model_label, "500").inc()
                        raise APIError(500, event.error, type_="server_error")
                    if event.done:
                        break
            except ClientGone:
                metrics.requests.labels(endpoint, model_label, "499").inc()
                return Response(status_code=499)  # nobody reads it: the row left the batch (finally)
            except APIError as err:
                if err.status == 504:
                    metrics.requests.labels(endpoint, model_label, "504").inc()
                raise
            finally:
                request.cancelled = True  # no-op once done; stops decoding for a client that went away
            done = event.done
            finished(done)
            if chat:
                choice = {"index": 0, "message": {"role": "assistant", "content": done.text}, "logprobs": None,
                          "finish_reason": done.finish_reason}  # fmt: skip
            else:
                choice = {"index": 0, "text": done.text, "logprobs": None, "finish_reason": done.finish_reason}
            return {"id": ident, "object": "chat.completion" if chat else "text_completion", "created": created,
                    "model": body.model, "system_fingerprint": None, "choices": [choice], "usage": usage(done)}  # fmt: skip

        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        kind = "chat.completion.chunk" if chat else "text_completion"

        def chunk(delta: dict | str | None, finish: str | None = None) -> str:
            if chat:
                choices = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
            else:
                choices = [{"index": 0, "text": delta, "logprobs": None, "finish_reason": finish}]
            data = {"id": ident, "object": kind, "created": created, "model": body.model, "system_fingerprint": None,
                    "choices": choices}  # fmt: skip
            if include_usage:
                data["usage"] = None
            return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

        async def stream() -> AsyncIterator[str]:
            try:
                if chat:
                    yield chunk({"role": "assistant", "content": ""})
                while True:
                    try:
                        event = await next_event(events, deadline, None)
                    except APIError as err:  # the deadline: the answer has started, so the error is an event
                        metrics.requests.labels(endpoint, model_label, "504").inc()
                        yield f"data: {json.dumps(error_body(err.message, err.type, code=err.code))}\n\n"
                        break
                    if event.error:
                        metrics.requests.labels(endpoint, model_label, "500").inc()
                        yield f"data: {json.dumps(error_body(event.error, 'server_error'))}\n\n"
                        break
                    if event.text:
                        yield chunk({"content": event.text} if chat else event.text)
                    if event.done:
                        finished(event.done)
                        yield chunk({} if chat else "", event.done.finish_reason)
                        if include_usage:
                            data = {"id": ident, "object": kind, "created": created, "model": body.model,
                                    "system_fingerprint": None, "choices": [], "usage": usage(event.done)}  # fmt: skip
                            yield f"data: {json.dumps(data)}\n\n"
                        break
                yield "data: [DONE]\n\n"
            finally:
                request.cancelled = True  # the client went away: the row leaves the batch at the next step

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, client: Request):
        """OpenAI chat completion: the chat template of the base model, the adapter ``model`` selects."""
        arrived = time.monotonic()
        adapter, stops = await prepare(body, "/v1/chat/completions")
        messages = [m.for_template() for m in body.messages]
        try:
            prompt_ids = await run_in_threadpool(engine.encode_chat, messages)
        except RequestError as err:
            raise APIError(400, str(err), param=err.param, code=err.code) from None
        params = sampling(body, body.max_completion_tokens or body.max_tokens, stops)
        return await generate("/v1/chat/completions", body, prompt_ids, adapter, params, True, client, arrived)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, client: Request):
        """OpenAI (legacy) text completion of a raw ``prompt`` (a string, or a list holding one)."""
        arrived = time.monotonic()
        if isinstance(body.prompt, list) and len(body.prompt) != 1:
            raise APIError(400, "prompt: give one prompt (a string or a list of one string)", param="prompt",
                           code="unsupported_value")  # fmt: skip
        if body.echo:
            raise APIError(400, "echo is not supported", param="echo", code="unsupported_value")
        adapter, stops = await prepare(body, "/v1/completions")
        text = body.prompt if isinstance(body.prompt, str) else body.prompt[0]
        prompt_ids = await run_in_threadpool(engine.encode_text, text)
        params = sampling(body, body.max_tokens, stops)
        return await generate("/v1/completions", body, prompt_ids, adapter, params, False, client, arrived)

    @app.get("/v1/models")
    async def list_models():
        """The base model (as ``base`` and its own id) and every served registry model with its aliases."""
        ids = ["base", base]
        try:
            served = await run_in_threadpool(resolver.served)
        except Exception as err:  # registry down: the base model is still served
            log.warning("cannot list the registry: %s", err)
            served = {}
        for model in served.values():
            ids += [model.name, *(f"{model.name}@{alias}" for alias in model.aliases)]
        return {"object": "list", "data": [{"id": i, "object": "model", "created": started_at, "owned_by": "gamesense"}
                                           for i in dict.fromkeys(ids)]}  # fmt: skip

    @app.get("/healthz")
    async def healthz():
        """200 while the scheduler runs (503 when it died): base model, adapters in memory, queue length."""
        alive = engine._thread is not None and engine._thread.is_alive()
        body = {"status": "ok" if alive else "scheduler_stopped", "base": base, "loaded_adapters": engine.loaded_adapters(),
                "queue_length": engine.queue_length(), "running": len(engine.running), "stats": dict(engine.stats)}  # fmt: skip
        return JSONResponse(body, status_code=200 if alive else 503)

    @app.get("/livez", include_in_schema=False)
    async def livez():
        """Liveness: the process answers (open without a key)."""
        return {"status": "alive"}

    @app.get("/metrics")
    async def prometheus_metrics():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
