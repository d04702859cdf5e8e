"""PokerBench data / prompt / metric layer (gamesense.tasks.poker): pure Python, no model."""

from __future__ import annotations

import doctest
import math
from pathlib import Path

import pytest

from gamesense.plots import plot_confusion_matrix
from gamesense.tasks import poker
from gamesense.tasks.poker import (
    Action,
    DataError,
    answer_text,
    build_messages,
    compute_metrics,
    legal_action_reward,
    load_pokerbench,
    parse_action,
    preference_pairs,
    render_prompt,
    row_scores,
)

REPO = Path(__file__).resolve().parents[1]
POKERBENCH_DIR = REPO.parent / "shared" / "datasets" / "pokerbench"

PREFLOP_HEADER = ",prev_line,hero_pos,hero_holding,correct_decision,num_players,num_bets,available_moves,pot_size"
POSTFLOP_HEADER = (
    ",preflop_action,board_flop,board_turn,board_river,aggressor_position,postflop_action,evaluation_at,"
    "available_moves,pot_size,hero_position,holding,correct_decision"
)

# Made-up spots in the files' formats (pots consistent with the actions).
PREFLOP_ROWS = [
    """0,HJ/2.0bb/BTN/call,BB,Th9h,call,3,1,"['10.0bb', 'call', 'fold']",5.5""",
    """1,,UTG,AsKs,2.0bb,1,0,"['2.0bb', 'fold']",1.5""",
    """2,BTN/2.5bb/SB/11.0bb,BTN,AcAd,allin,2,2,"['allin', '25.0bb', 'call', 'fold']",14.5""",
]
POSTFLOP_ROWS = [
    """0,BTN/2.5bb/BB/call,9c8d2s,Kh,3d,IP,"""
    """OOP_CHECK/IP_BET_4/OOP_CALL/dealcards/Kh/OOP_CHECK/IP_CHECK/dealcards/3d,River,"""
    """"['Check', 'Bet 6', 'Bet 12']",14,OOP,Tc9h,Bet 6""",
    """1,CO/2.3bb/BTN/call,AsKd4c,7h,2c,OOP,OOP_BET_2,Flop,"['Fold', 'Call', 'Raise 9']",8,IP,QsQd,Raise 9""",
    """2,SB/3.0bb/BB/10.0bb/SB/call,Jd7c2h,5s,Ah,OOP,OOP_CHECK/IP_BET_7/OOP_RAISE_25,Flop,"""
    """"['Fold', 'Call']",52,IP,JsTs,Fold""",
]


def _write(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


@pytest.fixture()
def preflop_spots(tmp_path):
    report = load_pokerbench(_write(tmp_path / "pre.csv", PREFLOP_HEADER, PREFLOP_ROWS))
    assert report.skipped == [] and report.kind == "preflop"
    return report.examples


@pytest.fixture()
def postflop_spots(tmp_path):
    report = load_pokerbench(_write(tmp_path / "post.csv", POSTFLOP_HEADER, POSTFLOP_ROWS))
    assert report.skipped == [] and report.kind == "postflop"
    return report.examples


# --------------------------------------------------------------------------- loading and prompts


def test_preflop_spot_fields_and_prompt(preflop_spots):
    spot = preflop_spots[0]
    assert (spot.kind, spot.street, spot.hero_position, spot.line) == ("preflop", "preflop", "BB", 2)
    assert spot.hero_cards == ("Th", "9h") and spot.board == () and spot.pot_size == 5.5
    assert spot.available_moves == ("raise 10", "call", "fold") and spot.label == "call"
    assert [(e.actor, e.action.text) for e in spot.history] == [("HJ", "raise 2"), ("BTN", "call")]
    assert spot.players_in_hand == ("HJ", "BTN", "BB")  # UTG, CO and SB let their turn pass
    text = render_prompt(spot)
    for fact in ("6-max No-Limit Hold'em", "You are BB", "10 of hearts and 9 of hearts",
                 "Preflop: HJ raises to 2bb, BTN calls.", "Still in: HJ, BTN and you.", "Pot: 5.5bb",
                 "Legal moves: raise 10, call, fold.", "exactly one legal move"):
        assert fact in text, (fact, text)

    first_to_act = render_prompt(preflop_spots[1])
    assert "Preflop: you act first." in first_to_act and "Still in" not in first_to_act
    assert "ace of spades and king of spades" in first_to_act
    assert answer_text(preflop_spots[1]) == "raise 2" and preflop_spots[1].raw_label == "2.0bb"

    all_in = preflop_spots[2]
    assert all_in.label == "all in" and all_in.label_action == Action("all-in")
    assert "you raise to 2.5bb, SB raises to 11bb" in render_prompt(all_in)
    assert "Legal moves: all in, raise 25, call, fold." in render_prompt(all_in)


def test_postflop_spot_fields_and_prompt(postflop_spots):
    river = postflop_spots[0]
    assert (river.street, river.hero_position, river.hero_in_position) == ("river", "BB", False)
    assert river.board == ("9c", "8d", "2s", "Kh", "3d")
    assert river.label == "bet 6" and river.available_moves == ("check", "bet 6", "bet 12")
    assert [e.street for e in river.history] == ["preflop"] * 2 + ["flop"] * 3 + ["turn"] * 2
    text = render_prompt(river)
    for fact in ("You are BB, out of position against BTN, with 10 of clubs and 9 of hearts.",
                 "Preflop: BTN raises to 2.5bb, you call.",
                 "Flop (9 of clubs, 8 of diamonds, 2 of spades): you check, BTN bets 4bb, you call.",
                 "Turn (king of hearts): you check, BTN checks.", "River (3 of diamonds).",
                 "Pot: 14bb. Legal moves: check, bet 6, bet 12."):
        assert fact in text, (fact, text)

    flop = postflop_spots[1]
    assert flop.board == ("As", "Kd", "4c") and flop.hero_position == "BTN" and flop.hero_in_position
    text = render_prompt(flop)
    assert "Flop (ace of spades, king of diamonds, 4 of clubs): CO bets 2bb." in text
    assert "7 of hearts" not in text and "Turn" not in text  # later cards stay hidden
    assert "Legal moves: fold, call, raise 9." in text

    three_bet_pot = render_prompt(postflop_spots[2])
    assert "Preflop: SB raises to 3bb, you raise to 10bb, SB calls." in three_bet_pot
    assert "SB checks, you bet 7bb, SB raises to 25bb." in three_bet_pot


def test_build_messages_and_answer(postflop_spots):
    spot = postflop_spots[1]
    messages = build_messages(spot)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"] == poker.SYSTEM_PROMPT and messages[1]["content"] == render_prompt(spot)
    assert [m["role"] for m in build_messages(spot, system_prompt="")] == ["user"]
    assert build_messages(spot, "Be brief.")[0]["content"] == "Be brief."
    assert answer_text(spot) == "raise 9"
    record = poker.to_prompt_completion(spot)
    assert record["completion"] == [{"role": "assistant", "content": "raise 9"}]


def test_bad_rows_are_reported_by_line(tmp_path):
    rows = [
        PREFLOP_ROWS[0],                                                      # line 2: fine
        "1,UTG/2.0bb,HJ,AhKh,call",                                           # 3: too few fields
        """2,UTG/2.0bb,HJ,AhKh,call,2,1,"['call', 'fold'",4.5""",             # 4: broken list
        """3,UTG/2.0bb,HJ,AhKh,limp,2,1,"['call', 'fold']",4.5""",            # 5: unknown label
        """4,UTG/2.0bb,HJ,AhXx,call,2,1,"['call', 'fold']",4.5""",            # 6: bad card
        "",                                                                   # 7: blank, not a row
        """5,UTG/2.0bb,HJ,AhKh,call,2,1,"['call',\n 'fold']",4.5""",          # 8-9: one record
        """6,UTG/2.0bb,HJ,AhKh,check,2,1,"['call', 'fold']",4.5""",           # 10: label not legal
        """7,UTG/2.0bb,HJ,AhKh,call,2,1,"['call', 'fold']",4.5,extra""",      # 11: extra field
        """8,UTG/2.0bb,HJ,AhAh,call,2,1,"['call', 'fold']",4.5""",            # 12: same card twice
        """9,UTG/2.0bb,HJ,AhKh,call,2,1,"['call', 'fold']",lots""",           # 13: pot not a number
        """10,HJ/2.0bb,UTG,AhKh,call,2,1,"['call', 'fold']",4.5""",           # 14: UTG already folded
        """11,UTG/2.0bb/HJ/bogus,CO,AhKh,call,2,1,"['call', 'fold']",4.5""",  # 15: unknown move
    ]
    report = load_pokerbench(_write(tmp_path / "bad.csv", PREFLOP_HEADER, rows))
    assert [spot.line for spot in report.examples] == [2, 8]
    assert report.examples[1].available_moves == ("call", "fold")
    reasons = dict(report.skipped)
    assert sorted(reasons) == [3, 4, 5, 6, 10, 11, 12, 13, 14, 15]
    assert "missing field" in reasons[3]
    assert "available_moves" in reasons[4]
    assert "correct_decision" in reasons[5] and "limp" in reasons[5]
    assert "bad card" in reasons[6]
    assert "not among available_moves" in reasons[10]
    assert "fields" in reasons[11]
    assert "twice" in reasons[12]
    assert "pot_size" in reasons[13]
    assert "UTG" in reasons[14]
    assert "bogus" in reasons[15]
    assert report.total_rows == 12
    assert load_pokerbench(tmp_path / "bad.csv", max_rows=3).total_rows == 3


def test_bad_postflop_rows(tmp_path):
    good = POSTFLOP_ROWS[0]
    rows = [
        good.replace("dealcards/3d", "dealcards/4d"),                  # 2: deals a card not on the board
        good.replace(",River,", ",Turn,"),                             # 3: history reaches the river
        POSTFLOP_ROWS[1].replace(",IP,QsQd", ",OOP,QsQd"),             # 4: CO bet; not CO's turn again
        POSTFLOP_ROWS[1].replace("OOP_BET_2", "OOP_DONK_2"),           # 5: unknown item
        POSTFLOP_ROWS[1].replace("QsQd", "AsQd"),                      # 6: As is on the flop
        POSTFLOP_ROWS[1].replace("'Raise 9'", "'Raise nine'"),          # 7: bad move in the list
        POSTFLOP_ROWS[1],                                              # 8: fine
    ]
    report = load_pokerbench(_write(tmp_path / "bad_post.csv", POSTFLOP_HEADER, rows))
    assert [spot.line for spot in report.examples] == [8]
    reasons = dict(report.skipped)
    assert sorted(reasons) == [2, 3, 4, 5, 6, 7]
    assert "board_river" in reasons[2]
    assert "evaluation_at" in reasons[3]
    assert "turn" in reasons[4]
    assert "OOP_DONK_2" in reasons[5]
    assert "twice" in reasons[6]
    assert "Raise nine" in reasons[7]


def test_unusable_files_raise_data_error(tmp_path):
    with pytest.raises(DataError, match="not_there.csv.*prev_line"):
        load_pokerbench(tmp_path / "not_there.csv")
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("mr,ref\na,b\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"wrong\.csv.*preflop_action"):
        load_pokerbench(wrong)
    empty = tmp_path / "empty.csv"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(DataError, match="empty"):
        load_pokerbench(empty)
    header_only = load_pokerbench(_write(tmp_path / "h.csv", POSTFLOP_HEADER, []))
    assert header_only.kind == "postflop" and header_only.total_rows == 0


@pytest.mark.skipif(not POKERBENCH_DIR.is_dir(), reason="PokerBench CSVs not present")
def test_real_files_load_completely():
    pre = load_pokerbench(POKERBENCH_DIR / "preflop.csv")
    post = load_pokerbench(POKERBENCH_DIR / "postflop.csv")
    assert (pre.kind, pre.total_rows, post.kind, post.total_rows) == ("preflop", 800, "postflop", 8000)
    # Every row is usable (175 postflop rows repeat a hole card in a not-yet-dealt board column;
    # only cards dealt by the decision are checked).
    assert pre.skipped == [] and post.skipped == []
    assert len(pre.examples) == 800 and len(post.examples) == 8000
    assert {s.street for s in post.examples} == {"flop", "turn", "river"}
    spots = pre.examples + post.examples
    assert all(s.label in s.available_moves for s in spots)
    assert compute_metrics([answer_text(s) for s in spots], spots)["exact_match"] == 1.0
    assert compute_metrics([poker.reference_label(s) for s in spots], spots)["reference_exact_match"] == 1.0
    train, validation = poker.validation_split(spots, fraction=0.1, seed=0)
    assert len(train) + len(validation) == len(spots) and len(validation) == 880


# --------------------------------------------------------------------------- actions


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("fold", Action("fold")),
        ("Fold.", Action("fold")),
        ("  CHECK  ", Action("check")),
        ("call!", Action("call")),
        ("I would call here", Action("call")),
        ("Your optimal action is: call", Action("call")),
        ("He calls", Action("call")),
        ("allin", Action("all-in")),
        ("All in", Action("all-in")),
        ("all-in", Action("all-in")),
        ("ALL_IN", Action("all-in")),
        ("shove", Action("all-in")),
        ("Raise 29", Action("raise", 29.0)),
        ("raise 29.", Action("raise", 29.0)),
        ("raise to 2.5bb", Action("raise", 2.5)),
        ("Raises to 13 chips", Action("raise", 13.0)),
        ("bet 10bb", Action("bet", 10.0)),
        ("Bet 10 big blinds", Action("bet", 10.0)),
        ("bet $7", Action("bet", 7.0)),
        ("3.0bb", Action("raise", 3.0)),
        ("raise", Action("raise", None)),
        ("raise 2.5x", Action("raise", None)),  # a multiple, not a size
        ("check or fold", Action("check")),  # the first action named wins
        ("call\nbut maybe raise 20", Action("call")),  # first line only
        ("\n\n  raise 9\n", Action("raise", 9.0)),
        ("", None),
        ("   ", None),
        ("I don't know", None),
        ("42", None),
        ("better callback checkmate", None),
        ("folder", None),
        ("fine\nfold", None),  # first non-blank line has no action
    ],
)
def test_parse_action(text, expected):
    assert parse_action(text) == expected


def test_action_text_and_validation():
    assert [Action(k).text for k in ("fold", "check", "call", "all-in")] == ["fold", "check", "call", "all in"]
    assert Action("raise", 3.0).text == "raise 3" and Action("bet", 2.3).text == "bet 2.3"
    assert Action("raise", 3.0).same_move(Action("raise", 3))
    assert not Action("raise", 3).same_move(Action("bet", 3))
    for bad in (("shove", None), ("call", 3.0), ("bet", -1.0), ("bet", math.nan)):
        with pytest.raises(ValueError):
            Action(*bad)
    assert poker.is_well_formed("Raise 29.") and poker.is_well_formed("all in")
    assert not poker.is_well_formed("I raise 29") and not poker.is_well_formed("call\nbecause")


# --------------------------------------------------------------------------- metrics


def test_row_scores_follow_the_pokerbench_rules(preflop_spots, postflop_spots):
    raise_spot = postflop_spots[1]  # label raise 9; legal fold, call, raise 9

    def scores(text: str) -> tuple:
        row = row_scores(text, raise_spot)
        return row["score"], row["exact_match"], row["action_accuracy"], row["valid"], row["legal"], row["predicted"]

    assert scores("Raise 9") == (1.0, 1, 1, True, True, "raise 9")
    assert scores("raise to 12") == (0.5, 0, 1, True, False, "raise 12")  # right action, wrong size
    assert scores("raise") == (0.5, 0, 1, True, False, "raise")
    assert scores("call") == (0.0, 0, 0, True, True, "call")
    assert scores("hmm") == (0.0, 0, 0, False, False, None)

    bet_spot = postflop_spots[0]  # label bet 6
    assert row_scores("bet 6", bet_spot)["score"] == 1.0
    assert row_scores("bet 12", bet_spot)["score"] == 0.5
    assert row_scores("raise 6", bet_spot)["score"] == 0.0  # bet and raise are different actions
    assert row_scores("check", bet_spot)["score"] == 0.0

    assert row_scores("fold", postflop_spots[2])["score"] == 1.0
    assert row_scores("Call.", preflop_spots[0])["score"] == 1.0
    assert row_scores("raise 10", preflop_spots[0])["score"] == 0.0
    assert row_scores("raise 2.0", preflop_spots[1])["score"] == 1.0  # "2.0bb" label, size 2
    assert row_scores("ALL-IN", preflop_spots[2])["score"] == 1.0
    assert row_scores("raise 25", preflop_spots[2])["score"] == 0.0  # all-in is its own action


def test_compute_metrics_by_file_and_pooled(preflop_spots, postflop_spots):
    spots = preflop_spots + postflop_spots
    predictions = [
        "call",        # preflop label call: 1
        "raise 3",     # preflop label raise 2: 0.5, illegal (3 not offered)
        "banana",      # preflop label all in: 0, invalid
        "bet 12",      # postflop label bet 6: 0.5
        "Raise 9",     # postflop label raise 9: 1
        "check",       # postflop label fold: 0, illegal (facing a raise)
    ]
    m = compute_metrics(predictions, spots)
    assert m["preflop_n"] == 3 and m["postflop_n"] == 3 and m["n"] == 6
    assert m["preflop_action_accuracy"] == pytest.approx(2 / 3) and m["preflop_exact_match"] == pytest.approx(1 / 3)
    assert m["postflop_action_accuracy"] == pytest.approx(2 / 3) and m["postflop_exact_match"] == pytest.approx(1 / 3)
    assert m["action_accuracy"] == pytest.approx(4 / 6) and m["exact_match"] == pytest.approx(2 / 6)
    assert m["score"] == pytest.approx(3 / 6)
    assert m["preflop_illegal_action_rate"] == pytest.approx(2 / 3)
    assert m["postflop_illegal_action_rate"] == pytest.approx(1 / 3)
    assert m["illegal_action_rate"] == pytest.approx(3 / 6)
    assert m["invalid_rate"] == pytest.approx(1 / 6) and m["postflop_invalid_rate"] == 0.0
    with pytest.raises(ValueError):
        compute_metrics(["call"], spots)
    only_pre = compute_metrics(["call"], preflop_spots[:1])
    assert only_pre["postflop_n"] == 0 and math.isnan(only_pre["postflop_action_accuracy"]) and only_pre["action_accuracy"] == 1.0


def test_reference_scorer_keeps_the_authors_substring_quirks():
    score = poker.reference_match_score
    assert score("call", "call") == 1.0
    assert score("call or fold", "fold") == 1.0  # any mention counts
    assert score("raise 25", "raise 2") == 1.0  # label is a substring of the answer
    assert score("raise 3", "raise 3.0") == 1.0  # first numbers equal
    assert score("raise 4", "raise 3.0") == 0.5
    assert score("raise", "Raise 29") == 0.5
    assert score("all-in", "all in") == 0.0  # why the canonical all-in text is "all in"
    assert score("bet 10", "Raise 10") == 0.0


def test_action_confusion_and_plot(tmp_path, preflop_spots, postflop_spots):
    spots = preflop_spots + postflop_spots
    labels, matrix = poker.action_confusion(["call", "raise 3", "banana", "bet 12", "Raise 9", "check"], spots)
    assert labels == ["fold", "check", "call", "bet", "raise", "all-in", "invalid"]
    assert matrix.shape == (7, 7) and matrix.sum() == 6
    index = labels.index
    assert matrix[index("call"), index("call")] == 1
    assert matrix[index("all-in"), index("invalid")] == 1
    assert matrix[index("fold"), index("check")] == 1
    png = plot_confusion_matrix(matrix, labels, tmp_path / "plots" / "confusion.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- pairs, rewards, splits


def test_preference_pairs(postflop_spots, preflop_spots):
    spot = postflop_spots[1]  # legal fold, call, raise 9; label raise 9
    pairs = preference_pairs(spot)
    assert len(pairs) == len(spot.available_moves) - 1 == 2
    for pair in pairs:
        assert pair["prompt"] == build_messages(spot)
        assert pair["chosen"] == [{"role": "assistant", "content": "raise 9"}]
    assert [p["rejected"][0]["content"] for p in pairs] == ["fold", "call"]
    assert all(p["rejected"][0]["role"] == "assistant" for p in pairs)
    assert len(preference_pairs(preflop_spots[2])) == 3


def test_legal_action_reward():
    moves = ["fold", "call", "raise 29"]
    completions = [
        [{"role": "assistant", "content": "raise 29"}],
        [{"role": "assistant", "content": "Call."}],
        [{"role": "assistant", "content": "raise 30"}],       # illegal size
        [{"role": "assistant", "content": "check"}],          # not offered
        [{"role": "assistant", "content": "I call"}],         # extra words
        [{"role": "assistant", "content": "fold\nbecause"}],  # extra line
        [{"role": "assistant", "content": ""}],
        "raise to 29",
        "xyz",
    ]
    rewards = legal_action_reward(completions, available_moves=[moves] * len(completions), label=["x"] * 9)
    assert rewards == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert legal_action_reward(["all in"], [["allin", "fold"]]) == [1.0]
    with pytest.raises(ValueError):
        legal_action_reward(["call"], [])


def test_validation_split_is_deterministic_and_stratified(preflop_spots, postflop_spots):
    spots = (preflop_spots + postflop_spots) * 10  # strata: preflop 30, flop 20, river 10
    train, validation = poker.validation_split(spots, fraction=0.1, seed=3)
    assert len(train) + len(validation) == len(spots)
    assert [s.street for s in validation].count("preflop") == 3
    assert [s.street for s in validation].count("flop") == 2
    assert [s.street for s in validation].count("river") == 1
    again = poker.validation_split(spots, fraction=0.1, seed=3)
    assert again == (train, validation)
    with pytest.raises(ValueError):
        poker.validation_split(spots, fraction=1.0)


def test_module_doctests():
    from gamesense.tasks.poker import actions, metrics, pokerbench, prompts, rewards

    results = [doctest.testmod(module, optionflags=doctest.ELLIPSIS) for module in (actions, metrics, pokerbench,
                                                                                     prompts, rewards)]  # fmt: skip
    assert sum(r.attempted for r in results) >= 8 and sum(r.failed for r in results) == 0
