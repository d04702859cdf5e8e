"""PokerBench task: read a 6-max No-Limit Hold'em spot, answer the solver's action.

One module per concept, pure functions except the plugin:
:mod:`~gamesense.tasks.poker.actions` (the action grammar), :mod:`~gamesense.tasks.poker.pokerbench` (spots,
loading, the validation slice), :mod:`~gamesense.tasks.poker.prompts`, :mod:`~gamesense.tasks.poker.metrics`,
:mod:`~gamesense.tasks.poker.rewards`, and :mod:`~gamesense.tasks.poker.task` (:class:`PokerTask`, ``TASK``),
which plugs them into the generic layers (recipes ``poker.yaml``: sft -> reward -> grpo, ``poker-dpo.yaml``:
sft -> dpo).

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
  scorer is kept, re-implemented, as :func:`reference_match_score` and reported as ``reference_action_accuracy`` /
  ``reference_exact_match`` so numbers stay comparable with the paper.

Canonical action text (model target, legal-move list, comparisons): ``fold``, ``check``, ``call``,
``all in`` (the authors' phrase; :attr:`Action.kind` is ``"all-in"``), ``bet <size>``,
``raise <size>``, the size a number of big blinds (= chips) as the data gives it, written in its
shortest form (``3.0bb`` -> ``raise 3``, ``2.3bb`` -> ``raise 2.3``, ``Bet 10`` -> ``bet 10``).
Preflop sizes and postflop raises are "raise to" totals for the street (checked against the pot
sizes in the data: SB 3, BB 10, SB calls, then bets 10 / 44 and a raise to 80 give the stated pot
of 164).
"""

from __future__ import annotations


from gamesense.tasks.base import DataError
from gamesense.tasks.poker.actions import ACTION_KINDS, SIZED_KINDS, Action, first_line, is_well_formed, parse_action
from gamesense.tasks.poker.metrics import (CONFUSION_LABELS, action_confusion, compute_metrics, match_score,
                                           reference_label, reference_match_score, row_scores)  # fmt: skip
from gamesense.tasks.poker.pokerbench import (FILE_KINDS, POSITIONS, POSTFLOP_COLUMNS, PREFLOP_COLUMNS, STREETS,
                                              ActionEvent, PokerBenchReport, PokerSpot, SpotLabel, load_pokerbench,
                                              validation_split)  # fmt: skip
from gamesense.tasks.poker.prompts import (SYSTEM_PROMPT, answer_text, build_messages, card_words, preference_pairs,
                                           render_prompt, to_prompt_completion)  # fmt: skip
from gamesense.tasks.poker.rewards import legal_action_reward
from gamesense.tasks.poker.task import TASK, PokerOptions, PokerTask

__all__ = ["ACTION_KINDS", "CONFUSION_LABELS", "FILE_KINDS", "POSITIONS", "POSTFLOP_COLUMNS", "PREFLOP_COLUMNS",
           "SIZED_KINDS", "STREETS", "SYSTEM_PROMPT", "TASK", "Action", "ActionEvent", "DataError", "PokerBenchReport",
           "PokerOptions", "PokerSpot", "PokerTask", "SpotLabel", "action_confusion", "answer_text", "build_messages",
           "card_words", "compute_metrics", "first_line", "is_well_formed", "legal_action_reward", "load_pokerbench",
           "match_score", "parse_action", "preference_pairs", "reference_label", "reference_match_score",
           "render_prompt", "row_scores", "to_prompt_completion", "validation_split"]
