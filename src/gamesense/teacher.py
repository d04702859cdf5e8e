"""Any OpenAI-compatible chat model as a teacher (data generation) or a judge (grading), through the ``openai`` SDK.

One :class:`Teacher` talks to one model at one base URL: OpenAI, vLLM, a llama.cpp server, Ollama, or
GameSense's own ``gamesense serve llm`` (all speak ``POST <base_url>/chat/completions``). It adds what batch
work needs on top of the SDK:

- **retries with exponential backoff**: the SDK's own (``max_retries``; it retries connection errors, 408, 409,
  429 and 5xx answers, honouring ``retry-after`` headers);
- **concurrency**: :meth:`Teacher.complete_many` runs ``concurrency`` requests at a time on a thread pool with a
  tqdm progress bar; a failed call is reported in its :class:`Result` (``error``), never raised, so one bad
  call never loses the batch. After ``max_consecutive_failures`` failures in a row with no success at all the
  rest of the batch is not attempted (an unreachable server or a wrong key fails in seconds, not hours);
- **on-disk cache**: one JSON file per request under ``cache_dir`` (default
  ``<workdir>/teacher-cache``), keyed by the sha256 of (model, messages, parameters) - not the base URL, so
  the same model behind another address hits the same entries. An interrupted or repeated run costs nothing
  twice. Only successful answers are cached; on close the cache is brought back to ``max_cache_mb`` (1 GiB),
  least recently used answers first.

Callers parse the returned text themselves (a judge's verdict, a generator's Q&A pairs).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gamesense.settings import work_dir, write_text_atomic

#: api key sent when neither ``api_key`` nor ``OPENAI_API_KEY`` is given (local servers ignore it)
LOCAL_API_KEY = "not-needed"
#: request parameters that go into the cache key and the request body (None values are not sent)
PARAMETERS = ("temperature", "top_p", "max_tokens", "seed", "stop")


class TeacherError(RuntimeError):
    """The teacher cannot be used at all (e.g. every call of a batch failed: unreachable server, bad key)."""


@dataclass(frozen=True)
class Request:
    """One chat completion to ask for.

    Attributes:
        messages: chat messages ``[{"role": "system"|"user"|"assistant", "content": str}, ...]``.
        temperature: sampling temperature (0: greedy where the server supports it).
        max_tokens: cap on generated tokens.
        top_p: nucleus sampling mass; None: the server's default (not sent).
        seed: sampling seed for servers that support one; None: not sent.
        stop: stop strings; None: not sent.
    """

    messages: Sequence[dict[str, str]]
    temperature: float = 0.7
    max_tokens: int = 400
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] | None = None

    def chat_messages(self) -> list[dict[str, str]]:
        """The messages as the list of dicts the API takes."""
        return [{"role": m["role"], "content": m["content"]} for m in self.messages]

    def parameters(self) -> dict[str, Any]:
        """Sampling parameters that are set (None values left out), as sent and as cached."""
        values = {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens,
                  "seed": self.seed, "stop": list(self.stop) if self.stop else None}  # fmt: skip
        return {k: v for k, v in values.items() if v is not None}


@dataclass
class Result:
    """Outcome of one :class:`Request`.

    Attributes:
        text: the completion's text ("" when the model returned no content); None when the call failed.
        error: why the call failed (``"<ErrorType>: <message>"``); None on success.
        cached: True when the answer came from the on-disk cache (no server call).
        finish_reason: the server's ``finish_reason`` (``"stop"``, ``"length"``...), when it gave one.
    """

    text: str | None
    error: str | None = None
    cached: bool = False
    finish_reason: str | None = None

    @property
    def ok(self) -> bool:
        """True when the call succeeded."""
        return self.error is None


@dataclass
class TeacherStats:
    """Counts since the teacher was created: ``cache_hits`` answered from disk, ``calls`` answered by the server
    (successes), ``errors`` calls that failed after the SDK's retries, ``skipped`` requests not attempted after
    the batch was given up."""

    cache_hits: int = 0
    calls: int = 0
    errors: int = 0
    skipped: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)

    def as_dict(self) -> dict[str, int]:
        """The counts as a plain dict (for summaries)."""
        return {"cache_hits": self.cache_hits, "cache_misses": self.calls + self.errors, "calls": self.calls,
                "errors": self.errors, "skipped": self.skipped}  # fmt: skip


class Teacher:
    """A chat model behind an OpenAI-compatible URL, with retries, concurrency and an on-disk cache.

    Args:
        base_url: the API root, e.g. ``http://127.0.0.1:8000/v1`` or ``https://api.openai.com/v1``.
        model: the model name the server knows (``base``, ``gpt-4o-mini``, ``llama3.1:8b``...).
        api_key: the key; default ``OPENAI_API_KEY`` from the environment, else a dummy for local servers.
        concurrency: requests in flight at once in :meth:`complete_many`.
        max_retries: the SDK's retries per request (exponential backoff from 0.5 s up to 8 s, with jitter).
        timeout_s: seconds one HTTP request may take.
        cache_dir: where answers are cached; default ``<workdir>/teacher-cache``; ``False`` turns caching off.
        max_consecutive_failures: give the rest of a batch up after this many failures in a row with no success.
        max_cache_mb: size the cache is brought back to when the teacher closes, least recently used answers
            deleted first (None: no limit).

    Raises:
        ValueError: empty ``base_url`` or ``model``, or ``concurrency`` < 1.
    """

    def __init__(self, base_url: str, model: str, api_key: str | None = None, concurrency: int = 8,
                 max_retries: int = 5, timeout_s: float = 120.0, cache_dir: str | Path | None | bool = None,
                 max_consecutive_failures: int = 16, max_cache_mb: float | None = 1024):  # fmt: skip
        import openai

        if not base_url or not base_url.strip():
            raise ValueError("teacher base_url is empty (e.g. http://127.0.0.1:8000/v1)")
        if not model or not model.strip():
            raise ValueError("teacher model is empty")
        if concurrency < 1:
            raise ValueError(f"teacher concurrency must be >= 1, got {concurrency}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.concurrency = concurrency
        self.max_consecutive_failures = max_consecutive_failures
        if cache_dir is False:
            self.cache_dir = None
        else:
            self.cache_dir = Path(cache_dir) if cache_dir else work_dir() / "teacher-cache"
        self.max_cache_bytes = None if max_cache_mb is None else int(max_cache_mb * 1024 * 1024)
        self.stats = TeacherStats()
        key = api_key or os.environ.get("OPENAI_API_KEY") or LOCAL_API_KEY
        self._client = openai.OpenAI(base_url=self.base_url, api_key=key, max_retries=max_retries, timeout=timeout_s)

    @property
    def name(self) -> str:
        """``<model>@<base_url>``: how records and summaries name this teacher."""
        return f"{self.model}@{self.base_url}"

    # --- cache ----------------------------------------------------------------------------------------------

    def cache_key(self, request: Request) -> str:
        """sha256 (hex) of the model, the messages and the sampling parameters (not the base URL)."""
        payload = {"model": self.model, "messages": request.chat_messages(), "parameters": request.parameters()}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def _cache_path(self, key: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / key[:2] / f"{key}.json"

    def _cached(self, key: str) -> Result | None:
        path = self._cache_path(key)
        if path is None or not path.is_file():
            return None
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            os.utime(path)  # recently used: evicted last
            return Result(text=str(entry["text"]), cached=True, finish_reason=entry.get("finish_reason"))
        except (OSError, ValueError, KeyError):
            return None  # a torn or foreign file: ask the server again and overwrite it

    def _store(self, key: str, request: Request, result: Result) -> None:
        path = self._cache_path(key)
        if path is None:
            return
        entry = {"model": self.model, "messages": request.chat_messages(), "parameters": request.parameters(),
                 "text": result.text, "finish_reason": result.finish_reason, "created": time.time()}  # fmt: skip
        write_text_atomic(path, json.dumps(entry, ensure_ascii=False))  # a reader never sees half an entry

    # --- calls ----------------------------------------------------------------------------------------------

    def _call(self, request: Request) -> Result:
        try:
            response = self._client.chat.completions.create(model=self.model, messages=request.chat_messages(),
                                                            **request.parameters())  # fmt: skip
            choice = response.choices[0]
            result = Result(text=choice.message.content or "", finish_reason=choice.finish_reason)
        except Exception as err:  # any failure of one call is this item's result, never the batch's
            self.stats.add(errors=1)
            return Result(text=None, error=f"{type(err).__name__}: {err}")
        self.stats.add(calls=1)
        try:
            self._store(self.cache_key(request), request, result)
        except OSError:
            pass  # a cache that cannot be written costs a repeat call later, not this answer
        return result

    def complete(self, messages: Sequence[dict[str, str]], temperature: float = 0.0, max_tokens: int = 400,
                 **parameters: Any) -> Result:  # fmt: skip
        """One chat completion (cached), e.g. a judge's verdict; the caller parses ``result.text``.

        Args:
            messages: chat messages.
            temperature, max_tokens, parameters: sampling parameters (see :class:`Request`).
        """
        return self.complete_many([Request(list(messages), temperature, max_tokens, **parameters)], progress=False)[0]

    def complete_many(self, requests: Sequence[Request], progress: bool | str = True) -> list[Result]:
        """Answers for many requests, in request order; cache hits first, then ``concurrency`` server calls at once.

        Args:
            requests: the completions to ask for.
            progress: show a tqdm bar (a string is its description).

        Returns:
            one :class:`Result` per request; failed calls carry ``error`` (and count in :attr:`stats`).
        """
        from tqdm.auto import tqdm

        results: list[Result | None] = [None] * len(requests)
        todo: list[int] = []
        for i, request in enumerate(requests):
            hit = self._cached(self.cache_key(request))
            if hit is None:
                todo.append(i)
            else:
                results[i] = hit
        self.stats.add(cache_hits=len(requests) - len(todo))
        if todo:
            desc = progress if isinstance(progress, str) else f"teacher {self.model}"
            bar = tqdm(total=len(requests), initial=len(requests) - len(todo), desc=desc, disable=not progress,
                       unit="call", dynamic_ncols=True)  # fmt: skip
            failed_in_row, any_success, given_up, last_error = 0, False, False, ""
            with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
                futures = {pool.submit(self._call, requests[i]): i for i in todo}
                for future in as_completed(futures):
                    if future.cancelled():  # given up below; its result is already set
                        continue
                    i = futures[future]
                    results[i] = result = future.result()
                    bar.update(1)
                    if result.ok:
                        any_success, failed_in_row = True, 0
                    else:
                        failed_in_row += 1
                        last_error = result.error
                    if not any_success and not given_up and failed_in_row >= self.max_consecutive_failures:
                        given_up = True
                        for other in futures:
                            if not other.done() and other.cancel():
                                results[futures[other]] = Result(text=None, error=f"Skipped: the teacher failed "
                                                                 f"{failed_in_row} times in a row ({last_error})")  # fmt: skip
                                self.stats.add(skipped=1)
                                bar.update(1)
            bar.close()
        return [r for r in results if r is not None]

    def prune_cache(self) -> int:
        """Delete the least recently used cached answers (by file time: written or last read) until the cache
        holds at most ``max_cache_mb``; returns how many were deleted."""
        if self.cache_dir is None or self.max_cache_bytes is None or not self.cache_dir.is_dir():
            return 0
        entries = []
        for path in self.cache_dir.glob("*/*.json"):
            with contextlib.suppress(OSError):
                info = path.stat()
                entries.append((info.st_mtime, info.st_size, path))
        total, deleted = sum(size for _, size, _ in entries), 0
        for _, size, path in sorted(entries):
            if total <= self.max_cache_bytes:
                break
            path.unlink(missing_ok=True)
            total, deleted = total - size, deleted + 1
        return deleted

    def close(self) -> None:
        """Close the HTTP connections and bring the cache back to its size limit."""
        self._client.close()
        with contextlib.suppress(OSError):
            self.prune_cache()

    def __enter__(self) -> Teacher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
