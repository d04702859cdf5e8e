"""Our batched greedy decoder: same tokens as transformers' own greedy `generate`, row by row, while rows
that stopped leave the batch."""

from __future__ import annotations

import pytest
import torch

from gamesense.config import GenerationSection
from gamesense.evaluation.generation import generate_batch
from gamesense.models.decoding import stop_token_ids

PROMPTS = [[{"role": "user", "content": text}] for text in
           ("Is Portal 2 any good?", "hi", "Tell me about the release year of SpellForce 3, please.", "ok")]  # fmt: skip


@pytest.fixture(scope="module")
def chatty_model(tiny_model_dir):
    """A tiny random Llama with large weights, so greedy outputs vary from row to row (the shared tiny model
    only ever emits newlines)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from gamesense.models.base import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model_dir))
    torch.manual_seed(1)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, initializer_range=0.5,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)  # fmt: skip
    return LlamaForCausalLM(config).eval(), tokenizer


def reference(model, tokenizer, prompt, max_new_tokens, stop_ids) -> str:
    ids = tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True, return_dict=True, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop_ids,
                             pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def test_matches_transformers_greedy_generate_and_drops_finished_rows(chatty_model):
    model, tokenizer = chatty_model
    free = generate_batch(model, tokenizer, PROMPTS, GenerationSection(max_new_tokens=12, batch_size=4), progress=False)
    for prompt, text in zip(PROMPTS, free.texts):
        assert text == reference(model, tokenizer, prompt, 12, [tokenizer.eos_token_id])
    # a character that ends row 0 mid-way but never appears in row 1, which therefore runs to the cap
    stop = next(c for c in free.texts[0][10:] if c.isalpha() and c not in free.texts[1])
    batch_sizes: list[int] = []
    hook = model.model.register_forward_pre_hook(lambda m, args, kw: batch_sizes.append(kw["input_ids"].shape[0]),
                                                 with_kwargs=True)  # fmt: skip
    cut = generate_batch(model, tokenizer, PROMPTS, GenerationSection(max_new_tokens=12, batch_size=4), [stop], progress=False)
    hook.remove()
    stop_ids = stop_token_ids(tokenizer, [stop])
    for prompt, text in zip(PROMPTS, cut.texts):
        assert text == reference(model, tokenizer, prompt, 12, stop_ids).split(stop)[0]
    assert batch_sizes[0] == 4 and min(batch_sizes) < 4, "rows that stopped must leave the batch"
    assert batch_sizes == sorted(batch_sizes, reverse=True)
    assert cut.generated_tokens < free.generated_tokens


def test_long_stop_strings_cut_the_text(chatty_model):
    model, tokenizer = chatty_model
    free = generate_batch(model, tokenizer, PROMPTS[:1], GenerationSection(max_new_tokens=10, batch_size=32), progress=False)
    stop = free.texts[0][3:5]
    cut = generate_batch(model, tokenizer, PROMPTS[:1], GenerationSection(max_new_tokens=10, batch_size=32), [stop], progress=False)
    assert len(stop) == 2 and cut.texts[0] == free.texts[0].split(stop)[0]
    assert cut.generated_tokens < free.generated_tokens


def test_repetition_penalty_matches_transformers_and_changes_the_output(chatty_model):
    model, tokenizer = chatty_model
    plain = generate_batch(model, tokenizer, PROMPTS, GenerationSection(max_new_tokens=16, batch_size=4), progress=False)
    penalized = generate_batch(model, tokenizer, PROMPTS, GenerationSection(max_new_tokens=16, batch_size=4,
                                                                            repetition_penalty=1.5), progress=False)  # fmt: skip
    for prompt, text in zip(PROMPTS, penalized.texts):
        ids = tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True, return_dict=True,
                                            return_tensors="pt")  # fmt: skip
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=16, do_sample=False, repetition_penalty=1.5,
                                 eos_token_id=[tokenizer.eos_token_id], pad_token_id=tokenizer.pad_token_id)  # fmt: skip
        assert text == tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert penalized.texts != plain.texts
