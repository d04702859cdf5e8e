"""Request limits shared by the HTTP apps."""

from __future__ import annotations

from collections.abc import Callable

from fastapi.responses import JSONResponse

from gamesense.serving.access import route_label


class BodySizeLimit:
    """ASGI middleware: a request body over ``max_bytes`` gets 413 before anything parses it (by its
    Content-Length, or while it streams in when there is none); smaller bodies are passed on unchanged.

    Args:
        max_bytes: largest body accepted.
        on_reject: ``on_reject(route label, status)`` for each rejected request (metrics; the label is the route
            template or ``unmatched``, :func:`~gamesense.serving.access.route_label`).
        error_body: ``error_body(status, message) -> JSON object`` of the answer (default ``{"detail": message}``;
            the OpenAI-compatible app answers in OpenAI's error shape).
        hint: the setting that raises the limit, named in the message.
    """

    def __init__(self, app, max_bytes: int, on_reject: Callable[[str, int], None] | None = None,
                 error_body: Callable[[int, str], dict] | None = None, hint: str | None = None):  # fmt: skip
        self.app, self.max_bytes, self.on_reject, self.hint = app, max_bytes, on_reject, hint
        self.error_body = error_body or (lambda status, message: {"detail": message})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            status = 413 if declared.isdigit() else 400
            return await self._reject(scope, send, status)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await self._reject(scope, send, 413)
            chunks.append(chunk)
            more = message.get("more_body", False)
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, scope, send, status: int) -> None:
        if self.on_reject:
            self.on_reject(route_label(scope), status)
        hint = f" ({self.hint})" if self.hint else ""
        message = f"request body larger than {self.max_bytes} bytes{hint}" if status == 413 else "invalid Content-Length header"
        await JSONResponse(self.error_body(status, message), status_code=status)(scope, _no_body, send)


async def _no_body():
    return {"type": "http.disconnect"}
