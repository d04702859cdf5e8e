"""Frozen-prefix caching under ``lora.top_layers``: the frozen layers run once per row, and training computes the
same losses and gradients as without the cache."""

import logging

import pytest
import torch

from gamesense.config import load_recipe
from gamesense.training.recipe import LLMRecipe
from test_llm_pipeline import tiny_recipe


def _top_layer_model(tiny_model_dir):
    from peft import get_peft_model

    from gamesense.models.base import load_base_model
    from gamesense.training.methods.base import lora_config

    recipe = load_recipe("viggo", LLMRecipe, [f"model.base={tiny_model_dir}", "lora.top_layers=1"])
    base = load_base_model(str(tiny_model_dir), dtype="float32")
    return get_peft_model(base, lora_config(recipe, model=base))


def _loss_and_grads(model, input_ids, attention_mask):
    model.zero_grad()
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_second_epoch_skips_the_frozen_layers_and_computes_the_same_loss_and_gradients(tiny_model_dir):
    from gamesense.training.frozen_prefix import install_frozen_prefix_cache

    torch.manual_seed(0)
    model = _top_layer_model(tiny_model_dir)
    cache = install_frozen_prefix_cache(model)
    assert cache is not None and len(cache.layers) == 1
    frozen_calls = []
    model.get_base_model().model.layers[0].self_attn.register_forward_hook(lambda *a: frozen_calls.append(1))

    rows = [torch.randint(10, 1000, (n,)) for n in (7, 4, 5)]
    ids = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=0)
    mask = (torch.arange(ids.shape[1]) < torch.tensor([[7], [4], [5]])).long()
    model.train()
    first = _loss_and_grads(model, ids, mask)
    second = _loss_and_grads(model, ids, mask)
    assert (cache.misses, cache.hits, len(frozen_calls)) == (3, 3, 1)
    assert second[0] == pytest.approx(first[0], rel=1e-6)
    for name, grad in first[1].items():
        torch.testing.assert_close(second[1][name], grad)

    # the same rows in another order with more padding: still kept, same loss (a row's states ignore padding)
    order = [2, 0, 1]
    reordered = torch.cat([ids[order], torch.zeros(3, 3, dtype=ids.dtype)], dim=1)
    remask = torch.cat([mask[order], torch.zeros(3, 3, dtype=mask.dtype)], dim=1)
    third = _loss_and_grads(model, reordered, remask)
    assert (cache.hits, len(frozen_calls)) == (6, 1)
    assert third[0] == pytest.approx(first[0], rel=1e-5)

    # a new row, left padding and evaluation mode all run the frozen layers
    _loss_and_grads(model, torch.cat([ids, torch.randint(10, 1000, (1, 7))]), torch.cat([mask, torch.ones(1, 7)]).long())
    _loss_and_grads(model, ids, mask.flip(1))
    model.eval()
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    assert len(frozen_calls) == 4 and cache.hits == 6


def test_no_cache_without_frozen_layers(tiny_model_dir):
    from peft import get_peft_model

    from gamesense.models.base import load_base_model
    from gamesense.training.frozen_prefix import install_frozen_prefix_cache
    from gamesense.training.methods.base import lora_config

    recipe = load_recipe("viggo", LLMRecipe, [f"model.base={tiny_model_dir}"])
    base = load_base_model(str(tiny_model_dir), dtype="float32")
    assert install_frozen_prefix_cache(get_peft_model(base, lora_config(recipe, model=base))) is None


def test_sft_with_the_cache_trains_like_without_it(workdir, tiny_model_dir, viggo_dir, tmp_path, caplog):
    """Two epochs of SFT with adapters on the top layer: the same loss curve with and without the cache."""
    from gamesense.tasks import get_task
    from gamesense.training.methods.base import StageInputs, build_records
    from gamesense.training.stage import run_stage

    losses = {}
    for cached in (False, True):
        recipe = tiny_recipe(tiny_model_dir, viggo_dir, tmp_path, "lora.top_layers=1", "sft.max_steps=-1",
                             "sft.num_train_epochs=2", f"runtime.cache_frozen_layers={str(cached).lower()}",
                             "sft.bf16=false", "model.dtype=float32")  # fmt: skip
        task = get_task("viggo", recipe.task_options)
        records = build_records("sft", task, task.load(viggo_dir / "train.csv", 8).examples)
        with caplog.at_level(logging.INFO, logger="gamesense.training.stage"):
            result = run_stage("sft", StageInputs(recipe=recipe, task=task, train_records=records,
                                                  stage_dir=tmp_path / f"c{cached}", show_progress=False))  # fmt: skip
        losses[cached] = [r["loss"] for r in result.log_history if "loss" in r]
        assert ("frozen-prefix cache on the first 1 decoder layers" in caplog.text) is cached
    assert len(losses[True]) == 4
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)
