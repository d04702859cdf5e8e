"""The teacher client against a real OpenAI-compatible server on 127.0.0.1: a scripted FastAPI app that answers
deterministically, can fail the first calls with 500/429 and counts what it was asked."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse
from support import served_on_localhost

from gamesense.teacher import Request, Teacher


def openai_app(reply: Callable[[list[dict]], str], fail_first: int = 0, fail_status: int = 500,
               delay_s: float = 0.0) -> FastAPI:  # fmt: skip
    """A scripted OpenAI-compatible chat server: ``reply(messages)`` gives the answer (raise HTTPException to fail
    one request); the first ``fail_first`` requests fail with ``fail_status``. ``app.state.calls`` counts every
    request (failed ones too), ``app.state.max_in_flight`` the most requests answered at once."""
    app = FastAPI()
    app.state.calls = 0
    app.state.bodies = []
    app.state.failures_left = fail_first
    app.state.in_flight = app.state.max_in_flight = 0

    @app.post("/v1/chat/completions")
    async def chat(body: dict):
        app.state.calls += 1
        app.state.bodies.append(body)
        if app.state.failures_left > 0:
            app.state.failures_left -= 1
            return JSONResponse({"error": {"message": "scripted failure", "type": "server_error"}},
                                status_code=fail_status, headers={"retry-after-ms": "1"})  # fmt: skip
        app.state.in_flight += 1
        app.state.max_in_flight = max(app.state.max_in_flight, app.state.in_flight)
        try:
            if delay_s:
                await asyncio.sleep(delay_s)
            text = reply(body["messages"])
        finally:
            app.state.in_flight -= 1
        return {"id": f"cmpl-{app.state.calls}", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}  # fmt: skip

    return app


def echo(messages: list[dict]) -> str:
    text = messages[-1]["content"]
    if "bad" in text:
        raise HTTPException(400, "scripted bad request")
    return f"echo: {text}"


def ask(*texts: str, **params) -> list[Request]:
    return [Request([{"role": "user", "content": t}], **params) for t in texts]


def test_answers_in_order_and_repeat_calls_come_from_the_cache(tmp_path):
    app = openai_app(echo)
    with served_on_localhost(app) as url:
        teacher = Teacher(f"{url}/v1", "base", cache_dir=tmp_path, concurrency=3)
        first = teacher.complete_many(ask("one", "two", "three"), progress=False)
        assert [r.text for r in first] == ["echo: one", "echo: two", "echo: three"]
        assert not any(r.cached for r in first) and app.state.calls == 3
        assert app.state.bodies[0]["model"] == "base" and app.state.bodies[0]["max_tokens"] == 400

        again = teacher.complete_many(ask("one", "two", "three"), progress=False)
        assert [r.text for r in again] == [r.text for r in first] and all(r.cached for r in again)
        assert app.state.calls == 3  # nothing asked twice
        assert teacher.stats.as_dict() == {"cache_hits": 3, "cache_misses": 3, "calls": 3, "errors": 0, "skipped": 0}

        # another parameter is another request; the same model at another address is the same one
        assert teacher.complete_many(ask("one", temperature=0.0), progress=False)[0].cached is False
        assert app.state.calls == 4
        other_address = Teacher(f"{url.replace('127.0.0.1', 'localhost')}/v1", "base", cache_dir=tmp_path)
        assert other_address.complete_many(ask("two"), progress=False)[0].cached is True
        assert Teacher(f"{url}/v1", "other-model", cache_dir=tmp_path).complete(ask("two")[0].messages).cached is False
        assert app.state.calls == 5


@pytest.mark.parametrize("status", [500, 429])
def test_failed_calls_are_retried_with_backoff(tmp_path, status):
    app = openai_app(echo, fail_first=2, fail_status=status)
    with served_on_localhost(app) as url:
        teacher = Teacher(f"{url}/v1", "base", cache_dir=tmp_path, max_retries=3)
        result = teacher.complete([{"role": "user", "content": "hello"}])
    assert result.ok and result.text == "echo: hello"
    assert app.state.calls == 3  # two failures, then the answer


def test_one_failed_call_never_loses_the_batch_and_is_not_cached(tmp_path):
    app = openai_app(echo)
    with served_on_localhost(app) as url:
        teacher = Teacher(f"{url}/v1", "base", cache_dir=tmp_path, max_retries=0)
        results = teacher.complete_many(ask("fine", "bad one", "also fine"), progress=False)
        assert [r.ok for r in results] == [True, False, True]
        assert results[1].text is None and results[1].error.startswith("BadRequestError")
        assert teacher.stats.errors == 1 and teacher.stats.calls == 2
        again = teacher.complete_many(ask("fine", "bad one", "also fine"), progress=False)
        assert [r.cached for r in again] == [True, False, True]  # the failure is asked again, never cached
        assert app.state.calls == 4


def test_concurrency_bounds_requests_in_flight(tmp_path):
    app = openai_app(echo, delay_s=0.2)
    with served_on_localhost(app) as url:
        teacher = Teacher(f"{url}/v1", "base", cache_dir=False, concurrency=4)
        results = teacher.complete_many(ask(*[f"q{i}" for i in range(12)]), progress=False)
    assert all(r.ok for r in results)
    assert 2 <= app.state.max_in_flight <= 4


def test_a_batch_is_given_up_when_every_call_fails(tmp_path):
    app = openai_app(echo, fail_first=10_000)
    with served_on_localhost(app) as url:
        teacher = Teacher(f"{url}/v1", "base", cache_dir=tmp_path, concurrency=1, max_retries=0, max_consecutive_failures=3)
        results = teacher.complete_many(ask(*[f"q{i}" for i in range(20)]), progress=False)
    assert not any(r.ok for r in results)
    assert app.state.calls <= 6  # the worker may have started a few more before the batch was given up
    assert teacher.stats.skipped == 20 - app.state.calls
    assert all(r.error.startswith("Skipped") for r in results[app.state.calls:])


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="base_url"):
        Teacher("", "base")
    with pytest.raises(ValueError, match="concurrency"):
        Teacher("http://127.0.0.1:1/v1", "base", concurrency=0)
