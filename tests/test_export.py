"""Export (issue: ship the model into the game): the merged model equals the adapter, a GGUF file reads back with
the same tensors and tokenizer, bad input fails with one line and leaves nothing behind, and `gamesense export`
of a registered version writes, checks parity, logs and lists its exports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from gamesense.cli import app
from gamesense.models import export as ex

PROMPT = [{"role": "system", "content": "Convert the message to a ViGGO meaning representation."},
          {"role": "user", "content": "Portal 2 🚀 is a great puzzle game from Valve, 2011!"}]  # fmt: skip


def tiny_adapter(tiny_model_dir: Path, path: Path) -> Path:
    """A LoRA adapter (r 4, every linear layer) on the tiny model, with random B matrices so it changes the logits."""
    from peft import LoraConfig, get_peft_model

    from gamesense.models.base import load_base_model

    torch.manual_seed(1)
    model = get_peft_model(load_base_model(str(tiny_model_dir), dtype="float32"),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))  # fmt: skip
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.2)
    model.save_pretrained(path)
    return path


def prompt_ids(tokenizer) -> torch.Tensor:
    return torch.tensor([tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=True, return_dict=False)])


@torch.no_grad()
def test_merged_model_equals_the_adapter(tiny_model_dir, tmp_path):
    from peft import PeftModel

    from gamesense.models.base import load_base_model

    adapter = tiny_adapter(tiny_model_dir, tmp_path / "adapter")
    merged = ex.merge_model(str(adapter))
    ids = prompt_ids(merged.tokenizer)
    with_adapter = PeftModel.from_pretrained(load_base_model(str(tiny_model_dir), dtype="float32"), str(adapter)).eval()
    base = load_base_model(str(tiny_model_dir), dtype="float32").eval()
    expected = with_adapter(ids).logits
    assert merged.model.dtype == torch.float32 and merged.adapter_dir == adapter
    assert torch.allclose(merged.model(ids).logits, expected, atol=1e-5)
    assert not torch.allclose(base(ids).logits, expected, atol=1e-3)  # the adapter matters: the check can fail

    # the merged folder loads back alone (no PEFT, no base) to the same logits, with the task's manifest
    folder = ex.write_merged(merged, tmp_path / "merged", {"task": "viggo"})
    assert not list(tmp_path.glob(".merged.*"))  # the temporary folder is gone
    from gamesense.models.refs import load_for_inference

    loaded = load_for_inference(str(folder), dtype="float32")
    assert torch.allclose(loaded.model(ids).logits, expected, atol=1e-5)
    assert (folder / ex.EXPORT_MANIFEST).read_text().strip().startswith("{")


@torch.no_grad()
def test_gguf_reads_back_with_the_same_tensors_and_tokenizer(tiny_model_dir, tmp_path):
    import gguf

    from gamesense.models.refs import load_for_inference

    merged = ex.merge_model(str(tiny_adapter(tiny_model_dir, tmp_path / "adapter")))
    folder = ex.write_merged(merged, tmp_path / "merged")
    path = ex.write_gguf(folder, tmp_path / "tiny-f32.gguf", "f32", name="tiny")

    reader = gguf.GGUFReader(path)
    tensors = {t.name: t for t in reader.tensors}
    state = merged.model.state_dict()
    assert len(tensors) == len(state) - 1  # lm_head is tied to token_embd: not written twice
    assert np.array_equal(tensors["token_embd.weight"].data, state["model.embed_tokens.weight"].numpy())
    assert np.array_equal(tensors["blk.1.ffn_down.weight"].data, state["model.layers.1.mlp.down_proj.weight"].numpy())
    q = state["model.layers.0.self_attn.q_proj.weight"]
    assert not np.array_equal(tensors["blk.0.attn_q.weight"].data, q.numpy())  # rows reordered for llama.cpp's RoPE
    assert np.array_equal(tensors["blk.0.attn_q.weight"].data, ex._permute_rotary(q, 2).numpy())
    field = reader.get_field("tokenizer.ggml.pre")
    assert field.contents() == "smollm" and reader.get_field("general.architecture").contents() == "llama"

    # transformers' GGUF reader (independent of our writer) gets the same model and tokenizer back
    back = load_for_inference(str(path))
    ids = prompt_ids(merged.tokenizer)
    assert torch.equal(prompt_ids(back.tokenizer), ids)  # same vocabulary, merges, special tokens, chat template
    assert back.tokenizer.chat_template == merged.tokenizer.chat_template
    assert torch.allclose(back.model(ids).logits, merged.model(ids).logits, atol=1e-4)

    # quantized: smaller, and still the same model to quantization error
    q8 = ex.write_gguf(folder, tmp_path / "tiny-q8_0.gguf", "q8_0")
    quantized = {t.name: t for t in gguf.GGUFReader(q8).tensors}
    assert quantized["blk.0.ffn_up.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0
    assert quantized["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32  # norms stay f32
    logits = load_for_inference(str(q8)).model(ids).logits
    assert (logits - merged.model(ids).logits).abs().max() < 0.05 * merged.model(ids).logits.abs().max()


def test_modelfile_carries_the_chat_format_system_prompt_and_stops(tiny_model_dir):
    from gamesense.models.base import load_tokenizer

    text = ex.ollama_modelfile("m-q8_0.gguf", load_tokenizer(str(tiny_model_dir)).chat_template, "Convert it.", ("\n",), 96, 512)
    lines = text.splitlines()
    assert "FROM ./m-q8_0.gguf" in lines and 'SYSTEM "Convert it."' in lines
    assert 'PARAMETER stop "<|im_end|>"' in lines and "PARAMETER temperature 0" in lines
    assert 'PARAMETER stop """\n"""' in text and "PARAMETER num_predict 96" in lines
    assert "<|im_start|>{{ .Role }}" in text
    with pytest.raises(ex.ExportError, match='"""'):
        ex.ollama_modelfile("m.gguf", None, 'say """ here')


def one_line_error(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_unsupported_architecture_fails_with_one_line_and_writes_nothing(workdir, tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    model_dir = tmp_path / "tiny-gpt2"
    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=49152)).save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(model_dir)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["export", "--model", str(model_dir), "--no-parity", "--out", str(out)])
    assert "GGUF export supports LlamaForCausalLM" in one_line_error(result) and "GPT2LMHeadModel" in result.output
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--model", "/nonexistent/adapter"], "/nonexistent/adapter"),
    (["--model", "models:/gamesense-viggo@champion"], "not found in the registry"),
    (["--model", "x", "--quant", "q3"], "--quant 'q3': choose from f32, f16"),
    (["--model", "x", "--format", "onnx"], "--format 'onnx': choose merged or gguf"),
])  # fmt: skip
def test_bad_model_or_option_fails_with_one_line(workdir, tmp_path, args, message):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["export", *args, "--no-parity", "--out", str(out)])
    assert message in one_line_error(result)
    assert not out.exists()


def test_failed_gguf_write_leaves_no_partial_file(tiny_model_dir, tmp_path, monkeypatch):
    merged = ex.merge_model(str(tiny_model_dir))
    folder = ex.write_merged(merged, tmp_path / "merged")

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ex, "_encode", broken)
    with pytest.raises(OSError, match="disk full"):
        ex.write_gguf(folder, tmp_path / "out" / "m-f16.gguf", "f16")
    assert list((tmp_path / "out").iterdir()) == []


def test_export_of_a_registered_version_checks_parity_logs_and_lists(workdir, tiny_model_dir, viggo_dir, tmp_path):
    import json

    from mlflow import MlflowClient

    from gamesense.pipelines.llm_run import run_local
    from test_llm_pipeline import tiny_recipe, write_recipe

    recipe = tiny_recipe(tiny_model_dir, viggo_dir, tmp_path)
    run_local(recipe)
    recipe_file = write_recipe(recipe, tmp_path / "recipe.yaml")
    out = tmp_path / "exports"
    result = CliRunner().invoke(app, ["export", "--model", "models:/gamesense-viggo/1", "--format", "merged", "--format",
                                      "gguf", "--quant", "f16", "--quant", "q8_0", "--max-rows", "4", "--out", str(out),
                                      "--recipe", str(recipe_file)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "parity: within bounds" in result.output
    gguf_file = out / "gamesense-viggo-v1-q8_0.gguf"
    assert (out / "merged" / "model.safetensors").is_file() and gguf_file.is_file()
    modelfile = gguf_file.with_suffix(".Modelfile").read_text()
    assert f'SYSTEM "{recipe.task_options["system_prompt"]}"' in modelfile
    rows = json.loads((out / "parity.json").read_text())
    ours = [r for r in rows if r["reader"] != "llama.cpp"]  # llama.cpp's rows too where it is installed
    assert [(r["label"], r["reader"]) for r in ours] == [("adapter", "peft"), ("merged", "transformers"),
                                                         ("gguf f16", "transformers"), ("gguf q8_0", "transformers")]  # fmt: skip
    assert all(r["metrics"]["n"] == 4 for r in ours)
    assert rows[1]["metrics"]["exact_match"] == rows[0]["metrics"]["exact_match"]

    tags = MlflowClient().get_model_version("gamesense-viggo", "1").tags
    assert tags["export.gguf-q8_0"].endswith("/exports/gguf-q8_0/gamesense-viggo-v1-q8_0.gguf")
    assert "export.gguf-q8_0.exact_match" in tags
    run_id = MlflowClient().get_model_version("gamesense-viggo", "1").run_id
    logged = {a.path for a in MlflowClient().list_artifacts(run_id, "exports/gguf-q8_0")}
    assert logged == {f"exports/gguf-q8_0/{name}" for name in
                      ("gamesense-viggo-v1-q8_0.gguf", "gamesense-viggo-v1-q8_0.Modelfile", "parity.md")}  # fmt: skip
    listed = CliRunner().invoke(app, ["models", "list"], env={"COLUMNS": "200"})
    assert "gguf-f16, gguf-q8_0, merged" in listed.output


@pytest.mark.skipif(not ex.llama_cpp_available(), reason="llama-cpp-python is not installed")
def test_llama_cpp_runs_the_exported_file_like_transformers(tiny_model_dir, viggo_dir, tmp_path):
    import json

    from gamesense.config import GenerationSection
    from gamesense.evaluation.export_parity import evaluate_llama_cpp
    from gamesense.evaluation.runner import evaluate_static
    from gamesense.models.refs import InferenceModel
    from gamesense.tasks import get_task

    merged = ex.merge_model(str(tiny_adapter(tiny_model_dir, tmp_path / "adapter")))
    folder = ex.write_merged(merged, tmp_path / "merged")
    path = ex.write_gguf(folder, tmp_path / "tiny-f32.gguf", "f32")
    task = get_task("viggo", {"system_prompt": PROMPT[0]["content"]})
    records = task.eval_records(task.load(viggo_dir / "validation.csv", 4).examples)
    settings = GenerationSection(max_new_tokens=8, batch_size=4)
    model = InferenceModel(merged.model, merged.tokenizer, "merged", str(tiny_model_dir))
    ours = evaluate_static(model, task, records, tmp_path / "ours.jsonl", settings, progress=False)
    theirs = evaluate_llama_cpp(path, task, records, tmp_path / "theirs.jsonl", settings, progress=False)
    raw = [[json.loads(line)["raw"] for line in result.predictions_path.read_text().splitlines()] for result in (ours, theirs)]
    assert raw[0] == raw[1] and any(raw[0])  # llama.cpp greedy-decodes the same text from the same prompt


def test_parity_bounds_flag_only_bounded_forms_beyond_their_bound():
    import doctest

    from gamesense.evaluation import export_parity
    from gamesense.evaluation.export_parity import ParityRow, parity_failures

    assert doctest.testmod(export_parity).failed == 0
    rows = [ParityRow("adapter", "peft", None, {"em": 0.870}), ParityRow("merged", "transformers", 1, {"em": 0.866}),
            ParityRow("gguf f16", "llama.cpp", 1, {"em": 0.860}), ParityRow("gguf q4_0", "llama.cpp", 1, {"em": 0.5}),
            ParityRow("gguf q8_0", "llama.cpp", 1, error="crashed")]  # fmt: skip
    assert parity_failures(rows, "em") == ["gguf f16 (llama.cpp): 1.00 points below the adapter (bound 0.5)"]
    assert parity_failures(rows, "em", higher_is_better=False) == []  # a lower loss is no loss
