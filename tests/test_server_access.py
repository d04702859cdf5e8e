"""Both servers run as a service (issue 22): API keys, admission control on the LLM server (a bounded queue, a
deadline, caps), inputs that used to break the scheduler, and metrics and logs that stay bounded whatever
clients send. Each test names what happened before.

Real parts: the LLM server over a tiny random Llama with the SmolLM2 tokenizer (base model only), the engagement
API without a model yet (its routes answer 503 behind the key check), both behind uvicorn on 127.0.0.1, called
with the official ``openai`` client and raw HTTP. Where a request must still be decoding when the test acts, each
forward pass of the tiny model is made to last 20 ms (a forward pre-hook), as the real model's steps do on a CPU.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest
from support import free_port, isolated_workdir, served_on_localhost
from test_engagement_hardening import one_line_error
from typer.testing import CliRunner

KEY, WRONG = "sk-gamesense-test-key-1", "sk-gamesense-wrong-key-2"
AUTH = {"Authorization": f"Bearer {KEY}"}
LONG = {"extra_body": {"ignore_eos": True}}  # fixed-length replies: decode past EOS


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("access")
    with isolated_workdir(root):
        yield root


@contextlib.contextmanager
def llm_server(tiny_model_dir, step_s: float = 0.0, **options):
    """(app, URL) of an LLM server on the tiny model that serves no registry model; ``step_s`` seconds added to
    every forward pass."""
    from gamesense.serving.llm.api import create_app

    app = create_app(str(tiny_model_dir), models=[], **({"dtype": "float32", "batch_wait_ms": 0} | options))
    if step_s:
        app.state.engine.model.get_decoder().register_forward_pre_hook(lambda *_: time.sleep(step_s))
    with served_on_localhost(app) as url:
        yield app, url


def client(url: str, key: str = KEY, timeout: float = 60) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=timeout)


def ask(c: openai.OpenAI, max_tokens: int = 8, **kwargs):
    return c.chat.completions.create(model="base", messages=[{"role": "user", "content": "hi"}], max_tokens=max_tokens,
                                     **({"temperature": 0} | kwargs))  # fmt: skip


def wait_until(condition, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def routes(app) -> list[tuple[str, str]]:
    """(method, path) of every route the app serves (from its OpenAPI schema and its other routes), plus a path
    it does not."""
    found = {(method.upper(), path) for path, item in app.openapi()["paths"].items() for method in item}
    found |= {(sorted(r.methods - {"HEAD"})[0], r.path) for r in app.routes if getattr(r, "methods", None)}
    return [*sorted(found), ("GET", "/no/such/path")]


def assert_every_route_needs_the_key(app, url: str, openai_format: bool) -> None:
    for method, path in routes(app):
        for headers in ({}, {"Authorization": f"Bearer {WRONG}"}, {"Authorization": KEY}, {"Authorization": f"Basic {KEY}"}):
            r = httpx.request(method, f"{url}{path}", headers=headers, json={})
            if path == "/livez":
                assert r.status_code == 200, (path, r.text)
                continue
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", (method, path, headers, r.text)
            if openai_format:
                assert r.json()["error"]["code"] == "invalid_api_key"
            else:
                assert "API key" in r.json()["detail"]
        r = httpx.request(method, f"{url}{path}", headers=AUTH, json={})
        assert r.status_code != 401, (path, r.text)


def test_llm_server_answers_401_without_a_valid_key_on_every_route_but_livez(root, tiny_model_dir, caplog, capfd):
    """Before: any client, with or without a key, could generate and read /metrics, /docs and the model list."""
    for name in ("gamesense", "uvicorn", "fastapi"):  # the server's loggers (the root at DEBUG floods the clients' own)
        caplog.set_level(logging.DEBUG, logger=name)
    with llm_server(tiny_model_dir, api_keys=[KEY, "sk-second-key-3"]) as (app, url):
        assert_every_route_needs_the_key(app, url, openai_format=True)
        with pytest.raises(openai.AuthenticationError) as err:
            ask(client(url, WRONG))
        assert err.value.code == "invalid_api_key"
        assert ask(client(url)).choices[0].finish_reason in ("stop", "length")
        assert ask(client(url, "sk-second-key-3")).usage.completion_tokens >= 1
        assert httpx.get(f"{url}/docs", headers=AUTH).status_code == 200
        spec = httpx.get(f"{url}/openapi.json", headers=AUTH).json()
        assert spec["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
        assert spec["paths"]["/v1/chat/completions"]["post"]["security"] == [{"bearerAuth": []}]
        assert 'status="401"' in httpx.get(f"{url}/metrics", headers=AUTH).text
    logged = caplog.text + "".join(capfd.readouterr())
    assert KEY not in logged and WRONG not in logged and "sk-second" not in logged


def test_engagement_api_answers_401_without_a_valid_key_and_opens_public_paths(root):
    """Before: the engagement API had no authentication at all."""
    from gamesense.serving.alias_follower import AliasFollower
    from gamesense.serving.engagement.api import create_app

    no_model = AliasFollower(lambda version: None, lambda: None, interval_s=3600)
    app = create_app(follower=no_model, api_keys=[KEY])
    with served_on_localhost(app) as url:
        assert_every_route_needs_the_key(app, url, openai_format=False)
        assert httpx.post(f"{url}/v1/engagement/predict", headers=AUTH, json={"players": []}).status_code == 422
        assert 'endpoint="/v1/engagement/predict",status="401"' in httpx.get(f"{url}/metrics", headers=AUTH).text
    opened = create_app(follower=AliasFollower(lambda version: None, lambda: None, interval_s=3600), api_keys=[KEY],
                        public_paths=["/metrics"])  # fmt: skip
    with served_on_localhost(opened) as url:
        assert httpx.get(f"{url}/metrics").status_code == 200
        assert httpx.get(f"{url}/healthz").status_code == 401


def test_servers_refuse_a_public_address_without_a_key_and_read_keys_from_file_and_environment(tmp_path, tiny_model_dir,
                                                                                                monkeypatch):  # fmt: skip
    """Before: both servers bound 0.0.0.0 with no key and no warning."""
    from gamesense.cli import app as cli
    from gamesense.serving.access import KEYS_ENV, load_api_keys

    runner = CliRunner()
    monkeypatch.delenv(KEYS_ENV, raising=False)
    for command in (["serve", "llm", "--base", str(tiny_model_dir)], ["serve", "engagement"]):
        for host in ("0.0.0.0", "192.168.1.20", "::", "game-server.example"):
            one_line_error(runner.invoke(cli, [*command, "--host", host]), f"refusing to serve on {host}", "--no-auth")
    keys = tmp_path / "keys.txt"
    keys.write_text(f"# ops keys\n{KEY}\n\nsk-from-file-4\n")
    monkeypatch.setenv(KEYS_ENV, "sk-from-env-5, sk-from-file-4")
    assert load_api_keys(["sk-from-option-6"], keys) == ("sk-from-option-6", KEY, "sk-from-file-4", "sk-from-env-5")
    keys.write_text("short\n")
    with pytest.raises(ValueError, match="keys.txt:1") as err:
        load_api_keys([], keys)
    assert "short" not in str(err.value)
    result = runner.invoke(cli, ["serve", "llm", "--host", "0.0.0.0", "--api-keys-file", str(keys)])
    one_line_error(result, "keys.txt:1", "at least 8 characters")
    assert "short" not in result.output


def test_a_full_queue_is_429_with_retry_after(root, tiny_model_dir):
    """Before: the queue had no bound; every request was accepted and waited."""
    with llm_server(tiny_model_dir, step_s=0.02, max_batch=1, max_queued=1) as (app, url):
        engine, c = app.state.engine, client(url)
        first = threading.Thread(target=ask, args=(c, 60), kwargs=LONG)
        first.start()
        assert wait_until(lambda: engine.running)
        second = threading.Thread(target=ask, args=(c, 5), kwargs=LONG)
        second.start()
        assert wait_until(lambda: engine.queue_length() == 1)
        with pytest.raises(openai.RateLimitError) as err:
            ask(c)
        assert err.value.code == "queue_full" and err.value.response.headers["retry-after"] == "1"
        first.join(), second.join()
        assert ask(c).usage.completion_tokens >= 1  # served again once the queue drained
        assert 'status="429"} 1.0' in httpx.get(f"{url}/metrics").text


def test_the_deadline_ends_a_request_whole_or_streamed(root, tiny_model_dir):
    """Before: a request decoded (or waited in the queue) for as long as it took."""
    with llm_server(tiny_model_dir, step_s=0.02, request_timeout_s=0.5) as (app, url):
        c = client(url)
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as err:
            ask(c, 200, **LONG)
        assert err.value.status_code == 504 and err.value.code == "timeout" and time.monotonic() - started < 3
        r = httpx.post(f"{url}/v1/chat/completions", json={"model": "base", "messages": [{"role": "user", "content": "hi"}],
                                                           "max_tokens": 200, "stream": True, "ignore_eos": True},
                       timeout=30)  # fmt: skip
        events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
        assert events[-1]["error"]["code"] == "timeout" and r.text.rstrip().endswith("data: [DONE]")
        assert wait_until(lambda: not app.state.engine.running, 2)  # the rows left the batch


def test_a_client_that_gives_up_frees_its_row(root, tiny_model_dir):
    """Before: a non-streaming client that timed out after 2 s left its 600-token row decoding to the end (with the
    openai SDK's retries, six rows per call)."""
    with llm_server(tiny_model_dir, step_s=0.02) as (app, url):
        body = {"model": "base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 400, "ignore_eos": True}
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/v1/chat/completions", json=body, timeout=0.5)
        gone = time.monotonic()
        assert wait_until(lambda: not app.state.engine.running, 3)
        assert time.monotonic() - gone < 2  # 400 tokens would take 8 s
        assert 'status="499"} 1.0' in httpx.get(f"{url}/metrics").text


def test_a_seed_the_generator_cannot_take_is_422_and_a_bad_row_fails_alone(root, tiny_model_dir):
    """Before: "seed": 2**64 overflowed in the engine's prefill: that request never got an answer and a request
    decoding beside it got 500."""
    from gamesense.serving.llm.engine import LLMEngine
    from gamesense.serving.llm.requests import GenerationRequest, SamplingParams

    with llm_server(tiny_model_dir) as (app, url):
        with pytest.raises(openai.UnprocessableEntityError) as err:
            ask(client(url), seed=2**64)
        assert err.value.body["param"] == "seed"
        assert ask(client(url), seed=2**64 - 1, temperature=1).usage.completion_tokens >= 1

    engine = LLMEngine(str(tiny_model_dir), dtype="float32", batch_wait_ms=200)
    events: dict[str, list] = {"good": [], "bad": []}
    prompt = engine.encode_chat([{"role": "user", "content": "hi"}])
    engine.start()
    try:
        for name, params in (("good", SamplingParams(max_tokens=6, ignore_eos=True)),
                             ("bad", SamplingParams(max_tokens=6, temperature=1.0, seed=2**64))):  # fmt: skip
            engine.submit(GenerationRequest(prompt, params, events[name].append))
        assert wait_until(lambda: any(e.done or e.error for e in events["good"]) and events["bad"])
    finally:
        engine.stop()
    assert events["good"][-1].done is not None and events["good"][-1].done.completion_tokens == 6
    assert len(events["bad"]) == 1 and "cannot start the request" in events["bad"][0].error


def test_fields_it_cannot_honour_and_values_over_the_caps_are_400_naming_them(root, tiny_model_dir):
    """Before: tools, tool_choice "required" and response_format were ignored and plain text came back with 200;
    16 stop strings of 500k characters cost 65 ms per row per step."""
    with llm_server(tiny_model_dir, max_tokens_cap=64, max_stop_chars=32) as (_, url):
        c = client(url)
        tool = {"type": "function", "function": {"name": "move", "parameters": {"type": "object", "properties": {}}}}
        for field, kwargs in (("tools", {"tools": [tool]}), ("tool_choice", {"tool_choice": "required"}),
                              ("response_format", {"response_format": {"type": "json_object"}}),
                              ("logit_bias", {"logit_bias": {"42": 5}}), ("frequency_penalty", {"frequency_penalty": 0.5})):  # fmt: skip
            with pytest.raises(openai.BadRequestError) as err:
                ask(c, **kwargs)
            assert err.value.body["param"] == field and err.value.code == "unsupported_parameter", field
        assert ask(c, response_format={"type": "text"}, tool_choice="none", frequency_penalty=0).choices
        with pytest.raises(openai.BadRequestError) as err:
            ask(c, 65)
        assert err.value.code == "max_tokens_too_large" and "64" in err.value.message
        with pytest.raises(openai.BadRequestError) as err:
            ask(c, stop=["x" * 33])
        assert err.value.code == "stop_too_long"
        assert ask(c, 64, stop=["x" * 32]).choices


def test_metrics_labels_and_logs_stay_bounded_whatever_clients_send(root, tiny_model_dir):
    """Before: 3,000 requests to distinct paths grew /metrics from 159 to 6,159 lines, and 5 requests with 200k
    unknown fields wrote 1,000,008 log lines."""
    api_log, records = logging.getLogger("gamesense.serving.llm.api"), []
    collect = logging.Handler(logging.INFO)
    collect.emit = records.append  # whether or not the CLI stopped "gamesense" logs from propagating
    api_log.addHandler(collect)
    level, api_log.level = api_log.level, logging.INFO
    with llm_server(tiny_model_dir, api_keys=[KEY], max_body_bytes=300_000) as (_, url):
        big = b"x" * 310_000

        def noise(n: int, start: int) -> None:
            for i in range(start, start + n):
                httpx.get(f"{url}/probe/{i}", headers=AUTH)  # 404
                httpx.get(f"{url}/probe/{i}")  # 401
                httpx.post(f"{url}/probe/{i}", headers=AUTH, content=big)  # 413
                httpx.post(f"{url}/v1/chat/completions?x={i}", headers=AUTH, content=b"{")  # 400

        noise(5, 0)
        before = httpx.get(f"{url}/metrics", headers=AUTH).text
        noise(100, 5)
        after = httpx.get(f"{url}/metrics", headers=AUTH).text
        assert len(after.splitlines()) == len(before.splitlines())
        assert "/probe" not in after and 'endpoint="unmatched",model="unknown",status="413"' in after

        records.clear()
        fields = {f"field_{i}": i for i in range(10_000)}
        try:
            for _ in range(3):
                ask(client(url), extra_body=fields)
        finally:
            api_log.removeHandler(collect)
            api_log.level = level
        lines = [r.getMessage() for r in records if "ignored" in r.getMessage()]
        assert len(lines) == 1 and len(lines[0]) < 500 and "and 9995 more" in lines[0], lines[:3]


@pytest.mark.slow
def test_sigterm_stops_the_server_within_seconds(root, tiny_model_dir):
    """Before: after a request with "seed": 2**64, SIGTERM closed the port but the process stayed alive 45 s+."""
    port = free_port()
    env = {**os.environ, "GAMESENSE_API_KEYS": KEY}
    server = subprocess.Popen([sys.executable, "-m", "gamesense", "serve", "llm", "--base", str(tiny_model_dir),
                               "--port", str(port), "--dtype", "float32"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        assert wait_until(lambda: _alive(url), 120), "the server did not start"
        c = client(url, timeout=30)
        with pytest.raises(openai.UnprocessableEntityError):
            ask(c, seed=2**64)
        assert ask(c, 4).usage.completion_tokens >= 1
        stopping = time.monotonic()
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=20) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has shut down
        assert time.monotonic() - stopping < 15
    finally:
        if server.poll() is None:
            server.kill()
        errors = server.stderr.read().decode()
    assert KEY not in errors and "API keys: 1 accepted" in errors


def _alive(url: str) -> bool:
    try:
        return httpx.get(f"{url}/livez", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_an_unknown_model_name_fails_at_once_with_one_line(workdir, monkeypatch):
    """Before: `snake play --model nosuchagent` spent 56 s on network retries offline and printed two lines."""
    from gamesense.cli import app as cli
    from gamesense.models import base

    base.hub_reachable.cache_clear()
    monkeypatch.setenv("HF_ENDPOINT", "https://127.0.0.1:9")  # a hub that cannot be reached, online or not
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    try:
        for args in (["snake", "play", "--model", "nosuchagent", "--games", "1"],
                     ["generate", "--model", "nosuchorg/nosuchmodel", "hello"], ["generate", "--model", "./no/such/dir", "hi"]):  # fmt: skip
            started = time.monotonic()
            result = CliRunner().invoke(cli, args)
            one_line_error(result, args[args.index("--model") + 1].lstrip("./"))
            assert time.monotonic() - started < 10, args
    finally:
        base.hub_reachable.cache_clear()


def test_served_adapter_downloads_are_pruned_and_deleted_with_the_server(tmp_path):
    """Before: every served adapter version was copied under llm-serving/adapters (~19 MB) and never deleted."""
    from gamesense.serving.llm.requests import Adapter
    from gamesense.serving.llm.resolver import ModelResolver, process_cache_dir
    import gamesense.serving.llm.resolver as resolver_module

    root = tmp_path / "adapters"
    (root / "gamesense_old_v1").mkdir(parents=True)  # the layout before: one shared directory
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (root / str(dead.pid)).mkdir()  # a server that is gone
    (root / str(os.getppid())).mkdir()  # a live process's downloads stay
    mine = process_cache_dir(root)
    assert sorted(p.name for p in root.iterdir()) == [str(os.getppid())] and mine == root / str(os.getpid())

    resolver = ModelResolver("base-model", [], 0.0, mine, max_cached=2)
    for i in range(4):  # what resolve() does for each new version: prune, then download
        resolver._prune(keep=f"k{i}")
        path = resolver._fresh_dir(f"k{i}")
        resolver._adapters[f"k{i}"] = Adapter(f"k{i}", path, "m", str(i))
        resolver._last_used[f"k{i}"] = time.monotonic() - (0 if i == 3 else 1000)
    assert sorted(p.name for p in mine.iterdir()) == ["k2", "k3"]  # the least recently used went
    resolver._last_used["k2"] = time.monotonic()  # asked for a moment ago: kept beyond the cap
    resolver._prune(keep="k4")
    assert sorted(p.name for p in mine.iterdir()) == ["k2", "k3"]
    assert resolver_module.PRUNE_AFTER_S > 0
    resolver.close()
    assert not mine.exists()


def test_the_teacher_cache_keeps_its_size_least_recently_used_first(tmp_path):
    """Before: the teacher cache grew without end (`synth qa`'s exit 3 on failed calls: test_guide_qa_synth)."""
    from gamesense.teacher import Request, Teacher

    teacher = Teacher("http://127.0.0.1:9/v1", "m", cache_dir=tmp_path / "cache", max_cache_mb=0.01)
    for i in range(6):
        teacher._store(f"{i:02d}" + "0" * 62, Request([{"role": "user", "content": str(i)}]), type("R", (), {
            "text": "x" * 4000, "finish_reason": "stop"})())  # fmt: skip
        os.utime(teacher._cache_path(f"{i:02d}" + "0" * 62), (1000 + i, 1000 + i))
    assert teacher._cached("00" + "0" * 62) is not None  # read now: the most recently used
    teacher.close()
    left = sorted(p.name[:2] for p in (tmp_path / "cache").glob("*/*.json"))
    assert left == ["00", "05"]  # 10 KB holds two entries of ~4 KB: the last written and the one just read
