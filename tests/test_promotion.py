"""The one promotion gate against a real MLflow SQLite registry: champion only on a real improvement over
the base model and the champion, the challenger alias left alone when it moved on, one atomic decision per
model name when several gates run at once."""

from __future__ import annotations

import json
import multiprocessing

import pytest

from gamesense.registry.mlflow_store import get_version_by_alias, register_version, set_alias, setup_tracking
from gamesense.registry.promotion import CHALLENGER, CHAMPION, decide_promotion, promotion_gate
from gamesense.registry.refs import RegistryRef, parse_model_name, parse_model_ref

NAME = "gamesense-gate-test"


def new_challenger(score: float) -> str:
    version = register_version(NAME, "file:///nowhere", None, {"accuracy": f"{score:.6f}", "gate_metric": "accuracy"})
    set_alias(NAME, version.version, CHALLENGER)
    return str(version.version)


def gate(version: str, score: float, base: float = 0.1, min_delta: float = 0.0):
    return promotion_gate(NAME, version, "accuracy", score, lambda champion: float(champion.tags["accuracy"]),
                          baselines={"base model": base}, min_delta=min_delta)  # fmt: skip


def champion() -> str | None:
    mv = get_version_by_alias(NAME, CHAMPION)
    return str(mv.version) if mv else None


def test_one_parser_for_every_way_a_model_is_named():
    """The CLI, the engagement API and the LLM server name models alike: a bare name is its champion."""
    assert parse_model_name("gamesense-viggo") == RegistryRef("gamesense-viggo", alias=CHAMPION)
    assert parse_model_name("gamesense-viggo@challenger") == RegistryRef("gamesense-viggo", alias=CHALLENGER)
    assert parse_model_name("gamesense-viggo/3") == RegistryRef("gamesense-viggo", version="3")
    assert parse_model_name("models:/gamesense-viggo/3") == parse_model_ref("models:/gamesense-viggo/3")
    assert parse_model_name("gamesense-viggo", default_alias=CHALLENGER).alias == CHALLENGER
    for bad in ("/tmp/adapter", "two words", "name/v3", "models:/name/v3", ""):
        with pytest.raises(ValueError):
            parse_model_name(bad)


def test_decision_rule():
    assert decide_promotion("m", 0.5, {"base": 0.1, "champion": None}).promote
    assert not decide_promotion("m", 0.5, {"base": 0.5}).promote  # equal is not better
    assert not decide_promotion("m", 0.55, {"champion": 0.5}, min_delta=0.1).promote
    assert decide_promotion("loss", 0.2, {"champion": 0.3}, higher_is_better=False).promote
    assert not decide_promotion("m", float("nan"), {"champion": 0.3}).promote


def test_gate_on_real_registry(workdir):
    setup_tracking()
    first = gate(new_challenger(0.5), 0.5)
    assert (first.version, first.alias, first.promoted, first.previous_champion) == ("1", "champion", True, None)
    assert get_version_by_alias(NAME, CHALLENGER) is None  # the champion is no longer the challenger
    worse = gate(new_challenger(0.4), 0.4)  # beats the base, not the champion
    assert (worse.alias, worse.promoted) == ("challenger", False)
    assert "does not beat champion v1 (0.4000 vs 0.5000)" in worse.reason and champion() == "1"
    assert gate(new_challenger(0.5), 0.5).alias == "challenger"  # a tie is not better
    below_base = gate(new_challenger(0.05), 0.05)
    assert not below_base.promoted and "does not beat base model" in below_base.reason
    better = gate(new_challenger(0.6), 0.6)
    assert better.promoted and champion() == "5" and better.previous_champion == "1"
    assert get_version_by_alias(NAME, CHAMPION).tags["promotion_reason"] == better.reason
    again = gate("5", 0.6)  # gating the champion itself changes nothing
    assert not again.promoted and again.alias == "champion" and champion() == "5"
    audit = [json.loads(line) for line in (workdir / "promotions.jsonl").read_text().splitlines()]
    assert [a["promoted"] for a in audit] == [True, False, False, False, True, False]


def test_promoting_an_older_challenger_leaves_the_newer_one(workdir):
    """A promote that decided on v1 while a train registered v2 as challenger must not take v2's alias."""
    setup_tracking()
    v1 = new_challenger(0.5)
    v2 = new_challenger(0.3)  # the concurrent train moved `challenger` to v2
    assert gate(v1, 0.5).promoted
    assert champion() == v1 and str(get_version_by_alias(NAME, CHALLENGER).version) == v2


def _concurrent_gate(args) -> bool:
    workdir, version, score = args
    import os

    os.environ["GAMESENSE_WORKDIR"] = workdir
    setup_tracking()
    return gate(version, score).promoted


@pytest.mark.parametrize("n", [4])
def test_concurrent_gates_decide_one_at_a_time(workdir, n):
    """Four gates at once: each sees the champion the previous one left, so only real improvements in the
    order they ran move it, and every decision is written once."""
    setup_tracking()
    scores = [0.2, 0.4, 0.6, 0.8]
    versions = [new_challenger(s) for s in scores]
    with multiprocessing.get_context("spawn").Pool(n) as pool:
        promoted = pool.map(_concurrent_gate, [(str(workdir), v, s) for v, s in zip(versions, scores)])
    audit = [json.loads(line) for line in (workdir / "promotions.jsonl").read_text().splitlines()]
    assert len(audit) == n and sorted(a["version"] for a in audit) == sorted(versions)
    # replaying the audit in file order: each decision compared against the champion left by the one before
    current = None
    for entry in audit:
        assert entry["previous_champion"] == current
        if entry["promoted"]:
            current = entry["version"]
    assert champion() == current == "4"  # the best one always ends as champion
    assert sum(promoted) == sum(a["promoted"] for a in audit)
