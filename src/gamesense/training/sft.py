"""LoRA supervised fine-tuning with TRL's ``SFTTrainer`` and PEFT.

Recipe choices that matter on a CPU (all visible in ``recipes/viggo.yaml``):
- completion-only loss: TRL's prompt-completion format masks the prompt; the chat template closes the
  completion with ``<|im_end|>`` (the EOS), which stays in the loss so the model learns to stop. The pad
  token is kept distinct from EOS (see ``gamesense.models.base``) and padded positions are masked through
  the attention mask, never by token id.
- dynamic padding with length-grouped batches (or sample packing): no padding to a fixed length.
- bf16 autocast on CPUs with AVX512-BF16/AMX and on GPUs (``training.mixed_precision: auto``).
- checkpoints every ``save_steps``; ``resume=True`` continues from the newest one.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import TrainerCallback

from gamesense.config import LLMRecipe
from gamesense.models.base import load_base_model, load_tokenizer

log = logging.getLogger(__name__)


def cpu_supports_bf16() -> bool:
    """True when this x86 CPU has native bf16 matmul instructions (AVX512-BF16 or AMX-BF16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16(mixed_precision: str) -> bool:
    """Resolve ``training.mixed_precision`` (``auto`` | ``bf16`` | ``no``) for this machine."""
    if mixed_precision == "no":
        return False
    if mixed_precision == "bf16":
        return True
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return cpu_supports_bf16()


@dataclass
class TrainResult:
    """What :func:`finetune` produced.

    Attributes:
        adapter_dir: PEFT adapter (``adapter_config.json`` + ``adapter_model.safetensors``) and tokenizer.
        metrics: train_loss, train_runtime_s, train_tokens (non-pad), train_tokens_per_s, train_steps,
            train_epochs, train_bf16 (0/1), resumed_from_step (0 for a fresh run).
        log_history: the trainer's log records (``loss``, ``learning_rate``, ``num_tokens`` per logging step).
        is_main_process: False on the other ranks of a multi-process (DDP) run, which save nothing.
    """

    adapter_dir: Path
    metrics: dict[str, float]
    log_history: list[dict] = field(default_factory=list)
    is_main_process: bool = True


class ProgressWithThroughput(TrainerCallback):
    """Trainer callback: one tqdm bar with loss and non-pad tokens/s (from the ``num_tokens`` TRL logs)."""

    def __init__(self):
        self.bar = None
        self.last = (0.0, time.perf_counter())

    def on_train_begin(self, args, state, control, **kwargs):
        from tqdm.auto import tqdm

        if state.is_world_process_zero:
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="finetune", unit="step")
            self.last = (0.0, time.perf_counter())

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is None or not logs or "loss" not in logs:
            return
        tokens, now = float(logs.get("num_tokens", 0.0)), time.perf_counter()
        last_tokens, last_time = self.last
        self.last = (tokens, now)
        rate = (tokens - last_tokens) / max(now - last_time, 1e-9)
        self.bar.set_postfix(loss=f"{logs['loss']:.4f}", tok_s=f"{rate:.0f}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def completion_loss(model, inputs: dict, num_items_in_batch=None):
    """Causal-LM cross-entropy computed only where it counts: the LM head runs on completion positions.

    The output projection of a small model is a large share of its compute (SmolLM2-135M: a 576 x 49,152
    matrix, ~21% of the forward FLOPs), and on prompt positions its logits are thrown away by the
    completion-only mask. Equals the model's own loss (``labels`` shifted by one, -100 ignored).

    Args:
        model: a (PEFT-wrapped) ``*ForCausalLM`` with ``get_decoder()`` and ``get_output_embeddings()``.
        inputs: ``input_ids`` [batch, seq], ``labels`` [batch, seq], ``attention_mask`` or ``position_ids``.
        num_items_in_batch: target tokens over all gradient-accumulation micro-batches (the Trainer's
            normaliser); None: this batch's target tokens.

    Returns:
        scalar loss tensor (mean over target tokens).
    """
    import torch.nn.functional as F

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    model_inputs = {k: v for k, v in inputs.items() if k not in ("labels", "use_cache", "num_items_in_batch")}
    hidden = base.get_decoder()(**model_inputs, use_cache=False).last_hidden_state
    targets = inputs["labels"][:, 1:]
    keep = targets != -100
    logits = base.get_output_embeddings()(hidden[:, :-1][keep]).float()
    loss = F.cross_entropy(logits, targets[keep], reduction="sum")
    count = num_items_in_batch if num_items_in_batch is not None else keep.sum()
    return loss / torch.as_tensor(count, device=loss.device).clamp(min=1)


def sft_trainer_class(fused_loss: bool | None = None):
    """The trainer class for our recipe: TRL's ``SFTTrainer`` when ``fused_loss`` (default: on a GPU), else
    an ``SFTTrainer`` whose loss is :func:`completion_loss`.

    TRL's default loss runs a chunked, fused LM-head kernel that also computes entropy and token accuracy;
    it saves GPU memory, but measured on a 2-core CPU with SmolLM2-135M it cost more time than the rest of
    the training step. Non-pad tokens are still counted (``num_tokens`` in the logs) for tokens/s.
    """
    from trl import SFTTrainer

    if fused_loss if fused_loss is not None else torch.cuda.is_available():
        return SFTTrainer

    class CompletionLossSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            with self.accelerator.autocast():  # the decoder is called directly, past accelerate's wrapped forward
                loss = completion_loss(model, inputs, num_items_in_batch)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes  # as TRL: DDP averages gradients across ranks
            if self.model.training:  # non-pad tokens; a packed (padding-free) batch has no padding at all
                mask = inputs.get("attention_mask")
                self._total_train_tokens += int(mask.sum()) if mask is not None else inputs["input_ids"].numel()
                self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
            return (loss, None) if return_outputs else loss

    return CompletionLossSFTTrainer


class ReleaseFreedMemory(TrainerCallback):
    """Return freed heap memory to the OS every ``every`` steps (glibc ``malloc_trim``), on CPU only.

    Dynamic padding gives every batch a different shape; glibc keeps the freed activation buffers and the
    process's resident memory creeps up over hundreds of steps (SmolLM2-135M, batch 8: 3.6 -> 5.1 GB in 60
    steps, 9.8 GB peak over the whole default pipeline; trimming after every step: 1.5 -> 2.0 GB). Trimming
    after every step made the next steps fault their pages in again, ~15% slower training; every 10 steps
    amortises that cost.
    """

    def __init__(self, malloc_trim, every: int = 10):
        self._trim, self.every = malloc_trim, every

    @classmethod
    def create(cls, every: int = 10) -> ReleaseFreedMemory | None:
        """The callback, or None on a GPU run or where the C library is not glibc."""
        import ctypes
        import ctypes.util

        if torch.cuda.is_available():
            return None
        try:
            return cls(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim, every)
        except (OSError, AttributeError):
            return None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0:
            self._trim(0)


def default_output_dir(recipe: LLMRecipe) -> Path:
    """``training.output_dir`` or ``<workdir>/runs/<task>/checkpoints``."""
    from gamesense.settings import work_dir

    return Path(recipe.training.output_dir) if recipe.training.output_dir else work_dir() / "runs" / recipe.task / "checkpoints"


def finetune(
    recipe: LLMRecipe,
    train_records: list[dict],
    output_dir: str | Path | None = None,
    resume: bool = False,
    show_progress: bool = True,
) -> TrainResult:
    """LoRA SFT of ``recipe.model.base`` on prompt-completion records.

    Args:
        recipe: validated recipe (model, lora, training sections are used).
        train_records: ``[{"prompt": [messages], "completion": [messages]}]`` (TRL conversational format).
        output_dir: checkpoints and the final adapter (``<output_dir>/adapter``).
        resume: continue from the newest ``checkpoint-*`` in ``output_dir`` (fresh start when there is none).

    Returns:
        :class:`TrainResult`.

    Raises:
        ValueError: no training records.
    """
    from datasets import Dataset
    from peft import LoraConfig
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from transformers.trainer_utils import get_last_checkpoint
    from trl import SFTConfig

    if not train_records:
        raise ValueError("no training records: check data.train_file and data.max_train_rows")
    out = Path(output_dir) if output_dir else default_output_dir(recipe)
    out.mkdir(parents=True, exist_ok=True)
    last_checkpoint = get_last_checkpoint(str(out)) if resume else None
    if resume and last_checkpoint is None:
        log.warning("--resume: no checkpoint in %s, starting from scratch", out)
    if not resume:
        for stale in out.glob("checkpoint-*"):
            shutil.rmtree(stale)  # a fresh run must not mix with an older run's checkpoints

    t = recipe.training
    bf16 = use_bf16(t.mixed_precision)
    model = load_base_model(
        recipe.model.base,
        dtype=recipe.model.dtype,
        load_in_4bit=recipe.model.load_in_4bit,
        attn_implementation=recipe.model.attn_implementation,
    )
    tokenizer = load_tokenizer(recipe.model.base)
    config = SFTConfig(
        output_dir=str(out),
        max_steps=t.max_steps,
        num_train_epochs=t.num_train_epochs,
        per_device_train_batch_size=t.per_device_train_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler_type,
        warmup_steps=t.warmup_ratio,  # transformers 5: a float < 1 is a ratio of the total steps
        weight_decay=t.weight_decay,
        max_length=t.max_length,
        completion_only_loss=True,
        packing=t.packing,
        train_sampling_strategy="random" if t.packing else "group_by_length",
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        logging_steps=t.logging_steps,
        seed=t.seed,
        bf16=bf16,
        use_cpu=not torch.cuda.is_available(),
        # TRL turns activation checkpointing on by default: ~30% more compute for memory we do not need.
        activation_checkpointing=t.gradient_checkpointing,
        report_to=[],
        disable_tqdm=True,  # replaced by the bar below, which also shows tokens/s
        dataloader_num_workers=0,
    )
    peft_config = LoraConfig(
        r=recipe.lora.r,
        lora_alpha=recipe.lora.alpha,
        lora_dropout=recipe.lora.dropout,
        target_modules=recipe.lora.target_modules,
        task_type="CAUSAL_LM",
    )
    trainer = sft_trainer_class(t.fused_loss)(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(train_records),
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    if show_progress:
        trainer.add_callback(ProgressWithThroughput())
    release = ReleaseFreedMemory.create()
    if release is not None:
        trainer.add_callback(release)
    started = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=last_checkpoint)
    runtime = time.perf_counter() - started

    adapter_dir = out / "adapter"
    main = trainer.is_world_process_zero()
    if main:  # under DDP every process holds the same weights: one writes them
        trainer.model.save_pretrained(adapter_dir)
        tokenizer.save_pretrained(adapter_dir)
        _point_adapter_at_base(adapter_dir, recipe.model.base)

    history = [dict(rec) for rec in trainer.state.log_history]
    tokens = max((rec.get("num_tokens", 0.0) for rec in history), default=0.0)
    metrics = {
        "train_loss": float(output.training_loss),
        "train_runtime_s": runtime,
        "train_tokens": float(tokens),
        "train_tokens_per_s": float(tokens) / runtime if runtime > 0 else 0.0,
        "train_steps": float(trainer.state.global_step),
        "train_epochs": float(trainer.state.epoch or 0.0),
        "train_bf16": float(bf16),
        "resumed_from_step": float(last_checkpoint.rsplit("-", 1)[-1]) if last_checkpoint else 0.0,
    }
    return TrainResult(adapter_dir=adapter_dir, metrics=metrics, log_history=history, is_main_process=main)


def _point_adapter_at_base(adapter_dir: Path, base: str) -> None:
    """Record the user-facing base id (not our local cache path) in ``adapter_config.json`` so PEFT and
    vLLM's LoRA loader find the base model by name."""
    path = adapter_dir / "adapter_config.json"
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = base
    path.write_text(json.dumps(config, indent=2, sort_keys=True))
