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


# --- the grown-in-place KV cache and the LLM engine's decode loop: same tokens as transformers ---------------


def test_growing_cache_gives_the_dynamic_caches_logits_without_copying_every_step(chatty_model):
    from transformers import DynamicCache

    from gamesense.models.decoding import last_token_logits, left_padded
    from gamesense.models.kv_cache import GrowingCache

    model, tokenizer = chatty_model
    rows = [tokenizer.apply_chat_template(p, tokenize=True, add_generation_prompt=True, return_dict=False) for p in PROMPTS]
    ids, mask, positions = left_padded(rows, tokenizer.pad_token_id)
    caches = {"dynamic": DynamicCache(), "growing": GrowingCache(reserve=4)}
    logits = {k: last_token_logits(model, c, input_ids=ids, attention_mask=mask, position_ids=positions) for k, c in caches.items()}
    buffers = []
    position, keep = positions[:, -1], torch.tensor([0, 2, 3])
    with torch.inference_mode():
        for step in range(8):
            torch.testing.assert_close(logits["growing"], logits["dynamic"], rtol=0, atol=0)
            tokens = logits["dynamic"].argmax(-1)
            if step == 3:  # a row leaves: the cache keeps only the others
                for cache in caches.values():
                    cache.batch_select_indices(keep)
                tokens, position, mask = tokens[keep], position[keep], mask[keep]
            if step == 5:  # the engine's trim of leading columns: assigned tensors become the buffer
                for layer in caches["growing"].layers:
                    layer.keys, layer.values = layer.keys[:, :, 1:], layer.values[:, :, 1:]
                for layer in caches["dynamic"].layers:
                    layer.keys, layer.values = layer.keys[:, :, 1:], layer.values[:, :, 1:]
                mask = mask[:, 1:]
            position, mask = position + 1, torch.cat([mask, mask.new_ones((len(mask), 1))], dim=-1)
            logits = {k: last_token_logits(model, c, input_ids=tokens[:, None], attention_mask=mask,
                                           position_ids=position[:, None]) for k, c in caches.items()}  # fmt: skip
            buffers.append(caches["growing"].layers[0]._buffers["keys"].data_ptr())
    assert caches["growing"].get_seq_length() == caches["dynamic"].get_seq_length()
    # reserve 4: steps 0-3 write in place; the row selection (step 3) and the trim (step 5) reallocate
    assert len(set(buffers[:3])) == 1 and len(set(buffers)) <= 5


@pytest.fixture(scope="module")
def chatty_engine(chatty_model, tmp_path_factory):
    """The LLM engine (float32, no adapters) over the chatty model, running its scheduler thread."""
    from gamesense.serving.llm.engine import LLMEngine

    model, tokenizer = chatty_model
    path = tmp_path_factory.mktemp("chatty")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    engine = LLMEngine(str(path), dtype="float32", max_batch=8, batch_wait_ms=1)
    engine.start()
    yield engine
    engine.stop()


def ask_engine(engine, asks: list[tuple[list[dict], dict]], stagger_s: float = 0.0) -> list[tuple[str, str]]:
    """Submit ``(prompt, sampling settings)`` pairs (``stagger_s`` apart, so later ones join a running batch);
    returns each reply's ``(final text, streamed pieces joined)``."""
    import threading
    import time

    from gamesense.serving.llm.requests import GenerationRequest, SamplingParams

    results: list = [None] * len(asks)
    done = [threading.Event() for _ in asks]

    def sink_for(i: int, pieces: list[str]):
        def sink(event):
            pieces.append(event.text)
            if event.done or event.error:
                results[i] = (event.done.text if event.done else f"error: {event.error}", "".join(pieces))
                done[i].set()

        return sink

    for i, (prompt, settings) in enumerate(asks):
        engine.submit(GenerationRequest(engine.encode_chat(prompt), SamplingParams(**settings), sink_for(i, [])))
        time.sleep(stagger_s)
    assert all(event.wait(60) for event in done)
    return results


def test_engine_replies_are_transformers_greedy_tokens_while_rows_join_and_leave(chatty_model, chatty_engine):
    model, tokenizer = chatty_model
    asks = [(p, {"max_tokens": n}) for p, n in zip(PROMPTS, (12, 5, 9, 16))]
    asks += [(PROMPTS[2], {"max_tokens": 14, "repetition_penalty": 1.5})]  # beside plain rows in one batch
    steps = chatty_engine.stats["steps"]
    replies = ask_engine(chatty_engine, asks, stagger_s=0.02)
    for (prompt, settings), (text, streamed) in zip(asks, replies):
        ids = tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True, return_dict=True,
                                            return_tensors="pt")  # fmt: skip
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=settings["max_tokens"], do_sample=False,
                                 repetition_penalty=settings.get("repetition_penalty", 1.0),
                                 eos_token_id=[tokenizer.eos_token_id], pad_token_id=tokenizer.pad_token_id)  # fmt: skip
        assert text == tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        assert streamed == text
    assert chatty_engine.stats["steps"] - steps < 5 + 12 + 9 + 16 + 14, "the requests must have shared steps"


def test_engine_stop_strings_and_seeded_sampling_in_a_mixed_batch(chatty_engine):
    (free, _), = ask_engine(chatty_engine, [(PROMPTS[0], {"max_tokens": 16})])
    stop = free[4:6]
    sampled = {"max_tokens": 16, "temperature": 0.9, "top_p": 0.8, "seed": 7}
    alone = ask_engine(chatty_engine, [(PROMPTS[1], sampled)])
    mixed = ask_engine(chatty_engine, [(PROMPTS[0], {"max_tokens": 16, "stop": (stop,)}), (PROMPTS[1], sampled),
                                       (PROMPTS[3], sampled | {"seed": 8})])  # fmt: skip
    (cut, streamed) = mixed[0]
    assert cut == free.split(stop)[0] and streamed == cut  # the stop string is never streamed
    assert mixed[1] == alone[0], "a seeded row samples the same reply alone or beside others"
    assert mixed[1][0] != ask_engine(chatty_engine, [(PROMPTS[1], sampled | {"seed": 8})])[0][0]


def test_reply_text_is_decoded_incrementally_as_a_prefix_of_the_whole_reply(tiny_model_dir):
    from gamesense.models.base import load_tokenizer
    from gamesense.serving.llm.requests import ReplyText

    tokenizer = load_tokenizer(str(tiny_model_dir))
    ids = tokenizer.encode("Héllo 🎮 wörld — 日本語", add_special_tokens=False)
    ids += [tokenizer.eos_token_id] + tokenizer.encode(" après 😀!", add_special_tokens=False)
    reply, whole = ReplyText(tokenizer), tokenizer.decode(ids, skip_special_tokens=True)
    lengths = []
    for n, token in enumerate(ids, 1):
        before = reply.push(token)
        so_far = tokenizer.decode(ids[:n], skip_special_tokens=True)
        assert so_far.startswith(reply.text) and "\ufffd" not in reply.text  # a split character waits
        assert len(so_far.rstrip("\ufffd")) - len(reply.text) <= 1  # at most the space before it waits with it
        lengths.append((before, len(reply.text)))
    assert reply.text == whole
    assert all(b == prev for (_, prev), (b, _) in zip(lengths, lengths[1:]))
