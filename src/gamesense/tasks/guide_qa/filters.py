"""Rule filters for generated Q&A pairs: length bounds, mentions of the source, groundedness, near-duplicates.

The teacher-based steps (rewriting pairs that mention the source, the LLM judge) live in
:mod:`gamesense.tasks.guide_qa.synth`; their prompts and verdict parser in :mod:`~gamesense.tasks.guide_qa.prompts`.
Each function here returns the reason a pair fails (a short string) or None when it passes, so the run summary
can count reasons.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rapidfuzz import fuzz, process, utils

#: function words left out of groundedness (they say nothing about the content)
STOPWORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being below between both
but by can could did do does doing down during each either else ever every few for from further had has have having
he her here hers him his how i if in into is it its itself just let may me might more most must my no nor not now of
off on once only or other our out over own per same shall she should so some such than that the their them then there
these they this those through to too under until up upon us very was way we were what when where which while who whom
why will with within without would yes yet you your yours one ones use used using get gets make makes
""".split())  # fmt: skip

#: phrases that refer to the source instead of the game ("the guide says", "according to the text")
_SOURCE_WORDS = r"(?:guide(?:book)?s?|manuals?|texts?|passages?|excerpts?|documents?|documentation|articles?|chunks?)"
_MENTION = re.compile(
    rf"\b(?:(?:the|this|that|above|given|provided|following)\s+(?:(?:given|provided|above|following|same)\s+)?"
    rf"{_SOURCE_WORDS}\b|according to (?:the |this )?(?:{_SOURCE_WORDS}|author)\b|(?:as )?(?:mentioned|stated|described) "
    rf"(?:in|by) (?:the |this )?{_SOURCE_WORDS}\b)",
    re.I,
)


@dataclass(frozen=True)
class LengthBounds:
    """Accepted sizes of a pair (inclusive): characters and words of the question and of the answer.

    Raises:
        ValueError: a lower bound above its upper bound.
    """

    question_chars: tuple[int, int] = (12, 300)
    question_words: tuple[int, int] = (3, 50)
    answer_chars: tuple[int, int] = (8, 1500)
    answer_words: tuple[int, int] = (2, 250)

    def __post_init__(self):
        for name in ("question_chars", "question_words", "answer_chars", "answer_words"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"length bound {name}: lower {lo} > upper {hi}")


def length_problem(question: str, answer: str, bounds: LengthBounds = LengthBounds()) -> str | None:
    """Why a pair is too short or too long (e.g. ``question too short (2 words < 3)``), or None.

    >>> length_problem("Why?", "Because the dragon sleeps by day.")
    'question too short (4 chars < 12)'
    """
    for part, text in (("question", question), ("answer", answer)):
        for unit, size in (("chars", len(text)), ("words", len(text.split()))):
            lo, hi = getattr(bounds, f"{part}_{unit}")
            if size < lo:
                return f"{part} too short ({size} {unit} < {lo})"
            if size > hi:
                return f"{part} too long ({size} {unit} > {hi})"
    return None


def source_mention(text: str) -> str | None:
    """The first phrase of ``text`` that refers to the source document instead of the game, or None.

    >>> source_mention("According to the guide, pets follow you.")
    'According to the guide'
    >>> source_mention("Press the key shown in the status text line.") is None
    True
    """
    match = _MENTION.search(text)
    return match.group(0) if match else None


def stem(word: str) -> str:
    """A light stem so that ``scrolls``/``scroll`` and ``wielding``/``wield`` match (lower-cased input)."""
    for suffix, repl, min_len in (("'s", "", 3), ("ies", "y", 5), ("sses", "ss", 5), ("es", "", 5), ("s", "", 4),
                                  ("ing", "", 6), ("ed", "", 5), ("ly", "", 5)):  # fmt: skip
        if word.endswith(suffix) and len(word) >= min_len and not (suffix == "s" and word.endswith("ss")):
            return word[: len(word) - len(suffix)] + repl
    return word


def content_stems(text: str) -> list[str]:
    """Stems of the content words of ``text`` (lower-cased words and numbers, stop words left out)."""
    words = re.findall(r"[a-z0-9]+(?:'[a-z]+)?", text.lower())
    return [stem(w) for w in words if w not in STOPWORDS and (len(w) > 1 or w.isdigit())]


def groundedness(answer: str, chunk: str) -> float | None:
    """Share (0-1) of the answer's content words (stemmed) that occur in ``chunk``; None when the answer has none.

    >>> groundedness("Scrolls are read with r.", "Press r to read scrolls.")
    1.0
    """
    stems = content_stems(answer)
    if not stems:
        return None
    known = set(content_stems(chunk))
    return sum(s in known for s in stems) / len(stems)


def groundedness_problem(answer: str, chunk: str, threshold: float) -> str | None:
    """Why an answer is not grounded in its chunk (share below ``threshold``, or no content words), or None."""
    share = groundedness(answer, chunk)
    if share is None:
        return "answer has no content words"
    if share < threshold:
        return f"answer {share:.0%} grounded in its chunk (< {threshold:.0%})"
    return None


class NearDuplicates:
    """Greedy near-duplicate removal over questions: a question whose rapidfuzz ``token_sort_ratio`` (0-100, after
    lower-casing and dropping punctuation) with an earlier kept question reaches ``threshold`` is a duplicate.

    >>> d = NearDuplicates(90)
    >>> d.add("a", "What does Elbereth do?"); d.duplicate_of("what does elbereth do")
    ('a', 100.0)
    """

    def __init__(self, threshold: float = 90.0):
        if not 0 < threshold <= 100:
            raise ValueError(f"near-duplicate threshold must be in (0, 100], got {threshold}")
        self.threshold = threshold
        self._ids: list[str] = []
        self._texts: list[str] = []

    def duplicate_of(self, question: str) -> tuple[str, float] | None:
        """``(id, score)`` of the closest kept question at or above the threshold, or None."""
        if not self._texts:
            return None
        best = process.extractOne(utils.default_process(question), self._texts, scorer=fuzz.token_sort_ratio,
                                  score_cutoff=self.threshold)  # fmt: skip
        return None if best is None else (self._ids[best[2]], float(best[1]))

    def add(self, pair_id: str, question: str) -> None:
        """Keep ``question`` (later questions are compared with it)."""
        self._ids.append(pair_id)
        self._texts.append(utils.default_process(question))
