"""What this machine can do: native bf16 on the CPU or GPU, and how to resolve ``bf16: auto``."""

from __future__ import annotations

import functools
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


def load_dtype(dtype: str = "auto") -> torch.dtype:
    """Weights dtype for loading (training and the fp32 merge before inference): as named, or for ``auto``
    bf16 on a CUDA GPU that supports it, fp16 on older GPUs, fp32 on CPU (bf16 there comes from autocast)."""
    if dtype != "auto":
        return getattr(torch, dtype)
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def inference_dtype(dtype: str = "auto") -> torch.dtype:
    """Weights dtype for generation: as named, or for ``auto`` bf16 on a bf16-capable GPU or CPU (native bf16
    matmuls decode about 2x faster than fp32 on AVX512-BF16 CPUs), fp16 on older GPUs, else fp32."""
    if dtype != "auto":
        return getattr(torch, dtype)
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_supports_bf16() else torch.float32
