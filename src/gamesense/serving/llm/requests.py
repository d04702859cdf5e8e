"""What the LLM engine takes and gives back: a request's token ids and sampling settings, the adapter its rows
use, text events while it decodes, the finished completion; plus the one error a request can raise and the
incremental stop-string check. Plain types, no torch state: the API and the engine both speak them."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

#: the PEFT name of "no adapter" in a mixed batch
BASE_ROW = "__base__"


# --- errors --------------------------------------------------------------------------------------------------


class RequestError(ValueError):
    """A request that cannot be served as asked (HTTP 400 in the API).

    Attributes:
        param: the request field at fault (``model``, ``messages``, ``n``...), or None.
        code: OpenAI-style error code (``context_length_exceeded``, ``model_not_supported``...), or None.
    """

    status = 400

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param, self.code = param, code


class QueueFull(RequestError):
    """The engine's queue holds ``max_queued`` requests already (HTTP 429 with ``Retry-After`` in the API)."""

    status = 429

    def __init__(self, limit: int):
        super().__init__(f"the server is busy: {limit} requests are waiting already; retry shortly", code="queue_full")


# --- requests and their results ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplingParams:
    """How one request decodes.

    Attributes:
        max_tokens: most new tokens (>= 1); clamped to what the context leaves after the prompt.
        temperature: 0: greedy; > 0: logits divided by it before sampling.
        top_p: nucleus filtering in (0, 1]; 1: none. Ignored when greedy.
        seed: seed of the request's own random generator (None: a random seed): same seed, same reply.
        repetition_penalty: > 0; 1: none. Divides the positive logits (multiplies the negative ones) of
            tokens already in the prompt or reply, as transformers' ``RepetitionPenaltyLogitsProcessor``.
        stop: the reply ends before the first of these strings (and at EOS).
        ignore_eos: keep decoding past EOS until ``max_tokens`` (benchmarks with fixed lengths).
    """

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False


@dataclass(frozen=True)
class Adapter:
    """A LoRA adapter ready to load.

    Attributes:
        key: PEFT adapter name, unique per registry model and version (``gamesense_viggo_v3``).
        path: local adapter directory (``adapter_config.json`` + weights).
        model: registry model name (``gamesense-viggo``), for metrics and logs.
        version: registry version number as text.
        rank: LoRA rank ``r`` (for vLLM's ``--max-lora-rank``).
    """

    key: str
    path: Path
    model: str
    version: str
    rank: int = 0


@dataclass
class Completion:
    """A finished request.

    Attributes:
        text: the reply (special tokens removed, cut before a stop string).
        finish_reason: ``stop`` (EOS or a stop string) or ``length`` (``max_tokens`` or the context).
        prompt_tokens, completion_tokens: token counts (the EOS token counts as generated).
        seconds: from submission to the last token; first_token_s: from submission to the first token.
    """

    text: str
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    first_token_s: float


@dataclass
class StreamEvent:
    """What the engine tells a request's sink: a ``text`` piece after each token (may be empty), then once
    ``done`` (a :class:`Completion`) or ``error`` (a message)."""

    text: str = ""
    done: Completion | None = None
    error: str | None = None


Sink = Callable[[StreamEvent], None]


@dataclass
class GenerationRequest:
    """One request queued on the engine. ``sink`` is called from the scheduler thread (keep it cheap and
    thread-safe, e.g. ``loop.call_soon_threadsafe``); set ``cancelled`` to drop the request (client gone)."""

    prompt_ids: list[int]
    params: SamplingParams
    sink: Sink
    adapter: Adapter | None = None
    submitted: float = field(default_factory=time.perf_counter)
    cancelled: bool = False

    @property
    def adapter_name(self) -> str:
        """The PEFT adapter its rows use (``__base__`` for the base model)."""
        return self.adapter.key if self.adapter else BASE_ROW


class EngineObserver:
    """Hooks the engine calls from its thread (metrics); the defaults do nothing."""

    def step(self, rows: int, adapters: int) -> None:
        """One decode forward pass over ``rows`` rows using ``adapters`` distinct adapters (base counts)."""

    def adapters_changed(self, loaded: int, event: Literal["load", "evict"], key: str) -> None:
        """An adapter was loaded or evicted; ``loaded`` adapters are in memory now."""

    def tokens(self, model: str, prompt: int, completion: int) -> None:
        """A request finished with these token counts."""


# --- incremental detokenization and stop strings -------------------------------------------------------------


class ReplyText:
    """A reply's text, grown one token at a time.

    With a fast (Rust) tokenizer, tokenizers' ``DecodeStream`` decodes each new token against the few before
    it: O(1) per token, where decoding the whole reply every step is O(length) per token. Bytes of a
    character split over tokens wait until it is complete, so ``text`` is always a prefix of the whole
    reply's ``tokenizer.decode(..., skip_special_tokens=True)``. Other tokenizers decode the whole reply.

    Args:
        tokenizer: a transformers tokenizer.
    """

    def __init__(self, tokenizer):
        self.text = ""
        self._tokenizer, self._ids = tokenizer, []
        self._backend = getattr(tokenizer, "backend_tokenizer", None)
        if self._backend is not None:
            from tokenizers.decoders import DecodeStream

            self._stream = DecodeStream(skip_special_tokens=True)

    def push(self, token: int) -> int:
        """Add the next token; returns the length ``text`` had before (its new characters start there)."""
        before = len(self.text)
        if self._backend is not None:
            self.text += self._stream.step(self._backend, token) or ""
        else:
            self._ids.append(token)
            self.text = self._tokenizer.decode(self._ids, skip_special_tokens=True).rstrip("\ufffd")
        return before


def first_stop(text: str, stops: Sequence[str], start: int = 0) -> int:
    """Index in ``text`` of the first stop string that ends after ``start`` (-1: none); with ``start`` the
    length the text had at the last check, only the new characters (and a stop's length before them) are
    searched."""
    return min((j for j in (text.find(s, max(0, start - len(s) + 1)) for s in stops if s) if j >= 0), default=-1)


def held_back(text: str, stops: Sequence[str]) -> int:
    """How many characters at the end of ``text`` must wait: a trailing U+FFFD (an incomplete multi-byte
    character) and the longest suffix that is a proper prefix of a stop string.

    >>> held_back("Hello wor", ["world!"]), held_back("abc", ["x"]), held_back("ab\\ufffd", [])
    (3, 0, 1)
    """
    n = len(text) - len(text.rstrip("\ufffd"))
    body = text[: len(text) - n]
    longest = 0
    for stop in stops:
        # a suffix that may start the stop begins with its first character, in the last len(stop) - 1 characters
        # and longer than the longest found so far: O(len(stop)) finds in C instead of len(stop) slices
        end = len(body) - longest
        at = body.find(stop[0], max(len(body) - len(stop) + 1, 0), end) if stop else -1
        while at != -1:
            if stop[len(body) - 1 - at] == body[-1] and stop.startswith(body[at:]):
                longest = len(body) - at
                break
            at = body.find(stop[0], at + 1, end)
    return n + longest
