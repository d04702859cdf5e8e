"""Property-based tests (Hypothesis) of the three parsers that face untrusted input: the API request schema, the
engagement CSV schema and the ViGGO MR parser.

Run with ``--hypothesis-show-statistics`` to see how many cases each property ran.
"""

from __future__ import annotations

import json
import math
import string

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from gamesense.serving.engagement.api import MAX_ECHO_CHARS, PlayerFeatures, create_app, predict_request_model, safe_validation_errors
from gamesense.serving.alias_follower import AliasFollower
from gamesense.tasks import engagement as task
from gamesense.tasks.viggo import ATTRIBUTES, DIALOGUE_ACTS, MeaningRepresentation, MRParseError, parse_mr

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- the API request schema -------------------------------------------------------------------------------

player_ids = st.one_of(st.none(), st.integers(min_value=0, max_value=2**80),
                       st.text(min_size=1, max_size=task.MAX_ID_LENGTH).filter(str.strip))  # fmt: skip


def valid_value(name: str):
    if name in task.CATEGORIES:
        return st.sampled_from(task.CATEGORIES[name])
    spec = task.NUMERIC[name]
    if spec.integer:
        return st.integers(min_value=int(spec.low), max_value=int(spec.high))
    return st.floats(min_value=spec.low, max_value=spec.high, allow_nan=False)


valid_players = st.fixed_dictionaries({task.ID_COLUMN: player_ids, **{name: valid_value(name) for name in task.FEATURES}})


def invalid_value(name: str):
    """Values the schema must refuse for ``name``: wrong JSON type, out of range, non-finite, unknown category."""
    wrong_type = st.one_of(st.text(max_size=5), st.booleans(), st.none(), st.lists(st.integers(), max_size=2))
    if name in task.CATEGORIES:
        return st.one_of(wrong_type.filter(lambda v: v not in task.CATEGORIES[name]), st.integers())
    spec = task.NUMERIC[name]
    outside = st.one_of(st.integers(max_value=int(spec.low) - 1), st.integers(min_value=int(spec.high) + 1))
    non_finite = st.sampled_from([math.nan, math.inf, -math.inf])
    if spec.integer:
        fractional = st.floats(min_value=spec.low, max_value=spec.high).filter(lambda v: not float(v).is_integer())
        return st.one_of(wrong_type, outside, non_finite, fractional, st.just(float(int(spec.low))))
    return st.one_of(wrong_type, outside, non_finite)


@FAST
@given(players=st.lists(valid_players, min_size=1, max_size=5))
def test_every_valid_player_is_accepted_and_ids_become_exact_text(players):
    body = predict_request_model(10).model_validate({"players": players})
    assert [None if p.PlayerID is None else str(p.PlayerID) for p in body.players] == [
        None if p[task.ID_COLUMN] is None else str(p[task.ID_COLUMN]) for p in players]  # fmt: skip


@FAST
@given(player=valid_players, data=st.data())
def test_every_invalid_field_is_refused_at_its_location_with_a_json_safe_answer(player, data):
    name = data.draw(st.sampled_from(task.FEATURES))
    bad = {**player, name: data.draw(invalid_value(name))}
    with pytest.raises(ValidationError) as caught:
        PlayerFeatures.model_validate(bad)
    errors = caught.value.errors()
    assert any(err["loc"][0] == name for err in errors)
    safe = safe_validation_errors(errors)
    text = json.dumps(safe, allow_nan=False)  # NaN/Infinity never reach the JSON answer
    assert all(len(json.dumps(err.get("input"))) <= MAX_ECHO_CHARS for err in safe if "input" in err)
    assert text


class _ConstantModel:
    """Stands in for a trained model: the HTTP properties are about the schema, not the scores."""

    name, version, predictor = "stub", "1", None

    def predict_frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        out = pd.DataFrame(index=frame.index)
        out[task.PREDICTION] = "High"
        for cls, p in zip(task.CLASSES, (0.5, 0.25, 0.25)):
            out[task.PROBA_PREFIX + cls] = p
        return out


@pytest.fixture(scope="module")
def stub_client():
    follower = AliasFollower(lambda version: _ConstantModel(), lambda: "1", interval_s=3600)
    with TestClient(create_app(follower=follower, max_batch=20, max_body_bytes=64 * 1024), raise_server_exceptions=False) as client:
        yield client


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)


@FAST
@given(body=st.one_of(json_values, st.fixed_dictionaries({"players": st.lists(json_values, max_size=3)}),
                      st.fixed_dictionaries({"players": st.lists(valid_players, min_size=1, max_size=25)})))
def test_any_json_body_gets_a_documented_status_never_a_5xx(stub_client, body):
    raw = json.dumps(body)  # Python's json writes NaN/Infinity, as hostile clients do
    r = stub_client.post("/v1/engagement/predict", content=raw, headers={"content-type": "application/json"})
    assert r.status_code in (200, 400, 413, 422), r.text
    r.json()  # always a JSON answer
    if r.status_code == 200:
        ids = [p[task.ID_COLUMN] for p in body["players"]]
        assert [p["player_id"] for p in r.json()["predictions"]] == [None if i is None else str(i) for i in ids]


# --- the engagement CSV schema -----------------------------------------------------------------------------

PANDAS_NA_TEXT = {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>",
                  "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"}  # read as missing by pandas  # fmt: skip
csv_ids = st.one_of(st.integers(min_value=-(2**70), max_value=2**70).map(str),
                    st.text(alphabet=string.ascii_letters + string.digits + "-_.:", min_size=1, max_size=30))  # fmt: skip


def csv_cell(name: str):
    """Mostly valid values, sometimes broken ones, as text in a CSV cell."""
    if name == task.ID_COLUMN:
        return csv_ids
    if name == task.TARGET:
        return st.one_of(st.sampled_from(task.CLASSES), st.sampled_from(["", "Extreme", "high"]))
    broken = st.sampled_from(["", "abc", "1e999", "-5", "2.5", "999999"])
    return st.one_of(valid_value(name).map(str), valid_value(name).map(str), broken)


csv_rows = st.fixed_dictionaries({name: csv_cell(name) for name in task.COLUMNS})


@FAST
@given(rows=st.lists(csv_rows, min_size=1, max_size=30), repeat=st.booleans())
def test_every_csv_row_is_valid_rejected_with_a_reason_or_an_exact_duplicate(rows, repeat, tmp_path_factory):
    if repeat:
        rows = rows + rows[:1]  # an exact duplicate row
    path = tmp_path_factory.mktemp("csv") / "players.csv"
    pd.DataFrame(rows, columns=task.COLUMNS).to_csv(path, index=False)
    result = task.validate_frame(task.read_table(path), require_target=True)
    assert len(result.valid) + len(result.rejects) + result.n_duplicates == len(rows)
    assert all(isinstance(reason, str) and reason for reason in result.rejects["reason"])
    written = {r[task.ID_COLUMN] for r in rows}
    assert set(result.valid[task.ID_COLUMN]) <= written - PANDAS_NA_TEXT  # ids exactly as written, as text
    assert result.valid[task.ID_COLUMN].is_unique
    for name, spec in task.NUMERIC.items():
        values = result.valid[name].to_numpy(np.float64)
        assert np.isfinite(values).all() and ((values >= spec.low) & (values <= spec.high)).all()
    for name, allowed in task.CATEGORIES.items():
        assert set(result.valid[name].astype(str)) <= set(allowed)


@FAST
@given(ids=st.lists(st.integers(min_value=2**53, max_value=2**80), min_size=2, max_size=10, unique=True))
def test_large_player_ids_survive_a_csv_round_trip_exactly(ids, tmp_path_factory):
    path = tmp_path_factory.mktemp("ids") / "ids.csv"
    path.write_text(task.ID_COLUMN + "\n" + "\n".join(map(str, ids)) + "\n")
    assert task.read_table(path)[task.ID_COLUMN].tolist() == [str(i) for i in ids]


# --- the ViGGO MR parser ------------------------------------------------------------------------------------

slot_values = st.text(st.characters(blacklist_characters="[]", blacklist_categories=("Cs",)), max_size=25)
mrs = st.builds(MeaningRepresentation, act=st.sampled_from(DIALOGUE_ACTS),
                slots=st.lists(st.tuples(st.sampled_from(ATTRIBUTES), slot_values), min_size=1, max_size=6).map(tuple))  # fmt: skip


@FAST
@given(mr=mrs)
def test_mr_round_trips_through_its_text_form(mr):
    assert parse_mr(mr.to_string()) == mr


@FAST
@given(mr=mrs, spaces=st.lists(st.sampled_from(["", " ", "  ", "\t", "\n"]), min_size=4, max_size=4))
def test_whitespace_between_tokens_does_not_change_the_mr(mr, spaces):
    a, b, c, d = spaces
    text = f"{a}{mr.act}{b}({c}" + f"{c},{c}".join(f"{attr}{b}[{value}]" for attr, value in mr.slots) + f"{d}){a}"
    assert parse_mr(text) == mr


@FAST
@given(text=st.one_of(st.text(max_size=60), mrs.map(lambda m: m.to_string()).flatmap(
    lambda t: st.integers(0, len(t)).map(lambda cut: t[:cut]))))  # fmt: skip
def test_any_text_parses_or_fails_with_an_offset_never_crashes(text):
    try:
        mr = parse_mr(text)
    except MRParseError as err:
        assert "offset" in str(err) or "expected" in str(err)
    else:
        assert parse_mr(mr.to_string()) == mr
