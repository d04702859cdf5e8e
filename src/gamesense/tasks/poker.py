"""PokerBench task: read a 6-max No-Limit Hold'em spot, answer the solver's action. The loader, prompts,
metric, preference pairs and rule reward below are pure functions; :class:`PokerTask` (``TASK``) plugs them
into the generic layers (recipes ``poker.yaml``: sft -> reward -> grpo, ``poker-dpo.yaml``: sft -> dpo).

PokerBench: Zhuang et al., "PokerBench: Training Large Language Models to become Professional Poker
Players", AAAI 2025, arXiv 2501.08328. The evaluation CSVs (``preflop.csv``: 1,000 spots upstream,
``postflop.csv``: 10,000) come from the authors' release (Hugging Face ``RZ412/PokerBench``, mirrored in
github.com/shihaoticking/poker-action-transformer ``dataset/raw/``). The authors' code lives in
github.com/richardzhuang0412/PokerBench (the announced github.com/pokerllm/pokerbench only holds a
README); this module follows it, re-written:

* prompts: ``SFT/poker_csv_to_json.py`` turns a row into an instruction ("You are a specialist in playing
  6-handed No Limit Texas Holdem ...") ending with "Your optimal action is:"; the answer is one action,
  phrased ``raise 3.0`` for the preflop ``3.0bb``, ``all in`` for ``allin``, ``call`` / ``fold`` /
  ``check``, and postflop as in the file (``Bet 10``, ``Raise 29``). Amounts are chips with
  big blind = 1 chip and 100-chip stacks, i.e. big blinds.
* metric: ``untrained_eval/report_eval_result.py`` (``check_match`` + ``summarize_result``) scores each
  answer 1 (action, and for bet/raise the size, match), 0.5 (bet/raise with another size) or 0;
  exact match = floor(score) and action accuracy = ceil(score) (also in ``main/analyze_eval_result.py``),
  averaged per file (preflop / postflop) and pooled over both ("Total": a micro average).

Differences from the authors, on purpose:

* The prompt is shorter (it feeds a 135M-parameter model on a CPU), lists the legal moves (the authors
  compute but do not show them), shows every street up to the decision (their script shows the turn
  only when ``evaluation_at`` is ``Turn``, so a river spot loses its turn and river) and spells the
  real hole cards (their preflop script draws random suits).
* :func:`compute_metrics` scores the *first action named* in the answer (:func:`parse_action`),
  whereas the authors test substrings of the whole answer, so ``"call or fold"`` scores 1 for both a
  call and a fold label there, and label ``raise 2`` "matches" answer ``raise 25``. The authors'
  scorer is kept, re-implemented, as :func:`reference_match_score` and reported as ``reference_aa`` /
  ``reference_em`` so numbers stay comparable with the paper.

Canonical action text (model target, legal-move list, comparisons): ``fold``, ``check``, ``call``,
``all in`` (the authors' phrase; :attr:`Action.kind` is ``"all-in"``), ``bet <size>``,
``raise <size>``, the size a number of big blinds (= chips) as the data gives it, written in its
shortest form (``3.0bb`` -> ``raise 3``, ``2.3bb`` -> ``raise 2.3``, ``Bet 10`` -> ``bet 10``).
Preflop sizes and postflop raises are "raise to" totals for the street (checked against the pot
sizes in the data: SB 3, BB 10, SB calls, then bets 10 / 44 and a raise to 80 give the stated pot
of 164).
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
from typing import TYPE_CHECKING, Any

from pydantic import Field

from gamesense.tasks.base import DataError, Messages, Record, RewardFunction, Task, TaskOptions
from gamesense.tasks.base import LoadReport as TaskLoadReport

if TYPE_CHECKING:
    from numpy.typing import ArrayLike, NDArray

TASK_NAME = "poker"

POSITIONS: tuple[str, ...] = ("UTG", "HJ", "CO", "BTN", "SB", "BB")  # preflop acting order
# Postflop acting order: the blinds act first, the button last (the later seat is "in position").
POSTFLOP_ORDER: tuple[str, ...] = ("SB", "BB", "UTG", "HJ", "CO", "BTN")
STREETS: tuple[str, ...] = ("preflop", "flop", "turn", "river")
FILE_KINDS: tuple[str, ...] = ("preflop", "postflop")
ACTION_KINDS: tuple[str, ...] = ("fold", "check", "call", "bet", "raise", "all-in")
SIZED_KINDS: frozenset[str] = frozenset({"bet", "raise"})
CONFUSION_LABELS: tuple[str, ...] = ACTION_KINDS + ("invalid",)

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
_RANK_WORDS = {"T": "10", "J": "jack", "Q": "queen", "K": "king", "A": "ace"}
_SUIT_WORDS = {"c": "clubs", "d": "diamonds", "h": "hearts", "s": "spades"}

# Short on purpose: it is repeated in every training example.
SYSTEM_PROMPT = "You are an expert poker player. Answer with one legal move only."

_SIZE_TOLERANCE = 1e-6  # sizes come from decimal text with at most one decimal place


class _RowError(ValueError):
    """One row cannot be used; the message is the reason stored in ``LoadReport.skipped``."""


# --------------------------------------------------------------------------- actions


def _format_size(size: float) -> str:
    """Shortest decimal text of a size: 3.0 -> "3", 2.3 -> "2.3", 13.25 -> "13.25"."""
    return f"{size:.2f}".rstrip("0").rstrip(".")


@dataclass(frozen=True)
class Action:
    """One poker action.

    Attributes:
        kind: one of :data:`ACTION_KINDS` (``fold``, ``check``, ``call``, ``bet``, ``raise``, ``all-in``).
        size: for ``bet`` / ``raise``, the amount in big blinds (= chips), a "to" total for the street;
            ``None`` for the other kinds, and for a bet/raise whose size a model left out.

    Raises:
        ValueError: unknown kind, a size on a kind that takes none, or a size that is not a positive
            finite number.

    >>> Action("raise", 3.0).text
    'raise 3'
    >>> str(Action("all-in"))
    'all in'
    """

    kind: str
    size: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in ACTION_KINDS:
            raise ValueError(f"unknown action kind {self.kind!r}; expected one of {ACTION_KINDS}")
        if self.size is not None:
            if self.kind not in SIZED_KINDS:
                raise ValueError(f"{self.kind} takes no size, got {self.size}")
            if not (math.isfinite(self.size) and self.size > 0):
                raise ValueError(f"{self.kind} size must be a positive number, got {self.size}")

    @property
    def text(self) -> str:
        """Canonical text: ``fold``, ``check``, ``call``, ``all in``, ``bet 10``, ``raise 2.3``."""
        if self.kind == "all-in":
            return "all in"
        if self.size is None:
            return self.kind
        return f"{self.kind} {_format_size(self.size)}"

    def __str__(self) -> str:
        return self.text

    def same_move(self, other: Action | None) -> bool:
        """Same kind and (for bet/raise) the same size, sizes compared with a 1e-6 tolerance."""
        if other is None or other.kind != self.kind:
            return False
        if self.size is None or other.size is None:
            return self.size is None and other.size is None
        return math.isclose(self.size, other.size, rel_tol=0.0, abs_tol=_SIZE_TOLERANCE)


_NUMBER = r"\d+(?:\.\d+)?(?!\.?\d)"  # whole numbers only: never the "2" of "2.5x"
_LENIENT_ACTION = re.compile(
    rf"""
    \b(?:
        (?P<allin>all[\s_-]*in|shove[sd]?|jam(?:s|med)?)
      | (?P<fold>fold(?:s|ed|ing)?)
      | (?P<check>check(?:s|ed|ing)?)
      | (?P<call>call(?:s|ed|ing)?)
      | (?P<bet>bet(?:s|ting)?)
      | (?P<raise>rais(?:e|es|ed|ing))
      | (?P<bbsize>{_NUMBER})\s*bb          # the preflop file's own form: "3.0bb" = raise to 3
    )\b
    (?:\s*(?:to|of|for)?\s*\$?(?P<size>{_NUMBER})\s*(?:bb|big\s+blinds?|chips?)?(?![A-Za-z]))?
    """,
    re.IGNORECASE | re.VERBOSE,
)


def _first_line(text: str) -> str:
    stripped = text.strip()
    return stripped.splitlines()[0].strip() if stripped else ""


def _match_action(line: str) -> tuple[Action, re.Match[str]] | None:
    match = _LENIENT_ACTION.search(line)
    if match is None:
        return None
    if match["bbsize"] is not None:
        return Action("raise", float(match["bbsize"])), match
    kind = next(k for k in ("allin", "fold", "check", "call", "bet", "raise") if match[k] is not None)
    if kind == "allin":
        return Action("all-in"), match
    if kind in SIZED_KINDS:
        size = float(match["size"]) if match["size"] is not None else None
        if size is not None and size <= 0:
            size = None
        return Action(kind, size), match
    return Action(kind), match


def parse_action(text: str) -> Action | None:
    """Read a model's answer (or a data value) as one action, leniently.

    Only the first non-blank line is read; in it the first action word wins (so ``"check or fold"``
    is a check). Case, inflections (``raises``, ``called``), surrounding words, trailing punctuation,
    ``to`` / ``bb`` / ``chips`` around sizes are all accepted; ``allin``, ``all in``, ``all-in``,
    ``shove`` and ``jam`` mean all-in; a bare ``3.0bb`` (the preflop file's notation) is a raise to 3.

    Returns:
        The :class:`Action`, with ``size=None`` for a bet/raise given without a size, or ``None`` when
        no action word is found (garbage, empty text, a bare number).

    >>> parse_action("Raise 29.")
    Action(kind='raise', size=29.0)
    >>> parse_action("I would go ALL IN here")
    Action(kind='all-in', size=None)
    >>> parse_action("bet 10bb")
    Action(kind='bet', size=10.0)
    >>> parse_action("no idea") is None
    True
    """
    found = _match_action(_first_line(text))
    return found[0] if found else None


def is_well_formed(text: str) -> bool:
    """True when ``text`` is one action and nothing else: a single line whose whole content, bar
    surrounding whitespace and trailing ``.``/``!``, is the action (``"Call."``, ``"raise to 29"``,
    ``"bet 10bb"``; not ``"I call"`` nor ``"call\\nbecause ..."``).
    """
    stripped = text.strip()
    if not stripped or len(stripped.splitlines()) != 1:
        return False
    body = stripped.rstrip(".! ")
    found = _match_action(body)
    return found is not None and found[1].start() == 0 and found[1].end() == len(body)


_DATA_MOVE = re.compile(r"(?:(?P<bb>\d+(?:\.\d+)?)bb|(?P<kind>bet|raise) (?P<size>\d+(?:\.\d+)?))")


def _parse_data_move(token: str) -> Action:
    """Strict reading of a move as the CSVs write it (``fold``, ``allin``, ``3.0bb``, ``Raise 29``)."""
    value = token.strip().lower()
    if value in ("fold", "check", "call"):
        return Action(value)
    if value in ("allin", "all in", "all-in"):
        return Action("all-in")
    match = _DATA_MOVE.fullmatch(value)
    if match is None:
        raise ValueError(f"unrecognised move {token!r}")
    if match["bb"] is not None:
        return Action("raise", float(match["bb"]))
    return Action(match["kind"], float(match["size"]))


# --------------------------------------------------------------------------- spots


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
        return _parse_data_move(self.label)

    @property
    def legal_actions(self) -> tuple[Action, ...]:
        """``available_moves`` as :class:`Action` objects."""
        return tuple(_parse_data_move(move) for move in self.available_moves)


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
class LoadReport(TaskLoadReport):
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
            action = _parse_data_move(move)
        except ValueError:
            raise _RowError(f"available_moves: unrecognised move {move!r}") from None
        if not any(action.same_move(seen) for seen in actions):  # drop repeats, keep file order
            actions.append(action)
    return tuple(a.text for a in actions), tuple(actions)


def _parse_label(text: str, legal: Sequence[Action]) -> Action:
    try:
        label = _parse_data_move(text)
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
            action = _parse_data_move(move)
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


def load_pokerbench(path: str | Path, max_rows: int | None = None) -> LoadReport:
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
        A :class:`LoadReport` (``examples``, ``skipped``, ``total_rows``, ``kind``).

    Raises:
        DataError: the file is missing, unreadable or empty, or its header has neither column set
            (the message names the file and the expected columns).
    """
    path = Path(path)
    if path.is_dir():
        return _load_folder(path, max_rows)
    if not path.is_file():
        raise DataError(f"pokerbench data {path}: file not found; {_expected_columns_text()}")
    report = LoadReport(path=str(path))
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


def _load_folder(folder: Path, max_rows: int | None) -> LoadReport:
    files = [folder / f"{kind}.csv" for kind in FILE_KINDS if (folder / f"{kind}.csv").is_file()]
    if not files:
        raise DataError(f"pokerbench data {folder}: a folder without preflop.csv or postflop.csv")
    report = LoadReport(path=str(folder), kind="both" if len(files) == 2 else files[0].stem)
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


# --------------------------------------------------------------------------- prompts


def card_words(card: str) -> str:
    """``"Kd"`` -> ``"king of diamonds"``, ``"Tc"`` -> ``"10 of clubs"``."""
    return f"{_RANK_WORDS.get(card[0], card[0])} of {_SUIT_WORDS[card[1]]}"


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _describe(event: ActionEvent, hero: str) -> str:
    you = event.actor == hero
    who = "you" if you else event.actor
    action = event.action
    if action.kind == "all-in":
        verb = "go all in" if you else "goes all in"
    elif action.kind == "bet":
        verb = f"bet{'' if you else 's'} {_format_size(action.size)}bb" if action.size else "bet"
    elif action.kind == "raise":
        verb = f"raise{'' if you else 's'} to {_format_size(action.size)}bb" if action.size else "raise"
    else:
        verb = action.kind if you else action.kind + "s"
    return f"{who} {verb}"


def render_prompt(spot: PokerSpot) -> str:
    """The spot in plain poker language, for the user turn.

    Content follows the authors' ``SFT/poker_csv_to_json.py`` (game and blinds, hero seat and cards,
    action street by street, pot, then a request for one action) in fewer words, plus the legal
    moves. Amounts are in big blinds; the hero's own earlier actions read "you ...".

    Returns:
        Several lines of text, e.g.::

            6-max No-Limit Hold'em, blinds 0.5/1bb, 100bb stacks.
            You are SB with king of diamonds and king of clubs.
            Preflop: UTG raises to 2bb, BTN calls, you raise to 13bb, BB goes all in, UTG folds, BTN folds.
            Still in: BB and you.
            Pot: 117bb. Legal moves: call, fold.
            Reply with exactly one legal move.
    """
    hero = spot.hero_position
    lines = ["6-max No-Limit Hold'em, blinds 0.5/1bb, 100bb stacks."]
    cards = _join([card_words(card) for card in spot.hero_cards])
    if spot.hero_in_position is None:
        lines.append(f"You are {hero} with {cards}.")
    else:
        villain = next((seat for seat in spot.players_in_hand if seat != hero), "?")
        where = "in position" if spot.hero_in_position else "out of position"
        lines.append(f"You are {hero}, {where} against {villain}, with {cards}.")
    by_street: dict[str, list[str]] = {}
    for event in spot.history:
        by_street.setdefault(event.street, []).append(_describe(event, hero))
    preflop = by_street.get("preflop")
    if preflop:
        lines.append(f"Preflop: {', '.join(preflop)}.")
    else:
        lines.append("Preflop: you act first." if hero == POSITIONS[0] else "Preflop: folds to you.")
    if spot.street == "preflop" and len(spot.players_in_hand) < len(POSITIONS):
        others = [seat for seat in spot.players_in_hand if seat != hero]
        lines.append(f"Still in: {_join(others + ['you'])}.")
    board_parts = {"flop": spot.board[:3], "turn": spot.board[3:4], "river": spot.board[4:5]}
    for street in STREETS[1 : STREETS.index(spot.street) + 1]:
        shown = ", ".join(card_words(card) for card in board_parts[street])
        actions = by_street.get(street)
        tail = f": {', '.join(actions)}." if actions else "."
        lines.append(f"{street.capitalize()} ({shown}){tail}")
    lines.append(f"Pot: {_format_size(spot.pot_size)}bb. Legal moves: {', '.join(spot.available_moves)}.")
    lines.append("Reply with exactly one legal move.")
    return "\n".join(lines)


def build_messages(spot: PokerSpot, system_prompt: str | None = None) -> Messages:
    """Chat messages for the model: ``[{"role": "system", ...}, {"role": "user", render_prompt(spot)}]``.

    Args:
        spot: the decision.
        system_prompt: ``None`` -> :data:`SYSTEM_PROMPT`; ``""`` -> no system message.
    """
    system = SYSTEM_PROMPT if system_prompt is None else system_prompt
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": render_prompt(spot)})
    return messages


def answer_text(spot: PokerSpot) -> str:
    """The target answer: the label in canonical text (``"call"``, ``"raise 3"``, ``"all in"``)."""
    return spot.label


def to_prompt_completion(spot: PokerSpot, system_prompt: str | None = None) -> dict[str, Messages]:
    """One SFT record in TRL's conversational prompt-completion format."""
    return {
        "prompt": build_messages(spot, system_prompt),
        "completion": [{"role": "assistant", "content": answer_text(spot)}],
    }


def preference_pairs(spot: PokerSpot, system_prompt: str | None = None) -> list[dict[str, Messages]]:
    """DPO-style pairs in TRL's conversational preference format, one per legal non-label move.

    Returns:
        ``[{"prompt": build_messages(spot), "chosen": [{"role": "assistant", "content": label}],
        "rejected": [{"role": "assistant", "content": other_move}]}, ...]``, in ``available_moves``
        order; empty when the label is the only legal move.
    """
    prompt = build_messages(spot, system_prompt)
    chosen = [{"role": "assistant", "content": answer_text(spot)}]
    return [
        {"prompt": prompt, "chosen": chosen, "rejected": [{"role": "assistant", "content": move}]}
        for move in spot.available_moves
        if move != spot.label
    ]


# --------------------------------------------------------------------------- metrics


def reference_label(spot: PokerSpot | SpotLabel) -> str:
    """The label as the authors phrase it (``SFT/poker_csv_to_json.py``): preflop ``3.0bb`` ->
    ``raise 3.0``, ``allin`` -> ``all in``, other preflop moves lower case; postflop as in the file."""
    raw = spot.raw_label or spot.label
    if spot.kind == "preflop":
        if "bb" in raw:
            return f"raise {raw.split('bb')[0]}"
        return "all in" if raw.lower() == "allin" else raw.lower()
    return raw


_FIRST_NUMBER = re.compile(r"\d+\.\d+|\d+")
_REFERENCE_WORDS = ("call", "all in", "allin", "fold", "check")  # a shared one of these scores 1


def reference_match_score(response: str, label: str) -> float:
    """The authors' per-answer score, re-implemented from ``check_match`` in
    github.com/richardzhuang0412/PokerBench ``untrained_eval/report_eval_result.py``.

    Case-insensitive substring tests on the whole response: 1 if the label occurs in it, or both
    mention the same one of ``call`` / ``all in`` / ``allin`` / ``fold`` / ``check``; else, if both
    mention ``raise`` (or both ``bet``), 1 when the first number in each is equal and 0.5 otherwise
    (also 0.5 when the response has no number); else 0.

    Args:
        response: the model's raw answer.
        label: the label as the authors phrase it (:func:`reference_label`).

    Returns:
        0.0, 0.5 or 1.0.
    """
    said, want = response.lower(), label.lower()
    if want in said or any(word in want and word in said for word in _REFERENCE_WORDS):
        return 1.0
    if any(word in want and word in said for word in ("raise", "bet")):
        said_size, want_size = _FIRST_NUMBER.search(said), _FIRST_NUMBER.search(want)
        if said_size and want_size and float(said_size.group()) == float(want_size.group()):
            return 1.0
        return 0.5
    return 0.0


def match_score(predicted: Action | None, label: Action) -> float:
    """PokerBench score of one parsed answer against the label (Zhuang et al. 2025; see module doc).

    Returns:
        1.0 same kind (and for bet/raise the same size); 0.5 bet/raise with another or no size;
        0.0 other kind or ``predicted is None``.
    """
    if predicted is None or predicted.kind != label.kind:
        return 0.0
    if label.kind not in SIZED_KINDS:
        return 1.0
    return 1.0 if predicted.same_move(label) else 0.5


def row_scores(prediction: str, spot: PokerSpot | SpotLabel) -> dict[str, Any]:
    """Per-answer scores, stored with each prediction.

    Returns:
        ``{"score": 0/0.5/1, "em": 0/1 (floor), "aa": 0/1 (ceil), "valid": parsed at all,
        "legal": parsed and among the legal moves, "predicted": canonical text or None,
        "label": canonical label, "reference_score": the authors' substring score}``.
    """
    predicted = parse_action(prediction)
    score = match_score(predicted, spot.label_action)
    return {
        "score": score,
        "em": math.floor(score),
        "aa": math.ceil(score),
        "valid": predicted is not None,
        "legal": predicted is not None and any(predicted.same_move(move) for move in spot.legal_actions),
        "predicted": predicted.text if predicted else None,
        "label": spot.label,
        "reference_score": reference_match_score(prediction, reference_label(spot)),
    }


def _summary(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    n = len(rows)
    if n == 0:
        nan = float("nan")
        names = ("aa", "em", "score", "illegal_action_rate", "invalid_rate", "reference_aa", "reference_em")
        return dict.fromkeys(names, nan) | {"n": 0.0}
    return {
        "aa": sum(r["aa"] for r in rows) / n,
        "em": sum(r["em"] for r in rows) / n,
        "score": sum(r["score"] for r in rows) / n,
        "illegal_action_rate": sum(not r["legal"] for r in rows) / n,
        "invalid_rate": sum(not r["valid"] for r in rows) / n,
        "reference_aa": sum(math.ceil(r["reference_score"]) for r in rows) / n,
        "reference_em": sum(math.floor(r["reference_score"]) for r in rows) / n,
        "n": float(n),
    }


def compute_metrics(predictions: Sequence[str], spots: Sequence[PokerSpot | SpotLabel]) -> dict[str, float]:
    """PokerBench metrics over answers, per file kind and pooled.

    Action accuracy (``aa``) = mean of ceil(score), exact match (``em``) = mean of floor(score), the
    score as in :func:`match_score` (Zhuang et al. 2025; ``untrained_eval/report_eval_result.py`` and
    ``main/analyze_eval_result.py`` of github.com/richardzhuang0412/PokerBench). The pooled figures
    are micro averages over all spots, as the authors' "Total" lines.

    Args:
        predictions: raw model answers, one per spot.
        spots: the spots answered, same order.

    Returns:
        For each prefix ``""`` (pooled), ``"preflop_"``, ``"postflop_"``: ``aa``, ``em``, ``score``
        (mean raw score), ``illegal_action_rate`` (unparseable or not a legal move),
        ``invalid_rate`` (unparseable), ``reference_aa`` / ``reference_em`` (the authors' substring
        scorer, :func:`reference_match_score`), ``n``; rates are NaN when ``n`` is 0.

    Raises:
        ValueError: the two sequences differ in length.
    """
    if len(predictions) != len(spots):
        raise ValueError(f"{len(predictions)} predictions for {len(spots)} spots")
    rows = [row_scores(text, spot) | {"kind": spot.kind} for text, spot in zip(predictions, spots)]
    metrics = _summary(rows)
    for kind in FILE_KINDS:
        subset = _summary([row for row in rows if row["kind"] == kind])
        metrics.update({f"{kind}_{name}": value for name, value in subset.items()})
    return metrics


def action_confusion(predictions: Sequence[str], spots: Sequence[PokerSpot | SpotLabel]) -> tuple[list[str], NDArray]:
    """Confusion counts over action types.

    Returns:
        ``(labels, matrix)``: ``labels`` = :data:`CONFUSION_LABELS` (the six kinds then ``invalid``);
        ``matrix`` an ``int64`` numpy array of shape ``(7, 7)``, rows = label kind, columns =
        predicted kind (``invalid`` when unparseable); the ``invalid`` row stays 0.

    Raises:
        ValueError: the two sequences differ in length.
    """
    import numpy as np

    if len(predictions) != len(spots):
        raise ValueError(f"{len(predictions)} predictions for {len(spots)} spots")
    labels = list(CONFUSION_LABELS)
    matrix = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for prediction, spot in zip(predictions, spots):
        predicted = parse_action(prediction)
        column = labels.index(predicted.kind if predicted else "invalid")
        matrix[labels.index(spot.label_action.kind), column] += 1
    return labels, matrix


def plot_confusion(
    labels: Sequence[str], matrix: ArrayLike, path: str | Path, title: str = "PokerBench actions"
) -> Path:
    """Write the confusion matrix as a PNG heat map with counts (matplotlib, Agg canvas).

    Args:
        labels: axis labels, length k.
        matrix: ``(k, k)`` counts, rows = label, columns = prediction.
        path: PNG to write; parent directories are created.
        title: figure title.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = np.asarray(matrix)
    fig = Figure(figsize=(6, 5), dpi=110)
    FigureCanvasAgg(fig)  # an Agg canvas without touching pyplot's global backend
    ax = fig.add_subplot()
    image = ax.imshow(counts, cmap="Blues")
    fig.colorbar(image, ax=ax)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("label")
    ax.set_title(title)
    threshold = counts.max() / 2 if counts.size else 0
    for (row, col), value in np.ndenumerate(counts):
        ax.text(col, row, str(value), ha="center", va="center", fontsize=8,
                color="white" if value > threshold else "black")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


# --------------------------------------------------------------------------- rewards


def _completion_text(completion: Any) -> str:
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    if isinstance(completion, (list, tuple)) and completion:
        last = completion[-1]
        return str(last.get("content", "")) if isinstance(last, dict) else str(last)
    return ""


def legal_action_reward(
    completions: Sequence[Any], available_moves: Sequence[Sequence[str]], **kwargs: Any
) -> list[float]:
    r"""Rule reward with TRL's reward-function signature (as in ``trl/rewards/format_rewards.py``).

    1.0 when the completion is well formed (one line holding one action and nothing else, see
    :func:`is_well_formed`) and that action is one of the spot's legal moves; 0.0 otherwise (extra
    words, several lines, an illegal size or move, garbage). It checks form and legality only,
    not whether the move is good; pair it with a correctness reward.

    Args:
        completions: per sample either a string or a conversational completion
            ``[{"role": "assistant", "content": ...}]`` (the last message is read).
        available_moves: per sample the legal moves as canonical strings (the dataset column of
            that name, forwarded by TRL); the preflop file's forms (``3.0bb``, ``allin``) are read too.
        **kwargs: other dataset columns, ignored.

    Returns:
        One float per completion.

    Raises:
        ValueError: the two sequences differ in length.

    Example:

    >>> completions = [
    ...     [{"role": "assistant", "content": "Raise 29"}],
    ...     [{"role": "assistant", "content": "raise 30"}],
    ...     [{"role": "assistant", "content": "I think calling is best"}],
    ...     "fold",
    ... ]
    >>> moves = [["fold", "call", "raise 29"]] * 4
    >>> legal_action_reward(completions, available_moves=moves)
    [1.0, 0.0, 0.0, 1.0]
    """
    if len(completions) != len(available_moves):
        raise ValueError(f"{len(completions)} completions for {len(available_moves)} available_moves")
    rewards = []
    for completion, moves in zip(completions, available_moves):
        text = _completion_text(completion)
        predicted = parse_action(text)
        legal = [action for action in (parse_action(move) for move in moves) if action is not None]
        legal_move = predicted is not None and any(predicted.same_move(move) for move in legal)
        rewards.append(1.0 if legal_move and is_well_formed(text) else 0.0)
    return rewards


# --------------------------------------------------------------------------- task plugin


class PokerOptions(TaskOptions):
    """PokerBench's options (``task_options`` in a recipe)."""

    system_prompt: str = Field(description="instruction in the system turn (short: every prompt token costs CPU time); '': none")
    validation_fraction: float = Field(gt=0.0, lt=1.0, description="share of each file and street held back for "
                                       "model selection and the gate when data.eval_file is null")  # fmt: skip
    validation_seed: int = Field(description="seed of the held-back slice (same seed, same slice)")


class PokerTask(Task):
    """PokerBench as a task plugin: spot -> the solver's move, scored statically with the authors' metric
    (action accuracy gates promotion); preference pairs (solver move vs each other legal move) for the
    reward-model and DPO stages; a legal-and-well-formed rule reward for GRPO.

    ``train_file`` may be the dataset folder (both CSVs) or one CSV; with ``eval_file: null`` a stratified
    slice of it is held back (:func:`validation_split`).
    """

    name = TASK_NAME
    Options = PokerOptions
    evaluation = ("static",)
    gate_metric = "aa"
    metric_order = ("aa", "em", "preflop_aa", "preflop_em", "postflop_aa", "postflop_em", "illegal_action_rate",
                    "invalid_rate", "reference_aa", "reference_em", "score")  # fmt: skip
    stop_strings = ("\n",)  # an answer is one line

    options: PokerOptions

    def load(self, path: str | Path, max_rows: int | None = None) -> LoadReport:
        return load_pokerbench(path, max_rows)

    def split_validation(self, examples: Sequence[PokerSpot]) -> tuple[list[PokerSpot], list[PokerSpot]]:
        return validation_split(examples, self.options.validation_fraction, self.options.validation_seed)

    def prompt(self, text: str) -> Messages:
        system = self.options.system_prompt
        return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]

    def sft_records(self, examples: Sequence[PokerSpot]) -> list[Record]:
        return [to_prompt_completion(spot, self.options.system_prompt) | spot.columns() for spot in examples]

    def preference_records(self, examples: Sequence[PokerSpot]) -> list[Record]:
        return [pair | spot.columns() for spot in examples for pair in preference_pairs(spot, self.options.system_prompt)]

    def reward_functions(self) -> list[RewardFunction]:
        return [legal_action_reward]

    def eval_records(self, examples: Sequence[PokerSpot]) -> list[Record]:
        return [{"prompt": build_messages(spot, self.options.system_prompt), "reference": spot.label} | spot.columns()
                for spot in examples]  # fmt: skip

    def parse_output(self, text: str) -> str:
        return _first_line(text)

    def compute_metrics(self, predictions: Sequence[str], records: Sequence[Record]) -> dict[str, float]:
        metrics = compute_metrics(predictions, [SpotLabel.from_record(r) for r in records])
        for kind in FILE_KINDS:  # a file kind the evaluation data lacks has no scores, only NaNs
            if metrics[f"{kind}_n"] == 0:
                metrics = {k: v for k, v in metrics.items() if not k.startswith(f"{kind}_")}
        return metrics

    def row_scores(self, prediction: str, record: Record) -> dict[str, Any]:
        scores = row_scores(prediction, SpotLabel.from_record(record))
        return {k: v for k, v in scores.items() if k != "label"}  # the record already holds the label

    def evaluation_artifacts(self, predictions: Sequence[str], records: Sequence[Record], out_dir: Path) -> dict[str, Path]:
        labels, matrix = action_confusion(predictions, [SpotLabel.from_record(r) for r in records])
        return {"confusion_matrix": plot_confusion(labels, matrix, Path(out_dir) / "confusion_matrix.png")}


TASK = PokerTask
