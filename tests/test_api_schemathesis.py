"""Schemathesis against the OpenAPI schema the real server serves (uvicorn on 127.0.0.1, a model trained into a
SQLite MLflow store): generated valid and invalid requests to every operation get no 5xx, only documented status
codes and content types, and bodies that match the schema; invalid requests are refused with a 4xx. The server
runs behind an API key, as in production, and the fuzzer sends it."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from support import isolated_workdir, served_on_localhost
from typer.testing import CliRunner

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "engagement" / "online_gaming_behavior.csv"
KEY = "sk-schemathesis-key"
CASES_PER_MODE = 150  # per operation and generation mode: about 30 s on 2 idle cores

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not DATA.is_file(), reason="engagement dataset not available")]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A trained and promoted model behind uvicorn on 127.0.0.1 (small limits so limits are exercised too)."""
    from gamesense.cli import app as cli
    from gamesense.serving.engagement.api import create_app

    root = tmp_path_factory.mktemp("schemathesis")
    with isolated_workdir(root):
        full = pd.read_csv(DATA).sample(3000, random_state=1)
        full.iloc[:2500].to_csv(root / "train.csv", index=False)
        full.iloc[2500:].to_csv(root / "heldout.csv", index=False)
        runner = CliRunner()
        fast = ["--set", "data.cv_folds=0", "--set", "plots=false", "--set", "baselines=[]"]
        assert runner.invoke(cli, ["engagement", "train", "--data", str(root / "train.csv"), *fast]).exit_code == 0
        assert runner.invoke(cli, ["engagement", "promote", "--eval-file", str(root / "heldout.csv")]).exit_code == 0
        # the body limit well above any generated body: a body both oversized and invalid answers 413, which
        # schemathesis counts as an invalid request accepted (413 itself is tested in test_engagement_hardening)
        app = create_app(reload_interval_s=60, max_batch=50, max_body_bytes=8 * 1024 * 1024, api_keys=[KEY],
                         public_paths=["/openapi.json"])  # fmt: skip
        with served_on_localhost(app) as url:
            yield url


def test_served_openapi_schema_holds_under_generated_requests(served, capsys):
    import requests
    import schemathesis
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (content_type_conformance, negative_data_rejection,
                                                   response_schema_conformance, status_code_conformance)  # fmt: skip

    schema = schemathesis.openapi.from_url(f"{served}/openapi.json")
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    counts: dict[str, int] = {}
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {KEY}"
    assert requests.get(f"{served}/healthz").status_code == 401  # the key is really checked
    for operation in schema.get_all_operations():
        operation = operation.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            key = f"{operation.label} {mode.value}"
            counts[key] = 0
            run_checks = checks + ([negative_data_rejection] if mode is GenerationMode.NEGATIVE else [])
            _fuzz(operation, mode, key, counts, run_checks, served, session)
    with capsys.disabled():
        print(f"\nschemathesis: {sum(counts.values())} cases, 0 failures: {counts}")
    assert counts["POST /v1/engagement/predict positive"] > 0 and counts["POST /v1/engagement/predict negative"] > 0


def _fuzz(operation, mode, key: str, counts: dict[str, int], checks: list, base_url: str, session,
          cases: int = CASES_PER_MODE) -> None:  # fmt: skip
    """Run ``cases`` generated requests of one operation and mode; a failed check fails the test."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable

    @settings(max_examples=cases, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case):
        counts[key] += 1
        case.call_and_validate(base_url=base_url, session=session, checks=checks)

    try:
        run()
    except Unsatisfiable:  # nothing to make invalid (GET /healthz has no parameters)
        assert mode.value == "negative" and counts[key] == 0
