"""Guide sections -> chunks of varied size, cut on paragraph, else sentence, else word boundaries.

Chunk sizes (characters) are drawn from a Gaussian clipped to ``[min_chars, max_chars]`` (:class:`ChunkSizes`),
so a teacher sees short and long contexts as in the seed self-instruct recipe. The generator is seeded per file
(``random.Random(f"{seed}:{file id}")``): a file's chunks depend only on its text and the seed, not on the
other files of the run. Each drawn size is a target: the cut goes to the paragraph boundary closest to it
within +-20 %, else the closest sentence (or line) boundary in that window, else the closest space, so a chunk
never ends inside a word. Chunks never cross a section; a section no longer than its drawn size is one chunk
(so whole short sections may fall below ``min_chars``), and a section's last chunk is never left shorter than
``min_chars`` when it can be avoided. Offsets are in the cleaned :attr:`Document.text`.
"""

from __future__ import annotations

import bisect
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gamesense.tasks.guide_qa.ingest import Document

#: how far (share of the target) a paragraph or sentence boundary may lie from the drawn size
WINDOW = 0.2


@dataclass(frozen=True)
class ChunkSizes:
    """Distribution of chunk sizes in characters: Gaussian ``N(mean, sd)`` clipped to ``[min_chars, max_chars]``.

    Raises:
        ValueError: ``min_chars`` < 1, ``max_chars`` < ``min_chars``, ``sd`` < 0, or ``mean`` outside the bounds.
    """

    mean: float = 1200
    sd: float = 400
    min_chars: int = 400
    max_chars: int = 2400

    def __post_init__(self):
        if self.min_chars < 1 or self.max_chars < self.min_chars:
            raise ValueError(f"chunk sizes need 1 <= min_chars <= max_chars, got [{self.min_chars}, {self.max_chars}]")
        if self.sd < 0:
            raise ValueError(f"chunk size sd must be >= 0, got {self.sd}")
        if not self.min_chars <= self.mean <= self.max_chars:
            raise ValueError(f"chunk size mean {self.mean} lies outside [{self.min_chars}, {self.max_chars}]")

    def draw(self, rng: random.Random) -> int:
        """One target size (characters)."""
        return int(round(min(max(rng.gauss(self.mean, self.sd), self.min_chars), self.max_chars)))


@dataclass(frozen=True)
class Chunk:
    """A piece of one section of one guide.

    Attributes:
        id: ``<file id>-<index>`` (index from 0 in file order), stable for a given text and seed.
        file: the guide's path as given.
        section: the section's title; ``trail`` its titles from the top of the document.
        text: the chunk (a slice of the document's cleaned text, ``start`` to ``end``).
        line: 1-based line in the source file where the section starts.
    """

    id: str
    file: str
    section: str
    trail: tuple[str, ...]
    text: str
    start: int
    end: int
    line: int


_PARAGRAPH = re.compile(r"\n[ \t]*\n\s*")
_SENTENCE = re.compile(r"(?<=[.!?:;])[\"')\]]*([ \t]+)(?=[\"'(\[`A-Z0-9])|(\n)")
_SPACE = re.compile(r"\s+")


def _boundaries(text: str) -> tuple[list[tuple[int, int]], list[tuple[int, int]], list[tuple[int, int]]]:
    """``(end of the piece before, start of the piece after)`` for paragraph, sentence/line and word boundaries."""
    paragraphs = [(m.start(), m.end()) for m in _PARAGRAPH.finditer(text)]
    sentences = []
    for m in _SENTENCE.finditer(text):
        group = 1 if m.group(1) is not None else 2
        sentences.append((m.start(group), m.end(group)))
    words = [(m.start(), m.end()) for m in _SPACE.finditer(text)]
    return paragraphs, sentences, words


def _split(text: str, sizes: ChunkSizes, rng: random.Random) -> list[tuple[int, int]]:
    """``(start, end)`` of each chunk of one section's text."""
    tiers = _boundaries(text)
    word_starts = [b[0] for b in tiers[2]]
    spans: list[tuple[int, int]] = []
    pos, length = 0, len(text)
    while pos < length:
        remaining = length - pos
        target = sizes.draw(rng)
        if remaining <= target:
            spans.append((pos, length))
            break
        if remaining - target < sizes.min_chars:  # the rest would be too short to stand alone
            if remaining <= sizes.max_chars:
                spans.append((pos, length))
                break
            target = remaining // 2
        goal = pos + target
        lo = pos + max(int(target * (1 - WINDOW)), min(sizes.min_chars, target))
        hi = pos + min(int(target * (1 + WINDOW)), sizes.max_chars)
        cut = None
        for tier in tiers[:2]:
            inside = [b for b in tier if lo <= b[0] <= hi]
            if inside:
                cut = min(inside, key=lambda b: abs(b[0] - goal))
                break
        if cut is None:  # the last space at or before the goal, else the first after pos (never inside a word)
            k = bisect.bisect_right(word_starts, max(goal, lo)) - 1
            if k >= 0 and word_starts[k] > pos:
                cut = tiers[2][k]
            else:
                k = bisect.bisect_right(word_starts, pos)
                cut = tiers[2][k] if k < len(word_starts) else (length, length)
        spans.append((pos, cut[0]))
        pos = cut[1]
    return [(a, b) for a, b in spans if b > a]


def file_ids(paths: Sequence[str]) -> list[str]:
    """A short id per file for chunk ids: the file's stem, or ``<folder>-<stem>`` where stems collide, then
    numbered if that still collides."""
    stems = [Path(p).stem for p in paths]
    ids = [s if stems.count(s) == 1 else f"{Path(p).parent.name}-{s}" for p, s in zip(paths, stems)]
    seen: dict[str, int] = {}
    out = []
    for i in ids:
        seen[i] = seen.get(i, 0) + 1
        out.append(i if ids.count(i) == 1 else f"{i}-{seen[i]}")
    return out


def chunk_document(document: Document, sizes: ChunkSizes = ChunkSizes(), seed: int = 0, file_id: str | None = None) -> list[Chunk]:
    """Chunks of one document, in order; ids ``<file_id>-<n>`` (``file_id`` defaults to the file's stem)."""
    file_id = file_id or Path(document.path).stem
    rng = random.Random(f"{seed}:{file_id}")
    chunks: list[Chunk] = []
    for section in document.sections:
        for a, b in _split(section.text, sizes, rng):
            chunks.append(Chunk(f"{file_id}-{len(chunks)}", document.path, section.title, section.trail,
                                section.text[a:b], section.start + a, section.start + b, section.line))  # fmt: skip
    return chunks


def chunk_documents(documents: Sequence[Document], sizes: ChunkSizes = ChunkSizes(), seed: int = 0) -> list[Chunk]:
    """Chunks of several documents, file by file; chunk ids are unique across them (see :func:`file_ids`)."""
    ids = file_ids([d.path for d in documents])
    return [chunk for doc, fid in zip(documents, ids) for chunk in chunk_document(doc, sizes, seed, fid)]
