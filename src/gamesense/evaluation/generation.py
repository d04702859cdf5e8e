"""Batched greedy decoding for evaluation and the ``generate`` command.

Prompts are sorted by length (longest first, so memory peaks early) and left-padded per batch; decoding
stops per sequence at EOS or at the task's stop strings, and the batch stops when all sequences have.
A one-character stop string (``"\n"``) stops at any token containing it (checked as token ids, no decoding
in the loop); longer ones use transformers' ``stop_strings``. The text is cut at the first stop string.
Throughput counts generated tokens up to and including the stop token.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class GenerationResult:
    """Outputs in input order plus throughput.

    Attributes:
        texts: decoded completions (special tokens removed), ``len == len(prompts)``.
        generated_tokens: tokens produced, summed over all prompts.
        seconds: wall time of decoding.
    """

    texts: list[str]
    generated_tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds > 0 else 0.0


def stop_token_ids(tokenizer, stop_strings: Sequence[str] = ()) -> list[int]:
    """EOS plus every vocabulary entry whose text contains a one-character stop string."""
    ids = {tokenizer.eos_token_id}
    chars = [s for s in stop_strings if len(s) == 1]
    if chars:
        for token, idx in tokenizer.get_vocab().items():
            text = tokenizer.convert_tokens_to_string([token])
            if any(c in text for c in chars):
                ids.add(idx)
    return sorted(i for i in ids if i is not None)


def cut_at_stop(text: str, stop_strings: Sequence[str]) -> str:
    """``text`` up to (not including) the first occurrence of any stop string."""
    cut = min((i for i in (text.find(s) for s in stop_strings) if i >= 0), default=len(text))
    return text[:cut]


def generate_batch(
    model,
    tokenizer,
    prompts: list[list[dict]],
    max_new_tokens: int = 128,
    batch_size: int = 32,
    stop_strings: Sequence[str] = (),
    progress: bool = True,
    desc: str = "generate",
) -> GenerationResult:
    """Greedy-decode chat prompts in batches.

    Args:
        model: a causal LM (adapters merged or not), in eval mode.
        tokenizer: its tokenizer, with a chat template and a pad token.
        prompts: chat message lists, one per example.
        max_new_tokens: per-example cap on generated tokens.
        batch_size: prompts decoded together.
        stop_strings: decoding of a sequence stops at the first of these (and at EOS); the text is cut there.

    Returns:
        :class:`GenerationResult` with texts in the order of ``prompts``.
    """
    from tqdm.auto import tqdm

    encoded = [
        tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=False)
        for messages in prompts
    ]
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    stop_ids = stop_token_ids(tokenizer, stop_strings)
    long_stops = [s for s in stop_strings if len(s) > 1]
    extra = {"stop_strings": long_stops, "tokenizer": tokenizer} if long_stops else {}
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    texts: list[str] = [""] * len(prompts)
    generated = 0
    started = time.perf_counter()
    bar = tqdm(total=len(prompts), desc=desc, unit="ex", disable=not progress)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in idx)
        input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids = encoded[i]
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention[row, width - len(ids) :] = 1
        with torch.inference_mode():
            out = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=stop_ids,
                pad_token_id=pad_id,
                **extra,
            )
        new = out[:, width:].cpu()
        for row, i in enumerate(idx):
            tokens = new[row].tolist()
            length = next((k + 1 for k, tok in enumerate(tokens) if tok in stop_ids), len(tokens))
            generated += length
            texts[i] = cut_at_stop(tokenizer.decode(tokens[:length], skip_special_tokens=True), stop_strings)
        bar.update(len(idx))
        bar.set_postfix(tok_s=f"{generated / max(time.perf_counter() - started, 1e-9):.0f}")
    bar.close()
    return GenerationResult(texts=texts, generated_tokens=generated, seconds=time.perf_counter() - started)
