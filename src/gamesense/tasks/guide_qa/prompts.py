"""Teacher prompts for self-instruct Q&A from guide chunks, and the parser of what teachers answer.

In the spirit of the seed recipe for Super Smash Bros. Melee guides: one generation prompt per chunk with a
variant drawn per chunk (technical or plain questions x lengthy or concise answers), a rewrite prompt for pairs
that talk about "the guide" instead of the game, and a judge prompt that passes or fails a pair for names and
facts from outside the game. Every prompt asks for a strict, easy format (``Q: ...`` / ``A: ...`` lines, or one
word ``PASS``/``FAIL``); :func:`parse_pairs` also accepts what small models make of it (numbering, bold
markers, ``Question:``, a pair on one line, a JSON list) and sets malformed pairs aside with a reason.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass

from gamesense.tasks.guide_qa.chunking import Chunk

#: question style -> instruction
STYLES = {
    "technical": "Ask precise, technical questions about the game's mechanics, commands, numbers and rules.",
    "plain": "Ask the questions a new player would ask, in plain everyday words.",
}
#: answer length -> instruction
LENGTHS = {
    "lengthy": "Answer each question in two to four complete sentences with the relevant details.",
    "concise": "Answer each question in one short sentence.",
}
#: variant names ``<style>-<length>``, sorted
VARIANTS: tuple[str, ...] = tuple(sorted(f"{s}-{n}" for s in STYLES for n in LENGTHS))

SYSTEM = "You write question-answer pairs that teach an assistant to answer players' questions about a game."
NEVER_MENTION = ('Never mention "the guide", "the manual", "the text", "the excerpt", "the passage" or "the document": '
                 "ask and answer about the game itself.")  # fmt: skip


def pick_variant(seed: int, chunk_id: str) -> str:
    """The prompt variant of one chunk: ``random.Random(f"{seed}/{chunk_id}")`` picks among :data:`VARIANTS`."""
    return random.Random(f"{seed}/{chunk_id}").choice(VARIANTS)


def _split_variant(variant: str, count: int = 1, what: str = "items") -> tuple[str, str]:
    """``(style, length)`` of a variant name.

    Raises:
        ValueError: unknown variant, or ``count`` < 1 (``what`` names it).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown prompt variant {variant!r}; known: {', '.join(VARIANTS)}")
    if count < 1:
        raise ValueError(f"{what} per chunk must be >= 1, got {count}")
    style, length = variant.split("-")
    return style, length


def generation_messages(chunk: Chunk, variant: str, pairs: int) -> list[dict[str, str]]:
    """Chat messages asking for ``pairs`` Q&A pairs about ``chunk`` in the style of ``variant``.

    Raises:
        ValueError: unknown variant, or ``pairs`` < 1.
    """
    style, length = _split_variant(variant, pairs, "pairs")
    where = " > ".join(chunk.trail) or chunk.section
    user = (
        f"Here is an excerpt from a game's documentation (section: {where}).\n\n"
        f"<excerpt>\n{chunk.text}\n</excerpt>\n\n"
        f"Write {pairs} question-answer {'pair' if pairs == 1 else 'pairs'} about the game that the excerpt answers.\n"
        f"- {STYLES[style]}\n- {LENGTHS[length]}\n"
        "- Each question must make sense on its own, to a player who has never seen the excerpt.\n"
        f"- {NEVER_MENTION}\n"
        "- Use only facts stated in the excerpt; add no names or facts from other games.\n\n"
        f"Write exactly {pairs} {'pair' if pairs == 1 else 'pairs'} in this format and nothing else:\n"
        "Q: <question>\nA: <answer>"
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def question_messages(chunk: Chunk, variant: str, questions: int) -> list[dict[str, str]]:
    """Two-step recipe, step 1: chat messages asking for ``questions`` questions about ``chunk`` in the question
    style of ``variant``, one per line (answered one by one in step 2, :func:`answer_messages`).

    Raises:
        ValueError: unknown variant, or ``questions`` < 1.
    """
    style = _split_variant(variant, questions, "questions")[0]
    where = " > ".join(chunk.trail) or chunk.section
    user = (
        f"Here is an excerpt from a game's documentation (section: {where}).\n\n<excerpt>\n{chunk.text}\n</excerpt>\n\n"
        f"Write {questions} {'question' if questions == 1 else 'different questions'} about the game that the excerpt "
        f"answers. {STYLES[style]} Each question must make sense on its own. {NEVER_MENTION}\n"
        "Write one question per line, each ending with '?', and nothing else."
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def answer_messages(chunk: Chunk, variant: str, question: str) -> list[dict[str, str]]:
    """Two-step recipe, step 2: chat messages asking to answer ``question`` from ``chunk`` at the answer length
    of ``variant``.

    Raises:
        ValueError: unknown variant.
    """
    length = _split_variant(variant)[1]
    user = (
        f"<excerpt>\n{chunk.text}\n</excerpt>\n\nQuestion: {question}\n\n"
        f"Answer the question using only facts from the excerpt. {LENGTHS[length].replace('each question', 'it')} "
        f"{NEVER_MENTION} Write the answer only."
    )
    return [{"role": "system", "content": "You answer players' questions about a game."}, {"role": "user", "content": user}]


_QUESTION = re.compile(r"[^?.!\n]*\?")
_QUESTION_PREFIX = re.compile(r"^\s*(?:[-*\u2022]\s*)?(?:\(?\d{1,2}[.)]\s*)?[*_#\s]*(?:q(?:uestion)?\s*\d{0,2}\s*[*_]*\s*[:.)\-]\s*)?[*_]*", re.I)


def parse_questions(text: str | None, expected: int | None = None) -> tuple[list[str], list[Malformed]]:
    """Step 1 output -> questions (in order, each a sentence ending in ``?``, numbering and ``Q:`` markers removed)
    and the parts set aside: ``no question in the output``, ``more questions than asked`` (beyond ``expected``),
    ``repeated question``.

    >>> parse_questions("1. What does Elbereth do? Sure! 2) Q: How do I pray?", 2)[0]
    ['What does Elbereth do?', 'How do I pray?']
    """
    found: list[str] = []
    for line in (text or "").splitlines():
        for q in _QUESTION.findall(line):  # a line may hold several questions, each with its own numbering
            q = _clean(_QUESTION_PREFIX.sub("", q, count=1))
            if q.strip("? "):
                found.append(q)
    if not found:
        return [], [Malformed((text or "").strip()[:500], "no question in the output")]
    questions: list[str] = []
    malformed: list[Malformed] = []
    for q in found:
        if q.lower() in (k.lower() for k in questions):
            malformed.append(Malformed(f"Q: {q}", "repeated question"))
        elif expected is not None and len(questions) >= expected:
            malformed.append(Malformed(f"Q: {q}", "more questions than asked"))
        else:
            questions.append(q)
    return questions, malformed


def parse_answer(text: str | None) -> str:
    """Step 2 output -> the answer: an ``A:``/``Answer:`` marker removed, whitespace collapsed ("" when empty)."""
    return _clean(re.sub(r"^\s*[*_]*(?:a|answer)\s*[*_]*\s*:\s*", "", text or "", flags=re.I))


def rewrite_messages(question: str, answer: str) -> list[dict[str, str]]:
    """Chat messages asking to rewrite a pair that refers to its source (``the guide says...``) as one about the game."""
    user = (
        "Rewrite this question-answer pair about a game so that neither the question nor the answer refers to a "
        "guide, manual, text, excerpt, passage or document. Keep the facts and the meaning; ask and answer about "
        "the game itself. Write the rewritten pair in this format and nothing else:\nQ: <question>\nA: <answer>\n\n"
        f"Q: {question}\nA: {answer}"
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def judge_messages(chunk: Chunk, question: str, answer: str) -> list[dict[str, str]]:
    """Chat messages asking for PASS (the pair stays within the game of the excerpt) or FAIL (it brings in names
    or facts from outside the game)."""
    user = (
        "You check training data for an assistant about one game. Here is an excerpt of the game's documentation "
        "and a question-answer pair written from it.\n\n"
        f"<excerpt>\n{chunk.text}\n</excerpt>\n\nQ: {question}\nA: {answer}\n\n"
        "Does the pair name only things that belong to this game (characters, items, places, commands), with no "
        "names or facts from other games, books, films or the real world that the excerpt does not mention? "
        "Answer with one word, PASS if it stays within the game or FAIL if it does not.\nVerdict:"
    )  # ending on "Verdict:" gets a verdict word even from a 135M model (it rambles otherwise)
    return [{"role": "system", "content": "You are a strict data reviewer. You reply with PASS or FAIL."},
            {"role": "user", "content": user}]  # fmt: skip


def answer_judge_messages(chunk: str, question: str, reference: str, candidate: str) -> list[dict[str, str]]:
    """Chat messages asking a judge whether ``candidate`` answers ``question`` with the facts of ``reference``
    without contradicting the guide passage ``chunk``; the judge replies CORRECT or INCORRECT (evaluation)."""
    user = (f"Passage from the game's manual:\n{chunk}\n\nQuestion: {question}\nReference answer: {reference}\n"
            f"Candidate answer: {candidate}\n\nDoes the candidate answer give the same facts as the reference answer, "
            "without contradicting the passage?\nAnswer with one word, CORRECT or INCORRECT.\nVerdict:")
    return [{"role": "system", "content": "You grade answers to players' questions about a video game. Reply with one "
             "word: CORRECT or INCORRECT."}, {"role": "user", "content": user}]  # fmt: skip


def parse_verdict(text: str | None, positive: str = "PASS", negative: str = "FAIL",
                  endings: tuple[str, ...] = ("ed", "es")) -> bool | None:  # fmt: skip
    """A judge's answer -> True (``positive``), False (``negative``), or None when it says neither: the first of the
    two words found (whole words, case-insensitive, also with one of ``endings``) decides.

    >>> parse_verdict("Verdict: passed"), parse_verdict("The answer is INCORRECT", "CORRECT", "INCORRECT", ())
    (True, False)
    """
    suffix = f"(?:{'|'.join(map(re.escape, endings))})?" if endings else ""
    match = re.search(rf"\b({re.escape(positive)}|{re.escape(negative)}){suffix}\b", text or "", re.I)
    return None if match is None else match.group(1).lower() == positive.lower()


# ------------------------------------------------------------------------------------------------ parsing pairs


@dataclass(frozen=True)
class Pair:
    """A well-formed question and answer, stripped of markup."""

    question: str
    answer: str


@dataclass(frozen=True)
class Malformed:
    """Teacher output set aside by the parser: the text involved and why."""

    text: str
    reason: str


_MARKER = re.compile(
    r"^\s*(?:[-*\u2022]\s*)?(?:\(?\d{1,2}[.)]\s*)?[*_#\s]*(q|question|a|answer)\s*\d{0,2}\s*[*_]*\s*[:.)\-]\s*[*_]*\s*(.*)$",
    re.I,
)
_INLINE_ANSWER = re.compile(r"\s+[*_]*(?:A|Answer)\s*[*_]*\s*:\s*", re.I)


def _clean(text: str) -> str:
    text = re.sub(r"[*_]{2}", "", text)
    text = " ".join(text.split())
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


def _json_pairs(text: str) -> list[dict] | None:
    body = re.sub(r"^```(?:json)?\s*|\s*```$", "", text.strip())
    if not body.startswith(("[", "{")):
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if isinstance(data, dict):
        data = data.get("pairs") or data.get("questions") or [data]
    return data if isinstance(data, list) else None


def parse_pairs(text: str | None, expected: int | None = None) -> tuple[list[Pair], list[Malformed]]:
    """Teacher output -> well-formed pairs (in order) and the parts set aside, each with a reason.

    Accepts ``Q:``/``A:`` lines (also ``Question:``, ``Q1:``, ``1. Q:``, ``**Q:**``, answers spanning several
    lines, ``Q: ... A: ...`` on one line) or a JSON list of ``{"question", "answer"}`` objects. Text before the
    first marker is ignored. Reasons: ``no Q:/A: pair in the output``, ``question without an answer``,
    ``answer without a question``, ``empty question``, ``empty answer``, ``not a question (no '?')``,
    ``answer repeats the question``, ``more pairs than asked`` (beyond ``expected``).

    >>> parse_pairs("1. Q: What does the amulet do?\\nA: It saves you once.\\nQ: Where?")[1][0].reason
    'question without an answer'
    """
    text = text or ""
    raw: list[tuple[str, str]] = []  # (question, answer) as found, before validation
    malformed: list[Malformed] = []
    items = _json_pairs(text)
    if items is not None:
        for item in items:
            if not isinstance(item, dict):
                malformed.append(Malformed(json.dumps(item)[:500], "JSON item is not an object"))
                continue
            q = item.get("question", item.get("q", item.get("Q")))
            a = item.get("answer", item.get("a", item.get("A")))
            raw.append((str(q) if q is not None else "", str(a) if a is not None else ""))
    else:
        fields: list[list] = []  # [kind, text]
        for line in text.splitlines():
            marker = _MARKER.match(line)
            if marker:
                kind = marker.group(1)[0].lower()
                rest = marker.group(2)
                inline = _INLINE_ANSWER.search(rest) if kind == "q" else None
                if inline:
                    fields.append(["q", rest[: inline.start()]])
                    fields.append(["a", rest[inline.end():]])
                else:
                    fields.append([kind, rest])
            elif fields and line.strip():
                fields[-1][1] += " " + line.strip()
        pending: str | None = None
        for kind, value in fields:
            if kind == "q":
                if pending is not None:
                    malformed.append(Malformed(f"Q: {_clean(pending)}", "question without an answer"))
                pending = value
            elif pending is None:
                malformed.append(Malformed(f"A: {_clean(value)}", "answer without a question"))
            else:
                raw.append((pending, value))
                pending = None
        if pending is not None:
            malformed.append(Malformed(f"Q: {_clean(pending)}", "question without an answer"))
    if not raw and not malformed:
        return [], [Malformed(text.strip()[:500], "no Q:/A: pair in the output")]

    pairs: list[Pair] = []
    for q, a in raw:
        q, a = _clean(q), _clean(a)
        shown = f"Q: {q}\nA: {a}"
        reason = None
        if not q:
            reason = "empty question"
        elif not a:
            reason = "empty answer"
        elif "?" not in q:
            reason = "not a question (no '?')"
        elif a.lower().rstrip("?.! ") == q.lower().rstrip("?.! "):
            reason = "answer repeats the question"
        elif expected is not None and len(pairs) >= expected:
            reason = "more pairs than asked"
        if reason:
            malformed.append(Malformed(shown, reason))
        else:
            pairs.append(Pair(q, a))
    return pairs, malformed
