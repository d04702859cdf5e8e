"""One base model, many LoRA adapters, one decode loop: the engine behind ``gamesense serve llm``.

The engine holds one base causal LM in memory. Adapters (PEFT LoRA directories) are loaded into it on first
use under a key that names the registry model and version, and deleted least-recently-used when more than
``max_adapters`` are loaded (never one that a running row uses). A scheduler thread decodes every running
request in ONE forward pass per step, each row with its own adapter (:class:`RowLoRA`: the rows' LoRA deltas
in two batched matmuls per layer; or PEFT's mixed-adapter forward, ``adapter_names=[key or "__base__" per
row]``, with ``lora_kernel="peft"``), its own sampling (greedy at temperature 0, else temperature and top-p
with a per-request ``torch.Generator``), repetition penalty, ``max_tokens``, stop strings and EOS.

Continuous batching: requests that arrive while a batch runs are prefilled between two steps and join the
running batch (left padding: the running KV cache and the new rows' cache are padded on the left to one
width and concatenated); a finished row leaves at once (its cache rows are dropped, and cache columns that
are padding for every remaining row are trimmed). With ``mixed_batches=False`` a batch only holds requests
for one adapter (the "one adapter at a time" baseline of ``benchmarks/llm_server.py``).

Text is streamed as it is decoded: each step the row's tokens are decoded again (so a multi-byte character
split over tokens is never cut: a trailing U+FFFD is held back), and text that could be the start of a stop
string is held back until it is known not to be one.

Registry look-ups (alias -> version, downloads) happen in :class:`ModelResolver`, called by the API before a
request is queued, never inside the decode loop.

Sources: PEFT "Inference with different LoRA adapters in the same batch"
(https://huggingface.co/docs/peft/developer_guides/lora#inference-with-different-lora-adapters-in-the-same-batch);
continuous batching as in vLLM/TGI (Yu et al., "Orca", OSDI 2022).
"""

from __future__ import annotations

import json
import logging
import queue
import random
import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

log = logging.getLogger(__name__)

#: the PEFT name of "no adapter" in a mixed batch
BASE_ROW = "__base__"
#: model names that select the base model (besides the base model's own id)
BASE_NAMES = ("base",)
#: alias a bare registry model name stands for
DEFAULT_ALIAS = "champion"


# --- errors --------------------------------------------------------------------------------------------------


class RequestError(ValueError):
    """A request that cannot be served as asked (HTTP 400 in the API).

    Attributes:
        param: the request field at fault (``model``, ``messages``, ``n``...), or None.
        code: OpenAI-style error code (``context_length_exceeded``, ``model_not_supported``...), or None.
    """

    status = 400

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param, self.code = param, code


class ModelNotFound(LookupError):
    """No served model of that name (HTTP 404, code ``model_not_found``)."""


# --- requests and their results ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplingParams:
    """How one request decodes.

    Attributes:
        max_tokens: most new tokens (>= 1); clamped to what the context leaves after the prompt.
        temperature: 0: greedy; > 0: logits divided by it before sampling.
        top_p: nucleus filtering in (0, 1]; 1: none. Ignored when greedy.
        seed: seed of the request's own random generator (None: a random seed): same seed, same reply.
        repetition_penalty: > 0; 1: none. Divides the positive logits (multiplies the negative ones) of
            tokens already in the prompt or reply, as transformers' ``RepetitionPenaltyLogitsProcessor``.
        stop: the reply ends before the first of these strings (and at EOS).
        ignore_eos: keep decoding past EOS until ``max_tokens`` (benchmarks with fixed lengths).
    """

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False


@dataclass(frozen=True)
class Adapter:
    """A LoRA adapter ready to load.

    Attributes:
        key: PEFT adapter name, unique per registry model and version (``gamesense_viggo_v3``).
        path: local adapter directory (``adapter_config.json`` + weights).
        model: registry model name (``gamesense-viggo``), for metrics and logs.
        version: registry version number as text.
        rank: LoRA rank ``r`` (for vLLM's ``--max-lora-rank``).
    """

    key: str
    path: Path
    model: str
    version: str
    rank: int = 0


@dataclass
class Completion:
    """A finished request.

    Attributes:
        text: the reply (special tokens removed, cut before a stop string).
        finish_reason: ``stop`` (EOS or a stop string) or ``length`` (``max_tokens`` or the context).
        prompt_tokens, completion_tokens: token counts (the EOS token counts as generated).
        seconds: from submission to the last token; first_token_s: from submission to the first token.
    """

    text: str
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    first_token_s: float


@dataclass
class StreamEvent:
    """What the engine tells a request's sink: a ``text`` piece after each token (may be empty), then once
    ``done`` (a :class:`Completion`) or ``error`` (a message)."""

    text: str = ""
    done: Completion | None = None
    error: str | None = None


Sink = Callable[[StreamEvent], None]


@dataclass
class GenerationRequest:
    """One request queued on the engine. ``sink`` is called from the scheduler thread (keep it cheap and
    thread-safe, e.g. ``loop.call_soon_threadsafe``); set ``cancelled`` to drop the request (client gone)."""

    prompt_ids: list[int]
    params: SamplingParams
    sink: Sink
    adapter: Adapter | None = None
    submitted: float = field(default_factory=time.perf_counter)
    cancelled: bool = False

    @property
    def adapter_name(self) -> str:
        """The PEFT adapter its rows use (``__base__`` for the base model)."""
        return self.adapter.key if self.adapter else BASE_ROW


class EngineObserver:
    """Hooks the engine calls from its thread (metrics); the defaults do nothing."""

    def step(self, rows: int, adapters: int) -> None:
        """One decode forward pass over ``rows`` rows using ``adapters`` distinct adapters (base counts)."""

    def adapters_changed(self, loaded: int, event: Literal["load", "evict"], key: str) -> None:
        """An adapter was loaded or evicted; ``loaded`` adapters are in memory now."""

    def tokens(self, model: str, prompt: int, completion: int) -> None:
        """A request finished with these token counts."""


# --- incremental detokenization and stop strings -------------------------------------------------------------


def held_back(text: str, stops: Sequence[str]) -> int:
    """How many characters at the end of ``text`` must wait: a trailing U+FFFD (an incomplete multi-byte
    character) and the longest suffix that is a proper prefix of a stop string.

    >>> held_back("Hello wor", ["world!"]), held_back("abc", ["x"]), held_back("ab\\ufffd", [])
    (3, 0, 1)
    """
    n = len(text) - len(text.rstrip("\ufffd"))
    body = text[: len(text) - n]
    longest = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(body)), longest, -1):
            if body.endswith(stop[:k]):
                longest = k
                break
    return n + longest


@dataclass
class _Row:
    """A running request: its tokens, text sent so far, random generator."""

    request: GenerationRequest
    max_tokens: int
    generator: torch.Generator | None
    generated: list[int] = field(default_factory=list)
    sent: int = 0  # characters of the reply already sent
    first_token_at: float = 0.0

    @property
    def adapter_name(self) -> str:
        return self.request.adapter_name


# --- LoRA deltas per row ------------------------------------------------------------------------------------


class RowLoRA:
    """Every row's LoRA delta in two batched matmuls per layer, whatever mix of adapters the rows use.

    PEFT's mixed-batch forward (``adapter_names``) splits each layer's input into one sub-batch per adapter
    (index, two matmuls, scatter-add for each): with SmolLM2's 210 LoRA layers that is thousands of small ops
    a step. Here the loaded adapters' weights are stacked per layer once, after each load or eviction
    (``A``: ``(slots, r_max, in)``, ``B * scaling``: ``(slots, out, r_max)``, slot 0 all zeros for base rows,
    smaller ranks zero-padded), and a forward hook adds ``bmm(bmm(x, A[slot]^T), B[slot]^T)`` to the base
    layer's output: the idea of Punica's / S-LoRA's gathered LoRA kernels (Chen et al., 2023; Sheng et al.,
    2023), in plain PyTorch. PEFT still loads, holds and deletes the adapters; its own LoRA forward is told to
    add nothing (each layer's active adapter is set to a name no adapter has).

    Only plain LoRA on linear layers: an adapter with a variant (DoRA...) or LoRA on embeddings raises
    ``ValueError`` at load (use ``lora_kernel="peft"``).
    """

    def __init__(self, peft):
        self.peft = peft
        self.slots: dict[str, int] = {}
        self.rows: torch.Tensor | None = None  # (batch,) slot of each row; None: every row is base

    def rebuild(self, keys: list[str]) -> None:
        """Stack the weights of the adapters ``keys`` (slot i+1 for keys[i]) in every LoRA layer."""
        from peft.tuners.lora import LoraLayer
        from peft.tuners.lora import Linear as LoraLinear

        self.slots = {key: i + 1 for i, key in enumerate(keys)}
        for module in self.peft.modules():
            if not isinstance(module, LoraLayer):
                continue
            present = [k for k in keys if k in module.lora_A or k in getattr(module, "lora_embedding_A", {})]
            if not isinstance(module, LoraLinear) or any(k in module.lora_variant for k in present):
                raise ValueError(f"adapter(s) {', '.join(present)}: only plain LoRA on linear layers is batched "
                                 f"here ({type(module).__name__}); serve with lora_kernel='peft'")  # fmt: skip
            module._active_adapter = BASE_ROW  # PEFT's forward: base layer only; the hook adds the deltas
            base = module.get_base_layer()
            weight = base.weight
            rank = max((module.r[k] for k in present), default=1)
            a = weight.new_zeros((len(keys) + 1, rank, base.in_features))
            b = weight.new_zeros((len(keys) + 1, base.out_features, rank))
            for key in present:
                slot, r = self.slots[key], module.r[key]
                a[slot, :r] = module.lora_A[key].weight
                b[slot, :, :r] = module.lora_B[key].weight * module.scaling[key]
            module._gamesense_lora = (a, b)
            if not getattr(module, "_gamesense_hooked", False):
                module.register_forward_hook(self._add_delta)
                module._gamesense_hooked = True

    def select(self, names: list[str]) -> None:
        """The adapter (or ``__base__``) of each row of the next forward pass."""
        slots = [self.slots.get(n, 0) for n in names]
        self.rows = torch.tensor(slots, device=self.peft.device) if any(slots) else None

    def _add_delta(self, module, args, output):
        if self.rows is None:
            return None
        a, b = module._gamesense_lora
        x = args[0]
        delta = torch.bmm(torch.bmm(x.to(a.dtype), a.index_select(0, self.rows).transpose(1, 2)),
                          b.index_select(0, self.rows).transpose(1, 2))  # fmt: skip
        return output + delta.to(output.dtype)


# --- the engine ---------------------------------------------------------------------------------------------


def off_main_thread(fn: Callable[[], object]) -> object:
    """``fn()`` run in a short-lived thread (its error raised here).

    Why: PyTorch's CPU wheels use libgomp, which keeps a thread pool per thread that ran a parallel region,
    and the pool of the main thread lives as long as the process. Once more pool threads exist than cores,
    libgomp stops spinning between parallel regions (its "throttled" wait), and every small matmul of the
    scheduler thread pays a wake-up: measured on 2 cores, a 1x576 @ 576x1536 bf16 matmul took 160 us in a
    thread after the main thread had run one, 63 us otherwise; decode steps of SmolLM2 ~55 ms instead of
    ~35 ms. Loading the model (parallel regions) in a thread that ends frees its pool.
    """
    result: dict[str, object] = {}

    def run():
        try:
            result["value"] = fn()
        except BaseException as err:  # re-raised in the caller
            result["error"] = err

    thread = threading.Thread(target=run, name="llm-load")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


class LLMEngine:
    """Base model + LoRA adapters + a scheduler thread that batches every running request.

    Args:
        base: base model id or path (the built-in SmolLM2 id resolves to its local copy).
        dtype: ``auto`` (bf16 on bf16-capable CPUs/GPUs, see :func:`gamesense.models.hardware.inference_dtype`)
            or a torch dtype name.
        max_batch: most requests decoded together (rows of one forward pass).
        max_adapters: most adapters in memory; the least recently used idle one is evicted beyond that.
        batch_wait_ms: when idle, how long the first request waits for others to share its first forward.
        mixed_batches: False: a batch holds requests for one adapter only (baseline for benchmarks).
        default_max_tokens: ``max_tokens`` of a request that does not give one (then clamped to the context).
        lora_kernel: ``batched`` (:class:`RowLoRA`: every row's LoRA delta in two batched matmuls per layer) or
            ``peft`` (PEFT's mixed-batch forward, ``adapter_names``: one sub-batch per adapter per layer).
        observer: metrics hooks (:class:`EngineObserver`).

    Raises:
        OSError: the base model cannot be loaded.
    """

    def __init__(self, base: str, dtype: str = "auto", max_batch: int = 16, max_adapters: int = 8,
                 batch_wait_ms: float = 5.0, mixed_batches: bool = True, default_max_tokens: int = 512,
                 lora_kernel: Literal["batched", "peft"] = "batched", observer: EngineObserver | None = None):  # fmt: skip
        from gamesense.models.base import load_base_model, load_tokenizer
        from gamesense.models.hardware import inference_dtype

        if lora_kernel not in ("batched", "peft"):
            raise ValueError(f"lora_kernel {lora_kernel!r}: expected batched or peft")
        self.lora_kernel = lora_kernel
        if max_batch < 1 or max_adapters < 1:
            raise ValueError(f"max_batch ({max_batch}) and max_adapters ({max_adapters}) must be >= 1")
        self.base = base
        self.max_batch, self.max_adapters = max_batch, max_adapters
        self.batch_wait_s = batch_wait_ms / 1000
        self.mixed_batches = mixed_batches
        self.default_max_tokens = default_max_tokens
        self.observer = observer or EngineObserver()
        self.tokenizer = load_tokenizer(base)

        def load():
            model = load_base_model(base, dtype=dtype)
            target = inference_dtype(dtype)
            if not torch.cuda.is_available() and model.dtype != target:
                model.to(target)
            return model.eval()

        self.model = model = off_main_thread(load)
        self.device = next(model.parameters()).device
        self.context = int(getattr(model.config, "max_position_embeddings", 0) or 2048)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        eos = {self.tokenizer.eos_token_id}
        configured = getattr(model.generation_config, "eos_token_id", None)
        eos |= set(configured) if isinstance(configured, list) else {configured}
        self.eos_ids = {int(i) for i in eos if i is not None}
        self.peft = None  # the PeftModel wrapping self.model once an adapter is loaded
        self._row_adapters: list[str] = []  # adapter of each row of the forward pass running now (peft kernel)
        self.row_lora: RowLoRA | None = None  # batched kernel, once an adapter is loaded
        self.loaded: OrderedDict[str, Adapter] = OrderedDict()  # LRU order: oldest first
        self.inbox: queue.Queue[GenerationRequest] = queue.Queue()
        self.waiting: deque[GenerationRequest] = deque()
        self.running: list[_Row] = []
        self.cache = None  # DynamicCache of the running rows
        self.mask: torch.Tensor | None = None  # (rows, cache length + 1 for the pending token)
        self.positions: torch.Tensor | None = None  # (rows,) position of each row's pending token
        self.pending: torch.Tensor | None = None  # (rows,) last sampled token of each row, not yet fed
        #: counters for tests, /healthz and benchmarks
        self.stats = {"steps": 0, "prefills": 0, "requests": 0, "max_rows_per_step": 0, "max_adapters_per_step": 0,
                      "adapter_loads": 0, "adapter_evictions": 0}  # fmt: skip
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- public API ---

    def start(self) -> None:
        """Start the scheduler thread (daemon)."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="llm-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the scheduler; queued and running requests get an error event."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=30)
        for req in [*self.waiting, *(r.request for r in self.running), *self._drain_inbox()]:
            req.sink(StreamEvent(error="server shutting down"))
        self.waiting.clear()
        self._reset_batch()

    def encode_chat(self, messages: list[dict]) -> list[int]:
        """Token ids of a chat prompt: the tokenizer's chat template with the assistant's generation prompt.

        Raises:
            RequestError: the template rejects the messages (e.g. roles out of order).
        """
        try:
            return list(self.tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True,
                                                           return_dict=False))  # fmt: skip
        except Exception as err:  # jinja2 TemplateError and friends: the messages do not fit the template
            raise RequestError(f"messages cannot be formatted by the chat template: {err}", param="messages") from None

    def encode_text(self, text: str) -> list[int]:
        """Token ids of a raw completion prompt (the tokenizer's special tokens, e.g. BOS, included)."""
        return list(self.tokenizer(text)["input_ids"])

    def submit(self, request: GenerationRequest) -> int:
        """Queue a request; its sink will get text pieces, then a :class:`Completion` or an error.

        Returns:
            the ``max_tokens`` it will decode at most (clamped to the context left after the prompt).

        Raises:
            RequestError: empty prompt, or a prompt that fills the context (code ``context_length_exceeded``).
        """
        n = len(request.prompt_ids)
        if n == 0:
            raise RequestError("the prompt is empty", param="prompt")
        if n >= self.context:
            raise RequestError(f"this model's context is {self.context} tokens and the prompt has {n}: shorten it",
                               param="messages", code="context_length_exceeded")  # fmt: skip
        self.stats["requests"] += 1
        self.inbox.put(request)
        return min(request.params.max_tokens, self.context - n)

    def queue_length(self) -> int:
        """Requests waiting to join a batch."""
        return self.inbox.qsize() + len(self.waiting)

    def loaded_adapters(self) -> list[str]:
        """Keys of the adapters in memory, least recently used first."""
        return list(self.loaded)

    # --- scheduler ---

    def _drain_inbox(self) -> list[GenerationRequest]:
        out = []
        while True:
            try:
                out.append(self.inbox.get_nowait())
            except queue.Empty:
                return out

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self.running and not self.waiting:
                try:
                    first = self.inbox.get(timeout=0.2)
                except queue.Empty:
                    continue
                self.waiting.append(first)
                # idle: give concurrent requests a moment to share the first forward pass
                deadline = time.perf_counter() + self.batch_wait_s
                while len(self.waiting) < self.max_batch and (left := deadline - time.perf_counter()) > 0:
                    try:
                        self.waiting.append(self.inbox.get(timeout=left))
                    except queue.Empty:
                        break
            self.waiting.extend(self._drain_inbox())
            try:
                with torch.inference_mode():
                    self._admit()
                    if self.running:
                        self._step()
            except Exception as err:  # a failed forward fails its batch, never the server
                log.exception("decode step failed")
                for row in self.running:
                    row.request.sink(StreamEvent(error=f"generation failed: {type(err).__name__}: {err}"))
                self._reset_batch()

    def _reset_batch(self) -> None:
        self.running, self.cache, self.mask, self.positions, self.pending = [], None, None, None, None

    def _admit(self) -> None:
        """Move waiting requests into the running batch (adapters loaded, prompts prefilled)."""
        free = self.max_batch - len(self.running)
        if free <= 0 or not self.waiting:
            return
        in_use = {r.adapter_name for r in self.running}
        only = None if self.mixed_batches else (next(iter(in_use)) if in_use else None)
        if only is not None and any(r.adapter_name != only for r in self.waiting):
            return  # one adapter at a time, first come first served: let the batch drain, then switch
        admitted: list[GenerationRequest] = []
        kept: deque[GenerationRequest] = deque()
        while self.waiting:
            req = self.waiting.popleft()
            if req.cancelled:
                continue
            name = req.adapter_name
            if only is None and not self.mixed_batches:
                only = name
            if len(admitted) >= free or (only is not None and name != only):
                kept.append(req)
                continue
            if req.adapter is not None:
                try:
                    if not self._ensure_adapter(req.adapter, in_use):
                        kept.append(req)  # every loaded adapter is in use: wait for a row to finish
                        continue
                except Exception as err:  # a broken adapter fails its requests only
                    log.warning("cannot load adapter %s: %s", req.adapter.key, err)
                    req.sink(StreamEvent(error=f"cannot load adapter {req.adapter.model} version "
                                               f"{req.adapter.version}: {type(err).__name__}: {err}"))  # fmt: skip
                    continue
            in_use.add(name)
            admitted.append(req)
        self.waiting = kept
        if admitted:
            self._prefill(admitted)

    def _ensure_adapter(self, adapter: Adapter, in_use: set[str]) -> bool:
        """Load ``adapter`` if needed, evicting the least recently used idle one beyond ``max_adapters``.

        Returns:
            False when it is not loaded and cannot be (all ``max_adapters`` loaded ones are in use).
        """
        if adapter.key in self.loaded:
            self.loaded.move_to_end(adapter.key)
            return True
        idle = [k for k in self.loaded if k not in in_use]
        if len(self.loaded) >= self.max_adapters and not idle:
            return False
        if self.peft is None:
            from peft import PeftModel

            # autocast_adapter_dtype=False: keep the LoRA weights in the base's dtype (bf16 matmuls on CPU)
            self.peft = PeftModel.from_pretrained(self.model, str(adapter.path), adapter_name=adapter.key,
                                                  autocast_adapter_dtype=False).eval()  # fmt: skip
        else:
            self.peft.load_adapter(str(adapter.path), adapter_name=adapter.key, autocast_adapter_dtype=False)
            self.peft.eval()
        self.loaded[adapter.key] = adapter
        self.stats["adapter_loads"] += 1
        self.observer.adapters_changed(len(self.loaded), "load", adapter.key)
        log.info("loaded adapter %s (%s version %s)", adapter.key, adapter.model, adapter.version)
        while len(self.loaded) > self.max_adapters and idle:
            old = idle.pop(0)
            # PEFT will not delete the active adapter: make the new one active first
            self.peft.set_adapter(adapter.key)
            self.peft.delete_adapter(old)
            del self.loaded[old]
            self.stats["adapter_evictions"] += 1
            self.observer.adapters_changed(len(self.loaded), "evict", old)
            log.info("evicted adapter %s", old)
        if self.lora_kernel == "batched":
            if self.row_lora is None:
                self.row_lora = RowLoRA(self.peft)
            try:
                self.row_lora.rebuild(list(self.loaded))
            except ValueError:  # an adapter the batched kernel cannot run: unload it, keep the others
                del self.loaded[adapter.key]
                if self.loaded:  # PEFT will not delete the active adapter: activate another first
                    self.peft.set_adapter(next(iter(self.loaded)))
                    self.peft.delete_adapter(adapter.key)
                self.row_lora.rebuild(list(self.loaded))
                raise
        else:
            self._route_rows()
        return True

    def _logits(self, rows: list[_Row], cache, **inputs) -> torch.Tensor:
        """Last-position logits ``(len(rows), vocab)`` in float32, each row through its own adapter."""
        from gamesense.evaluation.generation import last_token_logits

        names = [r.adapter_name for r in rows]
        if self.row_lora is not None:
            self.row_lora.select(names)
        else:
            self._row_adapters = names
        return last_token_logits(self.model, cache, **inputs).float()

    def _route_rows(self) -> None:
        """``lora_kernel="peft"``: give every LoRA layer a forward pre-hook that passes ``adapter_names`` (one
        per row, from ``self._row_adapters``): PEFT's mixed-adapter batch path. PEFT's own
        ``PeftModel.forward(adapter_names=)`` registers such hooks on every call, walking all modules (~12 ms
        a step for SmolLM2); these are registered once per new LoRA layer, after each adapter load."""
        from peft.tuners.lora import LoraLayer

        def route(module, args, kwargs):
            kwargs["adapter_names"] = self._row_adapters
            return args, kwargs

        for module in self.peft.modules():
            if isinstance(module, LoraLayer) and not getattr(module, "_gamesense_routed", False):
                module.register_forward_pre_hook(route, with_kwargs=True)
                module._gamesense_routed = True

    def _prefill(self, requests: list[GenerationRequest]) -> None:
        """Run the new prompts (one left-padded forward pass), sample their first tokens, join the batch."""
        from transformers import DynamicCache

        from gamesense.evaluation.generation import left_padded

        rows = []
        for req in requests:
            seed = req.params.seed if req.params.seed is not None else random.getrandbits(63)
            generator = None
            if req.params.temperature > 0:
                generator = torch.Generator(device=self.device).manual_seed(seed)
            limit = min(req.params.max_tokens, self.context - len(req.prompt_ids))
            rows.append(_Row(req, limit, generator))
        input_ids, mask, positions = (t.to(self.device) for t in left_padded([r.request.prompt_ids for r in rows], self.pad_id))
        cache = DynamicCache()
        logits = self._logits(rows, cache, input_ids=input_ids, attention_mask=mask, position_ids=positions)
        self.stats["prefills"] += 1
        tokens = self._sample(rows, logits)
        mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=-1)
        start = len(self.running)
        self._merge(rows, cache, mask, positions[:, -1] + 1, tokens)
        self._advance(start)

    def _merge(self, rows: list[_Row], cache, mask: torch.Tensor, positions: torch.Tensor, tokens: torch.Tensor) -> None:
        """Append prefilled rows to the running batch: both KV caches left-padded to one width."""
        if not self.running:
            self.running, self.cache, self.mask, self.positions, self.pending = rows, cache, mask, positions, tokens
            return
        # the masks have one column more than the caches (the pending token): pad both to the wider one
        width = max(self.mask.shape[1], mask.shape[1])

        def pad_left(t: torch.Tensor, dim: int, to: int) -> torch.Tensor:
            shape = list(t.shape)
            shape[dim] = to - t.shape[dim]
            return t if shape[dim] == 0 else torch.cat([t.new_zeros(shape), t], dim=dim)

        for old, new in zip(self.cache.layers, cache.layers):
            # cache tensors: (batch, kv heads, length, head dim); padded positions are masked out
            old.keys = torch.cat([pad_left(old.keys, 2, width - 1), pad_left(new.keys, 2, width - 1)], dim=0)
            old.values = torch.cat([pad_left(old.values, 2, width - 1), pad_left(new.values, 2, width - 1)], dim=0)
        self.mask = torch.cat([pad_left(self.mask, 1, width), pad_left(mask, 1, width)], dim=0)
        self.running = self.running + rows
        self.positions = torch.cat([self.positions, positions])
        self.pending = torch.cat([self.pending, tokens])

    def _step(self) -> None:
        """Feed every row's pending token (one forward pass), sample the next ones."""
        rows = self.running
        logits = self._logits(rows, self.cache, input_ids=self.pending[:, None], attention_mask=self.mask,
                              position_ids=self.positions[:, None])  # fmt: skip
        adapters = len({r.adapter_name for r in rows})
        self.stats["steps"] += 1
        self.stats["max_rows_per_step"] = max(self.stats["max_rows_per_step"], len(rows))
        self.stats["max_adapters_per_step"] = max(self.stats["max_adapters_per_step"], adapters)
        self.observer.step(len(rows), adapters)
        self.pending = self._sample(rows, logits)
        self.positions = self.positions + 1
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(rows), 1))], dim=-1)
        self._advance(0)

    def _sample(self, rows: list[_Row], logits: torch.Tensor) -> torch.Tensor:
        """Next token per row ``(len(rows),)``: repetition penalty, then greedy or temperature + top-p."""
        from gamesense.evaluation.generation import penalize_repetition

        for i, row in enumerate(rows):
            penalty = row.request.params.repetition_penalty
            if penalty != 1.0:
                seen = torch.tensor(sorted(set(row.request.prompt_ids) | set(row.generated)), device=logits.device)
                logits[i, seen] = penalize_repetition(logits[i, seen], penalty)
        tokens = logits.argmax(-1)
        for i, row in enumerate(rows):
            params = row.request.params
            if params.temperature <= 0:
                continue
            probs = torch.softmax(logits[i] / params.temperature, dim=-1)
            if params.top_p < 1.0:
                sorted_probs, order = probs.sort(descending=True)
                # drop tokens once the mass before them reaches top_p (the most likely token always stays)
                drop = sorted_probs.cumsum(-1) - sorted_probs >= params.top_p
                sorted_probs[drop] = 0
                probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
            tokens[i] = torch.multinomial(probs, 1, generator=row.generator)[0]
        return tokens

    def _advance(self, start: int) -> None:
        """Record the new (pending) token of rows ``start:``, stream their text, and drop finished (or cancelled)
        rows from the batch."""
        now = time.perf_counter()
        keep: list[int] = list(range(start))
        for i, (row, token) in enumerate(zip(self.running[start:], self.pending[start:].tolist()), start=start):
            req, params = row.request, row.request.params
            if req.cancelled:
                continue
            if not row.generated:
                row.first_token_at = now
            row.generated.append(token)
            eos = token in self.eos_ids and not params.ignore_eos
            text = self.tokenizer.decode(row.generated, skip_special_tokens=True)
            cut = min((j for j in (text.find(s, max(0, row.sent - len(s) + 1)) for s in params.stop if s) if j >= 0),
                      default=-1)  # fmt: skip
            finish = None
            if eos or cut >= 0:
                finish = "stop"
            elif len(row.generated) >= row.max_tokens:
                finish = "length"
            if finish is None:
                end = len(text) - held_back(text, params.stop)
                piece, row.sent = text[row.sent : max(end, row.sent)], max(end, row.sent)
                req.sink(StreamEvent(text=piece))
                keep.append(i)
                continue
            final = text[:cut] if cut >= 0 else text
            if len(final) > row.sent:
                req.sink(StreamEvent(text=final[row.sent :]))
            completion = Completion(final, finish, len(req.prompt_ids), len(row.generated), now - req.submitted,
                                    row.first_token_at - req.submitted)  # fmt: skip
            self.observer.tokens(req.adapter.model if req.adapter else "base", completion.prompt_tokens,
                                 completion.completion_tokens)  # fmt: skip
            req.sink(StreamEvent(done=completion))
        if len(keep) == len(self.running):
            return
        if not keep:
            self._reset_batch()
            return
        index = torch.tensor(keep, device=self.device)
        for layer in self.cache.layers:
            layer.batch_select_indices(index)
        self.running = [self.running[i] for i in keep]
        self.mask, self.positions, self.pending = self.mask[index], self.positions[index], self.pending[index]
        # columns that are left padding for every remaining row: drop them from the cache and the mask
        first = int(self.mask.any(0).nonzero()[0])
        if first > 0:
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]
            self.mask = self.mask[:, first:]


# --- model names -> adapters (registry look-ups, outside the decode loop) -----------------------------------------


def adapter_key(name: str, version: str) -> str:
    """PEFT adapter name of a registry model version (a valid module name: letters, digits, ``_``)."""
    return re.sub(r"\W", "_", f"{name}_v{version}")


def same_base(a: str, b: str) -> bool:
    """True when two base-model references name the same model (equal, or resolving to the same local copy)."""
    from gamesense.models.base import resolve_base_model

    if a == b:
        return True
    try:
        ra, rb = resolve_base_model(a), resolve_base_model(b)
    except FileNotFoundError:
        return False
    return Path(ra).expanduser().resolve() == Path(rb).expanduser().resolve() if Path(ra).exists() and Path(rb).exists() \
        else ra == rb


@dataclass(frozen=True)
class ServedModel:
    """A registry model the server offers: its name and aliases (for ``/v1/models``)."""

    name: str
    aliases: tuple[str, ...] = ()


class ModelResolver:
    """Maps a request's ``model`` to the base model (None) or an :class:`Adapter` of the registry.

    Names: ``base`` or the base model's id -> base; ``NAME`` -> ``models:/NAME@champion``; ``NAME@ALIAS``;
    ``NAME/VERSION``; ``models:/NAME@ALIAS`` and ``models:/NAME/VERSION``. Alias -> version answers are cached
    for ``alias_ttl_s`` seconds; each version is downloaded once into ``cache_dir``.

    Args:
        base: the served base model reference.
        models: registry model names to serve; None: every registered model with a version tagged with a
            ``task`` and a ``base_model`` that is ``base`` (looked up again at most every ``alias_ttl_s`` when a
            request names a model not seen yet).
        alias_ttl_s: how long an alias -> version answer is reused.
        cache_dir: where adapter versions are downloaded.
    """

    def __init__(self, base: str, models: Sequence[str] | None, alias_ttl_s: float, cache_dir: Path):
        self.base, self.alias_ttl_s, self.cache_dir = base, alias_ttl_s, Path(cache_dir)
        self.explicit = list(models) if models is not None else None
        self._served: dict[str, ServedModel] = {}
        self._listed_at = float("-inf")
        self._versions: dict[tuple[str, str], tuple[object, float]] = {}
        self._adapters: dict[str, Adapter] = {}
        self._lock = threading.Lock()

    def is_base(self, name: str) -> bool:
        return name in BASE_NAMES or name == self.base

    def served(self, refresh: bool = False) -> dict[str, ServedModel]:
        """The registry models served (name -> :class:`ServedModel`), listed again after ``alias_ttl_s``."""
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        with self._lock:
            if not refresh and time.monotonic() - self._listed_at < self.alias_ttl_s:
                return dict(self._served)
            client = MlflowClient()
            found: dict[str, ServedModel] = {}
            if self.explicit is not None:
                for name in self.explicit:
                    try:
                        registered = client.get_registered_model(name)
                    except MlflowException:
                        log.warning("model %s is not in the registry (yet)", name)
                        found[name] = ServedModel(name)
                        continue
                    found[name] = ServedModel(name, tuple(sorted(registered.aliases or {})))
            else:
                for registered in client.search_registered_models():
                    versions = client.search_model_versions(f"name='{registered.name}'")
                    if any((v.tags or {}).get("task") and same_base((v.tags or {}).get("base_model", ""), self.base)
                           for v in versions):  # fmt: skip
                        found[registered.name] = ServedModel(registered.name, tuple(sorted(registered.aliases or {})))
            self._served, self._listed_at = found, time.monotonic()
            return dict(found)

    def parse(self, name: str):
        """The registry reference a model name stands for.

        Raises:
            ModelNotFound: a name of none of the accepted forms.
        """
        from gamesense.registry.refs import RegistryRef, is_registry_ref, parse_model_ref

        if not is_registry_ref(name) and not re.search(r"[/@\s]", name):
            return RegistryRef(name, alias=DEFAULT_ALIAS)  # a bare name stands for its champion
        try:  # NAME@ALIAS and NAME/VERSION: the registry's own grammar, without the models:/ prefix
            return parse_model_ref(name if is_registry_ref(name) else f"models:/{name}")
        except ValueError as err:
            raise ModelNotFound(str(err) if is_registry_ref(name) else f"the model {name!r} does not exist") from None

    def resolve(self, name: str) -> Adapter | None:
        """The adapter a model name selects now (None: the base model). May call the registry and download.

        Raises:
            ModelNotFound: unknown model, alias or version, or a model this server does not serve.
            RequestError: the version is not a LoRA adapter, or was trained on another base model.
        """
        from gamesense.registry.mlflow_store import download_version, resolve_version

        if self.is_base(name):
            return None
        ref = self.parse(name)
        served = self.served()
        if ref.name not in served and self.explicit is None:
            served = self.served(refresh=time.monotonic() - self._listed_at >= min(self.alias_ttl_s, 1.0))
        if ref.name not in served:
            raise ModelNotFound(f"the model {name!r} does not exist (served: {', '.join(['base', *served]) })")
        key = (ref.name, ref.alias or f"/{ref.version}")
        with self._lock:
            cached = self._versions.get(key)
            if cached is None or (ref.alias and time.monotonic() - cached[1] >= self.alias_ttl_s):
                try:
                    cached = (resolve_version(ref), time.monotonic())
                except LookupError as err:
                    raise ModelNotFound(str(err)) from None
                self._versions[key] = cached
            version = cached[0]
            akey = adapter_key(ref.name, str(version.version))
            if akey in self._adapters:
                return self._adapters[akey]
            path = download_version(version, self._fresh_dir(akey))
            config_file = path / "adapter_config.json"
            if not config_file.is_file():
                raise RequestError(f"{ref.name} version {version.version} is not a LoRA adapter (no adapter_config.json)",
                                   param="model", code="model_not_supported")  # fmt: skip
            config = json.loads(config_file.read_text())
            trained_on = str(config.get("base_model_name_or_path") or (version.tags or {}).get("base_model", ""))
            if not same_base(trained_on, self.base):
                raise RequestError(f"{ref.name} version {version.version} is an adapter of {trained_on!r}, and this "
                                   f"server serves the base model {self.base!r}", param="model",
                                   code="model_not_supported")  # fmt: skip
            adapter = Adapter(akey, path, ref.name, str(version.version), int(config.get("r") or 0))
            self._adapters[akey] = adapter
            return adapter

    def _fresh_dir(self, key: str) -> Path:
        path = self.cache_dir / key
        if path.exists():
            import shutil

            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path


# --- the same registry served by vLLM (GPU) ------------------------------------------------------------------

#: LoRA ranks vLLM's ``--max-lora-rank`` accepts
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def vllm_modules(resolver: ModelResolver) -> dict[str, Adapter]:
    """Every served registry model under each name a request may use: ``NAME`` (the champion, when it has
    one) and ``NAME@ALIAS`` for each alias, resolved to a local adapter directory now.

    Raises:
        RequestError: a version that is not an adapter of the served base (see :meth:`ModelResolver.resolve`).
    """
    modules: dict[str, Adapter] = {}
    for model in resolver.served(refresh=True).values():
        for alias in model.aliases:
            modules[f"{model.name}@{alias}"] = resolver.resolve(f"{model.name}@{alias}")
        if DEFAULT_ALIAS in model.aliases:
            modules[model.name] = modules[f"{model.name}@{DEFAULT_ALIAS}"]
    return modules


def vllm_command(base_path: str, modules: dict[str, Adapter], host: str = "127.0.0.1", port: int = 8000,
                 max_loras: int = 8, served_names: Sequence[str] = ("base",)) -> list[str]:  # fmt: skip
    """The ``vllm serve`` command line that serves ``base_path`` and the adapters ``modules`` (name -> adapter)
    with the same model names as ``gamesense serve llm``.

    Flags: ``--enable-lora --lora-modules NAME=PATH ...``, ``--max-lora-rank`` (the largest adapter rank,
    rounded up to a rank vLLM accepts), ``--max-loras`` (adapters in one batch), ``--served-model-name``.
    Source: https://docs.vllm.ai/en/latest/features/lora.html
    """
    cmd = ["vllm", "serve", base_path, "--host", host, "--port", str(port), "--served-model-name", *served_names]
    if modules:
        rank = max(a.rank for a in modules.values())
        rank = next((r for r in VLLM_LORA_RANKS if r >= rank), VLLM_LORA_RANKS[-1])
        distinct = len({a.key for a in modules.values()})
        cmd += ["--enable-lora", "--lora-modules", *(f"{name}={a.path}" for name, a in modules.items()),
                "--max-lora-rank", str(rank), "--max-loras", str(max(1, min(max_loras, distinct)))]
    return cmd
