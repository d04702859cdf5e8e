"""Training speed with LoRA in the top layers only (``lora.top_layers``), with and without the frozen-prefix cache,
against LoRA in every layer: side by side in one run.

Each variant trains the recipe's ``sft`` stage (as ``gamesense finetune`` builds it) for ``--epochs`` epochs over
the same slice of training rows; the cache pays from the second epoch on, so at least 2 epochs are needed to see
it. Prints non-pad tokens/s (timed from the second step, so the one-off compilation is left out), the final
training loss of each (the cache must not change it) and the ratios to every-layer LoRA. Rounds interleave the
variants so machine noise hits all of them.

    python benchmarks/top_layers.py [--top 10] [--rows 256] [--epochs 2] [--rounds 1]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from train_throughput import timed

from gamesense.config import load_recipe, resolve_data_path
from gamesense.tasks import get_task
from gamesense.training.methods import get_method
from gamesense.training.methods.base import StageInputs, build_records
from gamesense.training.recipe import LLMRecipe
from gamesense.training.stage import build_trainer, trainer_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="viggo")
    parser.add_argument("--top", type=int, default=10, help="decoder layers with adapters")
    parser.add_argument("--rows", type=int, default=256, help="training rows")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    variants = {
        "every layer": ["runtime.cache_frozen_layers=false"],
        f"top {args.top}": [f"lora.top_layers={args.top}", "runtime.cache_frozen_layers=false"],
        f"top {args.top} + cache": [f"lora.top_layers={args.top}", "runtime.cache_frozen_layers=true"],
    }
    rates: dict[str, list[float]] = {name: [] for name in variants}
    losses: dict[str, float] = {}
    sft = get_method("sft")
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for name, overrides in variants.items():
                recipe = load_recipe(args.recipe, LLMRecipe, overrides + [f"sft.num_train_epochs={args.epochs}"])
                recipe.sft = {**recipe.sft, "max_steps": -1, "save_strategy": "no", "logging_steps": 10**6,
                              "include_num_input_tokens_seen": "non_padding"}  # fmt: skip
                task = get_task(recipe.task, recipe.task_options)
                examples = task.load(resolve_data_path(recipe.data.train_file), args.rows).examples
                out = Path(tmp) / f"{round_}-{len(rates[name])}-{name.replace(' ', '')}"
                inputs = StageInputs(recipe=recipe, task=task, train_records=build_records("sft", task, examples),
                                     stage_dir=out, show_progress=False)  # fmt: skip
                trainer = build_trainer(sft, inputs, trainer_config(sft, recipe, out))
                rates[name].append(timed(trainer))
                losses[name] = trainer.state.log_history[-1]["train_loss"]
                print(f"round {round_ + 1} {name:14s}: {rates[name][-1]:8.1f} non-pad tokens/s, "
                      f"loss {losses[name]:.4f}", flush=True)  # fmt: skip
    every = statistics.median(rates["every layer"])
    print(f"\n{args.recipe}: {args.rows} rows x {args.epochs} epochs, {args.rounds} round(s)")
    for name in variants:
        rate = statistics.median(rates[name])
        print(f"{name:14s}: {rate:8.1f} non-pad tokens/s, {rate / every:.2f}x every layer, final loss {losses[name]:.4f}")


if __name__ == "__main__":
    main()
