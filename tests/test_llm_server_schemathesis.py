"""Schemathesis against the LLM server's own OpenAPI schema (issue 22): generated valid and invalid requests to
every operation, sent with the API key, get no 5xx. The server is the real app behind uvicorn on 127.0.0.1 over a
tiny random Llama with the SmolLM2 tokenizer; ``max_tokens`` is capped at 8 so generated requests decode briefly
(larger ones get 400)."""

from __future__ import annotations

import pytest
from support import isolated_workdir, served_on_localhost
from test_api_schemathesis import _fuzz

KEY = "sk-schemathesis-llm"
CASES_PER_MODE = 100

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model_dir):
    from gamesense.serving.llm.api import create_app

    with isolated_workdir(tmp_path_factory.mktemp("llm-schemathesis")):
        app = create_app(str(tiny_model_dir), models=[], dtype="float32", batch_wait_ms=0, api_keys=[KEY],
                         public_paths=["/openapi.json"], max_tokens_cap=8, request_timeout_s=30)  # fmt: skip
        with served_on_localhost(app) as url:
            yield url


def test_generated_requests_to_the_llm_server_get_no_server_error(served, capsys):
    import requests
    import schemathesis
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error

    schema = schemathesis.openapi.from_url(f"{served}/openapi.json")
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {KEY}"
    counts: dict[str, int] = {}
    for operation in schema.get_all_operations():
        operation = operation.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            key = f"{operation.label} {mode.value}"
            counts[key] = 0
            _fuzz(operation, mode, key, counts, [not_a_server_error], served, session, CASES_PER_MODE)
    with capsys.disabled():
        print(f"\nschemathesis (LLM server): {sum(counts.values())} cases, 0 server errors: {counts}")
    assert counts["POST /v1/chat/completions positive"] > 0 and counts["POST /v1/chat/completions negative"] > 0
