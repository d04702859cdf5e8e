"""Self-instruct Q&A from guides: ingestion of each format, the chunker, the teacher-output parser, each filter on
hand-written cases, and ``synth qa`` end to end against a scripted OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import json
import random
import re
import statistics
from pathlib import Path

import pytest
from fastapi import HTTPException
from support import served_on_localhost
from test_teacher import openai_app
from typer.testing import CliRunner

from gamesense.tasks.guide_qa.chunking import ChunkSizes, chunk_document, chunk_documents
from gamesense.tasks.guide_qa.filters import LengthBounds, NearDuplicates, groundedness, length_problem, source_mention
from gamesense.tasks.guide_qa.ingest import find_guides, load_guide, parse_guide
from gamesense.tasks.guide_qa.prompts import (
    VARIANTS,
    answer_messages,
    generation_messages,
    parse_answer,
    parse_pairs,
    parse_questions,
    parse_verdict,
    pick_variant,
    question_messages,
)
from gamesense.tasks.guide_qa.synth import SynthOptions, side_files, synthesize
from gamesense.teacher import Teacher, TeacherError

GUIDES = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "guides"


def spans_hold(doc) -> bool:
    return all(doc.text[s.start : s.end] == s.text for s in doc.sections)


# ------------------------------------------------------------------------------------------------ ingestion


def test_markdown_headings_paragraphs_lists_and_code():
    md = ("Intro line one\nwrapped here.\n\n# Items\n\nA [brass lantern](http://x) is **bright**\nand `cheap`.\n\n"
          "- first item\n  continues\n- second item\n\n## Weapons ##\n\n```\n# not a heading\nx = 1\n```\n\n# Empty\n")  # fmt: skip
    doc = parse_guide(md, "markdown", "g.md", default_title="g")
    assert [s.title for s in doc.sections] == ["g", "Items", "Weapons"]
    assert doc.sections[2].trail == ("Items", "Weapons")
    assert doc.sections[0].text == "Intro line one wrapped here."
    assert doc.sections[1].text == "A brass lantern is bright and cheap.\n\n- first item continues\n- second item"
    assert doc.sections[2].text == "# not a heading\nx = 1"
    assert doc.sections[1].line == 4 and spans_hold(doc)
    setext = parse_guide("Pets\n====\n\nYour dog\nfollows you.\n\nShops and\nprices\n---\n\nPay first.\n\n***\n",
                         "markdown", "g.md")  # fmt: skip
    assert [(s.title, s.trail, s.line) for s in setext.sections] == [
        ("Pets", ("Pets",), 1), ("Shops and prices", ("Pets", "Shops and prices"), 7)]  # fmt: skip
    assert setext.sections[0].text == "Your dog follows you." and setext.sections[1].text == "Pay first."


def test_rst_titles_directives_and_literal_blocks():
    rst = ("=====\nGame\n=====\n\n.. contents::\n   :depth: 2\n\nOverview\n--------\n\nSee `Combat`_ and ``keys``\n"
           "for *more*.\n\n.. note:: Humans are\n   average.\n\n.. comment that vanishes\n   with its body\n\n"
           "Keys::\n\n  a  attack\n  b  block\n\nAfter the block.\n\nCombat\n--------\n\nHit \\| hard.\n")  # fmt: skip
    doc = parse_guide(rst, "rst", "g.rst")
    assert [s.trail for s in doc.sections] == [("Game", "Overview"), ("Game", "Combat")]
    overview = doc.sections[0].text
    assert overview == ("See Combat and keys for more.\n\nNote: Humans are average.\n\nKeys:\n\na  attack\nb  block\n\n"
                        "After the block.")  # fmt: skip
    assert "contents" not in doc.text and "depth" not in doc.text and "vanishes" not in doc.text
    assert doc.sections[1].text == "Hit | hard." and spans_hold(doc)


def test_plain_text_pages_hyphenation_and_numbered_titles():
    header = "     Fake Guidebook                                         {}"
    footer = "     Fake 1.0                                   June 1, 2024"
    lines = ["     1.  Introduction", "", "          The Amulet of Yen-", "     dor is deep in  the  dungeon,  and",
             "     two-weapon   combat  helps.  Use", footer, "", header.format(1), "", "     your two-",
             "     weapon  skill and be-", "     ing careful.", "", "     1.1.  Details", "",
             "          Nothing here is hyphen-", "     ated twice.", footer, "", header.format(2), "",
             "          New page, new paragraph.", footer, header.format(3)]  # fmt: skip
    doc = parse_guide("\n".join(lines), "text", "g.txt")
    assert [s.trail for s in doc.sections] == [("Introduction",), ("Introduction", "Details")]
    assert doc.sections[0].text == ("The Amulet of Yendor is deep in the dungeon, and two-weapon combat helps. Use your "
                                    "two-weapon skill and being careful.")  # fmt: skip
    assert doc.sections[1].text == "Nothing here is hyphenated twice.\n\nNew page, new paragraph."
    assert "Guidebook" not in doc.text and "June" not in doc.text and spans_hold(doc)
    assert doc.sections[1].line == 14


def test_find_guides_and_file_errors(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "guide.md").write_text("# T\n\ntext\n")
    (tmp_path / "a" / "LICENSE.txt").write_text("license\n")
    (tmp_path / "README.md").write_text("# readme\n")
    (tmp_path / "b.rst").write_text("T\n===\n\ntext\n")
    (tmp_path / "data.csv").write_text("x\n")
    assert find_guides([tmp_path]) == [tmp_path / "a" / "guide.md", tmp_path / "b.rst"]
    with pytest.raises(ValueError, match="unsupported guide type '.csv'"):
        find_guides([tmp_path / "data.csv"])
    with pytest.raises(FileNotFoundError, match="missing"):
        find_guides([tmp_path / "missing"])
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\nline two \xff\n")
    with pytest.raises(ValueError, match="not UTF-8.*line 2"):
        load_guide(bad)


@pytest.mark.skipif(not GUIDES.is_dir(), reason="guides not found next to the repository (../shared/datasets/guides)")
def test_real_guides_ingest_cleanly():
    nethack = load_guide(GUIDES / "nethack" / "Guidebook.txt")
    crawl = load_guide(GUIDES / "dcss" / "crawl_manual.rst")
    assert len(nethack.sections) > 20 and len(crawl.sections) > 20
    assert "Yendor" in nethack.text and "Yen-" not in nethack.text
    assert not re.search(r"NetHack Guidebook\s+\d+|NetHack 3\.7\.0\s+September", nethack.text)
    assert "two-weapon" in nethack.text and "Two-Weapon combat" in [s.title for s in nethack.sections]
    assert ".. contents" not in crawl.text and "Seeded play" in [s.title for s in crawl.sections]
    assert spans_hold(nethack) and spans_hold(crawl)


# ------------------------------------------------------------------------------------------------ chunking


def long_document():
    rng = random.Random(7)
    words = ["dragon", "scroll", "potion", "wand", "altar", "shopkeeper", "lantern", "corridor", "amulet", "pet"]
    paragraphs = []
    for _ in range(700):
        sentences = [" ".join(rng.choice(words) for _ in range(rng.randint(4, 14))).capitalize() + "."
                     for _ in range(rng.randint(1, 5))]  # fmt: skip
        paragraphs.append(" ".join(sentences))
    return parse_guide("# Long\n\n" + "\n\n".join(paragraphs) + "\n\n# Short\n\nTiny section.\n", "markdown", "long.md")


def test_chunk_sizes_follow_the_clipped_gaussian_and_never_cut_words():
    sizes = ChunkSizes(mean=1200, sd=400, min_chars=400, max_chars=2400)
    doc = long_document()
    chunks = chunk_document(doc, sizes, seed=3)
    body = [c for c in chunks if c.section == "Long"][:-1]  # a section's last chunk is what is left
    lengths = [len(c.text) for c in body]
    draws = [sizes.draw(random.Random(i)) for i in range(5000)]
    assert len(body) > 100
    assert statistics.fmean(lengths) == pytest.approx(statistics.fmean(draws), rel=0.1)
    assert statistics.pstdev(lengths) == pytest.approx(statistics.pstdev(draws), rel=0.25)
    assert all(400 <= n <= 2400 for n in lengths)
    for c in chunks:
        assert doc.text[c.start : c.end] == c.text and c.text == c.text.strip()
        assert c.start == 0 or not doc.text[c.start - 1].isalnum()
        assert c.end == len(doc.text) or not doc.text[c.end].isalnum()
    short = [c for c in chunks if c.section == "Short"]
    assert [c.text for c in short] == ["Tiny section."]  # a short section is one chunk, below the minimum
    assert [c.id for c in chunks[:3]] == ["long-0", "long-1", "long-2"]


def test_chunks_are_deterministic_per_seed_and_differ_across_seeds():
    doc = long_document()
    spans = lambda seed: [(c.id, c.start, c.end) for c in chunk_document(doc, seed=seed)]  # noqa: E731
    assert spans(0) == spans(0)
    assert spans(0) != spans(1)


def test_a_paragraph_longer_than_any_chunk_is_cut_at_sentences():
    text = " ".join(f"Sentence number {i} ends here." for i in range(300))
    doc = parse_guide(f"# One\n\n{text}\n", "markdown", "one.md")
    chunks = chunk_document(doc, ChunkSizes(300, 50, 200, 400))
    assert len(chunks) > 10 and all(c.text.endswith(".") and c.text.startswith("Sentence") for c in chunks)


def test_chunk_ids_stay_unique_across_files_with_one_stem():
    a = parse_guide("# A\n\ntext a\n", "markdown", "x/guide.md")
    b = parse_guide("# B\n\ntext b\n", "markdown", "y/guide.md")
    assert [c.id for c in chunk_documents([a, b])] == ["x-guide-0", "y-guide-0"]


def test_chunk_size_settings_are_checked():
    with pytest.raises(ValueError, match="min_chars <= max_chars"):
        ChunkSizes(mean=500, min_chars=600, max_chars=100)
    with pytest.raises(ValueError, match="mean"):
        ChunkSizes(mean=5000)


# ------------------------------------------------------------------------------------------------ prompts and parser


def test_variants_are_seeded_per_chunk_and_prompts_forbid_mentioning_the_guide():
    picks = {pick_variant(0, f"g-{i}") for i in range(40)}
    assert picks == set(VARIANTS)
    assert pick_variant(5, "g-1") == pick_variant(5, "g-1")
    doc = parse_guide("# Pets\n\nYour dog follows you.\n", "markdown", "g.md")
    user = generation_messages(chunk_document(doc)[0], "technical-concise", 3)[1]["content"]
    assert "Your dog follows you." in user and "Write exactly 3 pairs" in user and 'Never mention "the guide"' in user
    assert "one short sentence" in user and "technical" in user


def test_parser_accepts_what_small_models_write():
    text = ("Sure! Here are the pairs:\n1. **Q:** What does a wand do?\n**A:** It casts a spell\nwhen engraved.\n"
            "Question 2: Where do pets sleep?\nAnswer 2: Next to you.\nQ: Who sells lanterns? A: The shopkeeper.")  # fmt: skip
    pairs, bad = parse_pairs(text, expected=3)
    assert [(p.question, p.answer) for p in pairs] == [("What does a wand do?", "It casts a spell when engraved."),
                                                       ("Where do pets sleep?", "Next to you."),
                                                       ("Who sells lanterns?", "The shopkeeper.")]  # fmt: skip
    assert bad == []
    pairs, bad = parse_pairs('```json\n[{"question": "Why pray?", "answer": "To be healed."}, 3]\n```')
    assert [p.answer for p in pairs] == ["To be healed."] and [b.reason for b in bad] == ["JSON item is not an object"]


def test_parser_sets_malformed_pairs_aside_with_a_reason():
    text = ("A: an answer first\nQ: Lonely question?\nQ: What is an altar?\nA: A place to pray.\nQ: Tell me about keys\n"
            "A: Keys open doors.\nQ: Empty answer?\nA:\nQ: Same?\nA: same\nQ: One too many?\nA: Yes, one too many.")  # fmt: skip
    pairs, bad = parse_pairs(text, expected=1)
    assert [p.question for p in pairs] == ["What is an altar?"]
    assert [b.reason for b in bad] == ["answer without a question", "question without an answer",
                                       "not a question (no '?')", "empty answer", "answer repeats the question",
                                       "more pairs than asked"]  # fmt: skip
    assert [b.reason for b in parse_pairs("I cannot do that.")[1]] == ["no Q:/A: pair in the output"]
    assert parse_pairs("")[1][0].reason == "no Q:/A: pair in the output"


def test_two_step_prompts_and_parsers():
    chunk = chunk_document(parse_guide("# Pets\n\nYour dog follows you.\n", "markdown", "g.md"))[0]
    asked = question_messages(chunk, "plain-lengthy", 2)[1]["content"]
    assert "Your dog follows you." in asked and "2 different questions" in asked and "new player" in asked
    answer = answer_messages(chunk, "plain-lengthy", "Does my dog follow me?")[1]["content"]
    assert "Question: Does my dog follow me?" in answer and "two to four complete sentences" in answer
    text = "Here you go:\n1. What does a wand do? 2) Q: Where do pets sleep?\n- **Question 3:** Who sells lanterns?\nWhat does a wand do?"
    questions, bad = parse_questions(text, expected=2)
    assert questions == ["What does a wand do?", "Where do pets sleep?"]
    assert [b.reason for b in bad] == ["more questions than asked", "repeated question"]
    assert [b.reason for b in parse_questions("I can't write questions.")[1]] == ["no question in the output"]
    assert parse_answer("**Answer:**  It casts\n a spell.") == "It casts a spell." and parse_answer(None) == ""


def test_judge_verdicts():
    assert parse_verdict("PASS") is True and parse_verdict("Verdict: fail.") is False
    assert parse_verdict("passes") is True and parse_verdict("It failed: Mario is from another game") is False
    assert parse_verdict("I think it is fine") is None and parse_verdict(None) is None


# ------------------------------------------------------------------------------------------------ filters


def test_length_bounds():
    bounds = LengthBounds(question_chars=(10, 60), question_words=(3, 12), answer_chars=(5, 40), answer_words=(2, 8))
    assert length_problem("What does a wand do?", "It zaps things.", bounds) is None
    assert length_problem("Why?", "It zaps things.", bounds) == "question too short (4 chars < 10)"
    assert length_problem("What wand now?", "Zap", bounds) == "answer too short (3 chars < 5)"
    assert length_problem("What does a wand do?", "word " * 9, bounds) == "answer too long (45 chars > 40)"
    assert length_problem("Does a wand do things?", "It zaps.", bounds) is None
    with pytest.raises(ValueError, match="question_words"):
        LengthBounds(question_words=(5, 1))


@pytest.mark.parametrize("text, phrase", [
    ("What does the guide say about pets?", "the guide"),
    ("According to the manual, pets eat.", "According to the manual"),
    ("As mentioned in the text, you can pray.", "As mentioned in the text"),
    ("What does this passage describe?", "this passage"),
    ("Read the provided excerpt again.", "the provided excerpt"),
    ("What does the Guidebook call the Amulet?", "the Guidebook"),
    ("The status line shows your text messages.", None),
    ("A guide dog is not in the game.", None),
    ("Engrave text in the dust with your finger.", None),
])  # fmt: skip
def test_source_mentions(text, phrase):
    assert source_mention(text) == phrase


def test_groundedness_counts_content_words_found_in_the_chunk():
    chunk = "Quaffing unknown potions is risky. Holy water blesses an item when it is dipped."
    assert groundedness("Dipping an item in holy water blesses it.", chunk) == 1.0
    assert groundedness("Potions of speed make you faster.", chunk) == pytest.approx(1 / 3)  # potion / speed, faster
    assert groundedness("It is.", chunk) is None


def test_near_duplicates_keep_the_first():
    dedup = NearDuplicates(90)
    dedup.add("a-q1", "What does holy water do?")
    assert dedup.duplicate_of("what does  holy water do") == ("a-q1", 100.0)
    assert dedup.duplicate_of("Holy water: what does it do?")[0] == "a-q1"  # same words, other order
    assert dedup.duplicate_of("Where can I find holy water?") is None
    with pytest.raises(ValueError):
        NearDuplicates(0)


# ------------------------------------------------------------------------------------------------ end to end

GUIDE = """# Glimmerdeep Field Notes

## Lanterns

A brass lantern burns for 500 turns before it needs new oil. Oil flasks refill a brass lantern. Lanterns light the
dark tunnels of Glimmerdeep.

## Goblins

Goblins hunt in packs in the caves of Glimmerdeep. Goblins steal gold coins from sleeping adventurers, so rest
behind a locked door.

## Shrines

Shrines stand in quiet halls. Pray at a shrine by pressing p while you stand on it. Goblins steal gold coins from
sleeping adventurers near shrines.

## Doors

Stubborn doors stick in damp weather. Kick a stubborn door to open it.

## Weather

It rains in the upper caves.

## Broken

This section makes the teacher fail.
"""

SCRIPT = {
    "Lanterns": "Q: How long does a brass lantern burn?\nA: A brass lantern burns for 500 turns before it needs new oil.\n"
                "Q: What does the guide say about oil flasks?\nA: According to the guide, oil flasks refill a lantern.\n"
                "Q: Why?\nA: Because.",
    "Goblins": "Q: Who hunts goblins with Mario in the caves?\nA: Mario hunts goblins in the caves of Glimmerdeep.\n"
               "Q: What do goblins steal from sleeping adventurers?\nA: Goblins steal gold coins from sleeping adventurers.\n"
               "Q: What powers a rocket?\nA: Bananas provide infinite rocket fuel for spaceships.",
    "Shrines": "Q: What do goblins steal from sleeping adventurers?\nA: Goblins steal gold coins from sleeping adventurers.\n"
               "Q: How do you pray at a shrine in Zelda?\nA: You pray at a shrine by pressing p while standing on it.\n"
               "A: a stray answer",
    "Doors": "Q: What does the manual say about stubborn doors?\nA: The manual says to kick a stubborn door to open it.",
    "Weather": "I am sorry, I cannot write questions.",
}  # fmt: skip


def scripted_teacher(messages: list[dict]) -> str:
    """Generation: canned pairs per section; rewrite: one clean rewrite, one that still mentions the manual;
    judge: FAIL for Mario, no verdict for Zelda, PASS otherwise."""
    system, user = messages[0]["content"], messages[-1]["content"]
    if "strict data reviewer" in system:
        pair = user.split("</excerpt>")[1]
        return "FAIL" if "Mario" in pair else "hmm, hard to say" if "Zelda" in pair else "PASS"
    if "\n\nQuestion: " in user:  # two-step, step 2: the scripted answer to that question
        question = user.split("\n\nQuestion: ")[1].split("\n")[0]
        answers = dict(re.findall(r"Q: (.*)\nA: (.*)", "\n".join(SCRIPT.values())))
        return f"Answer: {answers[question]}"
    if user.startswith("Rewrite this"):
        if "oil flasks" in user:
            return "Q: What refills a brass lantern?\nA: Oil flasks refill a brass lantern."
        return "Q: What does the manual say about stubborn doors?\nA: The manual says to kick them."
    section = re.search(r"\(section: .*?([A-Za-z]+)\)", user).group(1)
    if section == "Broken":
        raise HTTPException(400, "scripted failure")
    if "one question per line" in user:  # two-step, step 1: the script's questions, numbered
        questions = re.findall(r"^Q: (.*)$", SCRIPT[section], re.M)
        return "\n".join(f"{i}. {q}" for i, q in enumerate(questions, 1)) or SCRIPT[section]
    return SCRIPT[section]


def run_synth(url: str, guide: Path, out: Path, cache: Path, **options):
    teacher = Teacher(f"{url}/v1", "base", cache_dir=cache, max_retries=0)
    return synthesize([guide], teacher, out, SynthOptions(**options), progress=False)


def test_synth_qa_end_to_end_counts_provenance_and_cache(tmp_path):
    guide = tmp_path / "glimmerdeep.md"
    guide.write_text(GUIDE)
    out = tmp_path / "qa.jsonl"
    app = openai_app(scripted_teacher)
    with served_on_localhost(app) as url:
        result = run_synth(url, guide, out, tmp_path / "cache", strategy="pairs")
        calls_first = app.state.calls
        again = run_synth(url, guide, tmp_path / "again.jsonl", tmp_path / "cache", strategy="pairs")
        calls_again = app.state.calls - calls_first

    summary = result.summary
    filters = {f["name"]: f for f in summary["filters"]}
    assert {n: (f["in"], f["kept"]) for n, f in filters.items()} == {
        "teacher": (6, 5), "parse": (11, 9), "length": (9, 8), "source_mention": (8, 7), "groundedness": (7, 6),
        "judge": (6, 4), "near_duplicate": (4, 3)}  # fmt: skip
    assert filters["teacher"]["reasons"] == {"call failed": 1}
    assert filters["parse"]["reasons"] == {"answer without a question": 1, "no Q:/A: pair in the output": 1}
    assert filters["source_mention"]["rewritten"] == 1
    assert filters["source_mention"]["reasons"] == {"rewrite still mentions the source": 1}
    assert filters["judge"]["reasons"] == {"FAIL": 1, "unparseable verdict": 1}
    assert summary["pairs_generated"] == 11 and summary["kept"] == 3 and summary["chunks"] == 6
    pair_filters = [f for f in summary["filters"] if f["unit"] == "pairs"]
    assert all(a["kept"] == b["in"] for a, b in zip(pair_filters, pair_filters[1:]))  # every pair accounted for
    assert summary["teacher_calls"]["calls"] == calls_first - 1 and summary["teacher_calls"]["errors"] == 1

    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["question"] for r in records] == ["How long does a brass lantern burn?", "What refills a brass lantern?",
                                                "What do goblins steal from sleeping adventurers?"]  # fmt: skip
    cleaned = load_guide(guide).text
    for r in records:
        src = r["source"]
        assert r["id"].startswith(r["chunk_id"] + "-q") and cleaned[src["span"][0] : src["span"][1]] == r["chunk"]
        assert src["file"] == str(guide) and src["variant"] in VARIANTS and src["teacher"] == f"base@{url}/v1"
        assert src["section"] in ("Lanterns", "Goblins") and src["trail"][0] == "Glimmerdeep Field Notes"
    assert [r["source"]["rewritten"] for r in records] == [False, True, False]
    rejected = [json.loads(line) for line in side_files(out)[0].read_text().splitlines()]
    assert len(rejected) == sum(f["dropped"] for f in summary["filters"]) == 9
    assert {r["filter"] for r in rejected} == set(filters)
    assert json.loads(side_files(out)[1].read_text())["kept"] == 3

    # the rerun asks the server only for what failed before (failures are never cached)
    assert calls_again == 1
    assert again.summary["teacher_calls"]["cache_hits"] == calls_first - 1
    assert (tmp_path / "again.jsonl").read_text() == out.read_text()


def test_two_step_strategy_asks_questions_then_answers_each(tmp_path):
    guide = tmp_path / "glimmerdeep.md"
    guide.write_text(GUIDE)
    app = openai_app(scripted_teacher)
    with served_on_localhost(app) as url:
        pairs = run_synth(url, guide, tmp_path / "pairs.jsonl", tmp_path / "cache", strategy="pairs")
        two_step = run_synth(url, guide, tmp_path / "qa.jsonl", tmp_path / "cache")
    filters = {f["name"]: f for f in two_step.summary["filters"]}
    # the stray answer is not asked for; the refusal has no question; each question got its own answer call
    assert filters["parse"]["reasons"] == {"no question in the output": 1} and filters["parse"]["kept"] == 9
    answer_calls = [b for b in app.state.bodies if "\n\nQuestion: " in b["messages"][-1]["content"]]
    assert len(answer_calls) == 9
    question_calls = [b for b in app.state.bodies if "one question per line" in b["messages"][-1]["content"]]
    assert {b["temperature"] for b in answer_calls} == {0.0} and {b["temperature"] for b in question_calls} == {0.7}
    assert {b["max_tokens"] for b in question_calls} == {150} and {b["max_tokens"] for b in answer_calls} == {200}
    questions = [[json.loads(line)["question"] for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
                 for name in ("qa", "pairs")]  # fmt: skip
    assert questions[0] == questions[1] and two_step.summary["kept"] == pairs.summary["kept"] == 3


def test_synth_without_judge_and_with_a_chunk_cap(tmp_path):
    guide = tmp_path / "glimmerdeep.md"
    guide.write_text(GUIDE)
    app = openai_app(scripted_teacher)
    with served_on_localhost(app) as url:
        result = run_synth(url, guide, tmp_path / "qa.jsonl", tmp_path / "cache", judge=False, max_chunks=2)
    filters = {f["name"]: f for f in result.summary["filters"]}
    assert result.summary["chunks"] == 2 and filters["judge"]["in"] == filters["judge"]["kept"]
    assert not any("strict data reviewer" in b["messages"][0]["content"] for b in app.state.bodies)


def test_synth_stops_when_the_teacher_never_answers(tmp_path):
    guide = tmp_path / "g.md"
    guide.write_text(GUIDE)
    with pytest.raises(TeacherError, match="no answer from the teacher"):
        run_synth("http://127.0.0.1:9", guide, tmp_path / "qa.jsonl", tmp_path / "cache")
    assert not (tmp_path / "qa.jsonl").exists()
    with pytest.raises(ValueError, match="would overwrite the guide"):
        run_synth("http://127.0.0.1:9", guide, guide, tmp_path / "cache")


def test_synth_command_is_mounted_from_the_task_hook(tmp_path):
    from gamesense.cli.synth import build

    guide = tmp_path / "glimmerdeep.md"
    guide.write_text(GUIDE)
    out = tmp_path / "qa.jsonl"
    app = openai_app(scripted_teacher)
    runner = CliRunner()
    with served_on_localhost(app) as url:
        args = ["qa", "--guides", str(guide), "--out", str(out), "--teacher-url", f"{url}/v1", "--cache-dir",
                str(tmp_path / "cache"), "--max-retries", "0", "--no-judge"]  # fmt: skip
        result = runner.invoke(build(host=None), args)
    # the "Broken" section's call fails: the pairs are written, and the exit status says the set is incomplete
    # (before: exit 0, issue 22)
    assert result.exit_code == 3 and "1 teacher calls failed" in result.output, result.output
    assert "near_duplicate" in result.output and f"wrote {len(out.read_text().splitlines())} pairs" in result.output
    down_args = [*args[:5], "--teacher-url", "http://127.0.0.1:9/v1", "--cache-dir", str(tmp_path / "empty"), *args[9:]]
    down = runner.invoke(build(host=None), down_args)  # (with the first cache it would need no server at all)
    assert down.exit_code == 2 and "no answer from the teacher" in down.output
