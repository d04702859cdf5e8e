"""Who may call the HTTP apps, and how their requests are labelled in metrics: both APIs share these.

API keys are sent as OpenAI's clients send them, ``Authorization: Bearer <key>``. They come from the command
line (``--api-key``, repeatable), a file (``--api-keys-file``: one key per line) and the environment variable
``GAMESENSE_API_KEYS`` (comma-separated); every source adds keys. A request is compared with every key in
constant time (``hmac.compare_digest`` of SHA-256 digests, so neither a key's content nor its length leaks
through timing), and keys are never logged or echoed.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from fastapi.responses import JSONResponse
from starlette.routing import Match

#: environment variable with comma-separated API keys
KEYS_ENV = "GAMESENSE_API_KEYS"
#: paths every caller may reach, with or without a key (the liveness probe)
ALWAYS_PUBLIC = ("/livez",)
#: the metric label of a path that matches no route (unknown paths must not add label values)
UNMATCHED = "unmatched"


def load_api_keys(keys: Iterable[str] = (), keys_file: Path | None = None,
                  environ: Mapping[str, str] | None = None) -> tuple[str, ...]:  # fmt: skip
    """Every API key given: ``keys``, the lines of ``keys_file`` (blank lines and ``#`` comments skipped) and
    ``GAMESENSE_API_KEYS`` in ``environ`` (default ``os.environ``), without repeats, in that order.

    Raises:
        ValueError: ``keys_file`` cannot be read, or a key is shorter than 8 characters or holds whitespace
            (the message names the source and line, never the key).
    """
    found: list[tuple[str, str]] = [(key, "--api-key") for key in keys]
    if keys_file is not None:
        try:
            lines = Path(keys_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"--api-keys-file {keys_file}: cannot read it ({type(err).__name__})") from None
        found += [(line.strip(), f"{keys_file}:{n}") for n, line in enumerate(lines, 1)
                  if line.strip() and not line.lstrip().startswith("#")]  # fmt: skip
    env = os.environ if environ is None else environ
    found += [(key.strip(), KEYS_ENV) for key in env.get(KEYS_ENV, "").split(",") if key.strip()]
    for key, source in found:
        if len(key) < 8 or any(c.isspace() for c in key):
            raise ValueError(f"{source}: an API key must be at least 8 characters with no whitespace")
    return tuple(dict.fromkeys(key for key, _ in found))


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` only accepts connections from this machine (``localhost``, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def bind_refusal(host: str, keys: Iterable[str], no_auth: bool) -> str | None:
    """Why the server must not start on ``host`` (None: it may): a non-loopback address without any API key,
    unless the operator chose ``--no-auth``."""
    if is_loopback(host) or no_auth or any(True for _ in keys):
        return None
    return (f"refusing to serve on {host} without an API key: anyone who reaches it could use it. Give --api-key "
            f"(or --api-keys-file, or {KEYS_ENV}), or --no-auth if something in front of it checks callers")


def route_label(scope: Mapping) -> str:
    """The route template a request matches (``/v1/chat/completions``), or ``unmatched``: a metric label with a
    fixed set of values, whatever paths clients send. Works before routing (in middleware)."""
    return _matching_template(getattr(getattr(scope.get("app"), "router", None), "routes", ()), scope)


def _matching_template(routes, scope: Mapping, prefix: str = "") -> str:
    for route in routes:
        inner = getattr(route, "original_router", None)  # FastAPI's included router: look inside it
        if inner is not None:
            more = getattr(getattr(route, "include_context", None), "prefix", "") or ""
            path = scope.get("path", "")
            if path.startswith(more):
                found = _matching_template(inner.routes, {**scope, "path": path[len(more):]}, prefix + more)
                if found != UNMATCHED:
                    return found
            continue
        match, _ = route.matches(scope)
        if match != Match.NONE and getattr(route, "path", None):
            return prefix + route.path
    return UNMATCHED


class APIKeyAuth:
    """ASGI middleware: with keys set, a request to any path but ``public_paths`` (and ``/livez``) needs
    ``Authorization: Bearer <one of the keys>``; otherwise 401 with ``WWW-Authenticate: Bearer``, before the
    body is read. Without keys, everything passes.

    Args:
        keys: the accepted API keys (:func:`load_api_keys`).
        public_paths: paths open to everyone besides ``/livez`` (e.g. ``/metrics`` for a scraper, or ``/docs`` and
            ``/openapi.json``).
        error_body: ``error_body(message) -> JSON object`` of the 401 (default ``{"detail": message}``).
        on_reject: ``on_reject(route label)`` for each refused request (metrics).
    """

    def __init__(self, app, keys: Iterable[str] = (), public_paths: Iterable[str] = (),
                 error_body: Callable[[str], dict] | None = None, on_reject: Callable[[str], None] | None = None):  # fmt: skip
        self.app = app
        self.digests = [hashlib.sha256(key.encode()).digest() for key in keys]
        self.public = frozenset((*ALWAYS_PUBLIC, *public_paths))
        self.error_body = error_body or (lambda message: {"detail": message})
        self.on_reject = on_reject

    def authorized(self, header: bytes | None) -> bool:
        """Whether an ``Authorization`` header value carries one of the keys (every key compared, in constant time)."""
        scheme, _, token = (header or b"").partition(b" ")
        digest = hashlib.sha256(token.strip()).digest()
        found = False
        for expected in self.digests:
            found |= hmac.compare_digest(digest, expected)
        return found and scheme.lower() == b"bearer"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self.digests or scope.get("path") in self.public:
            return await self.app(scope, receive, send)
        if self.authorized(dict(scope.get("headers") or []).get(b"authorization")):
            return await self.app(scope, receive, send)
        if self.on_reject:
            self.on_reject(route_label(scope))
        message = "missing or invalid API key: send Authorization: Bearer <key>"
        response = JSONResponse(self.error_body(message), status_code=401, headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)


def declare_bearer_auth(app, public_paths: Iterable[str] = ()) -> None:
    """Declare ``Authorization: Bearer`` in ``app``'s OpenAPI schema (a ``bearerAuth`` security scheme on every
    operation but those of ``public_paths`` and ``/livez``), so ``/docs`` offers to enter a key and clients and
    fuzzers generated from the schema send it."""
    open_paths = frozenset((*ALWAYS_PUBLIC, *public_paths))
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = build()
            schema.setdefault("components", {}).setdefault("securitySchemes", {})["bearerAuth"] = {
                "type": "http", "scheme": "bearer", "description": "one of the server's API keys"}  # fmt: skip
            for path, item in schema.get("paths", {}).items():
                for operation in item.values():
                    if path not in open_paths and isinstance(operation, dict):
                        operation["security"] = [{"bearerAuth": []}]
                        operation.setdefault("responses", {})["401"] = {"description": "missing or invalid API key"}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
