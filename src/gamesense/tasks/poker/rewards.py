"""Rule rewards for RL stages, with TRL's reward-function signature ``(completions, **columns) -> list[float]``
(as in ``trl/rewards/format_rewards.py``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gamesense.tasks.poker.actions import is_well_formed, parse_action


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
