"""OpenAI's wire format, the part this server speaks: request bodies of ``/v1/chat/completions`` and
``/v1/completions`` and the error object (https://platform.openai.com/docs/api-reference/chat).

Extra body fields: ``repetition_penalty`` (1: none) and ``ignore_eos`` (vLLM's names); other unknown fields
(``frequency_penalty``, ``user``, ...) are accepted and ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from gamesense.serving.llm.requests import RequestError

#: most stop strings per request
MAX_STOP = 16


# --- request schema (OpenAI's, the fields this server uses) -------------------------------------------------------


class TextPart(BaseModel):
    """One part of a message's content list (only text parts are supported)."""

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """A chat message; ``content`` is a string or a list of text parts (joined). ``developer`` counts as
    ``system``."""

    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def for_template(self) -> dict[str, str]:
        content = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content or [])
        return {"role": "system" if self.role == "developer" else self.role, "content": content}


class StreamOptions(BaseModel):
    include_usage: bool = False


StopField = Annotated[str | list[str] | None, Field(None, description=f"up to {MAX_STOP} stop strings")]


class GenerationBody(BaseModel):
    """Fields shared by chat and text completions."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(..., min_length=1, description="base, or a registry model: NAME, NAME@ALIAS, NAME/VERSION")
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1)
    stop: StopField = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: bool | int | None = None
    repetition_penalty: float = Field(1.0, gt=0, description="divides the logits of tokens already seen (1: none)")
    ignore_eos: bool = Field(False, description="decode past EOS until max_tokens (benchmarks)")

    def stops(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > MAX_STOP:
            raise RequestError(f"at most {MAX_STOP} stop strings, got {len(stops)}", param="stop")
        return tuple(s for s in stops if s)


class ChatCompletionRequest(GenerationBody):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(GenerationBody):
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for /v1/completions
    echo: bool = False


# --- errors ------------------------------------------------------------------------------------------------


class APIError(Exception):
    """An answer in OpenAI's error format."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def response(self) -> JSONResponse:
        return JSONResponse(error_body(self.message, self.type, self.param, self.code), status_code=self.status)


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:  # fmt: skip
    """OpenAI's error object."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def field_path(loc: Sequence[Any]) -> str:
    """A validation error's location as the dotted field path OpenAI's ``param`` names (``messages.0.role``)."""
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or "body"
