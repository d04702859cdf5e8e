"""Training throughput: GameSense's SFT recipe vs the anchor project's recipe, side by side in one run.

Both train LoRA adapters of the same shape on the same base model and the same slice of ViGGO training
data, for the same number of optimizer steps and batch size:
- anchor: HF ``Trainer``, every example padded to ``max_length=512``, loss on the full sequence, pad = eos,
  fp32, TRL/Trainer defaults otherwise;
- ours: the recipe's ``sft`` stage as ``gamesense finetune`` builds it (``gamesense.training.stage``): TRL
  ``SFTTrainer`` with completion-only loss, dynamic padding with length-grouped batches, bf16 autocast where
  the CPU has it, no activation checkpointing.
Throughput is non-pad tokens per second (the attention mask's sum; the same prompt format for both), timed
from the second optimizer step on, rounds interleaved (ours, anchor, ours, anchor) so machine noise hits
both. Prints both figures and the ratio.

It also prints each side's model FLOPs utilisation (MFU): training FLOP/s (forward + backward, counted from
the model's shapes and each sequence's non-pad tokens by :mod:`gamesense.training.flops`; the LM head
counted where each recipe computes its loss) divided by the matmul peak measured in the same run on the
training device in that side's compute dtype (:func:`gamesense.training.flops.peak_matmul_flops`: bf16 for ours
where the device has native bf16, fp32 for the anchor).

    python benchmarks/train_throughput.py [--steps 8] [--batch-size N] [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from datasets import Dataset
from transformers import DataCollatorForLanguageModeling, Trainer, TrainerCallback, TrainingArguments

from gamesense.config import load_recipe, resolve_data_path
from gamesense.models.base import load_base_model, load_tokenizer
from gamesense.models.hardware import resolve_bf16
from gamesense.tasks import get_task
from gamesense.training.flops import peak_matmul_flops
from gamesense.training.methods import get_method
from gamesense.training.methods.base import StageInputs, build_records, lora_config
from gamesense.training.recipe import LLMRecipe
from gamesense.training.stage import build_trainer, trainer_config


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
    sft = get_method("sft")
    return timed(build_trainer(sft, inputs, trainer_config(sft, recipe, Path(out))))


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
    base = load_base_model(recipe.model.base)
    model = get_peft_model(base, lora_config(recipe, model=base))
    trainer = Trainer(model=model, args=args, train_dataset=dataset,
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
    return timed(trainer)


def flops_per_token(recipe: LLMRecipe, records, full_sequence_loss: bool) -> float:
    """Training FLOPs per non-pad token over the data slice (LoRA of the recipe's rank on every projection of its
    ``lora.top_layers``, or of every layer)."""
    from transformers import AutoConfig

    from gamesense.models.base import resolve_base_model
    from gamesense.training.flops import DecoderShape, sequence_training_flops

    tokenizer = load_tokenizer(recipe.model.base)
    config = AutoConfig.from_pretrained(resolve_base_model(recipe.model.base))
    shape = DecoderShape.from_config(config, recipe.lora.r, adapted_layers=recipe.lora.top_layers)
    total_flops = total_tokens = 0.0
    for r in records:
        length = len(tokenizer.apply_chat_template(r["prompt"] + r["completion"], tokenize=True, return_dict=False))
        prompt = len(tokenizer.apply_chat_template(r["prompt"], tokenize=True, add_generation_prompt=True, return_dict=False))
        total_flops += sequence_training_flops(shape, length, length if full_sequence_loss else length - prompt)
        total_tokens += length
    return total_flops / total_tokens


def timed(trainer) -> float:
    timer = StepTimer()
    trainer.add_callback(timer)
    trainer.train()
    return timer.tokens / timer.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="viggo")
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per round (the first is warm-up)")
    parser.add_argument("--batch-size", type=int, default=8,
                        help="both sides (the anchor pads every row to 512 tokens: at 16 it needs over 24 GB)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rows", type=int, default=256, help="training rows in the shared data slice")
    args = parser.parse_args()
    torch.manual_seed(0)
    recipe = load_recipe(args.recipe, LLMRecipe)
    task = get_task(recipe.task, recipe.task_options)
    examples = task.load(resolve_data_path(recipe.data.train_file), args.rows).examples
    records = build_records("sft", task, examples)
    results = {"ours": [], "anchor": []}
    for round_ in range(args.rounds):
        for name, fn in (("ours", run_ours), ("anchor", run_anchor)):
            rate = fn(recipe, task, records, args.steps, args.batch_size, f"/tmp/gamesense-bench-{name}")
            results[name].append(rate)
            print(f"round {round_ + 1} {name:6s}: {rate:8.1f} non-pad tokens/s", flush=True)
    ours, anchor = statistics.median(results["ours"]), statistics.median(results["anchor"])
    bf16 = resolve_bf16(recipe.sft.get("bf16"))
    device = "cuda" if torch.cuda.is_available() else "cpu"  # where the trainers ran
    peaks = {"ours": peak_matmul_flops(device, torch.bfloat16 if bf16 else torch.float32),
             "anchor": peak_matmul_flops(device, torch.float32)}  # fmt: skip
    flops = {"ours": flops_per_token(recipe, records, False), "anchor": flops_per_token(recipe, records, True)}
    mfu = {name: rate * flops[name] / peaks[name] for name, rate in (("ours", ours), ("anchor", anchor))}
    print(f"\nmodel {recipe.model.base}, {len(records)} rows, batch {args.batch_size}, {args.steps} steps x {args.rounds} rounds, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    print(f"ours   (completion-only, dynamic padding, bf16={bf16}, compile={recipe.runtime.compile}): {ours:8.1f} non-pad tokens/s, "
          f"{flops['ours'] / 1e9:.2f} GFLOP/token, MFU {mfu['ours']:.1%} of {peaks['ours'] / 1e12:.2f} TFLOP/s "
          f"({'bf16' if bf16 else 'fp32'} matmul peak)")  # fmt: skip
    print(f"anchor (Trainer, pad to 512, full-sequence loss, fp32): {anchor:8.1f} non-pad tokens/s, "
          f"{flops['anchor'] / 1e9:.2f} GFLOP/token, MFU {mfu['anchor']:.1%} of {peaks['anchor'] / 1e12:.2f} TFLOP/s (fp32 matmul peak)")
    print(f"ratio ours/anchor: {ours / anchor:.2f}x")
    # Context: the model's own largest matmul (a batch of ~100-token rows through the MLP up-projection) is
    # far smaller than 2048-cubed, and small matmuls do not reach the peak.
    config = load_base_model(recipe.model.base, dtype="float32").config
    shape_peak = peak_matmul_flops(device, torch.bfloat16 if bf16 else torch.float32,
                                   (args.batch_size * 96, config.hidden_size, config.intermediate_size))  # fmt: skip
    print(f"matmul peak at the model's MLP shape ({args.batch_size * 96}x{config.hidden_size}x{config.intermediate_size}): "
          f"{shape_peak / 1e12:.2f} TFLOP/s; ours is {ours * flops['ours'] / shape_peak:.1%} of it")  # fmt: skip


if __name__ == "__main__":
    main()
