"""Training throughput: GameSense's SFT recipe vs the anchor project's recipe, side by side in one run.

Both train LoRA adapters of the same shape on the same base model and the same slice of ViGGO training
data, for the same number of optimizer steps and batch size:
- anchor: HF ``Trainer``, every example padded to ``max_length=512``, loss on the full sequence, pad = eos,
  fp32, TRL/Trainer defaults otherwise;
- ours: the recipe's ``sft`` stage as ``gamesense finetune`` builds it (``gamesense.training.stages``): TRL
  ``SFTTrainer`` with completion-only loss, dynamic padding with length-grouped batches, bf16 autocast where
  the CPU has it, no activation checkpointing.
Throughput is non-pad tokens per second (the attention mask's sum; the same prompt format for both), timed
from the second optimizer step on, rounds interleaved (ours, anchor, ours, anchor) so machine noise hits
both. Prints both figures and the ratio.

    python benchmarks/train_throughput.py [--steps 6] [--batch-size 8] [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from datasets import Dataset
from transformers import DataCollatorForLanguageModeling, Trainer, TrainerCallback, TrainingArguments

from gamesense.config import LLMRecipe, load_recipe, resolve_data_path
from gamesense.models.base import load_base_model, load_tokenizer
from gamesense.models.hardware import resolve_bf16
from gamesense.tasks import get_task
from gamesense.training.stages import StageInputs, build_trainer, lora_config, stage_config, stage_records


class StepTimer(TrainerCallback):
    """Wall time and non-pad tokens from the end of the first (warm-up) step to the end of training."""

    def __init__(self):
        self.start_time = self.start_tokens = None
        self.seconds = self.tokens = 0.0

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        if self.start_time is None:
            self.start_time, self.start_tokens = now, state.num_input_tokens_seen
        else:
            self.seconds = now - self.start_time
            self.tokens = state.num_input_tokens_seen - self.start_tokens


def run_ours(recipe: LLMRecipe, task, records, steps, batch_size, out) -> float:
    """The production SFT stage (recipe settings, our trainer) on the shared slice."""
    recipe = recipe.model_copy(deep=True)
    recipe.sft = {**recipe.sft, "max_steps": steps, "per_device_train_batch_size": batch_size, "save_strategy": "no",
                  "include_num_input_tokens_seen": "non_padding"}  # fmt: skip
    inputs = StageInputs(recipe=recipe, task=task, train_records=records, stage_dir=Path(out), show_progress=False)
    return timed(build_trainer("sft", inputs, stage_config("sft", recipe, Path(out))))


def run_anchor(recipe: LLMRecipe, task, records, steps, batch_size, out) -> float:
    from peft import get_peft_model

    tokenizer = load_tokenizer(recipe.model.base)
    tokenizer.pad_token = tokenizer.eos_token  # as the anchor does
    texts = [tokenizer.apply_chat_template(r["prompt"] + r["completion"], tokenize=False) for r in records]
    encoded = tokenizer(texts, padding="max_length", truncation=True, max_length=512)
    dataset = Dataset.from_dict({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]})
    args = TrainingArguments(
        output_dir=out, max_steps=steps, per_device_train_batch_size=batch_size, learning_rate=recipe.sft["learning_rate"],
        use_cpu=not torch.cuda.is_available(), save_strategy="no", report_to=[], disable_tqdm=True,
        include_num_input_tokens_seen="non_padding", seed=recipe.sft["seed"],
    )
    model = get_peft_model(load_base_model(recipe.model.base), lora_config(recipe))
    trainer = Trainer(model=model, args=args, train_dataset=dataset,
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
    return timed(trainer)


def timed(trainer) -> float:
    timer = StepTimer()
    trainer.add_callback(timer)
    trainer.train()
    return timer.tokens / timer.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="viggo")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per round (the first is warm-up)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rows", type=int, default=256, help="training rows in the shared data slice")
    args = parser.parse_args()
    torch.manual_seed(0)
    recipe = load_recipe(args.recipe, LLMRecipe)
    task = get_task(recipe.task, recipe.task_options)
    examples = task.load(resolve_data_path(recipe.data.train_file), args.rows).examples
    records = stage_records("sft", task, examples)
    results = {"ours": [], "anchor": []}
    for round_ in range(args.rounds):
        for name, fn in (("ours", run_ours), ("anchor", run_anchor)):
            rate = fn(recipe, task, records, args.steps, args.batch_size, f"/tmp/gamesense-bench-{name}")
            results[name].append(rate)
            print(f"round {round_ + 1} {name:6s}: {rate:8.1f} non-pad tokens/s", flush=True)
    ours, anchor = statistics.median(results["ours"]), statistics.median(results["anchor"])
    print(f"\nmodel {recipe.model.base}, {len(records)} rows, batch {args.batch_size}, {args.steps} steps x {args.rounds} rounds")
    print(f"ours   (completion-only, dynamic padding, bf16={resolve_bf16(recipe.sft.get('bf16'))}): {ours:8.1f} non-pad tokens/s")
    print(f"anchor (Trainer, pad to 512, full-sequence loss, fp32):       {anchor:8.1f} non-pad tokens/s")
    print(f"ratio ours/anchor: {ours / anchor:.2f}x")


if __name__ == "__main__":
    main()
