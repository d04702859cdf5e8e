"""Batched greedy decoding for evaluation and the ``generate`` command.

Prompts are sorted by length (longest first, so memory peaks early) and left-padded per batch; our own
loop over the model's KV cache decodes one token per step for every row still running and removes a row
(and its cache entries) from the batch as soon as it stops, so finished rows cost nothing. A row stops at
EOS or at the task's stop strings: a one-character stop string (``"\n"``) stops at any token containing it
(checked as token ids), longer ones by decoding the row. The text is cut at the first stop string.
Throughput counts generated tokens up to and including the stop token.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from gamesense.config import GenerationSection
from gamesense.models.decoding import cut_at_stop, last_token_logits, left_padded, penalize_repetition, stop_token_ids


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


def _greedy_batch(model, rows: list[list[int]], pad_id: int, max_new_tokens: int, stop_ids: Sequence[int],
                  stops_in_text, repetition_penalty: float = 1.0) -> list[list[int]]:  # fmt: skip
    """Greedy-decode one left-padded batch with a KV cache, dropping every row from the batch (and its cache)
    as soon as it stops, so no compute is spent on finished rows. Returns each row's new tokens, the stop
    token included. The host waits for the device once per step (the new tokens, to check the stops); the
    cache grows in place (:class:`~gamesense.models.kv_cache.GrowingCache`)."""
    from gamesense.models.kv_cache import GrowingCache

    device = next(model.parameters()).device
    input_ids, mask, positions = (t.to(device) for t in left_padded(rows, pad_id))
    stop_set = set(stop_ids)
    seen = None
    if repetition_penalty != 1.0:
        seen = torch.zeros((len(rows), model.get_output_embeddings().weight.shape[0]), dtype=torch.bool, device=device)
        for i, ids in enumerate(rows):  # the prompt's tokens, not the padding
            seen[i, torch.tensor(ids, device=device)] = True

    def next_tokens(**inputs) -> torch.Tensor:
        logits = last_token_logits(model, cache, **inputs)
        if seen is None:
            return logits.argmax(-1)
        logits = logits.float()
        logits[seen] = penalize_repetition(logits[seen], repetition_penalty)
        chosen = logits.argmax(-1)
        seen[torch.arange(len(chosen), device=device), chosen] = True
        return chosen

    cache = GrowingCache(reserve=max_new_tokens)
    tokens = next_tokens(input_ids=input_ids, attention_mask=mask, position_ids=positions)
    position = positions[:, -1]
    alive = list(range(len(rows)))  # batch row -> index in `rows`
    generated: list[list[int]] = [[] for _ in rows]
    for step in range(max_new_tokens):
        keep = []
        for i, (row, tok) in enumerate(zip(alive, tokens.tolist())):  # the step's one wait for the device
            generated[row].append(tok)
            if tok not in stop_set and not (stops_in_text is not None and stops_in_text(generated[row])):
                keep.append(i)
        if step == max_new_tokens - 1 or not keep:
            break
        if len(keep) < len(alive):
            index = torch.tensor(keep, device=device)
            cache.batch_select_indices(index)
            tokens, position, mask = tokens[index], position[index], mask[index]
            alive = [alive[i] for i in keep]
            if seen is not None:
                seen = seen[index]
        position = position + 1
        mask = torch.cat([mask, mask.new_ones((len(alive), 1))], dim=-1)
        tokens = next_tokens(input_ids=tokens[:, None], attention_mask=mask, position_ids=position[:, None])
    return generated


@torch.inference_mode()
def generate_batch(
    model,
    tokenizer,
    prompts: list[list[dict]],
    settings: GenerationSection,
    stop_strings: Sequence[str] = (),
    progress: bool = True,
    desc: str = "generate",
) -> GenerationResult:
    """Greedy-decode chat prompts in batches.

    Args:
        model: a causal LM (adapters merged or not), in eval mode.
        tokenizer: its tokenizer, with a chat template and a pad token.
        prompts: chat message lists, one per example.
        settings: the recipe's ``generation`` section: ``max_new_tokens`` (per-example cap), ``batch_size``
            (prompts decoded together), ``repetition_penalty`` (CTRL's penalty on tokens already in the row,
            :func:`~gamesense.models.decoding.penalize_repetition`; 1.0: off).
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
    stops_in_text = (lambda ids: any(s in tokenizer.decode(ids) for s in long_stops)) if long_stops else None
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    texts: list[str] = [""] * len(prompts)
    generated = 0
    started = time.perf_counter()
    bar = tqdm(total=len(prompts), desc=desc, unit="ex", disable=not progress)
    for start in range(0, len(order), settings.batch_size):
        idx = order[start : start + settings.batch_size]
        outputs = _greedy_batch(model, [encoded[i] for i in idx], pad_id, settings.max_new_tokens, stop_ids, stops_in_text,
                                settings.repetition_penalty)  # fmt: skip
        for i, tokens in zip(idx, outputs):
            generated += len(tokens)
            texts[i] = cut_at_stop(tokenizer.decode(tokens, skip_special_tokens=True), stop_strings)
        bar.update(len(idx))
        bar.set_postfix(tok_s=f"{generated / max(time.perf_counter() - started, 1e-9):.0f}")
    bar.close()
    return GenerationResult(texts=texts, generated_tokens=generated, seconds=time.perf_counter() - started)


# --- interactive chat: sampling through transformers' generate --------------------------------------------


def fit_to_context(tokenizer, messages: list[dict], max_prompt_tokens: int | None) -> tuple[list[dict], int]:
    """Drop the oldest turns of a conversation until its chat prompt fits in ``max_prompt_tokens``.

    Leading system messages are always kept; after them, messages are dropped from the front until the
    prompt fits and the kept conversation starts with a user message again (so whole turns go).

    Args:
        tokenizer: the model's tokenizer, with a chat template.
        messages: role/content dicts, oldest first; the last one is the user's new message.
        max_prompt_tokens: the most tokens the prompt (generation prompt included) may have; None: no limit.

    Returns:
        ``(kept messages, number of messages dropped)``.

    Raises:
        ValueError: the system messages and the last message alone are longer than ``max_prompt_tokens``.
    """

    def length(msgs: list[dict]) -> int:
        return len(tokenizer.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True, return_dict=False))

    if max_prompt_tokens is None or length(messages) <= max_prompt_tokens:
        return messages, 0
    n_system = next((i for i, m in enumerate(messages) if m["role"] != "system"), len(messages))
    system, turns = messages[:n_system], messages[n_system:]
    for start in range(1, len(turns)):
        if turns[start]["role"] == "user" and length(system + turns[start:]) <= max_prompt_tokens:
            return system + turns[start:], start
    raise ValueError(f"the message is too long: its prompt is {length(system + turns[-1:])} tokens and at most "
                     f"{max_prompt_tokens} fit (the model's context less the tokens kept for the reply)")  # fmt: skip


def text_streamer(tokenizer, stop_strings: Sequence[str] = (), write=None):
    """A transformers ``TextStreamer`` for :func:`sample_chat` that writes the reply as it comes (whole
    words; special tokens, the prompt and leading whitespace left out) and stops writing at the first stop
    string, like the text :func:`sample_chat` returns. A stop string longer than one character that spans two written chunks may
    show its beginning.

    Args:
        tokenizer: the model's tokenizer.
        stop_strings: as for :func:`sample_chat`.
        write: called with each new piece of text, then with ``"\\n"`` at the end; default: stdout, flushed.
    """
    import sys

    from transformers import TextStreamer

    def to_stdout(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    out = write or to_stdout

    class _StopStreamer(TextStreamer):
        shown, stopped = "", False  # the reply's text so far (cut at a stop string), whether it was cut

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if not self.stopped and text:
                kept = cut_at_stop(self.shown + text, stop_strings)
                self.stopped = len(kept) < len(self.shown) + len(text)
                piece = kept[len(self.shown) :]
                if not self.shown.strip():  # leading whitespace is left out (after the cut: a stop string stops)
                    piece = piece.lstrip()
                self.shown = kept
                if piece:
                    out(piece)
            if stream_end:
                out("\n")
                self.shown, self.stopped = "", False  # ready for the next reply

    return _StopStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


@torch.inference_mode()
def sample_chat(
    model,
    tokenizer,
    messages: list[dict],
    max_new_tokens: int = 256,
    temperature: float = 0.7,
    top_p: float = 0.9,
    repetition_penalty: float = 1.1,
    stop_strings: Sequence[str] = (),
    stop_ids: Sequence[int] | None = None,
    streamer=None,
) -> str:
    """One reply to a conversation, decoded by transformers' ``model.generate``: sampling with temperature
    and nucleus (top-p) filtering, or greedy at temperature 0 (then, with ``repetition_penalty=1``, the same
    text as :func:`generate_batch` for the same prompt and stop strings).

    Sampling draws from torch's global random state: seed it (``transformers.set_seed``) for repeatable
    replies.

    Args:
        model: a causal LM in eval mode.
        tokenizer: its tokenizer, with a chat template.
        messages: role/content dicts, oldest first, the last one the user's; the whole list is one prompt
            (fit it to the model's context first, see :func:`fit_to_context`).
        max_new_tokens: cap on the reply's tokens (>= 1).
        temperature: divides the logits before sampling (> 0); 0: greedy decoding.
        top_p: sample from the smallest set of tokens whose probabilities sum to at least this, in (0, 1];
            1: no filtering. Ignored when greedy. No top-k filtering is applied.
        repetition_penalty: divides the (positive) logits of tokens already in the prompt or reply (> 0,
            1: none); applies to greedy decoding too.
        stop_strings: the reply ends at the first of these (and at EOS); the text is cut there.
        stop_ids: :func:`stop_token_ids` of ``stop_strings``, precomputed (it scans the vocabulary); None:
            computed here.
        streamer: a transformers streamer (e.g. from :func:`text_streamer`) given the tokens as they come.

    Returns:
        The reply: special tokens removed, cut at the first stop string.

    Raises:
        ValueError: ``max_new_tokens < 1``, ``temperature < 0``, ``top_p`` outside (0, 1] or
            ``repetition_penalty <= 0``.
    """
    if max_new_tokens < 1 or temperature < 0 or not 0 < top_p <= 1 or repetition_penalty <= 0:
        raise ValueError(f"bad sampling settings: max_new_tokens={max_new_tokens} (>= 1), temperature={temperature} "
                         f"(>= 0), top_p={top_p} (in (0, 1]), repetition_penalty={repetition_penalty} (> 0)")  # fmt: skip
    device = next(model.parameters()).device
    inputs = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=True,
                                           return_tensors="pt").to(device)  # fmt: skip
    if stop_ids is None:
        stop_ids = stop_token_ids(tokenizer, stop_strings)
    long_stops = [s for s in stop_strings if len(s) > 1]
    # top_k=0 so that only temperature and top-p shape the distribution, whatever the model's defaults
    decoding = {"do_sample": False}
    if temperature > 0:
        decoding = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
    out = model.generate(
        **inputs,
        **decoding,
        max_new_tokens=max_new_tokens,
        repetition_penalty=repetition_penalty,
        eos_token_id=list(stop_ids),
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        stop_strings=long_stops or None,
        tokenizer=tokenizer if long_stops else None,
        streamer=streamer,
    )
    reply = out[0, inputs["input_ids"].shape[1] :]
    return cut_at_stop(tokenizer.decode(reply, skip_special_tokens=True), stop_strings)
