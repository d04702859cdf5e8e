"""Tests for gamesense.tasks.viggo: MR grammar, loader, chat formatting, metrics."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from gamesense.config import load_recipe
from gamesense.training.recipe import LLMRecipe
from gamesense.tasks import get_task
from gamesense.tasks.base import DataError
from gamesense.tasks.viggo import (
    ATTRIBUTES,
    DIALOGUE_ACTS,
    TASK_NAME,
    MeaningRepresentation,
    MRParseError,
    ViggoExample,
    build_messages,
    compute_metrics,
    extract_mr,
    load_viggo,
    parse_mr,
    per_row_scores,
    to_prompt_completion,
    try_parse_mr,
)

DATA_DIR = Path(__file__).resolve().parents[2] / "shared/datasets/viggo"
SPLITS = {"train": 5103, "validation": 714}
# Slots with an empty value, all from request_attribute (counted by hand with grep '\[\]').
EMPTY_VALUES = {"train": 93, "validation": 21}

SPELLFORCE = "give_opinion(name[SpellForce 3], release_year[2017], developer[Grimlore Games], rating[poor])"


def _real(split: str) -> Path:
    path = DATA_DIR / f"{split}.csv"
    if not path.is_file():
        pytest.skip(f"real ViGGO data not found at {path}")
    return path


# --------------------------------------------------------------------------- parser


def test_constants():
    assert TASK_NAME == "viggo"
    assert len(DIALOGUE_ACTS) == 9 and len(ATTRIBUTES) == 14
    prompt = load_recipe("viggo", LLMRecipe).task_options["system_prompt"]
    assert len(prompt.split()) <= 8  # keep the prompt short (tokens cost CPU time)


def test_parse_spellforce():
    mr = parse_mr(SPELLFORCE)
    assert mr == MeaningRepresentation(
        act="give_opinion",
        slots=(
            ("name", "SpellForce 3"),
            ("release_year", "2017"),
            ("developer", "Grimlore Games"),
            ("rating", "poor"),
        ),
    )
    assert mr.to_string() == SPELLFORCE


def test_parse_list_values_and_punctuation():
    text = (
        "inform(name[Dirt: Showdown], esrb[E 10+ (for Everyone 10 and Older)], "
        "genres[driving/racing, sport], platforms[PlayStation, Xbox, PC])"
    )
    mr = parse_mr(text)
    assert mr.slots == (
        ("name", "Dirt: Showdown"),
        ("esrb", "E 10+ (for Everyone 10 and Older)"),
        ("genres", "driving/racing, sport"),
        ("platforms", "PlayStation, Xbox, PC"),
    )
    assert mr.to_string() == text


def test_parse_empty_value_and_whitespace():
    assert parse_mr("request_attribute(player_perspective[])").slots == (("player_perspective", ""),)
    # Whitespace between tokens is insignificant; to_string gives the canonical form.
    assert parse_mr("  inform ( name[X] ,rating[good] )\n").to_string() == "inform(name[X], rating[good])"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tell(name[X])", "unknown dialogue act 'tell' at offset 0"),
        ("inform(name[X], score[good])", "unknown attribute 'score' at offset 16"),
        ("inform(name[X], rating[good]", "expected ',' or ')' at offset 28, found end of input"),
        ("inform(name[X]) and more", "trailing text 'and more'"),
        ("inform(name[X, rating[good])", "unexpected '[' at offset 21"),
        ("inform(name[X", "unbalanced '[' at offset 11"),
        ("inform()", "expected an attribute name at offset 7"),
        ("inform name[X]", "expected '(' after 'inform' at offset 7"),
        ("", "expected a dialogue act at offset 0"),
    ],
)
def test_parse_rejects(text, message):
    with pytest.raises(MRParseError, match=re.escape(message)):
        parse_mr(text)
    assert try_parse_mr(text) is None


@pytest.mark.parametrize("split", list(SPLITS))
def test_round_trip_every_real_row(split):
    with _real(split).open(encoding="utf-8", newline="") as handle:
        mrs = [row["mr"] for row in csv.DictReader(handle)]
    assert len(mrs) == SPLITS[split]
    for mr in mrs:
        assert parse_mr(mr).to_string() == mr
    empty = sum(value == "" for mr in mrs for _, value in parse_mr(mr).slots)
    assert empty == EMPTY_VALUES[split]


# --------------------------------------------------------------------------- metrics


def test_metrics_hand_computed():
    references = [
        "inform(name[Portal 2], release_year[2011], rating[excellent])",
        SPELLFORCE,
        "verify_attribute(name[Little Big Adventure], rating[average], has_multiplayer[no])",
    ]
    predictions = [
        # exact copy: 3 predicted, 3 gold, 3 correct
        "inform(name[Portal 2], release_year[2011], rating[excellent])",
        # slots reordered: not exact, but same MR; 4 / 4 / 4
        "give_opinion(rating[poor], name[SpellForce 3], developer[Grimlore Games], release_year[2017])",
        # wrong act, wrong rating, one extra slot: 4 predicted, 3 gold, 2 correct (name, has_multiplayer)
        "confirm(name[Little Big Adventure], rating[good], has_multiplayer[no], platforms[PC])",
    ]
    # predicted 11, gold 10, correct 9: P = 9/11, R = 9/10, F1 = 2*9 / (11 + 10) = 6/7
    metrics = compute_metrics(predictions, references)
    assert metrics["exact_match"] == pytest.approx(1 / 3)
    assert metrics["mr_match"] == pytest.approx(2 / 3)
    assert metrics["act_accuracy"] == pytest.approx(2 / 3)
    assert metrics["slot_precision"] == pytest.approx(9 / 11)
    assert metrics["slot_recall"] == pytest.approx(9 / 10)
    assert metrics["slot_f1"] == pytest.approx(6 / 7)
    assert metrics["valid_mr_rate"] == pytest.approx(1.0)
    assert metrics["n"] == 3
    for key in ("rouge1", "rouge2", "rougeL"):
        assert 0.0 < metrics[key] < 1.0


def test_metrics_unparsable_predictions():
    references = [
        "inform(name[Portal 2], genres[platformer, puzzle], rating[excellent])",
        "request(release_year[2014], specifier[terrible])",
    ]
    predictions = [
        # missing ')': invalid, but act and slots recovered leniently (genres order is irrelevant)
        "inform(name[Portal 2], genres[puzzle, platformer], rating[excellent]",
        # garbage: no act, no slots
        "I think this is about games?",
    ]
    # predicted 3, gold 5, correct 3: P = 1, R = 3/5, F1 = 2*3 / (3 + 5) = 3/4
    metrics = compute_metrics(predictions, references)
    assert metrics["valid_mr_rate"] == 0.0
    assert metrics["mr_match"] == 0.0
    assert metrics["exact_match"] == 0.0
    assert metrics["act_accuracy"] == pytest.approx(1 / 2)
    assert metrics["slot_precision"] == pytest.approx(1.0)
    assert metrics["slot_recall"] == pytest.approx(3 / 5)
    assert metrics["slot_f1"] == pytest.approx(3 / 4)


def test_metrics_all_garbage_gives_zero_f1():
    metrics = compute_metrics(["no idea"], [SPELLFORCE])
    assert metrics["slot_precision"] == metrics["slot_recall"] == metrics["slot_f1"] == 0.0
    assert metrics["act_accuracy"] == 0.0


def test_rouge_identical_is_one():
    metrics = compute_metrics([SPELLFORCE, " " + SPELLFORCE + "\n"], [SPELLFORCE, SPELLFORCE])
    assert metrics["exact_match"] == 1.0
    assert metrics["rouge1"] == pytest.approx(1.0)
    assert metrics["rouge2"] == pytest.approx(1.0)
    assert metrics["rougeL"] == pytest.approx(1.0)


def test_per_row_scores():
    ref = "inform(name[Portal 2], genres[platformer, puzzle])"
    assert per_row_scores("inform(genres[puzzle,  platformer], name[Portal 2])", ref) == {
        "exact_match": False,
        "mr_match": True,
        "act_match": True,
        "valid_mr": True,
    }
    # Non-list values keep their comma order: exp_release_date is one date, not a list.
    date_ref = "inform(name[X], exp_release_date[August 14, 2018])"
    assert not per_row_scores("inform(name[X], exp_release_date[2018, August 14])", date_ref)["mr_match"]
    assert per_row_scores("suggest(name[Portal 2]", ref) == {
        "exact_match": False,
        "mr_match": False,
        "act_match": False,
        "valid_mr": False,
    }


def test_metrics_input_errors():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        compute_metrics(["a", "b"], [SPELLFORCE])
    with pytest.raises(ValueError):
        compute_metrics([], [])
    with pytest.raises(MRParseError, match="reference 0"):
        compute_metrics([SPELLFORCE], ["not an mr"])


# --------------------------------------------------------------------------- chat formatting


def test_messages_and_prompt_completion():
    example = ViggoExample(line=2, ref="Is Portal 2 fun?", mr="request(name[Portal 2])")
    assert build_messages("hi", "Parse.") == [
        {"role": "system", "content": "Parse."},
        {"role": "user", "content": "hi"},
    ]
    assert build_messages("hi", system_prompt="") == [{"role": "user", "content": "hi"}]
    record = to_prompt_completion(example, system_prompt="Parse.")
    assert record == {
        "prompt": [{"role": "system", "content": "Parse."}, {"role": "user", "content": "Is Portal 2 fun?"}],
        "completion": [{"role": "assistant", "content": "request(name[Portal 2])"}],
    }


def test_task_plugin_records_and_scores():
    task = get_task("viggo", {"system_prompt": "Parse."})
    example = ViggoExample(line=7, ref="Is Portal 2 fun?", mr="request(name[Portal 2])")
    assert task.sft_records([example]) == [to_prompt_completion(example, "Parse.")]
    [record] = task.eval_records([example])
    assert record == {"prompt": build_messages("Is Portal 2 fun?", "Parse."), "reference": example.mr,
                      "input": example.ref, "line": 7}  # fmt: skip
    assert task.parse_output(" request(name[Portal 2])\nmore") == example.mr
    assert task.compute_metrics([example.mr], [record])["exact_match"] == 1.0
    assert task.row_scores("inform(name[X])", record)["exact_match"] is False
    assert task.gate_metric in task.compute_metrics([example.mr], [record])
    with pytest.raises(ValueError, match="task_options.system_prompt"):
        get_task("viggo", {})


def test_extract_mr():
    assert extract_mr("  inform(name[X])\nSure! Anything else?\n") == "inform(name[X])"
    assert extract_mr("\n\n inform(name[X]) \n") == "inform(name[X])"
    assert extract_mr("   ") == ""


# --------------------------------------------------------------------------- loader


def test_load_csv_reports_skipped_rows_with_line_numbers(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text(
        "mr,ref\n"  # line 1
        '"inform(name[Portal 2], rating[excellent])",Portal 2 is excellent.\n'  # 2: ok
        '"inform(name[X], rating[good])",   \n'  # 3: empty ref
        '"inform(name[X], rating[good]","Broken, really."\n'  # 4: missing ')'
        '"inform(name[Y], genres[action, shooter])","Y is a multi\n'  # 5-6: ok, two lines
        'line shooter."\n'
        "\n"  # 7: blank line, not a row
        "tell(name[Z]),Z.\n",  # 8: unknown act
        encoding="utf-8",
    )
    report = load_viggo(path)
    assert [(e.line, e.mr, e.ref) for e in report.examples] == [
        (2, "inform(name[Portal 2], rating[excellent])", "Portal 2 is excellent."),
        (5, "inform(name[Y], genres[action, shooter])", "Y is a multi\nline shooter."),
    ]
    assert [line for line, _ in report.skipped] == [3, 4, 8]
    assert report.skipped[0][1] == "empty ref"
    assert report.skipped[1][1].startswith("unparsable mr: expected ',' or ')' at offset 28")
    assert "unknown dialogue act 'tell'" in report.skipped[2][1]
    assert report.total_rows == 5
    assert load_viggo(path, max_rows=3).total_rows == 3


def test_load_gem_columns_and_jsonl(tmp_path):
    csv_path = tmp_path / "gem.csv"
    csv_path.write_text(
        "gem_id,meaning_representation,target\nviggo-train-0,request(name[X]),Is X any good?\n",
        encoding="utf-8",
    )
    assert [(e.line, e.mr, e.ref) for e in load_viggo(csv_path).examples] == [
        (2, "request(name[X])", "Is X any good?")
    ]

    jsonl_path = tmp_path / "data.jsonl"
    rows = [
        {"mr": "request(name[X])", "ref": "Is X any good?"},
        None,  # blank line
        {"meaning_representation": "inform(name[X]", "target": "X."},
        {"mr": "confirm(name[Y])", "ref": "You mean Y?"},
    ]
    lines = ["" if r is None else json.dumps(r) for r in rows]
    jsonl_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = load_viggo(jsonl_path)
    assert [(e.line, e.mr) for e in report.examples] == [(1, "request(name[X])"), (4, "confirm(name[Y])")]
    assert [line for line, _ in report.skipped] == [3]


def test_load_errors(tmp_path):
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"expected columns 'mr' and 'ref'.*found \['a', 'b'\]"):
        load_viggo(wrong)
    with pytest.raises(DataError, match="not found"):
        load_viggo(tmp_path / "missing.csv")
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"mr": "request(name[X])", "ref": "X?"}\n{oops\n', encoding="utf-8")
    with pytest.raises(DataError, match="line 2"):
        load_viggo(bad_json)


@pytest.mark.parametrize("split", list(SPLITS))
def test_load_real_files(split):
    report = load_viggo(_real(split))
    # Checked by hand: no empty fields and every MR parses in both files.
    assert report.total_rows == SPLITS[split]
    assert report.skipped == []
    assert report.examples[0].line == 2
    assert report.examples[-1].line == SPLITS[split] + 1  # no multi-line fields in the real files
    assert max(len(e.mr) for e in report.examples) == {"train": 261, "validation": 232}[split]
