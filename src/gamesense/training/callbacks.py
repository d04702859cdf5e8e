"""Trainer callbacks shared by every training stage: a progress bar with throughput, returning freed heap
memory to the OS on CPU runs, and following the CPU cores other processes leave free."""

from __future__ import annotations

import logging
import time

import torch
from transformers import TrainerCallback

from gamesense.models.hardware import ThreadBalancer, trim_heap

log = logging.getLogger(__name__)


class ProgressWithThroughput(TrainerCallback):
    """Trainer callback: one tqdm bar with loss and non-pad tokens/s (from the ``num_tokens`` TRL logs, where
    the trainer logs them). ``desc``: the bar's label (the stage name)."""

    def __init__(self, desc: str = "train"):
        self.desc = desc
        self.bar = None
        self.last = (0.0, time.perf_counter())

    def on_train_begin(self, args, state, control, **kwargs):
        from tqdm.auto import tqdm

        if state.is_world_process_zero:
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc=self.desc, unit="step")
            self.last = (0.0, time.perf_counter())

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is None or not logs or "loss" not in logs:
            return
        if "num_tokens" not in logs:
            self.bar.set_postfix(loss=f"{logs['loss']:.4f}")
            return
        tokens, now = float(logs["num_tokens"]), time.perf_counter()
        last_tokens, last_time = self.last
        self.last = (tokens, now)
        rate = (tokens - last_tokens) / max(now - last_time, 1e-9)
        self.bar.set_postfix(loss=f"{logs['loss']:.4f}", tok_s=f"{rate:.0f}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class ReleaseFreedMemory(TrainerCallback):
    """Return freed heap memory to the OS every ``every`` steps (glibc ``malloc_trim``), on CPU only.

    Dynamic padding gives every batch a different shape; glibc keeps the freed activation buffers and the
    process's resident memory creeps up over hundreds of steps (SmolLM2-135M, batch 8: 3.6 -> 5.1 GB in 60
    steps, 9.8 GB peak over the whole default pipeline; trimming after every step: 1.5 -> 2.0 GB). Trimming
    after every step made the next steps fault their pages in again, ~15% slower training; every 10 steps
    amortises that cost.
    """

    def __init__(self, every: int = 10):
        self.every = every

    @classmethod
    def create(cls, every: int = 10) -> ReleaseFreedMemory | None:
        """The callback, or None on a GPU run, with ``every=0``, or where the C library is not glibc."""
        if torch.cuda.is_available() or every <= 0 or not trim_heap():
            return None
        return cls(every)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0:
            trim_heap()


class FollowFreeCores(TrainerCallback):
    """CPU runs with ``runtime.threads: auto``: after a step, at most every ``every_s`` seconds, re-choose the
    thread count from the load other processes put on the machine (:class:`ThreadBalancer`), so a job that
    starts beside the training slows it down gracefully instead of ~10x, and the cores come back when it ends."""

    def __init__(self, every_s: float = 30.0):
        self.balancer = ThreadBalancer(every_s)

    def on_step_end(self, args, state, control, **kwargs):
        plan = self.balancer.check()
        if plan is not None:
            log.info("CPU load changed at step %d: %s", state.global_step, plan.describe())
