"""Training FLOPs of a decoder-only transformer, counted from its shapes (for model FLOPs utilisation).

Counting follows Chowdhery et al., "PaLM: Scaling Language Modeling with Pathways", 2022, appendix B: a
matmul of an ``m x k`` by a ``k x n`` matrix costs ``2 m k n``; the backward pass of a linear layer costs its
forward twice when its weight trains (input and weight gradients) and once when the weight is frozen (input
gradient only); attention's score and value products cost ``4 * L * d_attn`` per token and layer forward
(full ``L``, as PaLM counts them) and twice that backward. Element-wise work (norms, activations, softmax)
is left out, as MFU conventionally does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DecoderShape:
    """The shapes that matter for FLOPs. ``lora_rank`` 0 with ``full=False`` means nothing trains."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    lora_rank: int = 0
    full: bool = False
    adapted_layers: int | None = None  # LoRA in the top N layers only (``lora.top_layers``); None: every layer

    @classmethod
    def from_config(cls, config, lora_rank: int = 0, full: bool = False, adapted_layers: int | None = None) -> DecoderShape:
        """From a transformers Llama-style config (``hidden_size``, ``intermediate_size``, ...)."""
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        return cls(config.num_hidden_layers, config.hidden_size, config.intermediate_size, config.num_attention_heads,
                   kv_heads, head_dim, config.vocab_size, lora_rank, full, adapted_layers)  # fmt: skip

    def linears(self) -> list[tuple[int, int]]:
        """``(in, out)`` of the seven projections of one layer (q, k, v, o, gate, up, down)."""
        d, a, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        return [(d, a), (d, kv), (d, kv), (a, d), (d, self.intermediate), (d, self.intermediate), (self.intermediate, d)]


def sequence_training_flops(shape: DecoderShape, length: int, loss_tokens: int) -> float:
    """FLOPs of one forward + backward pass over one sequence.

    Args:
        shape: the model (LoRA on every projection when ``lora_rank`` > 0, as ``target_modules: all-linear``, in
            the top ``adapted_layers``; the layers below them run forward only: no gradient reaches them).
        length: non-pad tokens of the sequence.
        loss_tokens: positions whose logits are computed (the completion, for a completion-only loss that runs
            the LM head there only; ``length`` for a full-sequence loss).

    Returns:
        FLOPs (float).
    """
    adapted = shape.layers if shape.full or shape.adapted_layers is None else min(shape.adapted_layers, shape.layers)
    below = shape.layers - adapted
    base = sum(i * o for i, o in shape.linears())
    lora = sum(shape.lora_rank * (i + o) for i, o in shape.linears()) * adapted
    frozen_factor = 3 if shape.full else 2  # forward + input grad (+ weight grad when it trains)
    linear = 2 * length * (base * (frozen_factor * adapted + below) + lora * 3)
    attention = 4 * length * length * shape.heads * shape.head_dim * (3 * adapted + below)
    head = 2 * loss_tokens * shape.hidden * shape.vocab * (3 if shape.full else 2)
    return float(linear + attention + head)


def peak_matmul_flops(device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                      shape: tuple[int, int, int] | None = None, repeats: int = 8) -> float:  # fmt: skip
    """Best FLOP/s of ``m x k`` by ``k x n`` matmuls on ``device`` in ``dtype``, now: the peak that MFU divides by.

    Measured on the device that trains, in its training dtype (a CPU peak says nothing of a GPU's). On CUDA the
    device is synchronised around each product: kernels launch asynchronously, so timing the launch would
    report a peak many times too high.

    Args:
        device: where to measure (``cpu``, ``cuda``, ``cuda:1``).
        dtype: the training compute dtype; default bf16.
        shape: ``(m, k, n)``; default 8192 cubed on CUDA (smaller products do not fill an H100/H200), 2048 cubed
            on CPU.
        repeats: timed products after one warm-up; the fastest counts.

    Returns:
        FLOP/s (``2 m k n`` per product).
    """
    device = torch.device(device)
    dtype = dtype or torch.bfloat16
    side = 8192 if device.type == "cuda" else 2048
    m, k, n = shape or (side, side, side)
    a = torch.randn(m, k, dtype=dtype, device=device)
    b = torch.randn(k, n, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda *args: None)
    a @ b  # warm-up: kernel selection, first-touch of the output
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * m * k * n / best
