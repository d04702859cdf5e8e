"""Decoding speed: the KV cache grown in place and incremental detokenization against what they replace, side
by side in one run (each pair measured twice, alternating: the machines are noisy).

    PYTHONPATH=src .venv/bin/python benchmarks/decoding.py [--rows 128] [--engine-rows 16] [--max-tokens 256]

1. Evaluation decoding (``generate_batch``, the merged-model path of ``evaluate``): the real
   SmolLM2-135M-Instruct on ``--rows`` ViGGO validation prompts with the viggo recipe's generation settings
   (batch 128, at most 96 new tokens, stop at a newline), then the same prompts to ``--max-tokens`` with no
   stop string (long replies, where a cache copied every step costs most). :class:`GrowingCache` against
   transformers' ``DynamicCache`` (``torch.cat`` of the whole cache every step).
2. The LLM engine (``gamesense serve llm`` without HTTP): ``--engine-rows`` requests of exactly
   ``--max-tokens`` tokens (greedy, ``ignore_eos``) submitted together. Ours (GrowingCache, tokenizers'
   ``DecodeStream``) against the previous loop (DynamicCache, every reply decoded whole every step).

Prints generated tokens/s of each and the ratio; name the CPU (``lscpu``) beside the figures.
"""

from __future__ import annotations

import argparse
import os
import threading
import time

import torch
from transformers import DynamicCache

import gamesense.models.kv_cache as kv_cache
import gamesense.serving.llm.engine as engine_module
from gamesense.config import GenerationSection, load_recipe, resolve_data_path
from gamesense.evaluation.generation import generate_batch
from gamesense.models.base import load_base_model, load_tokenizer
from gamesense.serving.llm.requests import GenerationRequest, ReplyText, SamplingParams
from gamesense.tasks import get_task
from gamesense.training.recipe import LLMRecipe

BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"
GROWING, REPLY_TEXT = kv_cache.GrowingCache, engine_module.ReplyText


class WholeReplyText(ReplyText):
    """The previous engine's detokenization: the whole reply decoded after every token."""

    def __init__(self, tokenizer):
        super().__init__(tokenizer)
        self._backend = None


def use(previous: bool) -> None:
    """Switch both decode loops to the previous cache and detokenization, or back to ours."""
    kv_cache.GrowingCache = (lambda reserve=0: DynamicCache()) if previous else GROWING
    engine_module.GrowingCache = kv_cache.GrowingCache
    engine_module.ReplyText = WholeReplyText if previous else REPLY_TEXT


def engine_tokens_per_s(engine, prompts: list[list[int]], max_tokens: int) -> float:
    done = threading.Semaphore(0)

    def sink(event):
        if event.done or event.error:
            assert event.error is None, event.error
            done.release()

    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    started = time.perf_counter()
    for ids in prompts:
        engine.submit(GenerationRequest(ids, params, sink))
    for _ in prompts:
        done.acquire()
    return len(prompts) * max_tokens / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=128, help="ViGGO validation prompts for evaluation decoding")
    parser.add_argument("--engine-rows", type=int, default=16, help="requests decoded together by the engine")
    parser.add_argument("--max-tokens", type=int, default=256, help="reply length of the long-reply runs")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    recipe = load_recipe("viggo", LLMRecipe)
    task = get_task(recipe.task, recipe.task_options)
    eval_file = resolve_data_path(recipe.data.eval_file)
    prompts = [r["prompt"] for r in task.eval_records(task.load(eval_file, args.rows).examples)]
    tokenizer = load_tokenizer(BASE)
    # in short-lived threads, as the engine loads its model: see engine_module.off_main_thread
    engine_module.off_main_thread(lambda: evaluation_decoding(tokenizer, task, prompts, args.max_tokens))
    engine_prompts = [tokenizer.apply_chat_template(p, tokenize=True, add_generation_prompt=True, return_dict=False)
                      for p in prompts[: args.engine_rows]]  # fmt: skip
    engine = engine_module.LLMEngine(BASE, max_batch=args.engine_rows)
    engine.start()
    try:
        engine_tokens_per_s(engine, engine_prompts[:2], 4)  # warm-up
        speed = {True: [], False: []}
        for previous in (True, False, True, False):
            use(previous)
            speed[previous].append(engine_tokens_per_s(engine, engine_prompts, args.max_tokens))
    finally:
        engine.stop()
        use(False)
    old, new = max(speed[True]), max(speed[False])
    print(f"LLM engine, {len(engine_prompts)} requests x {args.max_tokens} tokens: previous loop {old:,.0f} tok/s, "
          f"ours {new:,.0f} tok/s, {new / old:.2f}x")  # fmt: skip


def evaluation_decoding(tokenizer, task, prompts: list, max_tokens: int) -> None:
    model = load_base_model(BASE, dtype="auto").eval()
    print(f"SmolLM2-135M-Instruct, {model.dtype}, {torch.get_num_threads()} threads, {len(prompts)} ViGGO prompts")

    settings = {
        "viggo recipe (batch 128, <= 96 tokens, stop at newline)": (GenerationSection(max_new_tokens=96, batch_size=128), task.stop_strings),
        f"long replies (batch 128, <= {max_tokens} tokens, no stop string)": (GenerationSection(max_new_tokens=max_tokens, batch_size=128), ()),
    }  # fmt: skip
    generate_batch(model, tokenizer, prompts[:8], GenerationSection(max_new_tokens=4, batch_size=8), progress=False)
    for label, (gen, stops) in settings.items():
        speed: dict[bool, list[float]] = {True: [], False: []}
        for previous in (True, False, True, False):
            use(previous)
            speed[previous].append(generate_batch(model, tokenizer, prompts, gen, stops, progress=False).tokens_per_s)
        old, new = max(speed[True]), max(speed[False])
        print(f"evaluation decoding, {label}: DynamicCache {old:,.0f} tok/s, GrowingCache {new:,.0f} tok/s, {new / old:.2f}x")


if __name__ == "__main__":
    main()
