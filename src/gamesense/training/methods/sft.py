"""Supervised fine-tuning (SFT): TRL's ``SFTTrainer`` + ``SFTConfig`` on ``prompt``/``completion`` records.

TRL's ``SFTTrainer`` masks the prompt (``completion_only_loss``); the chat template closes each completion with
``<|im_end|>`` (the EOS), which stays in the loss so the model learns to stop. The pad token is kept distinct
from EOS (see :mod:`gamesense.models.base`) and padded positions are masked through the attention mask,
never by token id. On a CPU the loss runs the LM head on completion tokens only (:func:`completion_loss`);
on GPUs TRL's own fused LM-head loss is used instead.
"""

from __future__ import annotations

import torch

from gamesense.models.base import load_tokenizer
from gamesense.training.methods.base import StageInputs, TrainingMethod, load_policy


class SFT(TrainingMethod):
    """Supervised fine-tuning of the policy adapter on the task's answers (completion-only loss)."""

    name = "sft"
    config_class = "SFTConfig"
    trains_on = "sft"
    produces = "policy"

    def build_trainer(self, inputs: StageInputs, args):
        from datasets import Dataset

        recipe = inputs.recipe
        model, peft_config = load_policy(recipe, inputs.policy_adapter)
        data = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in inputs.train_records])
        return sft_trainer_class(recipe.runtime.fused_loss)(model=model, args=args, train_dataset=data,
                                                             processing_class=load_tokenizer(recipe.model.base),
                                                             peft_config=peft_config)  # fmt: skip


def completion_loss(model, inputs: dict, num_items_in_batch=None):
    """Causal-LM cross-entropy computed only where it counts: the LM head runs on completion positions.

    The output projection of a small model is a large share of its compute (SmolLM2-135M: a 576 x 49,152
    matrix, ~21% of the forward FLOPs), and on prompt positions its logits are thrown away by the
    completion-only mask. Equals the model's own loss (``labels`` shifted by one, -100 ignored).

    Args:
        model: a (PEFT-wrapped) ``*ForCausalLM`` with ``get_decoder()`` and ``get_output_embeddings()``, or
            such a model wrapped in ``DistributedDataParallel`` (see :func:`_through_ddp`).
        inputs: ``input_ids`` [batch, seq], ``labels`` [batch, seq], ``attention_mask`` or ``position_ids``.
        num_items_in_batch: target tokens over all gradient-accumulation micro-batches (the Trainer's
            normaliser); None: this batch's target tokens.

    Returns:
        scalar loss tensor (mean over target tokens).
    """
    import torch.nn.functional as F

    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return _through_ddp(model, completion_loss, inputs, num_items_in_batch)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    model_inputs = {k: v for k, v in inputs.items() if k not in ("labels", "use_cache", "num_items_in_batch")}
    hidden = base.get_decoder()(**model_inputs, use_cache=False).last_hidden_state
    targets = inputs["labels"][:, 1:]
    keep = targets != -100
    logits = base.get_output_embeddings()(hidden[:, :-1][keep]).float()
    loss = F.cross_entropy(logits, targets[keep], reduction="sum")
    count = num_items_in_batch if num_items_in_batch is not None else keep.sum()
    return loss / torch.as_tensor(count, device=loss.device).clamp(min=1)


def _through_ddp(ddp, loss_fn, *args):
    """``loss_fn(ddp.module, *args)`` run as the forward pass of the DDP wrapper ``ddp``.

    DDP averages gradients across processes only after a forward pass through the wrapper (which readies its
    reducer for the backward pass); calling the wrapped model's decoder directly would train each process on
    its own gradients. The wrapped module's ``forward`` is swapped for the call and put back after it
    (accelerate may have set an instance ``forward`` of its own: that one is restored)."""
    module = ddp.module
    own_forward = module.__dict__.get("forward")
    module.forward = lambda *a: loss_fn(module, *a)
    try:
        return ddp(*args)
    finally:
        if own_forward is None:
            del module.forward
        else:
            module.forward = own_forward


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


METHOD = SFT()
