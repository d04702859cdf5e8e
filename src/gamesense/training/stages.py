"""Training stages: one TRL trainer per stage kind, one LoRA adapter carried through the stages.

| stage | TRL trainer + config | trains on | produces |
|---|---|---|---|
| ``sft`` | ``SFTTrainer`` + ``SFTConfig`` | ``prompt``/``completion`` records | policy adapter |
| ``reward`` | ``RewardTrainer`` + ``RewardConfig`` | ``prompt``/``chosen``/``rejected`` pairs | reward-model adapter (sequence-classification head) |
| ``dpo`` | ``DPOTrainer`` + ``DPOConfig`` | preference pairs | policy adapter |
| ``grpo`` | ``GRPOTrainer`` + ``GRPOConfig`` | prompts (+ task columns for rewards) | policy adapter |

A recipe's section for a stage is passed to the TRL config class as is (validated in :mod:`gamesense.config`);
GameSense only fills the plumbing: ``output_dir`` (the run's stage folder unless the recipe names one),
``report_to: []`` (metrics go to MLflow through the pipeline), our progress bar, ``use_cpu`` without CUDA,
and ``bf16: auto`` resolved for this hardware (:func:`~gamesense.models.hardware.resolve_bf16`).

The reward stage trains a new LoRA adapter and score head on the base model with the latest policy adapter (if
any) merged in, as InstructGPT starts its reward model from the SFT model. Policy stages continue one adapter:
the first trains a new LoRA adapter on the base model; later ones load the previous policy's adapter as trainable and train it further, so the registered artifact is always one
plain PEFT adapter. DPO's reference model is a frozen copy of that starting adapter (TRL adds it); GRPO's
rewards are the task's rule rewards plus, when a reward stage ran before it, the learned reward model.
Every stage checkpoints every ``save_steps`` and resumes from its newest checkpoint with ``resume=True``.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel

from gamesense.config import LLMRecipe, trl_config_class
from gamesense.models.base import load_base_model, load_tokenizer, resolve_base_model, whole_weights
from gamesense.models.hardware import attention_implementation, load_dtype, release_memory, resolve_bf16
from gamesense.tasks.base import Record, Task
from gamesense.training.callbacks import FollowFreeCores, ProgressWithThroughput, ReleaseFreedMemory

log = logging.getLogger(__name__)

#: which records each stage kind trains on
STAGE_DATA: dict[str, Literal["sft", "preference", "prompts"]] = {
    "sft": "sft", "reward": "preference", "dpo": "preference", "grpo": "prompts"}  # fmt: skip
#: what each stage kind produces
STAGE_PRODUCES: dict[str, Literal["policy", "reward_model"]] = {
    "sft": "policy", "reward": "reward_model", "dpo": "policy", "grpo": "policy"}  # fmt: skip


class StageResult(BaseModel):
    """What one training stage produced.

    Attributes:
        stage: stage kind (``sft``, ``reward``, ``dpo``, ``grpo``).
        produces: ``policy`` (a generating adapter) or ``reward_model``.
        adapter_dir: PEFT adapter (``adapter_config.json`` + ``adapter_model.safetensors``) and tokenizer.
        metrics: train_loss, train_runtime_s, train_tokens (non-pad, where the trainer counts them),
            train_tokens_per_s, train_steps, train_epochs, train_bf16 (0/1), resumed_from_step (0: fresh);
            the reward stage adds ``pairwise_accuracy`` on held-out pairs.
        log_history: the trainer's log records (``loss``, ``learning_rate``, ... per logging step).
        is_main_process: False on the other ranks of a multi-process (DDP) run, which save nothing.
    """

    stage: str
    produces: Literal["policy", "reward_model"]
    adapter_dir: str
    metrics: dict[str, float]
    log_history: list[dict[str, Any]] = []
    is_main_process: bool = True


@dataclass
class StageInputs:
    """Everything a stage trains from.

    Attributes:
        train_records: records in the stage's format (see :data:`STAGE_DATA`).
        eval_records: held-out records in the same format (the reward stage reports pairwise accuracy on
            them); None: none.
        policy_adapter: adapter of the previous policy stage to continue (None: a new adapter).
        reward_adapter: adapter of a previous reward stage (used by ``grpo``).
        stage_dir: ``checkpoints/`` and ``adapter/`` go here.
        resume: continue from the newest checkpoint in the stage's checkpoint folder (fresh when none).
    """

    recipe: LLMRecipe
    task: Task
    train_records: list[Record]
    stage_dir: Path
    eval_records: list[Record] | None = None
    policy_adapter: Path | None = None
    reward_adapter: Path | None = None
    resume: bool = False
    show_progress: bool = True


def stage_records(stage: str, task: Task, examples: list, role: str = "train") -> list[Record]:
    """The records a stage kind trains on, built from typed examples by the task.

    Raises:
        NotImplementedError: the task cannot build them (e.g. no preference pairs).
    """
    kind = STAGE_DATA[stage]
    if kind == "preference":
        return task.preference_records(examples)
    records = task.sft_records(examples)
    if kind == "prompts":  # GRPO samples its own completions; the other columns feed the reward functions
        return [{k: v for k, v in r.items() if k != "completion"} for r in records]
    return records


def lora_config(recipe: LLMRecipe, task_type: str = "CAUSAL_LM"):
    """PEFT ``LoraConfig`` from the recipe's ``lora`` section."""
    from peft import LoraConfig

    lora = recipe.lora
    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules,
                      task_type=task_type)  # fmt: skip


def _load_policy(recipe: LLMRecipe, adapter: Path | None):
    """``(model, peft_config)``: the base model with a new LoRA config, or with ``adapter`` loaded trainable."""
    model = load_base_model(recipe.model.base, dtype=recipe.model.dtype, load_in_4bit=recipe.model.load_in_4bit,
                            attn_implementation=recipe.model.attn_implementation, training=True)  # fmt: skip
    if adapter is None:
        return model, lora_config(recipe)
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(adapter), is_trainable=True), None


#: written next to a reward model's adapter: the policy adapter merged into the base before it was trained
REWARD_INIT_FILE = "initialised_from.json"


@whole_weights()  # merged whole, also after a ZeRO-3 trainer config exists; the trainer shards it afterwards
def load_reward_model(recipe: LLMRecipe, adapter: Path | None = None, seed: int = 42, init_policy: Path | None = None):
    """The base model with a one-output sequence-classification head (a reward model). The new head's
    initialisation is seeded so runs repeat.

    Args:
        adapter: a trained reward-model adapter to merge; the policy adapter it names in
            :data:`REWARD_INIT_FILE` (if any) is merged before it.
        init_policy: a policy adapter to merge into the base weights first: the reward stage starts from the
            latest policy, as InstructGPT's reward model starts from the SFT model (Ouyang et al. 2022, sec.
            3.5), so it begins with the task's features instead of the base model's.
    """
    from transformers import AutoModelForSequenceClassification, set_seed

    set_seed(seed)
    kwargs = {"num_labels": 1, "dtype": load_dtype(recipe.model.dtype, training=True)}
    attention = attention_implementation(recipe.model.attn_implementation, training=True)
    if attention:
        kwargs["attn_implementation"] = attention
    model = AutoModelForSequenceClassification.from_pretrained(resolve_base_model(recipe.model.base), **kwargs)
    tokenizer = load_tokenizer(recipe.model.base)
    model.config.pad_token_id = tokenizer.pad_token_id
    if adapter is not None and (Path(adapter) / REWARD_INIT_FILE).is_file():
        init_policy = Path(json.loads((Path(adapter) / REWARD_INIT_FILE).read_text())["policy_adapter"])
    from peft import PeftConfig, PeftModel

    for merged in (init_policy, adapter):
        if merged is None:
            continue
        config = PeftConfig.from_pretrained(str(merged))
        if config.task_type == "CAUSAL_LM":  # a policy adapter: its decoder layers have the same names here
            config.task_type = None  # a plain PeftModel, without the causal-LM generation hooks
        model = PeftModel.from_pretrained(model, str(merged), config=config).merge_and_unload()
    return model


def build_trainer(stage: str, inputs: StageInputs, args):
    """The TRL trainer of ``stage`` on ``inputs`` with config ``args``, tuned for speed (see
    :func:`_tune_for_speed`)."""
    trainer = _new_trainer(stage, inputs, args)
    # GRPO also generates, outside autocast: PEFT's own cast must then stay to keep the adapter's matmul valid
    _tune_for_speed(trainer.model, inputs.recipe, bool(args.bf16) and stage != "grpo")
    return trainer


def _new_trainer(stage: str, inputs: StageInputs, args):
    from datasets import Dataset

    recipe, tokenizer = inputs.recipe, load_tokenizer(inputs.recipe.model.base)
    if stage == "sft":
        from gamesense.training.sft import sft_trainer_class

        model, peft_config = _load_policy(recipe, inputs.policy_adapter)
        data = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in inputs.train_records])
        return sft_trainer_class(recipe.runtime.fused_loss)(model=model, args=args, train_dataset=data,
                                                             processing_class=tokenizer, peft_config=peft_config)  # fmt: skip
    if stage == "reward":
        from trl import RewardTrainer

        model = load_reward_model(recipe, None, args.seed, init_policy=inputs.policy_adapter)
        data = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in inputs.train_records])
        return RewardTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                             peft_config=lora_config(recipe, "SEQ_CLS"))  # fmt: skip
    if stage == "dpo":
        from trl import DPOTrainer

        model, peft_config = _load_policy(recipe, inputs.policy_adapter)
        data = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in inputs.train_records])
        return DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer, peft_config=peft_config)
    if stage == "grpo":
        from trl import GRPOTrainer

        reward_funcs: list = list(inputs.task.reward_functions())
        processing = [None] * len(reward_funcs)
        if inputs.reward_adapter is not None:
            reward_funcs.append(load_reward_model(recipe, inputs.reward_adapter, args.seed))
            processing.append(tokenizer)
        if not reward_funcs:
            raise ValueError(f"stage grpo needs rewards: task {inputs.task.name!r} defines no reward functions "
                             "and no reward stage ran before it")  # fmt: skip
        model, peft_config = _load_policy(recipe, inputs.policy_adapter)
        return GRPOTrainer(model=model, reward_funcs=reward_funcs, args=args, train_dataset=Dataset.from_list(inputs.train_records),
                           processing_class=tokenizer, reward_processing_classes=processing, peft_config=peft_config)  # fmt: skip
    raise KeyError(f"unknown stage {stage!r}")


def stage_config(stage: str, recipe: LLMRecipe, output_dir: Path):
    """TRL's config object for ``stage``: the recipe's section plus GameSense's plumbing (see module doc)."""
    settings = recipe.stage_settings(stage)
    settings["bf16"] = resolve_bf16(settings.get("bf16"))
    settings.setdefault("output_dir", str(output_dir))
    settings.update(report_to=[], disable_tqdm=True, use_cpu=not torch.cuda.is_available())
    return trl_config_class(stage)(**settings)


def train_stage(stage: str, inputs: StageInputs) -> StageResult:
    """Train one stage and save its adapter to ``<stage_dir>/adapter``.

    Raises:
        ValueError: no training records, or a GRPO stage without rewards.
        KeyError: unknown stage kind.
    """
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from transformers.trainer_utils import get_last_checkpoint

    if not inputs.train_records:
        raise ValueError(f"stage {stage}: no training records: check data.train_file and data.max_train_rows")
    recipe = inputs.recipe
    args = stage_config(stage, recipe, inputs.stage_dir / "checkpoints")
    checkpoints = Path(args.output_dir)
    checkpoints.mkdir(parents=True, exist_ok=True)
    last_checkpoint = get_last_checkpoint(str(checkpoints)) if inputs.resume else None
    if inputs.resume and last_checkpoint is None:
        log.warning("resume: no checkpoint in %s, stage %s starts from scratch", checkpoints, stage)
    if not inputs.resume:
        for stale in checkpoints.glob("checkpoint-*"):
            shutil.rmtree(stale)  # a fresh run must not mix with an older run's checkpoints

    trainer = build_trainer(stage, inputs, args)
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
        if stage == "reward" and inputs.policy_adapter is not None:
            (adapter_dir / REWARD_INIT_FILE).write_text(json.dumps({"policy_adapter": str(Path(inputs.policy_adapter).resolve())}))

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
    if stage == "reward" and inputs.eval_records:
        metrics["pairwise_accuracy"] = pairwise_accuracy(trainer, inputs.eval_records)
    del trainer, output
    release_memory()
    return StageResult(stage=stage, produces=STAGE_PRODUCES[stage], adapter_dir=str(adapter_dir), metrics=metrics,
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
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)


def _tune_for_speed(model, recipe: LLMRecipe, autocast: bool):
    """Speed-ups that change no arithmetic: when every forward pass runs under bf16 autocast, PEFT no longer casts each adapter's input to
    the adapter's fp32 dtype (autocast casts it back to bf16 for the matmul: two copies of every activation per
    LoRA layer, ~15% of a CPU step); the decoder layers are compiled when ``runtime.compile`` is set."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    if autocast:
        for module in model.modules():
            if isinstance(module, BaseTunerLayer):
                module.cast_input_dtype_enabled = False
    if recipe.runtime.compile:
        compile_layers(model)


def pairwise_accuracy(trainer, pairs: list[Record]) -> float:
    """Share of held-out pairs whose chosen answer the reward model scores above the rejected one (ties count
    as wrong), as TRL's ``RewardTrainer`` measures it during evaluation."""
    from datasets import Dataset

    data = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in pairs])
    metrics = trainer.evaluate(eval_dataset=data)
    return float(metrics["eval_accuracy"])


def _point_adapter_at_base(adapter_dir: Path, base: str) -> None:
    """Record the user-facing base id (not our local cache path) in ``adapter_config.json`` so PEFT and
    vLLM's LoRA loader find the base model by name."""
    path = adapter_dir / "adapter_config.json"
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = base
    path.write_text(json.dumps(config, indent=2, sort_keys=True))
