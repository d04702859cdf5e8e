"""The accelerate configs under configs/accelerate/ (docs/scale-out.md) parse with accelerate's own loader and
turn into the DeepSpeed settings they promise. Runs without deepspeed and without a GPU: nothing is launched,
only accelerate's config parsing, launch-argument validation and DeepSpeed-plugin construction."""

from __future__ import annotations

from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "accelerate"

#: file -> (distributed type, ZeRO stage, optimizer offload, parameter offload)
EXPECTED = {
    "multi_gpu.yaml": ("MULTI_GPU", None, None, None),
    "deepspeed_zero2.yaml": ("DEEPSPEED", 2, "none", "none"),
    "deepspeed_zero3_offload.yaml": ("DEEPSPEED", 3, "cpu", "cpu"),
}


def _launch_args(path: Path):
    """``accelerate launch --config_file PATH -m gamesense finetune`` as accelerate resolves it before launching."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    argv = ["--config_file", str(path), "--main_process_port", "0", "-m", "gamesense", "finetune", "--no-zenml"]
    return _validate_launch_command(launch_command_parser().parse_args(argv))


def test_every_config_is_checked():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_loads_with_accelerates_loader(name):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file

    config = load_config_from_file(str(CONFIGS / name))
    distributed_type, stage, offload_optimizer, offload_param = EXPECTED[name]
    assert isinstance(config, ClusterConfig)
    assert str(config.distributed_type).split(".")[-1] == distributed_type
    assert config.mixed_precision == "bf16"
    assert config.num_processes == 8 and config.num_machines == 1
    assert config.use_cpu is False
    if stage is None:
        assert not config.deepspeed_config
    else:
        ds = config.deepspeed_config
        assert ds["zero_stage"] == stage
        assert ds["offload_optimizer_device"] == offload_optimizer
        assert ds["offload_param_device"] == offload_param
        # left to the recipe: a number here would have to equal every stage's gradient_accumulation_steps
        assert "gradient_accumulation_steps" not in ds


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_launch_arguments(name):
    args, _, _ = _launch_args(CONFIGS / name)
    assert args.num_processes == 8
    assert args.use_deepspeed is (EXPECTED[name][0] == "DEEPSPEED")
    assert args.multi_gpu is (name == "multi_gpu.yaml")


@pytest.mark.parametrize("name", ["deepspeed_zero2.yaml", "deepspeed_zero3_offload.yaml"])
def test_deepspeed_config_the_trainer_receives(name, monkeypatch):
    """Rebuild what ``transformers.TrainingArguments`` builds under ``accelerate launch``: the launcher's
    environment, then ``DeepSpeedPlugin()`` with the launch's mixed precision."""
    from accelerate.utils import DeepSpeedPlugin
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    args, defaults, mixed_precision_from_config = _launch_args(CONFIGS / name)
    fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mixed_precision_from_config else [])
    args.deepspeed_fields_from_accelerate_config = ",".join(fields)  # as accelerate's launch_command sets it
    _, env = prepare_deepspeed_cmd_env(args)
    for key, value in env.items():
        if key.startswith("ACCELERATE_"):
            monkeypatch.setenv(key, value)
    plugin = DeepSpeedPlugin()
    plugin.set_mixed_precision(env["ACCELERATE_MIXED_PRECISION"])

    ds = plugin.deepspeed_config
    _, stage, offload_optimizer, offload_param = EXPECTED[name]
    assert ds["zero_optimization"]["stage"] == stage
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == offload_optimizer
    assert ds["zero_optimization"]["offload_param"]["device"] == offload_param
    assert ds["bf16"] == {"enabled": True} and ds["fp16"] == {"enabled": False}
    # batch size, accumulation and clipping come from the recipe's stage section
    assert ds["train_micro_batch_size_per_gpu"] == ds["gradient_accumulation_steps"] == ds["gradient_clipping"] == "auto"
    if stage == 3:
        assert plugin.zero3_init_flag is True
        assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


#: run by each of two CPU processes under torchrun: the whole pipeline (run_local) on the parity task of
#: tests/test_task_plugin.py, SFT with the CPU completion-only loss; then checks that DDP kept the ranks' adapters equal
_TWO_PROCESS_SCRIPT = """
import json, sys
from pathlib import Path
import torch
import torch.distributed as dist
sys.path.insert(0, sys.argv[1])
from test_task_plugin import parity_recipe  # registers the parity-test task
import gamesense.training.stage as stage
from gamesense.pipelines.llm_run import run_local

trainers = []
build_trainer = stage.build_trainer
stage.build_trainer = lambda *a: trainers.append(build_trainer(*a)) or trainers[-1]
recipe = parity_recipe(sys.argv[2], sys.argv[3], ["sft"])
recipe = recipe.model_copy(update={"sft": {**recipe.sft, "max_steps": 2, "per_device_train_batch_size": 2}})
out = run_local(recipe)
trained = torch.cat([p.detach().flatten() for n, p in trainers[0].model.named_parameters() if "lora_B" in n])
every = [torch.empty_like(trained) for _ in range(dist.get_world_size())]
dist.all_gather(every, trained)
if dist.get_rank() == 0:
    json.dump({"world_size": dist.get_world_size(), "trainer": type(trainers[0]).__name__, "outcome": out is not None,
               "ranks_equal": all(torch.equal(every[0], t) for t in every), "lora_B_norm": float(trained.norm()),
               "adapter": sorted(p.name for p in Path(out.trained.results[0].adapter_dir).iterdir())},
              open(sys.argv[4], "w"))
elif out is not None:
    raise SystemExit("rank 1 ran the main-process steps")
"""


@pytest.mark.slow
def test_two_cpu_processes_train_one_ddp_model(workdir, tiny_model_dir, tmp_path):
    """``torchrun --nproc_per_node 2`` on CPU: the processes form one gloo group (``run_local``'s CPU state),
    the main process alone prepares, evaluates and registers, and the CPU completion-only loss runs through
    the DDP wrapper, so gradients are averaged and both ranks end with the same adapter (~40 s on 2 cores)."""
    import contextlib
    import json
    import os
    import signal
    import subprocess
    import sys

    data = tmp_path / "parity.jsonl"
    data.write_text("\n".join(json.dumps({"number": n}) for n in range(16)) + "\n")
    script, result = tmp_path / "two_ranks.py", tmp_path / "result.json"
    script.write_text(_TWO_PROCESS_SCRIPT)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
               str(Path(__file__).parent), str(tiny_model_dir), str(data), str(result)]  # fmt: skip
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        log, _ = run.communicate(timeout=600)
    finally:  # torchrun's workers too, also when it timed out
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode == 0, log[-6000:]
    outcome = json.loads(result.read_text())
    assert outcome["world_size"] == 2 and outcome["outcome"] is True
    assert outcome["trainer"] == "CompletionLossSFTTrainer"
    assert outcome["ranks_equal"] is True and outcome["lora_B_norm"] > 0  # trained (LoRA B starts at zero)
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer_config.json"} <= set(outcome["adapter"])


class _FakeZero3Config:
    """Stands in for the DeepSpeed config a ZeRO-3 ``TrainingArguments`` registers with transformers."""

    def is_zero3(self) -> bool:
        return True


def test_reward_model_loads_whole_while_a_zero3_config_is_registered(tiny_model_dir, monkeypatch):
    """After a ZeRO-3 stage's arguments exist, ``from_pretrained`` would load under ``zero.Init`` (here: needs
    deepspeed); the reward model (and evaluation) load whole, and the registration is back afterwards."""
    from test_task_plugin import parity_recipe
    from transformers.integrations import deepspeed as hf_deepspeed

    from gamesense.models.base import whole_weights
    from gamesense.training.methods.reward import load_reward_model

    registered = _FakeZero3Config()
    monkeypatch.setattr(hf_deepspeed, "_hf_deepspeed_config_weak_ref", __import__("weakref").ref(registered))
    assert hf_deepspeed.is_deepspeed_zero3_enabled()
    with whole_weights():
        assert not hf_deepspeed.is_deepspeed_zero3_enabled()
    assert hf_deepspeed.is_deepspeed_zero3_enabled()
    model = load_reward_model(parity_recipe(tiny_model_dir, tiny_model_dir / "none.jsonl", ["reward"]))
    assert all(p.numel() > 0 for p in model.parameters())
    assert hf_deepspeed._hf_deepspeed_config_weak_ref() is registered
