"""`gamesense generate --file` (batch mode) and `gamesense chat` (the REPL), through the real CLI on a tiny
random Llama: JSONL records by line number, arguments rejected before any model is loaded, the REPL's
commands, seeded sampling, greedy chat = generate, and history cut to the model's context."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from gamesense.cli import app

FAST = ["--set", "generation.max_new_tokens=12", "--set", "generation.batch_size=2"]


@pytest.fixture(scope="module")
def chatty_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model's tokenizer with a random Llama of large weights (the shared tiny model only emits
    newlines, which end every ViGGO answer at once) and a 256-token context."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from gamesense.models.base import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model_dir))
    torch.manual_seed(1)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, initializer_range=0.5,
                         max_position_embeddings=256, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    path = tmp_path_factory.mktemp("chatty-llama")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def invoke(*args: str, stdin: str | None = None):
    return CliRunner().invoke(app, list(args), input=stdin)


def replies(result) -> list[str]:
    """The model's replies in a chat transcript (the REPL prints ``model> `` before each)."""
    return re.findall(r"model> (.*)", result.stdout)


def chat(model_dir, stdin: str, *options: str):
    result = invoke("chat", "--model", str(model_dir), *FAST, *options, stdin=stdin)
    assert result.exit_code == 0, result.output
    return result


GREEDY = ["--temperature", "0", "--repetition-penalty", "1", "--max-new-tokens", "12"]


def test_generate_file_writes_one_record_per_non_blank_line(workdir, chatty_dir, tmp_path):
    inputs = tmp_path / "inputs.txt"
    inputs.write_text("Is Portal 2 any good?\n\n   \nI love Tetris, it came out in 1984.\n", encoding="utf-8")
    out = tmp_path / "results" / "preds.jsonl"
    result = invoke("generate", "--model", str(chatty_dir), "--file", str(inputs), "--output", str(out), *FAST)
    assert result.exit_code == 0, result.output
    assert "skipped 2 blank line(s)" in result.stderr and ": 2, 3" in result.stderr
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["line"] for r in records] == [1, 4]
    assert [r["input"] for r in records] == ["Is Portal 2 any good?", "I love Tetris, it came out in 1984."]
    assert all(set(r) == {"line", "input", "output", "raw"} and r["raw"].strip() for r in records)

    # the batch gives what one TEXT at a time gives, and without --output prints one output per line
    single = invoke("generate", "--model", str(chatty_dir), *FAST, "I love Tetris, it came out in 1984.")
    assert single.exit_code == 0, single.output
    assert single.stdout.strip() == records[1]["output"]
    printed = invoke("generate", "--model", str(chatty_dir), "--file", str(inputs), *FAST)
    assert printed.exit_code == 0, printed.output
    assert printed.stdout.splitlines() == [r["output"] for r in records]


@pytest.mark.parametrize("case, message", [
    ("empty_text", "TEXT is empty"),
    ("text_and_file", "exactly one"),
    ("neither", "exactly one"),
    ("output_is_input", "is the input file"),
    ("output_without_file", "--output needs --file"),
    ("not_utf8", "is not UTF-8 text"),
    ("all_blank", "every line is blank"),
    ("missing_file", "cannot read --file"),
])  # fmt: skip
def test_generate_rejects_bad_arguments_before_loading_a_model(case, message, workdir, tmp_path, monkeypatch):
    import gamesense.models.refs

    def no_loading(*args, **kwargs):
        raise AssertionError("the model must not be loaded")

    monkeypatch.setattr(gamesense.models.refs, "load_for_inference", no_loading)
    good = tmp_path / "in.txt"
    good.write_text("hello\n", encoding="utf-8")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("first line\ncaf\xe9\n".encode("latin-1"))
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n\t\n", encoding="utf-8")
    args = {
        "empty_text": ["   "],
        "text_and_file": ["hello", "--file", str(good)],
        "neither": [],
        "output_is_input": ["--file", str(good), "--output", str(tmp_path / "." / "in.txt")],
        "output_without_file": ["hello", "--output", str(tmp_path / "out.jsonl")],
        "not_utf8": ["--file", str(bad)],
        "all_blank": ["--file", str(blank)],
        "missing_file": ["--file", str(tmp_path / "nope.txt")],
    }[case]
    result = invoke("generate", "--model", "unused-model", *args)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    if case == "not_utf8":
        assert str(bad) in errors[0] and "line 2" in errors[0]
    assert good.read_text(encoding="utf-8") == "hello\n"  # --output never overwrote the input


def test_chat_session_with_reset_and_exit(workdir, chatty_dir):
    result = chat(chatty_dir, "hello\n/reset\nhi\n/help\n/exit\nnever read\n", "--seed", "0", "--max-new-tokens", "8")
    answers = replies(result)
    assert len(answers) == 2 and all(a.strip() for a in answers), result.stdout
    assert "(conversation cleared)" in result.stdout and "/reset" in result.stdout  # /reset, then /help
    assert "never read" not in result.output
    ended_by_eof = chat(chatty_dir, "hello\n", "--seed", "0", "--max-new-tokens", "8")  # Ctrl-D (end of input) ends the session
    assert replies(ended_by_eof) == answers[:1]


def test_reset_forgets_the_conversation(workdir, chatty_dir):
    fresh = replies(chat(chatty_dir, "hi\n", *GREEDY))
    after_reset = replies(chat(chatty_dir, "hello\n/reset\nhi\n", *GREEDY))
    with_history = replies(chat(chatty_dir, "hello\nhi\n", *GREEDY))
    assert after_reset[1] == fresh[0]
    assert with_history[1] != fresh[0], "the second turn must see the first"


def test_seed_makes_sampling_repeatable(workdir, chatty_dir):
    sample = ["--temperature", "1.0", "--no-stop", "--max-new-tokens", "8"]
    first = replies(chat(chatty_dir, "hello\nagain\n", *sample, "--seed", "7"))
    again = replies(chat(chatty_dir, "hello\nagain\n", *sample, "--seed", "7"))
    other = replies(chat(chatty_dir, "hello\nagain\n", *sample, "--seed", "8"))
    assert len(first) == 2 and first == again
    assert other != first


def test_greedy_chat_answers_as_generate_does(workdir, chatty_dir, tmp_path):
    text = "I love Tetris, it came out in 1984."
    (tmp_path / "in.txt").write_text(text + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    generated = invoke("generate", "--model", str(chatty_dir), "--file", str(tmp_path / "in.txt"), "--output", str(out), *FAST)
    assert generated.exit_code == 0, generated.output
    [record] = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert record["raw"].strip()
    assert replies(chat(chatty_dir, text + "\n", *GREEDY)) == [record["raw"].strip()]
    # the default repetition penalty changes greedy decoding: the equality above is not a given
    assert replies(chat(chatty_dir, text + "\n", "--temperature", "0", "--max-new-tokens", "12")) != [record["raw"].strip()]


def test_history_is_cut_to_the_context(workdir, chatty_dir):
    # 256-token context, 24 kept for the reply: two ~155-token messages do not fit together, one does
    long = "word " * 150
    result = chat(chatty_dir, f"{long}\n{long}\n", "--temperature", "0", "--max-new-tokens", "24")
    assert len(replies(result)) == 2
    assert "dropped the 2 oldest messages" in result.stderr
    too_long = chat(chatty_dir, "word " * 300 + "\n/exit\n", "--max-new-tokens", "24")
    assert "error: the message is too long" in too_long.stderr and replies(too_long) == []


def test_fit_to_context_keeps_the_system_prompt_and_whole_turns(tiny_model_dir):
    from gamesense.evaluation.generation import fit_to_context
    from gamesense.models.base import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model_dir))
    system = {"role": "system", "content": "Be brief."}
    turns = [{"role": "user", "content": "one " * 20}, {"role": "assistant", "content": "two " * 20},
             {"role": "user", "content": "three"}]  # fmt: skip
    assert fit_to_context(tokenizer, [system, *turns], None) == ([system, *turns], 0)
    last = len(tokenizer.apply_chat_template([system, turns[2]], tokenize=True, add_generation_prompt=True, return_dict=False))
    assert fit_to_context(tokenizer, [system, *turns], last) == ([system, turns[2]], 2)
    with pytest.raises(ValueError, match="too long"):
        fit_to_context(tokenizer, [system, *turns], last - 1)
