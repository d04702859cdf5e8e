"""PokerBench's data: a decision point (:class:`PokerSpot`) read from the evaluation CSVs (``preflop.csv``,
``postflop.csv``, or a folder with both), every unusable row set aside with its line and reason, and the
stratified validation slice held back from them.

Dataset: Zhuang et al., "PokerBench: Training Large Language Models to become Professional Poker Players",
AAAI 2025, arXiv 2501.08328 (see :mod:`gamesense.tasks.poker` for where the files come from).
"""

from __future__ import annotations

import ast
import csv
import math
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gamesense.tasks.base import DataError, LoadReport, Record
from gamesense.tasks.poker.actions import Action, parse_data_move

POSITIONS: tuple[str, ...] = ("UTG", "HJ", "CO", "BTN", "SB", "BB")  # preflop acting order
# Postflop acting order: the blinds act first, the button last (the later seat is "in position").
POSTFLOP_ORDER: tuple[str, ...] = ("SB", "BB", "UTG", "HJ", "CO", "BTN")
STREETS: tuple[str, ...] = ("preflop", "flop", "turn", "river")
FILE_KINDS: tuple[str, ...] = ("preflop", "postflop")

PREFLOP_COLUMNS: tuple[str, ...] = (
    "prev_line",
    "hero_pos",
    "hero_holding",
    "correct_decision",
    "num_players",
    "num_bets",
    "available_moves",
    "pot_size",
)
POSTFLOP_COLUMNS: tuple[str, ...] = (
    "preflop_action",
    "board_flop",
    "board_turn",
    "board_river",
    "aggressor_position",
    "postflop_action",
    "evaluation_at",
    "available_moves",
    "pot_size",
    "hero_position",
    "holding",
    "correct_decision",
)
# Fields that may legitimately be empty: no action yet before the hero.
_MAY_BE_EMPTY = frozenset({"prev_line", "postflop_action"})

RANKS = "23456789TJQKA"
SUITS = "cdhs"


class _RowError(ValueError):
    """One row cannot be used; the message is the reason stored in ``LoadReport.skipped``."""



@dataclass(frozen=True)
class ActionEvent:
    """One action taken before the hero's decision.

    Attributes:
        street: ``preflop`` / ``flop`` / ``turn`` / ``river``.
        actor: the seat that acted (one of :data:`POSITIONS`).
        action: what it did; sizes in big blinds, "to" totals.
    """

    street: str
    actor: str
    action: Action


class _LabelledSpot:
    """Label and legal moves as :class:`Action` objects, for :class:`PokerSpot` and :class:`SpotLabel`."""

    label: str
    available_moves: tuple[str, ...]

    @property
    def label_action(self) -> Action:
        """The label as an :class:`Action`."""
        return parse_data_move(self.label)

    @property
    def legal_actions(self) -> tuple[Action, ...]:
        """``available_moves`` as :class:`Action` objects."""
        return tuple(parse_data_move(move) for move in self.available_moves)


@dataclass(frozen=True)
class SpotLabel(_LabelledSpot):
    """What scoring needs of a spot (file kind, label, legal moves), as kept in training/evaluation records.

    Attributes: as the same-named ones of :class:`PokerSpot`.
    """

    kind: str
    label: str
    available_moves: tuple[str, ...]
    raw_label: str = ""

    @classmethod
    def from_record(cls, record: Record) -> SpotLabel:
        """From a record's ``kind``, ``label``, ``available_moves`` and ``raw_label`` columns."""
        return cls(record["kind"], record["label"], tuple(record["available_moves"]), record.get("raw_label", ""))


@dataclass(frozen=True)
class PokerSpot(_LabelledSpot):
    """One decision point (a usable CSV row).

    Attributes:
        kind: the file it came from, ``"preflop"`` or ``"postflop"``.
        street: where the hero decides, ``preflop`` / ``flop`` / ``turn`` / ``river``.
        hero_position: the hero's seat, one of :data:`POSITIONS` (postflop rows give ``IP``/``OOP``;
            the seat is recovered from the preflop action, as the authors do).
        hero_cards: two cards, e.g. ``("Ah", "Qd")`` (rank ``23456789TJQKA``, suit ``cdhs``).
        board: the community cards visible at the decision, 0, 3, 4 or 5 of them, in dealing order
            (the postflop file also gives later cards; they are left out).
        pot_size: pot in big blinds (= chips) at the decision, as the file gives it (it includes bets
            made on the current street).
        history: every action before the decision, street by street, as :class:`ActionEvent`.
        available_moves: the legal moves in canonical text (see :class:`Action`), file order.
        label: the solver's move in canonical text; always one of ``available_moves``.
        line: 1-based line in the CSV where the record starts (header = line 1).
        raw_label: ``correct_decision`` exactly as in the CSV (for :func:`reference_label`).
        source_index: the CSV's unnamed first (index) column.
        players_in_hand: seats still in the hand at the decision, hero included, in :data:`POSITIONS`
            order (players who let their turn pass without a recorded action folded).
        hero_in_position: postflop, whether the hero acts last on each street; ``None`` preflop.
    """

    kind: str
    street: str
    hero_position: str
    hero_cards: tuple[str, str]
    board: tuple[str, ...]
    pot_size: float
    history: tuple[ActionEvent, ...]
    available_moves: tuple[str, ...]
    label: str
    line: int
    raw_label: str = ""
    source_index: str = ""
    players_in_hand: tuple[str, ...] = ()
    hero_in_position: bool | None = None

    def columns(self) -> Record:
        """The spot's record columns: ``kind``, ``street``, ``label``, ``raw_label``, ``available_moves``
        (a list) and ``line`` (JSON-able; :meth:`SpotLabel.from_record` reads them back for scoring)."""
        return {"kind": self.kind, "street": self.street, "label": self.label, "raw_label": self.raw_label,
                "available_moves": list(self.available_moves), "line": self.line}  # fmt: skip


@dataclass
class PokerBenchReport(LoadReport):
    """Result of :func:`load_pokerbench`: usable spots (:class:`PokerSpot`, file order) plus the rows left out
    and why (``(line, reason)``, line 1-based, header = line 1; blank lines are not rows).

    Attributes:
        kind: ``"preflop"`` or ``"postflop"``, detected from the header; ``"both"`` for a folder.
    """

    kind: str = ""


def _expected_columns_text() -> str:
    return (
        f"expected the preflop columns {list(PREFLOP_COLUMNS)} "
        f"or the postflop columns {list(POSTFLOP_COLUMNS)}"
    )


def _detect_kind(path: Path, header: Sequence[str]) -> str:
    names = {name.strip() for name in header}
    if set(POSTFLOP_COLUMNS) <= names:
        return "postflop"
    if set(PREFLOP_COLUMNS) <= names:
        return "preflop"
    raise DataError(f"pokerbench data {path}: {_expected_columns_text()}, found {list(header)}")


def _iter_records(reader: Any, names: Sequence[str]) -> Iterator[tuple[int, dict[str, str | None] | str]]:
    """Yield ``(line, fields)`` per record, or ``(line, reason)`` for one the csv module cannot split.

    ``reader`` is a ``csv.reader`` past the header; ``line`` is the record's first physical line, so
    a quoted field spanning lines (why the csv module, not pandas) does not shift later numbers.
    """
    next_line = reader.line_num + 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # e.g. a field over csv.field_size_limit(); the reader goes on
            line, next_line = next_line, reader.line_num + 1
            yield line, f"unreadable CSV record ({exc})"
            continue
        line, next_line = next_line, reader.line_num + 1
        if not row or all(not cell.strip() for cell in row):
            continue  # blank line, as pandas would skip it
        if len(row) > len(names):
            yield line, f"expected {len(names)} fields, found {len(row)}"
            continue
        yield line, {name: row[i] if i < len(row) else None for i, name in enumerate(names)}


def _required(fields: dict[str, str | None], name: str) -> str:
    value = fields.get(name)
    if value is None:
        raise _RowError(f"missing field {name!r}")
    value = value.strip()
    if not value and name not in _MAY_BE_EMPTY:
        raise _RowError(f"empty field {name!r}")
    return value


def _parse_cards(text: str, field_name: str, count: int | None = None) -> tuple[str, ...]:
    compact = re.sub(r"[\s,]", "", text)
    if len(compact) % 2 or not compact:
        raise _RowError(f"{field_name}: cannot read cards from {text!r}")
    cards = []
    for i in range(0, len(compact), 2):
        rank, suit = compact[i].upper(), compact[i + 1].lower()
        if rank not in RANKS or suit not in SUITS:
            raise _RowError(f"{field_name}: bad card {compact[i:i + 2]!r} in {text!r}")
        cards.append(rank + suit)
    if count is not None and len(cards) != count:
        raise _RowError(f"{field_name}: expected {count} cards, found {len(cards)} in {text!r}")
    return tuple(cards)


def _parse_pot(text: str) -> float:
    try:
        pot = float(text)
    except ValueError:
        raise _RowError(f"pot_size: not a number: {text!r}") from None
    if not (math.isfinite(pot) and pot > 0):
        raise _RowError(f"pot_size: expected a positive number, found {text!r}")
    return pot


def _parse_moves(text: str) -> tuple[tuple[str, ...], tuple[Action, ...]]:
    try:
        raw = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise _RowError(f"available_moves: not a list literal: {text!r}") from None
    if not isinstance(raw, (list, tuple)) or not raw or not all(isinstance(m, str) for m in raw):
        raise _RowError(f"available_moves: expected a non-empty list of strings, found {text!r}")
    actions: list[Action] = []
    for move in raw:
        try:
            action = parse_data_move(move)
        except ValueError:
            raise _RowError(f"available_moves: unrecognised move {move!r}") from None
        if not any(action.same_move(seen) for seen in actions):  # drop repeats, keep file order
            actions.append(action)
    return tuple(a.text for a in actions), tuple(actions)


def _parse_label(text: str, legal: Sequence[Action]) -> Action:
    try:
        label = parse_data_move(text)
    except ValueError:
        raise _RowError(f"correct_decision: unrecognised action {text!r}") from None
    if not any(label.same_move(move) for move in legal):
        raise _RowError(f"correct_decision {text!r} is not among available_moves")
    return label


def _parse_preflop_line(text: str) -> list[ActionEvent]:
    """``UTG/2.0bb/BTN/call/SB/13.0bb/BB/allin`` -> events; ``""`` -> no events."""
    if not text:
        return []
    tokens = text.split("/")
    if len(tokens) % 2:
        raise _RowError(f"preflop action: odd number of '/'-separated items in {text!r}")
    events = []
    for actor, move in zip(tokens[::2], tokens[1::2]):
        if actor not in POSITIONS:
            raise _RowError(f"preflop action: unknown position {actor!r} in {text!r}")
        try:
            action = parse_data_move(move)
        except ValueError:
            raise _RowError(f"preflop action: unrecognised move {move!r} in {text!r}") from None
        events.append(ActionEvent("preflop", actor, action))
    return events


def _preflop_players_in_hand(events: Sequence[ActionEvent], hero: str) -> tuple[str, ...]:
    """Seats still in when the hero acts preflop; checks that everyone acts in turn.

    A seat whose turn comes and goes with no recorded action folded; all-in seats stay in but no
    longer act.
    """
    in_hand, all_in = set(POSITIONS), set()
    turn = 0  # index into POSITIONS (cyclic) of the next seat to act

    def advance_to(seat: str) -> None:
        nonlocal turn
        if seat not in in_hand or seat in all_in:
            raise _RowError(f"preflop action: {seat} acts after folding or going all in")
        while POSITIONS[turn % len(POSITIONS)] != seat:
            skipped = POSITIONS[turn % len(POSITIONS)]
            if skipped not in all_in:
                in_hand.discard(skipped)
            turn += 1

    for event in events:
        advance_to(event.actor)
        if event.action.kind == "fold":
            in_hand.discard(event.actor)
        elif event.action.kind == "all-in":
            all_in.add(event.actor)
        turn += 1
    advance_to(hero)
    return tuple(seat for seat in POSITIONS if seat in in_hand)


_POSTFLOP_TOKEN = re.compile(
    r"(?P<side>OOP|IP)_(?P<move>CHECK|CALL|FOLD|BET|RAISE|ALLIN)(?:_(?P<size>\d+(?:\.\d+)?))?"
)


def _parse_postflop_line(
    text: str, seats: dict[str, str], turn_card: str, river_card: str
) -> list[list[tuple[str, Action]]]:
    """``OOP_CHECK/IP_BET_10/OOP_CALL/dealcards/Jc/...`` -> per street ``[(side, action)]``.

    ``dealcards`` is followed by the card dealt, which must match the board columns.
    """
    streets: list[list[tuple[str, Action]]] = [[]]
    tokens = text.split("/") if text else []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token == "dealcards":
            expected = (turn_card, river_card)
            if len(streets) > len(expected) or i + 1 >= len(tokens):
                raise _RowError(f"postflop_action: unexpected 'dealcards' in {text!r}")
            dealt = _parse_cards(tokens[i + 1], "postflop_action", 1)[0]
            if dealt != expected[len(streets) - 1]:
                column = ("board_turn", "board_river")[len(streets) - 1]
                raise _RowError(f"postflop_action deals {dealt} but {column} is {expected[len(streets) - 1]}")
            streets.append([])
            i += 2
            continue
        match = _POSTFLOP_TOKEN.fullmatch(token)
        if match is None:
            raise _RowError(f"postflop_action: unrecognised item {token!r}")
        move = match["move"].lower()
        sized = move in ("bet", "raise")
        if sized != (match["size"] is not None):
            raise _RowError(f"postflop_action: size missing or unexpected in {token!r}")
        if sized:
            action = Action(move, float(match["size"]))
        else:
            action = Action("all-in" if move == "allin" else move)
        streets[-1].append((seats[match["side"]], action))
        i += 1
    return streets


def _parse_preflop_row(fields: dict[str, str | None], line: int) -> PokerSpot:
    hero = _required(fields, "hero_pos").upper()
    if hero not in POSITIONS:
        raise _RowError(f"hero_pos: unknown position {hero!r}")
    cards = _parse_cards(_required(fields, "hero_holding"), "hero_holding", 2)
    if cards[0] == cards[1]:
        raise _RowError(f"hero_holding: the same card twice in {fields['hero_holding']!r}")
    events = _parse_preflop_line(_required(fields, "prev_line"))
    in_hand = _preflop_players_in_hand(events, hero)
    moves, legal = _parse_moves(_required(fields, "available_moves"))
    raw_label = _required(fields, "correct_decision")
    label = _parse_label(raw_label, legal)
    return PokerSpot(
        kind="preflop",
        street="preflop",
        hero_position=hero,
        hero_cards=(cards[0], cards[1]),
        board=(),
        pot_size=_parse_pot(_required(fields, "pot_size")),
        history=tuple(events),
        available_moves=moves,
        label=label.text,
        line=line,
        raw_label=raw_label,
        source_index=(fields.get("") or fields.get("index") or "").strip(),
        players_in_hand=in_hand,
    )


def _parse_postflop_row(fields: dict[str, str | None], line: int) -> PokerSpot:
    preflop_events = _parse_preflop_line(_required(fields, "preflop_action"))
    players = list(dict.fromkeys(event.actor for event in preflop_events))
    if len(players) != 2 or any(e.action.kind in ("fold", "all-in") for e in preflop_events):
        found = fields["preflop_action"]
        raise _RowError(f"preflop_action: expected two players reaching the flop, found {found!r}")
    oop, ip = sorted(players, key=POSTFLOP_ORDER.index)
    seats = {"OOP": oop, "IP": ip}
    side = _required(fields, "hero_position").upper()
    if side not in seats:
        raise _RowError(f"hero_position: expected IP or OOP, found {fields['hero_position']!r}")
    street = _required(fields, "evaluation_at").lower()
    if street not in STREETS[1:]:
        raise _RowError(f"evaluation_at: expected Flop, Turn or River, found {fields['evaluation_at']!r}")
    flop = _parse_cards(_required(fields, "board_flop"), "board_flop", 3)
    turn_card = _parse_cards(_required(fields, "board_turn"), "board_turn", 1)[0]
    river_card = _parse_cards(_required(fields, "board_river"), "board_river", 1)[0]
    hole = _parse_cards(_required(fields, "holding"), "holding", 2)
    street_index = STREETS.index(street)  # flop 1, turn 2, river 3
    board = flop + (turn_card, river_card)[: street_index - 1]
    # Only the cards dealt by the decision must be distinct: in 175 rows of the released file a
    # not-yet-dealt turn/river card repeats a hole card, which cannot affect the spot.
    if len(set(hole + board)) != len(hole + board):
        raise _RowError(f"cards: a card appears twice among holding {hole} and board {board}")
    per_street = _parse_postflop_line(_required(fields, "postflop_action"), seats, turn_card, river_card)
    if len(per_street) != street_index:
        reached = STREETS[len(per_street)]
        raise _RowError(f"postflop_action reaches the {reached} but evaluation_at is {street}")
    # The hero must be the one to act: first on a fresh street out of position, else after the villain.
    current = per_street[-1]
    hero_seat = seats[side]
    expected_actor = seats["OOP"] if not current else (ip if current[-1][0] == oop else oop)
    if hero_seat != expected_actor:
        history_text = fields["postflop_action"]
        raise _RowError(f"postflop_action: it is not {side}'s turn to act after {history_text!r}")
    history = list(preflop_events)
    for offset, street_events in enumerate(per_street):
        history.extend(ActionEvent(STREETS[1 + offset], actor, action) for actor, action in street_events)
    moves, legal = _parse_moves(_required(fields, "available_moves"))
    raw_label = _required(fields, "correct_decision")
    label = _parse_label(raw_label, legal)
    return PokerSpot(
        kind="postflop",
        street=street,
        hero_position=hero_seat,
        hero_cards=(hole[0], hole[1]),
        board=board,
        pot_size=_parse_pot(_required(fields, "pot_size")),
        history=tuple(history),
        available_moves=moves,
        label=label.text,
        line=line,
        raw_label=raw_label,
        source_index=(fields.get("") or fields.get("index") or "").strip(),
        players_in_hand=tuple(seat for seat in POSITIONS if seat in seats.values()),
        hero_in_position=side == "IP",
    )


def load_pokerbench(path: str | Path, max_rows: int | None = None) -> PokerBenchReport:
    """Read a PokerBench evaluation CSV (``preflop.csv`` or ``postflop.csv``), or a folder holding one or
    both, into :class:`PokerSpot`.

    A folder reads ``preflop.csv`` then ``postflop.csv`` (``max_rows`` per file); each set-aside row's
    reason starts with its file name, since line numbers are per file.

    The kind is detected from the header (columns: :data:`PREFLOP_COLUMNS` or :data:`POSTFLOP_COLUMNS`,
    plus the unnamed index column). A row that cannot be used (missing or empty field, unreadable
    ``available_moves``, unrecognised label or label outside the legal moves, an unreadable card or
    one repeated among the hole cards and the board dealt so far, an action history that does not
    lead to the hero's turn or disagrees with the board columns) goes to ``report.skipped`` as
    ``(line, reason)``; the load carries on.

    Args:
        path: the CSV file. Dataset: Zhuang et al., PokerBench, AAAI 2025 (arXiv 2501.08328).
        max_rows: stop after this many data rows (usable or not); ``None`` reads all.

    Returns:
        A :class:`PokerBenchReport` (``examples``, ``skipped``, ``total_rows``, ``kind``).

    Raises:
        DataError: the file is missing, unreadable or empty, or its header has neither column set
            (the message names the file and the expected columns).
    """
    path = Path(path)
    if path.is_dir():
        return _load_folder(path, max_rows)
    if not path.is_file():
        raise DataError(f"pokerbench data {path}: file not found; {_expected_columns_text()}")
    report = PokerBenchReport(path=str(path))
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise DataError(f"pokerbench data {path}: empty file; {_expected_columns_text()}")
            report.kind = _detect_kind(path, header)
            parse_row = _parse_preflop_row if report.kind == "preflop" else _parse_postflop_row
            for line, fields in _iter_records(reader, [name.strip() for name in header]):
                if max_rows is not None and report.total_rows >= max_rows:
                    break
                if isinstance(fields, str):
                    report.skipped.append((line, fields))
                    continue
                try:
                    report.examples.append(parse_row(fields, line))
                except (ValueError, KeyError, IndexError, TypeError) as exc:
                    # _RowError carries a ready reason; anything else is still one bad row.
                    reason = str(exc) if isinstance(exc, _RowError) else f"{type(exc).__name__}: {exc}"
                    report.skipped.append((line, reason))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"pokerbench data {path}: cannot read ({exc})") from exc
    return report


def _load_folder(folder: Path, max_rows: int | None) -> PokerBenchReport:
    files = [folder / f"{kind}.csv" for kind in FILE_KINDS if (folder / f"{kind}.csv").is_file()]
    if not files:
        raise DataError(f"pokerbench data {folder}: a folder without preflop.csv or postflop.csv")
    report = PokerBenchReport(path=str(folder), kind="both" if len(files) == 2 else files[0].stem)
    for file in files:
        part = load_pokerbench(file, max_rows)
        report.examples.extend(part.examples)
        report.skipped.extend((line, f"{file.name}: {reason}") for line, reason in part.skipped)
    return report


def validation_split(
    spots: Sequence[PokerSpot], fraction: float = 0.1, seed: int = 0
) -> tuple[list[PokerSpot], list[PokerSpot]]:
    """Deterministic hold-out slice for model selection, stratified by (file kind, street).

    In each stratum, ``round(fraction * size)`` spots (at least one when the stratum has two or more)
    are drawn with ``random.Random(seed)``, strata visited in sorted order, so the split depends only
    on the spots' order, ``fraction`` and ``seed``.

    Args:
        spots: the spots to split (e.g. ``report.examples`` of both files).
        fraction: share held out, strictly between 0 and 1.
        seed: random seed.

    Returns:
        ``(train, validation)``, each in the input order; together they hold every spot once.

    Raises:
        ValueError: ``fraction`` not in (0, 1).
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    strata: dict[tuple[str, str], list[int]] = {}
    for i, spot in enumerate(spots):
        strata.setdefault((spot.kind, spot.street), []).append(i)
    rng = random.Random(seed)
    held_out: set[int] = set()
    for key in sorted(strata):
        members = strata[key]
        count = round(fraction * len(members))
        if count == 0 and len(members) >= 2:
            count = 1  # every street is represented in the validation slice
        held_out.update(rng.sample(members, count))
    train = [spot for i, spot in enumerate(spots) if i not in held_out]
    validation = [spot for i, spot in enumerate(spots) if i in held_out]
    return train, validation
