"""Game guides -> cleaned text in titled sections: Markdown, reStructuredText and terminal-formatted plain text.

Every format becomes a :class:`Document`: its cleaned ``text`` and its :class:`Section` s, each a slice
``document.text[section.start:section.end]`` (character offsets are in the **cleaned** text, which
:func:`load_guide` rebuilds identically from the same file; ``line`` points back into the source file).
Paragraphs are separated by a blank line; lines of prose are unwrapped into one line per paragraph, while list
items, tables, figures and literal/code blocks keep their line structure.

- **Markdown** (``.md``, ``.markdown``): ATX headings ``#`` ... ``######`` and setext headings (a paragraph
  underlined with ``===`` or ``---``); fenced code blocks kept as text
  (a ``#`` inside them is no heading); links and images reduced to their text, emphasis and code marks dropped.
- **reStructuredText** (``.rst``): titles underlined, or over- and underlined, with any punctuation character
  (levels in order of first appearance, as docutils does); ``.. contents::``, ``toctree``, images, comments and
  link targets dropped with their bodies; admonitions (``.. note::``) kept as ``Note: ...``; literal blocks
  after ``::`` and other directives' bodies kept as text; inline markup and ``\\`` escapes undone.
- **Plain text** (``.txt``, e.g. NetHack's Guidebook): running page headers and footers (a line that repeats on
  many pages once digits are ignored, like ``NetHack Guidebook   12``) removed, a paragraph split by a page
  break joined again, justified lines unwrapped, words hyphenated across line breaks joined (``Yen-``/``dor``
  -> ``Yendor``) unless the text writes the pair with a hyphen elsewhere (``two-``/``weapon`` stays
  ``two-weapon``); numbered titles (``5.1.  Doorways``) and underlined titles become sections.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

#: file suffix -> format name
FORMATS = {".md": "markdown", ".markdown": "markdown", ".rst": "rst", ".txt": "text"}
#: file names (without suffix, case-insensitive) that are never guides when a folder is searched
NOT_GUIDES = ("license", "licence", "copying", "readme", "notice", "authors", "changelog")


@dataclass(frozen=True)
class Section:
    """One titled section of a guide.

    Attributes:
        title: the section's own title (numbering such as ``5.1.`` removed).
        trail: titles from the top of the document down to this one (``trail[-1] == title``).
        text: the cleaned body (paragraphs separated by ``"\\n\\n"``), never empty.
        start: offset of ``text`` in :attr:`Document.text` (characters).
        line: 1-based line of the source file where the section starts.
    """

    title: str
    trail: tuple[str, ...]
    text: str
    start: int
    line: int

    @property
    def end(self) -> int:
        """Offset just past the body in :attr:`Document.text`."""
        return self.start + len(self.text)


@dataclass(frozen=True)
class Document:
    """A cleaned guide: ``text`` is every section as ``title + "\\n\\n" + body``, sections separated by a blank line.

    Attributes:
        path: the file as given.
        format: ``markdown``, ``rst`` or ``text``.
        text: the cleaned text the sections' offsets point into.
        sections: sections with a non-empty body, in file order.
    """

    path: str
    format: str
    text: str
    sections: list[Section]


# ------------------------------------------------------------------------------------------------ finding files


def guide_format(path: Path) -> str:
    """The format of a guide file from its suffix (see :data:`FORMATS`).

    Raises:
        ValueError: an unsupported suffix.
    """
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unsupported guide type {path.suffix or '(none)'!r}; use one of {', '.join(FORMATS)}")
    return fmt


def find_guides(paths: Iterable[str | Path]) -> list[Path]:
    """Guide files named by ``paths``: files as given, folders searched recursively for ``.md .markdown .rst
    .txt`` files (sorted; LICENSE, README and similar skipped, as are hidden files and folders).

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: a file of an unsupported type, or no guide found at all.
    """
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for file in sorted(path.rglob("*")):
                rel = file.relative_to(path).parts
                if (file.is_file() and file.suffix.lower() in FORMATS and not any(p.startswith(".") for p in rel)
                        and file.stem.lower() not in NOT_GUIDES):  # fmt: skip
                    found.append(file)
        elif path.is_file():
            guide_format(path)  # an unsupported type fails here, before anything is read
            found.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    if not found:
        raise ValueError(f"no guide files ({', '.join(FORMATS)}) in {', '.join(str(p) for p in paths)}")
    return list(dict.fromkeys(found))


def load_guide(path: str | Path) -> Document:
    """Read and clean one guide file (format from its suffix).

    Raises:
        ValueError: unsupported suffix, a file that is not UTF-8 (naming the line), or no text at all.
        OSError: the file cannot be read.
    """
    path_obj = Path(path)
    fmt = guide_format(path_obj)
    data = path_obj.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ValueError(f"{path}: not UTF-8 text ({err.reason} at line {line})") from None
    document = parse_guide(text, fmt, str(path), default_title=path_obj.stem)
    if not document.sections:
        raise ValueError(f"{path}: no text found")
    return document


def parse_guide(text: str, fmt: str, path: str = "<string>", default_title: str = "Introduction") -> Document:
    """Clean ``text`` of format ``fmt`` (``markdown``, ``rst``, ``text``) into a :class:`Document`.

    ``default_title`` names the text before the first title. Raises ValueError for an unknown format.
    """
    parsers = {"markdown": _parse_markdown, "rst": _parse_rst, "text": _parse_text}
    if fmt not in parsers:
        raise ValueError(f"unknown guide format {fmt!r}; known: {', '.join(parsers)}")
    lines = text.replace("\r\n", "\n").replace("\r", "\n").replace("\f", "\n").expandtabs(8).split("\n")
    return _assemble(path, fmt, parsers[fmt](lines), default_title)


# ------------------------------------------------------------------------------------------------ shared parts


@dataclass
class _RawSection:
    title: str | None  # None: text before the first title
    level: int
    line: int
    paragraphs: list[str]


def _assemble(path: str, fmt: str, raw: list[_RawSection], default_title: str) -> Document:
    parts: list[str] = []
    offset = 0
    sections: list[Section] = []
    stack: list[tuple[int, str]] = []  # (level, title) of the open ancestors
    for sec in raw:
        title = sec.title if sec.title is not None else default_title
        while stack and stack[-1][0] >= sec.level:
            stack.pop()
        if sec.title is not None:  # the untitled start of a file is nobody's parent
            stack.append((sec.level, title))
        body = "\n\n".join(p for p in (p.strip() for p in sec.paragraphs) if p)
        if not body:
            continue  # a title with only sub-sections (or nothing) under it
        head = f"{title}\n\n"
        if parts:
            parts.append("\n\n")
            offset += 2
        trail = tuple(t for _, t in stack) if sec.title is not None else (title,)
        sections.append(Section(title, trail, body, offset + len(head), sec.line))
        parts.append(head + body)
        offset += len(head) + len(body)
    return Document(path, fmt, "".join(parts), sections)


_ITEM = re.compile(r"^\s*(?:[-*+\u2022]|\d{1,3}[.)]|#\.)\s+\S")
_TABLE_ROW = re.compile(r"^\s*(?:[|+]|=+\s+=+[ =]*$)")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _squeeze(text: str) -> str:
    return re.sub(r"[ \t]{2,}", " ", text).strip()


def _unwrap(lines: Sequence[str], join=None) -> str:
    """One paragraph's source lines -> text: prose unwrapped to one line, a list kept one item per line, table
    rows kept as they are, a definition-list term (short first line, deeper-indented body) on its own line.
    ``join(a, b)`` joins two wrapped lines (default: with a space)."""
    join = join or (lambda a, b: f"{a} {b}")
    lines = [ln.rstrip() for ln in lines if ln.strip()]
    if not lines:
        return ""
    out: list[str] = []
    current: str | None = None
    is_list = bool(_ITEM.match(lines[0]))
    term = len(lines) > 1 and _indent(lines[1]) > _indent(lines[0]) and len(lines[0].strip()) <= 40 and not is_list
    base = min(_indent(ln) for ln in lines)
    for k, line in enumerate(lines):
        if _TABLE_ROW.match(line):
            if current is not None:
                out.append(_squeeze(current))
                current = None
            out.append(line[base:] if _indent(line) >= base else line.strip())
            continue
        starts_item = is_list and bool(_ITEM.match(line)) and _indent(line) <= _indent(lines[0])
        if current is None or starts_item or (term and k == 1):
            if current is not None:
                out.append(_squeeze(current))
            current = line.strip()
        else:
            current = join(current, line.strip())
    if current is not None:
        out.append(_squeeze(current))
    return "\n".join(out)


def _preformatted(lines: Sequence[str]) -> str:
    """Literal lines (code, figures, tables): common indentation removed, line structure kept."""
    kept = [ln.rstrip() for ln in lines]
    while kept and not kept[0]:
        kept.pop(0)
    while kept and not kept[-1]:
        kept.pop()
    if not kept:
        return ""
    base = min(_indent(ln) for ln in kept if ln)
    return "\n".join(ln[base:] for ln in kept)


# ------------------------------------------------------------------------------------------------ Markdown

_MD_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_MD_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_MD_SETEXT = re.compile(r"^ {0,3}(=+|-+)\s*$")


def _md_inline(text: str) -> str:
    text = re.sub(r"<!--.*?-->", "", text)
    text = re.sub(r"!\[([^\]]*)\]\([^)]*\)", r"\1", text)  # image -> its alt text
    text = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", text)  # link -> its text
    text = re.sub(r"\[([^\]]+)\]\[[^\]]*\]", r"\1", text)  # reference link
    text = re.sub(r"(\*\*|__)(\S(?:.*?\S)?)\1", r"\2", text)
    text = re.sub(r"(?<![\w*])\*(\S(?:.*?\S)?)\*(?![\w*])", r"\1", text)
    text = re.sub(r"`([^`]+)`", r"\1", text)
    return text


def _parse_markdown(lines: list[str]) -> list[_RawSection]:
    sections = [_RawSection(None, 0, 1, [])]
    block: list[str] = []
    fence: str | None = None
    code: list[str] = []

    def flush() -> None:
        if block:
            sections[-1].paragraphs.append(_md_inline(_unwrap(block)))
            block.clear()

    for number, line in enumerate(lines, start=1):
        fenced = _MD_FENCE.match(line)
        if fence is not None:
            if fenced and fenced.group(1) == fence:
                sections[-1].paragraphs.append(_preformatted(code))
                fence, code = None, []
            else:
                code.append(line)
            continue
        if fenced:
            flush()
            fence = fenced.group(1)
            continue
        setext = _MD_SETEXT.match(line) if block else None
        heading = _MD_HEADING.match(line)
        if setext:  # the paragraph above is the title (CommonMark: `===` level 1, `---` level 2)
            title, start = _md_inline(_unwrap(block)).strip(), number - len(block)
            block.clear()
            sections.append(_RawSection(title, 1 if setext.group(1)[0] == "=" else 2, start, []))
        elif heading:
            flush()
            sections.append(_RawSection(_md_inline(heading.group(2)).strip(), len(heading.group(1)), number, []))
        elif not line.strip() or re.fullmatch(r"\s*(?:[-*_]\s*){3,}", line):  # blank line or thematic break
            flush()
        else:
            block.append(line)
    flush()
    if code:
        sections[-1].paragraphs.append(_preformatted(code))  # an unclosed fence runs to the end
    return sections


# ------------------------------------------------------------------------------------------------ reStructuredText

_RST_ADORNMENT = re.compile(r"^([!-/:-@\[-`{-~])\1{2,}\s*$")
_RST_DIRECTIVE = re.compile(r"^(\s*)\.\.(?:\s+(?:\|[^|]+\|\s+)?([\w:-]+)::(.*))?(?:\s|$)")
#: directives dropped with their bodies (navigation, pictures, includes)
_RST_DROP = {"contents", "toctree", "image", "figure", "include", "raw", "only", "sectnum", "index", "meta",
             "highlight", "role", "default-role", "title", "replace", "unicode", "date", "target-notes", "footer",
             "header"}  # fmt: skip
#: admonitions: kept as ``<Name>: text``
_RST_ADMONITIONS = {"note", "warning", "tip", "hint", "important", "caution", "attention", "danger", "error",
                    "admonition", "seealso"}  # fmt: skip


def _rst_inline(text: str) -> str:
    text = re.sub(r"`([^`<]*?)\s*<[^>]+>`__?", r"\1", text)  # `text <url>`_
    text = re.sub(r":[\w:-]+:`([^`]+)`", r"\1", text)  # :role:`text`
    text = re.sub(r"``(.+?)``", r"\1", text)
    text = re.sub(r"`([^`]+)`__?", r"\1", text)  # `Section name`_
    text = re.sub(r"`([^`]+)`", r"\1", text)
    text = re.sub(r"(\*\*)(\S(?:.*?\S)?)\1", r"\2", text)
    text = re.sub(r"(?<![\w*])\*(\S(?:.*?\S)?)\*(?![\w*])", r"\1", text)
    text = re.sub(r"\|([\w -]+)\|", r"\1", text)  # |substitution|
    return re.sub(r"\\(.)", r"\1", text)  # backslash escapes


def _is_adornment(line: str) -> bool:
    return bool(_RST_ADORNMENT.match(line))


def _parse_rst(lines: list[str]) -> list[_RawSection]:
    sections = [_RawSection(None, 0, 1, [])]
    styles: list[tuple[str, bool]] = []  # title styles in order of first appearance = levels
    n = len(lines)

    def title(text: str, char: str, over: bool, line: int) -> None:
        style = (char, over)
        if style not in styles:
            styles.append(style)
        sections.append(_RawSection(_rst_inline(text.strip()), styles.index(style) + 1, line, []))

    def body_end(start: int, indent: int) -> int:
        """First line at or after ``start`` that is not blank and not indented deeper than ``indent``."""
        j = start
        while j < n and (not lines[j].strip() or _indent(lines[j]) > indent):
            j += 1
        return j

    i = 0
    while i < n:
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        # over- and underlined title
        if (_is_adornment(line) and i + 2 < n and lines[i + 1].strip() and lines[i + 2].strip() == line.strip()
                and not _is_adornment(lines[i + 1])):  # fmt: skip
            title(lines[i + 1], line.strip()[0], True, i + 2)
            i += 3
            continue
        # underlined title: an unindented line whose next line is an adornment at least as long
        nxt = lines[i + 1] if i + 1 < n else ""
        if (_indent(line) == 0 and _is_adornment(nxt) and len(nxt.strip()) >= min(len(line.strip()), 4)
                and not _is_adornment(line)):  # fmt: skip
            title(line, nxt.strip()[0], False, i + 1)
            i += 2
            continue
        if _is_adornment(line):  # a transition (horizontal rule)
            i += 1
            continue
        directive = _RST_DIRECTIVE.match(line)
        if directive:
            indent, name, args = _indent(line), (directive.group(2) or "").lower(), (directive.group(3) or "").strip()
            end = body_end(i + 1, indent)
            body = [ln for ln in lines[i + 1 : end] if not re.match(r"^\s*:[\w -]+:", ln)]  # options left out
            if name in _RST_ADMONITIONS:
                prose = _unwrap([ln.strip() for ln in ([args] if args else []) + body])  # one paragraph
                label = name.capitalize() if name != "seealso" else "See also"
                sections[-1].paragraphs.append(f"{label}: {_rst_inline(prose)}")
            elif name and name not in _RST_DROP:  # code-block and the like: the body is text worth keeping
                sections[-1].paragraphs.append(_preformatted(body))
            i = end  # comments, link targets and dropped directives vanish with their bodies
            continue
        j = i
        while j < n and lines[j].strip():
            j += 1
        block = lines[i:j]
        if block[-1].rstrip().endswith("::"):  # paragraph introducing a literal block
            last = block[-1].rstrip()[:-2].rstrip()
            if last.endswith(" ") or not last or block[-1].rstrip().endswith(" ::"):
                block = [*block[:-1], last] if last else block[:-1]
            else:
                block = [*block[:-1], last + ":"]
            if block:
                sections[-1].paragraphs.append(_rst_inline(_unwrap(block)))
            end = body_end(j, _indent(lines[i]))
            sections[-1].paragraphs.append(_preformatted(lines[j:end]))
            i = end
            continue
        if re.match(r"^\s*=+(\s+=+)+\s*$", block[0]):  # simple table
            sections[-1].paragraphs.append(_rst_inline(_preformatted(block)))
        else:
            sections[-1].paragraphs.append(_rst_inline(_unwrap(block)))
        i = j
    return sections


# ------------------------------------------------------------------------------------------------ plain text

_NUMBERED_TITLE = re.compile(r"^\s{0,12}(\d{1,2}(?:\.\d{1,2}){0,4})\.?\s{1,4}([A-Z`\"'(].{0,70})$")
_PAGE_MARK = None  # a removed running header/footer line in the line list


def _running_lines(lines: Sequence[str]) -> set[int]:
    """Indices of page headers/footers: lines that repeat (digits ignored) at least 3 times and are laid out as
    a running title (a wide gap between two parts, or a bare page number)."""

    def key(line: str) -> str:
        return re.sub(r"\d+", "#", " ".join(line.split()))

    counts = Counter(key(ln) for ln in lines if ln.strip())
    found = set()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or counts[key(line)] < 3:
            continue
        gap = re.search(r"\S {8,}\S", stripped)
        bare_number = re.fullmatch(r"[-\s]*(?:page\s*)?\d+[-\s]*", stripped, re.I)
        if gap or bare_number:
            found.add(i)
    return found


def _hyphen_vocabulary(lines: Sequence[str]) -> tuple[set[str], set[str]]:
    """Lower-cased words and inner-hyphenated pairs (``two-weapon``) that occur inside lines, not at their ends."""
    words: set[str] = set()
    pairs: set[str] = set()
    for line in lines:
        body = re.sub(r"[A-Za-z]+-\s*$", "", line)  # a line-end fragment is no word of the text
        words.update(w.lower() for w in re.findall(r"[A-Za-z]+", body))
        pairs.update(p.lower() for p in re.findall(r"[A-Za-z]+-[A-Za-z]+", body))
    return words, pairs


def make_dehyphenator(words: set[str], pairs: set[str]):
    """``join(a, b)`` for two wrapped lines of prose: a word split as ``frag-`` / ``ment`` is joined to
    ``fragment`` when the text uses ``fragment`` elsewhere; a hyphen is kept when the text writes ``frag-ment``
    with a hyphen elsewhere (a compound such as ``two-weapon``), or when ``fragment`` is unknown and ``ment``
    starts with a capital letter or both halves are words of their own. Otherwise the halves are joined."""

    def join(a: str, b: str) -> str:
        m = re.search(r"(?<![-\w])([A-Za-z]+(?:-[A-Za-z]+)*)-$", a)
        n = re.match(r"([A-Za-z]+)", b)
        if not m or not n:
            return f"{a} {b}"
        head, tail = m.group(1).split("-")[-1], n.group(1)
        if f"{head}-{tail}".lower() in pairs:
            return a + b  # a real hyphen that fell at the line end
        joined, known = (head + tail).lower(), lambda w: w.lower() in words
        if known(joined):
            return a[:-1] + b
        if tail[0].isupper() or (known(head) and known(tail)):
            return a + b  # two words of their own (``swallow-and-``/``digest``): a compound
        return a[:-1] + b  # by default a typesetter's hyphen

    return join


def _parse_text(lines: list[str]) -> list[_RawSection]:
    running = _running_lines(lines)
    words, pairs = _hyphen_vocabulary([ln for i, ln in enumerate(lines) if i not in running])
    join = make_dehyphenator(words, pairs)

    # lines without running headers; a page break inside a paragraph (same indentation on both sides) is closed
    kept: list[tuple[int, str]] = []  # (1-based source line, text)
    i, n = 0, len(lines)
    while i < n:
        if i in running:
            j = i
            while j < n and (j in running or not lines[j].strip()):
                j += 1
            while kept and not kept[-1][1].strip():
                kept.pop()
            prev = kept[-1][1] if kept else ""
            nxt = lines[j] if j < n else ""
            continues = (prev.strip() and nxt.strip() and _indent(prev) == _indent(nxt)
                         and not _NUMBERED_TITLE.match(prev) and not _NUMBERED_TITLE.match(nxt))  # fmt: skip
            if not continues:
                kept.append((i + 1, ""))
            i = j
            continue
        kept.append((i + 1, lines[i]))
        i += 1

    sections = [_RawSection(None, 0, 1, [])]
    k = 0
    while k < len(kept):
        if not kept[k][1].strip():
            k += 1
            continue
        j = k
        while j < len(kept) and kept[j][1].strip():
            j += 1
        block = [text for _, text in kept[k:j]]
        first_line = kept[k][0]
        numbered = _NUMBERED_TITLE.match(block[0]) if len(block) == 1 else None
        if numbered and not block[0].rstrip().endswith((".", ",", ";")):
            sections.append(_RawSection(numbered.group(2).strip(), numbered.group(1).count(".") + 1, first_line, []))
        elif len(block) == 2 and re.fullmatch(r"\s*([=-])\1{2,}\s*", block[1]) and len(block[1].strip()) >= len(block[0].strip()) - 2:
            sections.append(_RawSection(block[0].strip(), 1 if block[1].strip()[0] == "=" else 2, first_line, []))
        else:
            sections[-1].paragraphs.append(_unwrap(block, join))
        k = j
    return sections
