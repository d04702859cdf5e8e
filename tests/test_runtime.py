"""Runtime plumbing: recipes that extend others, and the thread count following other processes' load."""

from __future__ import annotations

import pytest

from gamesense.config import RecipeError, load_recipe, read_recipe
from gamesense.training.recipe import LLMRecipe


def test_quality_recipe_extends_the_default_one(tmp_path):
    full, default = load_recipe("viggo-full", LLMRecipe), load_recipe("viggo", LLMRecipe)
    assert full.sft["num_train_epochs"] == 6 and default.sft["num_train_epochs"] == 2
    assert full.sft["learning_rate"] == default.sft["learning_rate"] and full.task_options == default.task_options
    (tmp_path / "a.yaml").write_text("extends: b\nzenml: false\n")
    (tmp_path / "b.yaml").write_text("extends: a\n")
    with pytest.raises(RecipeError, match="extends itself"):
        read_recipe(tmp_path / "a.yaml")


def test_thread_balancer_follows_other_processes_load(monkeypatch):
    """Others' load = machine busy time - ours, over the interval; threads = cores left free."""
    import torch

    from gamesense.models import hardware

    clock = {"t": 0.0, "busy": 0.0, "own": 0.0}
    monkeypatch.setattr(hardware, "usable_cores", lambda: 4)
    monkeypatch.setattr(hardware.ThreadBalancer, "_sample", staticmethod(lambda: (clock["t"], clock["busy"], clock["own"])))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        balancer = hardware.ThreadBalancer(every_s=10)
        clock.update(t=5, busy=20, own=10)
        assert balancer.check() is None  # not yet time to look
        clock.update(t=10, busy=40, own=20)  # 4 cores busy, 2 of them ours: 2 left free
        plan = balancer.check()
        assert plan.threads == 2 and plan.busy == 2 and torch.get_num_threads() == 2
        clock.update(t=20, busy=60, own=40)  # everything busy was ours: all 4 back
        assert balancer.check().threads == 4 and torch.get_num_threads() == 4
        clock.update(t=30, busy=100, own=80)
        assert balancer.check() is None  # unchanged
    finally:
        torch.set_num_threads(before)
