"""What this machine can do and how to use it: native bf16 on the CPU or GPU (``bf16: auto``, weights dtype,
attention kernel) and how many CPU threads to run with the cores other processes leave free."""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch


@functools.cache
def cpu_supports_bf16() -> bool:
    """True when this x86 CPU has native bf16 matmul instructions (AVX512-BF16 or AMX-BF16), read from
    ``/proc/cpuinfo`` (False where it cannot be read)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_bf16(setting: bool | str | None) -> bool:
    """A stage's ``bf16`` setting for this machine: ``True``/``False`` as given; ``"auto"`` or None: bf16 on a
    CUDA GPU that supports it, else on a CPU with native bf16 (:func:`cpu_supports_bf16`)."""
    if isinstance(setting, bool):
        return setting
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return cpu_supports_bf16()


def load_dtype(dtype: str = "auto", training: bool = False) -> torch.dtype:
    """Weights dtype for loading: as named, or for ``auto`` bf16 on a CUDA GPU that supports it, fp16 on older
    GPUs; on a CPU fp32, except for training on a CPU with native bf16, where the frozen base weights are
    stored in bf16 (the trainable LoRA weights stay fp32; autocast would otherwise cast every weight at every
    step). Inference loads fp32 on CPU so adapters merge in full precision (:func:`inference_dtype` casts
    afterwards)."""
    if dtype != "auto":
        return getattr(torch, dtype)
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if training and cpu_supports_bf16() else torch.float32


def attention_implementation(setting: str | None, training: bool = False) -> str | None:
    """Resolve ``model.attn_implementation``: as given, or for ``auto`` ``eager`` when training on a CPU (for
    sequences of ~100 tokens PyTorch's CPU flash-attention backward cost a 135M model ~20% of its training
    step) and the library default (``sdpa``) otherwise, decoding included (``eager`` repeats the grouped
    key/value heads and is slower there)."""
    if setting != "auto":
        return setting
    return "eager" if training and not torch.cuda.is_available() else None


def inference_dtype(dtype: str = "auto") -> torch.dtype:
    """Weights dtype for generation: as named, or for ``auto`` bf16 on a bf16-capable GPU or CPU (native bf16
    matmuls decode about 2x faster than fp32 on AVX512-BF16 CPUs), fp16 on older GPUs, else fp32."""
    if dtype != "auto":
        return getattr(torch, dtype)
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_supports_bf16() else torch.float32


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _machine_busy_seconds() -> float:
    """CPU-seconds all cores have spent busy since boot (``/proc/stat``: everything but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def busy_cores(sample_s: float = 0.5) -> float:
    """How many cores other work keeps busy right now: the machine's busy CPU time over ``sample_s`` seconds
    (this process is idle while it samples). 0.0 where ``/proc/stat`` cannot be read."""
    try:
        start, busy0 = time.monotonic(), _machine_busy_seconds()
        time.sleep(sample_s)
        busy1 = _machine_busy_seconds()
    except (OSError, ValueError, IndexError):
        return 0.0
    return max(0.0, (busy1 - busy0) / (time.monotonic() - start))


@dataclass(frozen=True)
class ThreadPlan:
    """Intra-op threads chosen for this run and why."""

    threads: int
    cores: int
    busy: float

    def describe(self) -> str:
        return (f"using {self.threads} PyTorch thread{'s' if self.threads != 1 else ''} "
                f"({self.cores} cores, {self.busy:.1f} busy with other work; "
                f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'default')}, {active_allocator()} heap)")  # fmt: skip


def free_threads(cores: int, busy: float) -> int:
    """One thread per core that ``busy`` cores of other work leave free, at least one."""
    return max(1, min(cores, round(cores - busy)))


def configure_threads(setting: int | str = "auto") -> ThreadPlan:
    """Set PyTorch's intra-op threads: ``setting`` threads, or for ``auto`` one per core that other processes
    leave free (at least one). On a 2-core machine beside one busy-loop process, LoRA training ran at 62
    tokens/s with 2 threads and 431 with 1 (623 alone): a thread that waits for a busy core stalls every
    parallel region (benchmarks/cpu_contention.py).

    Returns:
        the :class:`ThreadPlan` applied.
    """
    cores = usable_cores()
    busy = 0.0
    if setting == "auto":
        busy = busy_cores()
        threads = free_threads(cores, busy)
    else:
        threads = max(1, int(setting))
    torch.set_num_threads(threads)
    return ThreadPlan(threads, cores, busy)


class ThreadBalancer:
    """Follows the cores other processes leave free during a long run (``runtime.threads: auto``): every
    ``every_s`` seconds, others' load = the machine's busy CPU time minus this process's, over the interval;
    when it calls for another thread count, :func:`torch.set_num_threads` is changed at once (a busy core makes
    every parallel region wait for the thread that runs on it, so one thread too many costs far more than one
    too few).

    Args:
        every_s: seconds between checks (a check costs two small file reads).
    """

    def __init__(self, every_s: float = 30.0):
        self.every_s = every_s
        self.cores = usable_cores()
        self._last = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        try:
            times = os.times()
            return time.monotonic(), _machine_busy_seconds(), times.user + times.system
        except (OSError, ValueError, IndexError):
            return None

    def check(self) -> ThreadPlan | None:
        """Re-balance if ``every_s`` passed since the last check.

        Returns:
            the new plan when the thread count changed, else None.
        """
        now = self._sample()
        if self._last is None or now is None or now[0] - self._last[0] < self.every_s:
            return None
        wall = now[0] - self._last[0]
        others = max(0.0, ((now[1] - self._last[1]) - (now[2] - self._last[2])) / wall)
        self._last = now
        threads = free_threads(self.cores, others)
        if threads == torch.get_num_threads():
            return None
        torch.set_num_threads(threads)
        return ThreadPlan(threads, self.cores, others)


@functools.cache
def active_allocator() -> str:
    """``"jemalloc"`` or ``"tcmalloc"`` when one is loaded in this process (preloaded by the ``gamesense``
    command), else ``"glibc"``; read from ``/proc/self/maps``."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "glibc"
    return next((name for name in ("jemalloc", "tcmalloc") if f"lib{name}" in maps), "glibc")


@functools.cache
def _malloc_trim():
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def trim_heap() -> bool:
    """Return the C heap's free memory to the OS (glibc ``malloc_trim``); False where that is not available
    (another C library, or an allocator such as jemalloc preloaded in its place)."""
    trim = _malloc_trim()
    if trim is None or active_allocator() != "glibc":
        return False
    trim(0)
    return True


def release_memory() -> None:
    """After a model is done with (a trained stage, an evaluation): collect its objects, drop compiled graphs
    that still reference its layers, and return the freed heap to the OS, so the next model starts from a low
    resident size instead of on top of the last one's."""
    import gc

    gc.collect()
    torch._dynamo.reset()
    trim_heap()
