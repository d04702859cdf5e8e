"""The action grammar of No-Limit Hold'em answers and data: :class:`Action` (fold, check, call, bet, raise,
all-in with a size in big blinds), the lenient reader of a model's answer (:func:`parse_action`), the strict
test of a one-action answer (:func:`is_well_formed`), and the strict reader of the CSVs' move notation."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

ACTION_KINDS: tuple[str, ...] = ("fold", "check", "call", "bet", "raise", "all-in")
SIZED_KINDS: frozenset[str] = frozenset({"bet", "raise"})

_SIZE_TOLERANCE = 1e-6  # sizes come from decimal text with at most one decimal place


def format_size(size: float) -> str:
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
        return f"{self.kind} {format_size(self.size)}"

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


def first_line(text: str) -> str:
    """The first non-blank line of ``text``, stripped (an answer is one line)."""
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
    found = _match_action(first_line(text))
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


def parse_data_move(token: str) -> Action:
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
