"""Training under CPU contention: how much a competing process slows the SFT stage, before and after
GameSense picks its threads from the cores other processes leave free.

Scenarios, each measured in a fresh process, all in one run so machine noise hits every cell:
- alone;
- beside a busy loop (one Python process spinning on one core);
- beside a second PyTorch job (a process multiplying matrices with as many threads as there are cores);
- a PyTorch job that starts after training has begun (after the second step).

Settings:
- before: PyTorch's default (one thread per core, OpenMP's default waiting);
- after: GameSense's default, ``runtime.threads: auto``: one thread per core left free, chosen at start and
  re-checked during training (here every 5 s instead of 30 s, to fit the short run);
- passive (alone only): ``OMP_WAIT_POLICY=PASSIVE``, the other remedy often suggested, for its cost.

Prints non-pad training tokens/s per cell (steps after the first, or after the late competitor started)
and each cell's slowdown against running alone.

    python benchmarks/cpu_contention.py [--steps 8] [--rows 256]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

COMPETITORS = {
    "busy loop": "while True: pass",
    "PyTorch job": "import torch\nx = torch.randn(1024, 1024)\nwhile True: x @ x",
}
LATE = "PyTorch job, late"


def _spawn(competitor: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", COMPETITORS[competitor]], env={**os.environ, "OMP_WAIT_POLICY": "ACTIVE"})


def worker(steps: int, rows: int, setting: str, late: bool) -> None:
    """Train the recipe's sft stage for ``steps`` steps; print tokens/s as JSON."""
    from pathlib import Path

    import torch
    from transformers import TrainerCallback

    from gamesense.config import load_recipe, resolve_data_path
    from gamesense.models.hardware import configure_threads
    from gamesense.tasks import get_task
    from gamesense.training.callbacks import FollowFreeCores
    from gamesense.training.methods import get_method
    from gamesense.training.methods.base import StageInputs, build_records
    from gamesense.training.recipe import LLMRecipe
    from gamesense.training.stage import build_trainer, trainer_config

    plan = configure_threads("auto") if setting == "after" else None
    recipe = load_recipe("viggo", LLMRecipe, ["runtime.compile=false"])  # compiling is orthogonal and slow to start
    recipe.sft = {**recipe.sft, "max_steps": steps, "save_strategy": "no", "logging_steps": 1000,
                  "include_num_input_tokens_seen": "non_padding"}  # fmt: skip
    task = get_task(recipe.task, recipe.task_options)
    records = build_records("sft", task, task.load(resolve_data_path(recipe.data.train_file), rows).examples)
    out = Path(f"/tmp/gamesense-contention-{os.getpid()}")
    inputs = StageInputs(recipe=recipe, task=task, train_records=records, stage_dir=out, show_progress=False)
    sft = get_method("sft")
    trainer = build_trainer(sft, inputs, trainer_config(sft, recipe, out))
    threads_seen: set[int] = set()

    class Timer(TrainerCallback):
        start = tokens0 = None
        rate = 0.0
        rival = None

        def on_step_end(self, args, state, control, **kwargs):
            threads_seen.add(torch.get_num_threads())
            now = time.perf_counter()
            if late and state.global_step == 2:
                self.rival = _spawn("PyTorch job")
                self.start = None
            if self.start is None:
                self.start, self.tokens0 = now, state.num_input_tokens_seen
            else:
                self.rate = (state.num_input_tokens_seen - self.tokens0) / (now - self.start)

    timer = Timer()
    trainer.add_callback(timer)
    if setting == "after":
        trainer.add_callback(FollowFreeCores(every_s=5.0))
    try:
        trainer.train()
    finally:
        if timer.rival:
            timer.rival.kill()
    print(json.dumps({"rate": timer.rate, "threads": sorted(threads_seen), "plan": plan.describe() if plan else ""}))


def measure(steps: int, rows: int, setting: str, scenario: str) -> dict:
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    if setting == "passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    rival = _spawn(scenario) if scenario in COMPETITORS else None
    if rival:
        time.sleep(2)  # let it occupy its core(s) before the thread count is chosen
    command = [sys.executable, __file__, "--worker", "after" if setting == "after" else "before",
               "--steps", str(steps), "--rows", str(rows)] + (["--late"] if scenario == LATE else [])  # fmt: skip
    try:
        out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    finally:
        if rival:
            rival.kill()
            rival.wait()
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--worker", choices=["before", "after"], help=argparse.SUPPRESS)
    parser.add_argument("--late", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.steps, args.rows, args.worker, args.late)
        return
    scenarios = ("alone", *COMPETITORS, LATE)
    results: dict[tuple[str, str], dict] = {}
    for scenario in scenarios:
        for setting in ("before", "after", "passive") if scenario == "alone" else ("before", "after"):
            cell = measure(args.steps, args.rows, setting, scenario)
            results[(scenario, setting)] = cell
            print(f"{scenario:18s} {setting:7s}: {cell['rate']:7.1f} tokens/s, threads {cell['threads']} {cell['plan']}", flush=True)
    print(f"\n{'scenario':18s} {'before':>26s} {'after':>26s}")
    for scenario in scenarios:
        cells = []
        for setting in ("before", "after"):
            rate, alone = results[(scenario, setting)]["rate"], results[("alone", setting)]["rate"]
            cells.append(f"{rate:7.1f} tok/s ({alone / rate:5.2f}x slower)" if scenario != "alone" else f"{rate:7.1f} tok/s")
        print(f"{scenario:18s} {cells[0]:>26s} {cells[1]:>26s}")
    passive = results[("alone", "passive")]["rate"]
    print(f"OMP_WAIT_POLICY=PASSIVE alone: {passive:.1f} tok/s ({results[('alone', 'before')]['rate'] / passive:.2f}x slower "
          "than the default policy): not used")  # fmt: skip


if __name__ == "__main__":
    main()
