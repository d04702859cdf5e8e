"""ViGGO task: read a player's utterance, produce its meaning representation (MR).

ViGGO is a video-game dialogue corpus: Juraska, Bowden, Walker, "ViGGO: A Video Game Corpus for
Data-To-Text Generation in Open-Domain Conversation", INLG 2019, https://aclanthology.org/W19-8623
(also ``gem/viggo`` on the Hugging Face Hub). The corpus pairs an MR with a reference utterance;
GameSense inverts it: input ``ref`` (what a player says), output ``mr``, e.g.::

    give_opinion(name[SpellForce 3], release_year[2017], developer[Grimlore Games], rating[poor])

Grammar (checked against every row of the train and validation files): ``act(attr[value], ...)``
with one of 9 dialogue acts, at least one slot, attributes from a closed set of 14, values free
text without brackets (they do contain ``,``, ``(``, ``)``, ``+``, ``:``, ``&``, ``'``), possibly
empty (``request_attribute(player_perspective[])``). List-valued attributes (genres, platforms,
player_perspective) separate items with ``", "``.

This module holds the parser, the data loader, the chat formatting for TRL, the metrics, and the task
plugin :class:`ViggoTask` (``TASK``) that the generic layers use.
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from pydantic import Field

from gamesense.tasks.base import DataError, LoadReport, Record, Task, TaskOptions

TASK_NAME = "viggo"

DIALOGUE_ACTS: tuple[str, ...] = (
    "inform",
    "confirm",
    "give_opinion",
    "recommend",
    "request",
    "request_attribute",
    "request_explanation",
    "suggest",
    "verify_attribute",
)

ATTRIBUTES: tuple[str, ...] = (
    "name",
    "release_year",
    "exp_release_date",
    "developer",
    "esrb",
    "rating",
    "genres",
    "player_perspective",
    "platforms",
    "available_on_steam",
    "has_linux_release",
    "has_mac_release",
    "specifier",
    "has_multiplayer",
)

# Attributes whose value is a ", "-separated list; their item order carries no meaning.
# Other values may contain commas too (exp_release_date[August 14, 2018],
# developer[Spectrum HoloByte, Inc.]) and are compared as plain strings.
LIST_ATTRIBUTES: tuple[str, ...] = ("genres", "platforms", "player_perspective")


# --------------------------------------------------------------------------- parsing


class MRParseError(ValueError):
    """An MR string does not follow the ViGGO grammar; the message gives the char offset."""


@dataclass(frozen=True)
class MeaningRepresentation:
    """A parsed ViGGO MR.

    Attributes:
        act: one of ``DIALOGUE_ACTS``.
        slots: ``(attribute, value)`` pairs in source order; values verbatim (may be ``""``).
    """

    act: str
    slots: tuple[tuple[str, str], ...]

    def to_string(self) -> str:
        """Canonical text form ``act(attr[value], attr[value])``; ``parse_mr`` inverts it."""
        return f"{self.act}({', '.join(f'{attr}[{value}]' for attr, value in self.slots)})"


_IDENT = re.compile(r"[A-Za-z_]\w*")
_WS = re.compile(r"\s*")


def _found(text: str, pos: int) -> str:
    return repr(text[pos]) if pos < len(text) else "end of input"


def _skip_ws(text: str, pos: int) -> int:
    return _WS.match(text, pos).end()


def parse_mr(text: str) -> MeaningRepresentation:
    """Parse one MR under the strict ViGGO grammar.

    Whitespace between tokens is ignored; slot values are kept verbatim.

    Args:
        text: e.g. ``"inform(name[Portal 2], genres[platformer, puzzle])"``.

    Returns:
        The ``MeaningRepresentation``.

    Raises:
        MRParseError: unknown dialogue act or attribute, no slots, a ``[`` that is not closed
            (or a ``[`` inside a value), missing ``(``/``)``/``,``, or text after the closing
            ``)``. The message says what was expected and at which character offset.
    """
    if not isinstance(text, str):
        raise MRParseError(f"expected an MR string, got {type(text).__name__}")
    pos = _skip_ws(text, 0)
    match = _IDENT.match(text, pos)
    if match is None:
        raise MRParseError(f"expected a dialogue act at offset {pos}, found {_found(text, pos)}")
    act = match.group()
    if act not in DIALOGUE_ACTS:
        raise MRParseError(
            f"unknown dialogue act {act!r} at offset {pos}; expected one of {', '.join(DIALOGUE_ACTS)}"
        )
    pos = _skip_ws(text, match.end())
    if not text.startswith("(", pos):
        raise MRParseError(f"expected '(' after {act!r} at offset {pos}, found {_found(text, pos)}")
    pos += 1

    slots: list[tuple[str, str]] = []
    while True:
        pos = _skip_ws(text, pos)
        match = _IDENT.match(text, pos)
        if match is None:
            raise MRParseError(f"expected an attribute name at offset {pos}, found {_found(text, pos)}")
        attr = match.group()
        if attr not in ATTRIBUTES:
            raise MRParseError(
                f"unknown attribute {attr!r} at offset {pos}; expected one of {', '.join(ATTRIBUTES)}"
            )
        pos = _skip_ws(text, match.end())
        if not text.startswith("[", pos):
            raise MRParseError(f"expected '[' after {attr!r} at offset {pos}, found {_found(text, pos)}")
        start = pos + 1
        close = text.find("]", start)
        nested = text.find("[", start)
        if close == -1:
            raise MRParseError(f"unbalanced '[' at offset {pos}: expected ']' to close the value of {attr!r}")
        if nested != -1 and nested < close:
            raise MRParseError(
                f"unexpected '[' at offset {nested} inside the value of {attr!r} opened at offset {pos}"
            )
        slots.append((attr, text[start:close]))
        pos = _skip_ws(text, close + 1)
        if text.startswith(",", pos):
            pos += 1
            continue
        if text.startswith(")", pos):
            pos += 1
            break
        raise MRParseError(f"expected ',' or ')' at offset {pos}, found {_found(text, pos)}")

    pos = _skip_ws(text, pos)
    if pos != len(text):
        raise MRParseError(f"expected end of MR at offset {pos}, found trailing text {text[pos:pos + 30]!r}")
    return MeaningRepresentation(act=act, slots=tuple(slots))


def try_parse_mr(text: str) -> MeaningRepresentation | None:
    """``parse_mr`` that returns ``None`` instead of raising ``MRParseError``."""
    try:
        return parse_mr(text)
    except MRParseError:
        return None


# --------------------------------------------------------------------------- data


@dataclass
class ViggoExample:
    """One usable row.

    Attributes:
        line: 1-based line in the file where the record starts (CSV header is line 1).
        ref: the utterance (model input), surrounding whitespace stripped.
        mr: the MR (model target) in canonical form (``parse_mr(mr).to_string()``).
    """

    line: int
    ref: str
    mr: str


# (mr column, ref column): the original corpus / slug2slug, then gem/viggo on the Hub.
_COLUMN_SETS: tuple[tuple[str, str], ...] = (("mr", "ref"), ("meaning_representation", "target"))
_EXPECTED_COLUMNS = "expected columns 'mr' and 'ref' (or gem/viggo's 'meaning_representation' and 'target')"


def _pick_columns(path: Path, found: Sequence[str], where: str = "") -> tuple[str, str]:
    for mr_col, ref_col in _COLUMN_SETS:
        if mr_col in found and ref_col in found:
            return mr_col, ref_col
    raise DataError(f"viggo data {path}{where}: {_EXPECTED_COLUMNS}, found {list(found)}")


def _iter_csv(path: Path, handle) -> Iterator[tuple[int, dict[str, str]]]:
    # The csv module (not pandas) so that each record's first line is known even when a quoted
    # field spans lines; values come back as str, never NaN.
    reader = csv.reader(handle)
    header = next(reader, None)
    if header is None:
        raise DataError(f"viggo data {path}: empty file; {_EXPECTED_COLUMNS}")
    mr_col, ref_col = _pick_columns(path, header)
    mr_idx, ref_idx = header.index(mr_col), header.index(ref_col)
    next_line = reader.line_num + 1
    for row in reader:
        line, next_line = next_line, reader.line_num + 1
        if not row:  # blank line, as pandas would skip it
            continue
        yield line, {
            "mr": row[mr_idx] if mr_idx < len(row) else "",
            "ref": row[ref_idx] if ref_idx < len(row) else "",
        }


def _iter_jsonl(path: Path, handle) -> Iterator[tuple[int, dict[str, str]]]:
    for line, raw in enumerate(handle, start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DataError(f"viggo data {path} line {line}: not valid JSON ({exc.msg})") from exc
        if not isinstance(record, dict):
            found = type(record).__name__
            raise DataError(f"viggo data {path} line {line}: expected a JSON object, found {found}")
        mr_col, ref_col = _pick_columns(path, list(record), where=f" line {line}")
        yield line, {
            "mr": "" if record[mr_col] is None else str(record[mr_col]),
            "ref": "" if record[ref_col] is None else str(record[ref_col]),
        }


def load_viggo(path: str | Path, max_rows: int | None = None) -> LoadReport:
    """Load a ViGGO CSV (``.csv``) or JSON Lines (``.jsonl``/``.json``) file.

    Columns/keys ``mr`` and ``ref``, or gem/viggo's ``meaning_representation`` and ``target``;
    other columns are ignored. Rows with an empty ``mr`` or ``ref``, or an ``mr`` that
    ``parse_mr`` rejects, are listed in ``LoadReport.skipped`` as ``(line, reason)`` and left out.

    Args:
        path: the file.
        max_rows: read only the first N data rows (skipped rows count towards N); None: all.

    Returns:
        ``LoadReport`` with ``examples`` (in file order) and ``skipped``.

    Raises:
        DataError: file missing or unreadable (not UTF-8, bad CSV/JSON), or wrong columns.
        ValueError: ``max_rows`` < 1.
    """
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"max_rows must be >= 1 or None, got {max_rows}")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"viggo data {path}: file not found")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        iterate = _iter_csv
    elif suffix in (".jsonl", ".json"):
        iterate = _iter_jsonl
    else:
        raise DataError(f"viggo data {path}: expected a .csv, .jsonl or .json file")

    report = LoadReport(path=str(path))
    try:
        # utf-8-sig: spreadsheet exports often start with a BOM, which would rename the first column.
        with path.open(encoding="utf-8-sig", newline="") as handle:
            for line, row in iterate(path, handle):
                if max_rows is not None and report.total_rows >= max_rows:
                    break
                ref, mr = row["ref"].strip(), row["mr"].strip()
                if not ref or not mr:
                    empty = [name for name, value in (("mr", mr), ("ref", ref)) if not value]
                    report.skipped.append((line, f"empty {' and '.join(empty)}"))
                    continue
                try:
                    parsed = parse_mr(mr)
                except MRParseError as exc:
                    report.skipped.append((line, f"unparsable mr: {exc}"))
                    continue
                report.examples.append(ViggoExample(line=line, ref=ref, mr=parsed.to_string()))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"viggo data {path}: cannot read ({exc})") from exc
    return report


# --------------------------------------------------------------------------- chat formatting


def build_messages(ref: str, system_prompt: str) -> list[dict[str, str]]:
    """Chat messages for one utterance.

    Args:
        ref: the player's utterance.
        system_prompt: instruction in the system turn; ``""``: no system message.

    Returns:
        ``[{"role": "system", "content": ...}, {"role": "user", "content": ref}]``.
    """
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": ref})
    return messages


def to_prompt_completion(example: ViggoExample, system_prompt: str) -> dict:
    """One training record in TRL's conversational prompt-completion format.

    Returns:
        ``{"prompt": build_messages(example.ref, system_prompt),
        "completion": [{"role": "assistant", "content": example.mr}]}``.
    """
    return {
        "prompt": build_messages(example.ref, system_prompt),
        "completion": [{"role": "assistant", "content": example.mr}],
    }


def extract_mr(generated: str) -> str:
    """Clean a model output: strip whitespace and keep only the first line.

    Returns:
        The candidate MR string (``""`` for empty output); it is not validated here.
    """
    stripped = generated.strip()
    return stripped.splitlines()[0].strip() if stripped else ""


# --------------------------------------------------------------------------- metrics

# Fallbacks for predictions that fail strict parsing, so a nearly right MR gets partial credit.
_LENIENT_ACT = re.compile(r"\s*(\w+)\s*\(")
_LENIENT_SLOT = re.compile(r"(\w+)\[([^\]]*)\]")


def _normalise_value(attr: str, value: str) -> str:
    if attr in LIST_ATTRIBUTES:
        items = {" ".join(item.split()) for item in value.split(",")} - {""}
        return ", ".join(sorted(items))
    return " ".join(value.split())


def _slot_counter(slots) -> Counter:
    return Counter((attr, _normalise_value(attr, value)) for attr, value in slots)


@dataclass(frozen=True)
class _RowScore:
    exact_match: bool
    mr_match: bool
    act_match: bool
    valid_mr: bool
    n_predicted: int
    n_reference: int
    n_correct: int


def _score_row(prediction: str, reference: str) -> _RowScore:
    ref = parse_mr(reference)
    ref_slots = _slot_counter(ref.slots)
    pred = try_parse_mr(prediction)
    if pred is not None:
        pred_act, pred_slots = pred.act, _slot_counter(pred.slots)
    else:
        act_match = _LENIENT_ACT.match(prediction)
        pred_act = act_match.group(1) if act_match else None
        pred_slots = _slot_counter(_LENIENT_SLOT.findall(prediction))
    return _RowScore(
        exact_match=prediction.strip() == reference.strip(),
        mr_match=pred is not None and pred_act == ref.act and pred_slots == ref_slots,
        act_match=pred_act == ref.act,
        valid_mr=pred is not None,
        n_predicted=sum(pred_slots.values()),
        n_reference=sum(ref_slots.values()),
        n_correct=sum((pred_slots & ref_slots).values()),
    )


def per_row_scores(prediction: str, reference: str) -> dict:
    """Per-row correctness flags (for writing predictions JSONL).

    Returns:
        ``{"exact_match": bool, "mr_match": bool, "act_match": bool, "valid_mr": bool}``;
        see ``compute_metrics`` for the definitions.

    Raises:
        MRParseError: the reference MR does not parse (gold data must be valid).
    """
    row = _score_row(prediction, reference)
    return {
        "exact_match": row.exact_match,
        "mr_match": row.mr_match,
        "act_match": row.act_match,
        "valid_mr": row.valid_mr,
    }


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer  # imported lazily: only evaluation needs it

    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)


def compute_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Score predicted MRs against reference MRs (row i against row i).

    Pass predictions through ``extract_mr`` first. Metrics (all in [0, 1]; means over rows
    unless stated):

    - ``exact_match``: strings equal after stripping surrounding whitespace.
    - ``mr_match``: prediction parses, same act, same multiset of (attribute, value) slots in
      any order; values whitespace-normalised, list attributes (genres, platforms,
      player_perspective) compared as sets of items. Case-sensitive.
    - ``act_accuracy``: same dialogue act; for a prediction that does not parse, the
      identifier before its first ``(`` is taken as its act.
    - ``slot_precision``/``slot_recall``/``slot_f1``: micro-averaged over all rows on
      (attribute, normalised value) pairs with multiset counting. For a prediction that does
      not parse, slots are extracted leniently with ``(\\w+)\\[([^\\]]*)\\]`` so a nearly
      right MR (e.g. missing ``)``) still earns partial credit; garbage yields no pairs, which
      lowers recall only. Precision (recall) is 0 when there are no predicted (reference) pairs.
    - ``valid_mr_rate``: share of predictions that parse under the strict grammar.
    - ``rouge1``/``rouge2``/``rougeL``: mean F-measure from ``rouge_score`` (its default
      tokenizer lowercases and keeps only alphanumeric tokens, so brackets and commas are
      ignored; a lexical overlap signal only).
    - ``n``: number of rows.

    Returns:
        The metric name -> value dict above.

    Raises:
        ValueError: empty input or different lengths.
        MRParseError: a reference MR does not parse (message names the row index).
    """
    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("compute_metrics needs at least one prediction")

    rows: list[_RowScore] = []
    for index, (prediction, reference) in enumerate(zip(predictions, references)):
        try:
            rows.append(_score_row(prediction, reference))
        except MRParseError as exc:
            raise MRParseError(f"reference {index} does not parse: {exc}") from exc

    n = len(rows)
    predicted = sum(r.n_predicted for r in rows)
    gold = sum(r.n_reference for r in rows)
    correct = sum(r.n_correct for r in rows)
    precision = correct / predicted if predicted else 0.0
    recall = correct / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0

    scorer = _rouge_scorer()
    rouge = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for prediction, reference in zip(predictions, references):
        scores = scorer.score(reference, prediction)  # (target, prediction)
        for key in rouge:
            rouge[key] += scores[key].fmeasure

    return {
        "exact_match": sum(r.exact_match for r in rows) / n,
        "mr_match": sum(r.mr_match for r in rows) / n,
        "act_accuracy": sum(r.act_match for r in rows) / n,
        "slot_precision": precision,
        "slot_recall": recall,
        "slot_f1": f1,
        "valid_mr_rate": sum(r.valid_mr for r in rows) / n,
        **{key: total / n for key, total in rouge.items()},
        "n": float(n),
    }


class ViggoOptions(TaskOptions):
    """ViGGO's options (``task_options`` in a recipe)."""

    system_prompt: str = Field(
        description="instruction in the system turn (short: every prompt token costs CPU time); '': none"
    )


class ViggoTask(Task):
    """ViGGO as a task plugin: utterance -> MR, one line, scored statically (exact match gates promotion)."""

    name = TASK_NAME
    Options = ViggoOptions
    evaluation = ("static",)
    gate_metric = "exact_match"
    metric_order = ("exact_match", "mr_match", "act_accuracy", "slot_precision", "slot_recall", "slot_f1",
                    "valid_mr_rate", "rouge1", "rouge2", "rougeL")  # fmt: skip
    stop_strings = ("\n",)  # an MR is one line

    options: ViggoOptions

    def load(self, path: str | Path, max_rows: int | None = None) -> LoadReport:
        return load_viggo(path, max_rows)

    def prompt(self, text: str) -> list[dict[str, str]]:
        return build_messages(text, self.options.system_prompt)

    def sft_records(self, examples: Sequence[ViggoExample]) -> list[Record]:
        return [to_prompt_completion(ex, self.options.system_prompt) for ex in examples]

    def eval_records(self, examples: Sequence[ViggoExample]) -> list[Record]:
        return [{"prompt": self.prompt(ex.ref), "reference": ex.mr, "input": ex.ref, "line": ex.line}
                for ex in examples]  # fmt: skip

    def parse_output(self, text: str) -> str:
        return extract_mr(text)

    def compute_metrics(self, predictions: Sequence[str], records: Sequence[Record]) -> dict[str, float]:
        return compute_metrics(predictions, [r["reference"] for r in records])

    def row_scores(self, prediction: str, record: Record) -> dict:
        return per_row_scores(prediction, record["reference"])


TASK = ViggoTask
