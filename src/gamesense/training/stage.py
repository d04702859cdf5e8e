"""One training stage: a training method (:mod:`gamesense.training.methods`) run with the recipe's settings.

A recipe's section for a stage is passed to the method's TRL config class as is (validated with the recipe,
:class:`~gamesense.training.recipe.LLMRecipe`); GameSense only fills the plumbing: ``output_dir`` (the stage's
``checkpoints/`` folder unless the recipe names one), ``report_to: []`` (metrics go to MLflow through the
pipeline), our progress bar, ``use_cpu`` without CUDA, and ``bf16: auto`` resolved for this hardware
(:func:`~gamesense.models.hardware.resolve_bf16`).

Around every method's trainer, the same loop: checkpoints every ``save_steps`` and, with ``resume``, a restart
from the newest one (stale checkpoints of an older run are removed otherwise); callbacks (progress with tokens/s,
freed heap returned to the OS, threads following the cores other processes leave free); speed-ups that change no
arithmetic (:func:`tune_for_speed`); the adapter saved once (also under DDP and DeepSpeed ZeRO-3) with its
tokenizer and the user-facing base id; the metrics every stage reports.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import torch

from gamesense.models.hardware import release_memory, resolve_bf16
from gamesense.training.callbacks import FollowFreeCores, ProgressWithThroughput, ReleaseFreedMemory
from gamesense.training.frozen_prefix import install_frozen_prefix_cache
from gamesense.training.methods import get_method
from gamesense.training.methods.base import StageInputs, StageResult, TrainingMethod
from gamesense.training.recipe import LLMRecipe

log = logging.getLogger(__name__)


def trainer_config(method: TrainingMethod, recipe: LLMRecipe, output_dir: Path):
    """TRL's config object for ``method``: the recipe's section plus GameSense's plumbing (see module doc)."""
    settings = recipe.stage_settings(method.name)
    settings["bf16"] = resolve_bf16(settings.get("bf16"))
    settings.setdefault("output_dir", str(output_dir))
    settings.update(report_to=[], disable_tqdm=True, use_cpu=not torch.cuda.is_available())
    return method.config_type()(**settings)


def build_trainer(method: TrainingMethod, inputs: StageInputs, args):
    """The method's TRL trainer on ``inputs`` with config ``args``, tuned for speed (:func:`tune_for_speed`)."""
    trainer = method.build_trainer(inputs, args)
    if inputs.recipe.runtime.batch_tokens is not None:
        size_batches_by_tokens(trainer, inputs.recipe.runtime.batch_tokens)
    # a method that also generates does it outside autocast: PEFT's own cast must then stay for a valid matmul
    # cached frozen layers need the same row in every epoch: not with packing, nor when the policy samples
    cache_frozen = not method.samples_while_training and not getattr(args, "packing", False)
    tune_for_speed(trainer.model, inputs.recipe, bool(args.bf16) and not method.samples_while_training, cache_frozen)
    return trainer


def rows_for_token_budget(batch_tokens: int, row_lengths: list[int]) -> int:
    """Rows per batch that hold about ``batch_tokens`` tokens: ``batch_tokens`` / mean row length, rounded, at
    least 1. A budget in tokens carries over between datasets of short and long rows (and between a 2-core CPU
    and a GPU recipe) where a row count does not.

    Raises:
        ValueError: no rows.
    """
    if not row_lengths:
        raise ValueError("runtime.batch_tokens: no training rows to measure")
    return max(1, round(batch_tokens * len(row_lengths) / sum(row_lengths)))


def size_batches_by_tokens(trainer, batch_tokens: int) -> None:
    """Set ``trainer``'s rows per device batch from ``runtime.batch_tokens`` and its tokenized training rows
    (``input_ids``; preference rows: prompt + chosen). Before ``train()``: the dataloader is built there."""
    data = trainer.train_dataset
    columns = set(getattr(data, "column_names", None) or [])
    if "input_ids" in columns:
        lengths = [len(ids) for ids in data["input_ids"]]
    elif {"prompt_input_ids", "chosen_input_ids"} <= columns:
        lengths = [len(p) + len(c) for p, c in zip(data["prompt_input_ids"], data["chosen_input_ids"])]
    else:
        log.warning("runtime.batch_tokens: the %s dataset has no token ids; per_device_train_batch_size stays %d",
                    type(trainer).__name__, trainer.args.per_device_train_batch_size)  # fmt: skip
        return
    rows = rows_for_token_budget(batch_tokens, lengths)
    trainer.args.per_device_train_batch_size = rows
    trainer._train_batch_size = trainer.args.train_batch_size  # read by the dataloader; set in Trainer.__init__
    log.info("runtime.batch_tokens %d: %d rows per batch (mean row %.0f tokens)", batch_tokens, rows,
             sum(lengths) / len(lengths))  # fmt: skip


def run_stage(stage: str, inputs: StageInputs) -> StageResult:
    """Train one stage with the method ``stage`` names and save its adapter to ``<stage_dir>/adapter``.

    Raises:
        ValueError: no training records, or inputs the method cannot train on (e.g. GRPO without rewards).
        LookupError: unknown method.
    """
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from transformers.trainer_utils import get_last_checkpoint

    method = get_method(stage)
    if not inputs.train_records:
        raise ValueError(f"stage {stage}: no training records: check data.train_file and data.max_train_rows")
    recipe = inputs.recipe
    args = trainer_config(method, recipe, inputs.stage_dir / "checkpoints")
    checkpoints = Path(args.output_dir)
    checkpoints.mkdir(parents=True, exist_ok=True)
    last_checkpoint = get_last_checkpoint(str(checkpoints)) if inputs.resume else None
    if inputs.resume and last_checkpoint is None:
        log.warning("resume: no checkpoint in %s, stage %s starts from scratch", checkpoints, stage)
    if not inputs.resume:
        for stale in checkpoints.glob("checkpoint-*"):
            shutil.rmtree(stale)  # a fresh run must not mix with an older run's checkpoints

    trainer = build_trainer(method, inputs, args)
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    if inputs.show_progress:
        trainer.add_callback(ProgressWithThroughput(desc=stage))
    release = ReleaseFreedMemory.create(recipe.runtime.trim_memory_every)
    if release is not None:
        trainer.add_callback(release)
    if recipe.runtime.threads == "auto" and not torch.cuda.is_available():
        trainer.add_callback(FollowFreeCores())
    started = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=last_checkpoint)
    runtime = time.perf_counter() - started

    adapter_dir = inputs.stage_dir / "adapter"
    main = trainer.is_world_process_zero()
    gathered = _gather_zero3_weights(trainer)  # on every rank: the gather is collective
    if main:  # under DDP every process holds the same weights: one writes them
        selected = ["default"] if hasattr(trainer.model, "peft_config") else None
        trainer.model.save_pretrained(adapter_dir, selected_adapters=selected, state_dict=gathered)
        trainer.processing_class.save_pretrained(adapter_dir)
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
        "train_bf16": float(args.bf16),
        "resumed_from_step": float(last_checkpoint.rsplit("-", 1)[-1]) if last_checkpoint else 0.0,
    }
    metrics.update(method.after_training(trainer, inputs, adapter_dir, main))
    del trainer, output
    release_memory()
    return StageResult(stage=stage, produces=method.produces, adapter_dir=str(adapter_dir), metrics=metrics,
                       log_history=history, is_main_process=main)  # fmt: skip


def _gather_zero3_weights(trainer) -> dict | None:
    """The trained weights gathered from DeepSpeed ZeRO-3's shards, as ``Trainer.save_model`` gathers them
    (a collective: every rank calls it; the dict is on rank 0, None on the others). For a PEFT model only the
    trainable weights are gathered (the adapter, not the frozen base). None without ZeRO-3: the model's own
    tensors are whole, and ``save_pretrained`` reads them itself.

    Without it, rank 0 would save the local shard of every LoRA matrix that ZeRO-3 partitions (those over
    ``stage3_param_persistence_threshold`` elements): an adapter of empty tensors."""
    engine = getattr(trainer, "deepspeed", None)
    if engine is None or not engine.zero_optimization_partition_weights():
        return None
    return engine._zero3_consolidated_16bit_state_dict(exclude_frozen_parameters=hasattr(trainer.model, "peft_config"))


def compile_layers(model) -> int:
    """Compile each decoder layer in place with ``torch.compile`` (regional compilation: the layers share one
    compiled graph, so compiling costs about one layer's worth instead of the whole model's: ~1 min instead of
    ~6 on a 2-core CPU). Fuses the element-wise work around the matmuls (norms, rotary, SiLU, LoRA scaling,
    dtype casts). Shapes are dynamic: batches of other lengths reuse the graph.

    Returns:
        the number of layers compiled (0 when the model has no ``layers`` list to compile).
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = getattr(base, "get_decoder", lambda: None)() or getattr(base, "model", None)
    layers = getattr(decoder, "layers", None) or []
    compiled = [layer for layer in layers if not getattr(layer, "_gamesense_frozen_prefix", False)]
    for layer in compiled:
        layer.compile(dynamic=True)
    return len(compiled)


def tune_for_speed(model, recipe: LLMRecipe, autocast: bool, cache_frozen: bool = False) -> None:
    """Speed-ups that change no arithmetic: when every forward pass runs under bf16 autocast, PEFT no longer
    casts each adapter's input to the adapter's fp32 dtype (autocast casts it back to bf16 for the matmul: two
    copies of every activation per LoRA layer, ~15% of a CPU step); with ``cache_frozen`` and
    ``runtime.cache_frozen_layers``, the frozen layers under ``lora.top_layers`` run once per row
    (:mod:`~gamesense.training.frozen_prefix`); the decoder layers are compiled when ``runtime.compile`` is set."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    if autocast:
        for module in model.modules():
            if isinstance(module, BaseTunerLayer):
                module.cast_input_dtype_enabled = False
    compiling = resolve_compile(recipe.runtime.compile)
    if cache_frozen and recipe.runtime.cache_frozen_layers and recipe.lora.top_layers is not None:
        cache = install_frozen_prefix_cache(model, compile=compiling)
        if cache is not None:
            log.info("frozen-prefix cache on the first %d decoder layers", len(cache.layers))
    if compiling:
        compile_layers(model)


def resolve_compile(setting: bool | str) -> bool:
    """``runtime.compile``: as given, or for ``auto`` on when training on a CPU. Measured: on a 2-core CPU regional
    compilation makes a step ~1.4x faster after ~1 min; on an H200 it delayed a 1.7B model's first step to 48 s
    (1.6 s eager), and a 135M run was still compiling after 110 s."""
    if setting != "auto":
        return bool(setting)
    return not torch.cuda.is_available()


def _point_adapter_at_base(adapter_dir: Path, base: str) -> None:
    """Record the user-facing base id (not our local cache path) in ``adapter_config.json`` so PEFT and
    vLLM's LoRA loader find the base model by name."""
    path = adapter_dir / "adapter_config.json"
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = base
    path.write_text(json.dumps(config, indent=2, sort_keys=True))
