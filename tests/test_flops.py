"""Training FLOPs counted from shapes, and the matmul peak that MFU divides by."""

import math
from dataclasses import replace

import pytest
import torch

from gamesense.training.flops import DecoderShape, peak_matmul_flops, sequence_training_flops

SHAPE = DecoderShape(layers=4, hidden=64, intermediate=128, heads=4, kv_heads=2, head_dim=16, vocab=1000, lora_rank=8)


def test_layers_below_the_adapters_cost_their_forward_only():
    length, loss_tokens = 50, 10
    top_two = sequence_training_flops(replace(SHAPE, adapted_layers=2), length, loss_tokens)
    # the top two layers as a 2-layer model with adapters everywhere, plus two layers' forward pass
    adapted = sequence_training_flops(replace(SHAPE, layers=2), length, loss_tokens)
    forward = 2 * length * sum(i * o for i, o in SHAPE.linears()) + 4 * length**2 * SHAPE.heads * SHAPE.head_dim
    assert top_two == pytest.approx(adapted + 2 * forward)
    assert sequence_training_flops(replace(SHAPE, adapted_layers=4), length, loss_tokens) == sequence_training_flops(
        SHAPE, length, loss_tokens)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_peak_is_measured_in_the_training_dtype_on_the_cpu(dtype):
    peak = peak_matmul_flops("cpu", dtype, (256, 256, 256), repeats=2)
    assert math.isfinite(peak) and peak > 1e8  # any CPU multiplies 2 x 256^3 in well under 0.3 s


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_peak_on_cuda_waits_for_the_kernels():
    # a launch returns in microseconds: without the synchronisation an H100 would "reach" over 10 PFLOP/s
    assert peak_matmul_flops("cuda", torch.bfloat16) < 5e15
