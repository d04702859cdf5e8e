"""Frozen-prefix caching: with LoRA on the top decoder layers only (``lora.top_layers``), the layers below them
are frozen and carry no adapter, so their output for a training row is the same in every epoch. The first time a
row is seen its hidden state after the last frozen layer is kept; when every row of a batch has been seen, the
frozen layers are skipped and the kept states are fed to the first adapted layer.

With SmolLM2-135M, adapters in the top 10 of 30 layers and 2 epochs, the second epoch does none of the 20 frozen
layers' work. The arithmetic is the same as recomputing them, up to float rounding: right-padded rows do not
attend to padding, so a row's states do not depend on the batch it came in.

The cache applies only in training mode (evaluation and generation run every layer) and only to batches of
right-padded rows with positions 0..n-1 (not to packed rows, whose neighbours change from epoch to epoch).
"""

from __future__ import annotations

import logging
import types

import torch

log = logging.getLogger(__name__)


class FrozenPrefixCache:
    """Keeps each training row's hidden states after the frozen decoder layers ``0 .. num_frozen - 1``.

    Args:
        decoder: the decoder module (``model.model`` of a Llama-family model) with a ``layers`` list.
        num_frozen: how many of the first layers are frozen (no trainable parameter in them or below).
        max_bytes: stop keeping new rows past this size (memory bound; later rows are recomputed each time).
        compile: compile the frozen layers' own forward (their calls then run through the cache's wrapper).

    A row's key is its token ids (the attention mask's real tokens). States are stored without padding,
    shape ``[n_tokens, hidden]`` in the layer's output dtype, on the model's device.
    """

    def __init__(self, decoder, num_frozen: int, max_bytes: int = 2 << 30, compile: bool = False):
        self.layers = list(decoder.layers[:num_frozen])
        self.max_bytes = max_bytes
        self.states: dict[bytes, torch.Tensor] = {}
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._keys: list[bytes] | None = None  # this batch's row keys; None: not cacheable
        self._lengths: list[int] = []
        self._skip = False
        decoder.register_forward_pre_hook(self._before_decoder, with_kwargs=True)
        for index, layer in enumerate(self.layers):
            forward = layer.forward
            if compile:
                forward = torch.compile(forward, dynamic=True)
            last = index == num_frozen - 1
            layer.forward = types.MethodType(_cached_forward(self, forward, last), layer)
            layer._gamesense_frozen_prefix = True  # compile_layers leaves it to the wrapper above

    def _before_decoder(self, module, args, kwargs):
        self._keys, self._skip = None, False
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if not module.training or input_ids is None or kwargs.get("past_key_values") is not None:
            return None
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.dim() != 2:
            return None  # a custom 4D mask: rows may see each other
        lengths = (mask.sum(dim=1) if mask is not None else torch.full((input_ids.shape[0],), input_ids.shape[1]))
        lengths = lengths.tolist()
        if mask is not None and not all(bool(mask[row, :n].all()) for row, n in enumerate(lengths)):
            return None  # left padding: positions depend on the padding
        positions = kwargs.get("position_ids")
        if positions is not None:
            positions = positions.expand(input_ids.shape[0], -1)
            for row, n in enumerate(lengths):
                if not torch.equal(positions[row, :n].cpu(), torch.arange(n)):
                    return None  # packed rows
        ids = input_ids.cpu()
        self._keys = [ids[row, :n].numpy().tobytes() for row, n in enumerate(lengths)]
        self._lengths = lengths
        self._skip = all(key in self.states for key in self._keys)
        if self._skip:
            self.hits += len(self._keys)
        else:
            self.misses += len(self._keys)
        return None

    def kept(self, like: torch.Tensor) -> torch.Tensor:
        """This batch's kept states, right-padded with zeros to ``like``'s shape ``[batch, seq, hidden]``."""
        out = torch.zeros_like(like)
        for row, (key, n) in enumerate(zip(self._keys, self._lengths)):
            out[row, :n] = self.states[key]
        return out

    def keep(self, hidden: torch.Tensor) -> None:
        """Keep the rows of ``hidden`` (``[batch, seq, hidden]``) that are not kept yet, within ``max_bytes``."""
        for row, (key, n) in enumerate(zip(self._keys, self._lengths)):
            if key in self.states:
                continue
            state = hidden[row, :n].detach().clone()
            size = state.numel() * state.element_size()
            if self.bytes + size > self.max_bytes:
                log.info("frozen-prefix cache full at %.0f MB: later rows are recomputed", self.bytes / 1e6)
                self._keys = [k for k in self._keys if k in self.states]
                return
            self.states[key] = state
            self.bytes += size


def _cached_forward(cache: FrozenPrefixCache, forward, last: bool):
    def cached_forward(self, hidden_states, *args, **kwargs):
        if cache._skip:
            return cache.kept(hidden_states) if last else hidden_states
        with torch.no_grad():
            out = forward(hidden_states, *args, **kwargs)
        if last and cache._keys is not None:
            cache.keep(out)
        return out

    return cached_forward


def install_frozen_prefix_cache(model, compile: bool = False) -> FrozenPrefixCache | None:
    """Put a :class:`FrozenPrefixCache` on ``model``'s decoder when its first decoder layers, and the embeddings
    below them, have no trainable parameter and no dropout is active there.

    Returns:
        the cache, or None when no layer is frozen (or the model has no ``layers`` list, or dropout is on).
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = getattr(base, "get_decoder", lambda: None)() or getattr(base, "model", None)
    layers = getattr(decoder, "layers", None)
    if layers is None or float(getattr(base.config, "attention_dropout", 0.0) or 0.0) > 0:
        return None
    embeddings = decoder.get_input_embeddings() if hasattr(decoder, "get_input_embeddings") else None
    if embeddings is not None and any(p.requires_grad for p in embeddings.parameters()):
        return None
    num_frozen = 0
    for layer in layers:
        if any(p.requires_grad for p in layer.parameters()):
            break
        num_frozen += 1
    if num_frozen == 0 or num_frozen == len(layers):
        return None
    return FrozenPrefixCache(decoder, num_frozen, compile=compile)
