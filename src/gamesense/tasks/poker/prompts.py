"""PokerBench prompts: a spot in plain poker language (:func:`render_prompt`), the chat messages around it, the
target answer, and the preference pairs (the solver's move against each other legal move)."""

from __future__ import annotations

from collections.abc import Sequence

from gamesense.tasks.base import Messages
from gamesense.tasks.poker.actions import format_size
from gamesense.tasks.poker.pokerbench import POSITIONS, STREETS, ActionEvent, PokerSpot

_RANK_WORDS = {"T": "10", "J": "jack", "Q": "queen", "K": "king", "A": "ace"}
_SUIT_WORDS = {"c": "clubs", "d": "diamonds", "h": "hearts", "s": "spades"}

# Short on purpose: it is repeated in every training example.
SYSTEM_PROMPT = "You are an expert poker player. Answer with one legal move only."



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
        verb = f"bet{'' if you else 's'} {format_size(action.size)}bb" if action.size else "bet"
    elif action.kind == "raise":
        verb = f"raise{'' if you else 's'} to {format_size(action.size)}bb" if action.size else "raise"
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
    lines.append(f"Pot: {format_size(spot.pot_size)}bb. Legal moves: {', '.join(spot.available_moves)}.")
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
