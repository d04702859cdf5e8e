"""OpenAI's wire format, the part this server speaks: request bodies of ``/v1/chat/completions`` and
``/v1/completions`` and the error object (https://platform.openai.com/docs/api-reference/chat).

Extra body fields: ``repetition_penalty`` (1: none) and ``ignore_eos`` (vLLM's names). Fields this server cannot
honour are refused with 400 naming them (:data:`REFUSED`: tools, structured output, logit bias, frequency and
presence penalties other than 0); other unknown fields (``user``, ``metadata``, ...) are accepted and ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from gamesense.serving.llm.requests import RequestError

#: most stop strings per request
MAX_STOP = 16
#: a seed the random generator takes (torch: -2**63 .. 2**64 - 1)
SEED_RANGE = (-(2**63), 2**64 - 1)

#: OpenAI fields this server does not honour, and the values that mean "not used" (accepted); others are a 400
REFUSED = {
    "tools": lambda v: not v,
    "functions": lambda v: not v,
    "tool_choice": lambda v: v in (None, "none"),
    "function_call": lambda v: v in (None, "none"),
    "response_format": lambda v: v is None or (isinstance(v, dict) and v.get("type") == "text"),
    "logit_bias": lambda v: not v,
    "top_logprobs": lambda v: not v,
    "frequency_penalty": lambda v: v in (None, 0),
    "presence_penalty": lambda v: v in (None, 0),
}


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
    temperature: float = Field(1.0, ge=0, le=2, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0, le=1, allow_inf_nan=False)
    n: int = Field(1, ge=1)
    stop: StopField = None
    seed: int | None = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: bool | int | None = None
    repetition_penalty: float = Field(1.0, gt=0, allow_inf_nan=False,
                                      description="divides the logits of tokens already seen (1: none)")
    ignore_eos: bool = Field(False, description="decode past EOS until max_tokens (benchmarks)")

    def stops(self, max_chars: int) -> tuple[str, ...]:
        """The non-empty stop strings.

        Raises:
            RequestError: more than :data:`MAX_STOP` of them, or one longer than ``max_chars`` characters.
        """
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > MAX_STOP:
            raise RequestError(f"at most {MAX_STOP} stop strings, got {len(stops)}", param="stop")
        if any(len(s) > max_chars for s in stops):
            raise RequestError(f"a stop string may have at most {max_chars} characters (--max-stop-chars)", param="stop",
                               code="stop_too_long")  # fmt: skip
        return tuple(s for s in stops if s)

    def refused_field(self) -> str | None:
        """The first field of :data:`REFUSED` set to a value this server would not honour (None: none)."""
        extra = self.model_extra or {}
        return next((name for name, unused in REFUSED.items() if name in extra and not unused(extra[name])), None)


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
                 code: str | None = None, headers: dict[str, str] | None = None):  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers

    def response(self) -> JSONResponse:
        return JSONResponse(error_body(self.message, self.type, self.param, self.code), status_code=self.status,
                            headers=self.headers)  # fmt: skip


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:  # fmt: skip
    """OpenAI's error object."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def field_path(loc: Sequence[Any]) -> str:
    """A validation error's location as the dotted field path OpenAI's ``param`` names (``messages.0.role``)."""
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or "body"
