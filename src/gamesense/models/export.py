"""Export a model for runtimes outside PyTorch: the LoRA adapter merged into its base and written as a Hugging
Face folder (safetensors, tokenizer, chat template, generation config) or as a GGUF file for llama.cpp / Ollama.

The GGUF file follows llama.cpp's own converter (``convert_hf_to_gguf.py``, class ``LlamaModel``): the same
metadata keys, tensor names (the ``gguf`` package's tensor name map), q/k rows permuted to llama.cpp's rotary
layout, the BPE vocabulary with its merges, special tokens and chat template (``gguf.SpecialVocab``), and the
pre-tokenizer named by the hash of the tokens of llama.cpp's check text. Tensors are written by the ``gguf``
package's writer and quantized by its numpy quantizers (f16, bf16, q8_0, q5_0, q5_1, q4_0, q4_1); k-quants
(q4_k_m, q5_k_m, q6_k) are made from the f16 file by llama.cpp's quantizer (``llama_model_quantize``) where
llama-cpp-python is installed. Only Llama-family models (SmolLM, SmolLM2, Llama 3) with a BPE tokenizer are
written as GGUF; a merged folder works for any causal LM.

Every file appears whole or not at all: it is written under a temporary name and renamed at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path

import torch

#: quantizations the ``gguf`` package writes itself (name -> GGMLQuantizationType name)
GGUF_PACKAGE_QUANTS = {"f32": "F32", "f16": "F16", "bf16": "BF16", "q8_0": "Q8_0", "q5_1": "Q5_1", "q5_0": "Q5_0",
                       "q4_1": "Q4_1", "q4_0": "Q4_0"}  # fmt: skip
#: quantizations made by llama.cpp's quantizer from the f16 file (name -> llama.cpp ``LLAMA_FTYPE_*`` name)
LLAMA_CPP_QUANTS = {"q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K", "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
                    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}  # fmt: skip
GGUF_QUANTS = (*GGUF_PACKAGE_QUANTS, *LLAMA_CPP_QUANTS)
#: architectures written as GGUF (llama.cpp architecture ``llama``)
GGUF_ARCHITECTURES = ("LlamaForCausalLM",)

# llama.cpp's check text and the pre-tokenizers of the Llama-family tokenizers, by the SHA-256 of the token ids
# of that text (convert_hf_to_gguf.py get_vocab_base_pre, which names each hash's source model)
_PRE_TOKENIZER_CHECK_TEXT = '\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на Български \'\'\'\'\'\'```````""""......!!!!!!?????? I\'ve been \'told he\'s there, \'RE you sure? \'M not sure I\'ll make it, \'D you like some tea? We\'Ve a\'lL'  # noqa: E501
_PRE_TOKENIZERS = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # HuggingFaceTB/SmolLM-135M
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # meta-llama/Meta-Llama-3-8B
}
_SUPPORTED_TOKENIZERS = "SmolLM / SmolLM2 and Llama 3 BPE tokenizers"
EXPORT_MANIFEST = "gamesense_export.json"


class ExportError(ValueError):
    """A model or option that cannot be exported; the message is one line naming what is supported."""


@dataclass
class MergedModel:
    """A causal LM with its adapter merged in, ready to save.

    Attributes:
        model: the merged ``PreTrainedModel`` (weights in the base's stored dtype, fp32 for the built-in model).
        tokenizer: the adapter's tokenizer where it saved one, else the base's.
        base: the base model reference.
        adapter_dir: the adapter merged in (None when ``ref`` was a base model).
        tags: the registry version's tags (task, metrics) for a registry reference, else empty.
    """

    model: object
    tokenizer: object
    base: str
    adapter_dir: Path | None
    tags: dict[str, str] = field(default_factory=dict)


def merge_model(ref: str, for_gguf: bool = False) -> MergedModel:
    """Load a model reference (registry reference, adapter directory or stage checkpoint, or base model) with
    its LoRA weights merged into the base weights, in the base's stored dtype (no bf16 cast: an export keeps
    the precision it was given).

    Args:
        for_gguf: check that the architecture and tokenizer can be written as GGUF before loading any weights.

    Raises:
        FileNotFoundError: a path that does not exist or is not an adapter or model directory.
        LookupError / ValueError: a registry reference that names no version, or a malformed one.
        ExportError: ``for_gguf`` and a model that cannot be written as GGUF.
    """
    from gamesense.models.base import load_base_model, load_tokenizer, resolve_base_model
    from gamesense.models.refs import adapter_base, load_merged_adapter, resolve_adapter_dir

    adapter_dir, tags = resolve_adapter_dir(ref)
    path = Path(ref).expanduser()
    if adapter_dir is None and path.is_dir() and not (path / "config.json").is_file():
        raise FileNotFoundError(f"model {ref!r}: the directory holds neither adapter_config.json nor config.json")
    base = ref if adapter_dir is None else adapter_base(adapter_dir)
    base_dir = resolve_base_model(base)
    if for_gguf:
        from transformers import AutoConfig

        check_gguf_supported(AutoConfig.from_pretrained(base_dir))
        check_gguf_tokenizer(load_tokenizer(base))
    if adapter_dir is None:
        model, tokenizer = load_base_model(base, dtype=_stored_dtype(base_dir)), load_tokenizer(base)
    else:
        model, tokenizer, _ = load_merged_adapter(adapter_dir, _stored_dtype(base_dir))
    model.eval()
    return MergedModel(model=model, tokenizer=tokenizer, base=base, adapter_dir=adapter_dir, tags=tags)


def _stored_dtype(model_dir: str) -> str:
    """The dtype a model's ``config.json`` says its weights are stored in (``float32`` when it does not say)."""
    config_path = Path(model_dir) / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    stored = config.get("torch_dtype") or config.get("dtype") or "float32"
    return stored if stored in ("float32", "bfloat16", "float16") else "float32"


@contextmanager
def _atomic_path(target: Path, is_dir: bool = False) -> Iterator[Path]:
    """A temporary path beside ``target`` that replaces it when the block ends without an error, and is removed
    when it raises (so no partial file is ever left under ``target``'s name)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    work = tmp if is_dir else tmp / target.name
    try:
        yield work
        _umask_permissions(work)
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(work, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _umask_permissions(path: Path) -> None:
    """Give a written file or folder (and everything in it) the permissions of a file created normally
    (temporary directories and some writers create them private)."""
    umask = os.umask(0)
    os.umask(umask)
    for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
        item.chmod((0o777 if item.is_dir() else 0o666) & ~umask)


def write_merged(merged: MergedModel, out_dir: str | Path, manifest: dict | None = None) -> Path:
    """Write a Hugging Face folder: ``model.safetensors`` (sharded above 5 GB), ``config.json``,
    ``generation_config.json``, the tokenizer with its chat template, and ``gamesense_export.json`` (what was
    exported from where, the task's system prompt and stop strings).

    Returns:
        ``out_dir``, replaced whole (an existing folder of that name is removed only once the new one is written).
    """
    target = Path(out_dir)
    with _atomic_path(target, is_dir=True) as work:
        merged.model.save_pretrained(work, safe_serialization=True, max_shard_size="5GB")
        merged.tokenizer.save_pretrained(work)
        (work / EXPORT_MANIFEST).write_text(json.dumps(manifest or {}, indent=2) + "\n")
    return target


def check_gguf_supported(config) -> None:
    """Refuse, before any work, a model whose architecture is not written as GGUF here.

    Args:
        config: the model's transformers ``PretrainedConfig``.

    Raises:
        ExportError: an architecture other than :data:`GGUF_ARCHITECTURES` (one line naming what is supported).
    """
    architecture = (getattr(config, "architectures", None) or [getattr(config, "model_type", "?")])[0]
    if architecture not in GGUF_ARCHITECTURES:
        raise ExportError(f"GGUF export supports {', '.join(GGUF_ARCHITECTURES)} (SmolLM, SmolLM2, Llama 3), not "
                          f"{architecture}: --format merged works for any causal LM")  # fmt: skip


def check_gguf_tokenizer(tokenizer) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer, found by hashing the token ids of llama.cpp's check
    text (see module doc).

    Raises:
        ExportError: not a BPE tokenizer, or one whose pre-tokenizer llama.cpp is not known here to share.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    model_type = json.loads(backend.to_str())["model"]["type"] if backend is not None else None
    if model_type != "BPE":
        raise ExportError(f"GGUF export supports {_SUPPORTED_TOKENIZERS}; this tokenizer is {model_type or 'not a fast tokenizer'}")
    digest = sha256(str(tokenizer.encode(_PRE_TOKENIZER_CHECK_TEXT)).encode()).hexdigest()
    if digest not in _PRE_TOKENIZERS:
        raise ExportError(f"GGUF export supports {_SUPPORTED_TOKENIZERS}; this BPE tokenizer's pre-tokenizer is not "
                          f"one of them (check hash {digest[:12]})")  # fmt: skip
    return _PRE_TOKENIZERS[digest]


def _vocabulary(tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    """Token strings and llama.cpp token types for ids ``0..vocab_size-1`` (convert_hf_to_gguf.py get_vocab_base:
    unused ids padded, added special tokens CONTROL, other added tokens USER_DEFINED)."""
    import gguf

    reverse = {i: token for token, i in tokenizer.get_vocab().items()}
    added = tokenizer.get_added_vocab()
    decoder = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        token = reverse[i]
        if token in added:
            types.append(gguf.TokenType.CONTROL if decoder[i].special else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
        tokens.append(token)
    return tokens, types


def _permute_rotary(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """Reorder q/k projection rows from Hugging Face's rotary layout (halves) to llama.cpp's (pairs)
    (convert_hf_to_gguf.py ``LlamaModel.permute``). Shape ``(n_head * head_dim, hidden)`` kept."""
    return weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def write_gguf(model_dir: str | Path, out_file: str | Path, quant: str = "f16", name: str | None = None,
               progress: bool = False) -> Path:  # fmt: skip
    """Write the Hugging Face folder ``model_dir`` (e.g. from :func:`write_merged`) as one GGUF file.

    Args:
        quant: one of :data:`GGUF_PACKAGE_QUANTS`. 1-D tensors (norms) stay f32, as llama.cpp's converter
            keeps them; a matrix whose rows do not divide into the quantization's blocks is written f16.
        name: ``general.name`` in the metadata (default: the folder's name).

    Returns:
        ``out_file``, written whole.

    Raises:
        ExportError: unsupported architecture, tokenizer or quantization.
    """
    import gguf
    from safetensors import safe_open
    from transformers import AutoConfig, AutoTokenizer

    if quant not in GGUF_PACKAGE_QUANTS:
        raise ExportError(f"quantization {quant!r} is not written by the gguf package; choose one of "
                          f"{', '.join(GGUF_PACKAGE_QUANTS)} (k-quants: {', '.join(LLAMA_CPP_QUANTS)} via llama.cpp)")  # fmt: skip
    model_dir = Path(model_dir)
    config = AutoConfig.from_pretrained(model_dir)
    check_gguf_supported(config)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pre = check_gguf_tokenizer(tokenizer)
    qtype = gguf.GGMLQuantizationType[GGUF_PACKAGE_QUANTS[quant]]
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    n_kv = config.num_key_value_heads or config.num_attention_heads
    rope = dict(getattr(config, "rope_scaling", None) or getattr(config, "rope_parameters", None) or {})
    rope_type = (rope.get("rope_type") or rope.get("type") or "default").lower()
    if rope_type not in ("default", "linear", "llama3"):
        raise ExportError(f"GGUF export supports default, linear and llama3 RoPE, not {rope_type!r}")

    out_file = Path(out_file)
    with _atomic_path(out_file) as work:
        writer = gguf.GGUFWriter(work, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
        writer.add_name(name or model_dir.name)
        writer.add_block_count(config.num_hidden_layers)
        writer.add_context_length(config.max_position_embeddings)
        writer.add_embedding_length(config.hidden_size)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_head_count(config.num_attention_heads)
        writer.add_head_count_kv(n_kv)
        writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
        writer.add_layer_norm_rms_eps(config.rms_norm_eps)
        writer.add_vocab_size(config.vocab_size)
        writer.add_rope_dimension_count(head_dim)
        if rope_type == "linear":
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(rope["factor"])
        writer.add_file_type(getattr(gguf.LlamaFileType, "ALL_F32" if quant == "f32" else f"MOSTLY_{quant.upper()}"))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

        tokens, types = _vocabulary(tokenizer, config.vocab_size)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=len(tokens)).add_to_gguf(writer, quiet=True)

        names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
        if rope_type == "llama3":
            writer.add_tensor(f"{gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS]}.weight", _llama3_rope_factors(rope, head_dim))
        for file in sorted(model_dir.glob("*.safetensors")):
            with safe_open(file, framework="pt") as tensors:
                for key in tensors.keys():
                    if key == "lm_head.weight" and config.tie_word_embeddings:
                        continue  # llama.cpp reads tied output weights from token_embd
                    gguf_name = names.get_name(key, try_suffixes=(".weight", ".bias"))
                    if gguf_name is None:
                        raise ExportError(f"tensor {key!r} has no GGUF name for architecture llama")
                    data = tensors.get_tensor(key).float()
                    if key.endswith("q_proj.weight"):
                        data = _permute_rotary(data, config.num_attention_heads)
                    elif key.endswith("k_proj.weight"):
                        data = _permute_rotary(data, n_kv)
                    array, array_type = _encode(data.numpy(), qtype)
                    writer.add_tensor(gguf_name, array, raw_dtype=array_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=progress)
        writer.close()
    return out_file


def _encode(array, qtype):
    """One tensor in its GGUF type: 1-D in f32, matrices in ``qtype`` (f16 when the rows do not divide into its
    blocks). Returns ``(array, raw_dtype)``; ``raw_dtype`` None for plain float arrays."""
    import gguf
    import numpy as np

    if array.ndim <= 1 or qtype == gguf.GGMLQuantizationType.F32:
        return array.astype(np.float32), None
    if qtype == gguf.GGMLQuantizationType.F16:
        return array.astype(np.float16), None
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if array.shape[-1] % block:
        return array.astype(np.float16), None
    return gguf.quants.quantize(array, qtype), qtype


def _llama3_rope_factors(rope: dict, head_dim: int):
    """Llama 3.1's RoPE frequency factors (convert_hf_to_gguf.py ``LlamaModel.generate_extra_tensors``)."""
    import math

    import numpy as np

    base = rope.get("rope_theta", 500000.0)
    factor, low, high = rope.get("factor", 8.0), rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old_context = rope.get("original_max_position_embeddings", 8192)
    low_wavelen, high_wavelen = old_context / low, old_context / high
    factors = []
    for freq in 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim)):
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old_context / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(factors, dtype=np.float32)


def check_quant(quant: str) -> None:
    """Refuse a quantization this machine cannot write: not in :data:`GGUF_QUANTS`, or a k-quant without
    llama-cpp-python.

    Raises:
        ExportError: naming what is accepted.
    """
    if quant not in GGUF_QUANTS:
        raise ExportError(f"--quant {quant!r}: choose from {', '.join(GGUF_QUANTS)}")
    if quant in LLAMA_CPP_QUANTS and not llama_cpp_available():
        raise ExportError(f"--quant {quant} needs llama.cpp's quantizer: make llama-cpp (builds llama-cpp-python from "
                          f"source, a few minutes), or choose one of {', '.join(GGUF_PACKAGE_QUANTS)}")  # fmt: skip


def llama_cpp_available() -> bool:
    """True when llama-cpp-python (llama.cpp's runtime and quantizer) can be imported."""
    try:
        import llama_cpp  # noqa: F401
    except Exception:  # ImportError, or a build that cannot load its shared library
        return False
    return True


def quantize_with_llama_cpp(source: str | Path, out_file: str | Path, quant: str, threads: int = 0) -> Path:
    """Quantize a f16/f32 GGUF file with llama.cpp's own quantizer (the ``llama-quantize`` tool's code).

    Raises:
        ExportError: ``quant`` is not in :data:`LLAMA_CPP_QUANTS`, or llama-cpp-python is not installed.
        RuntimeError: llama.cpp reported a failure.
    """
    if quant not in LLAMA_CPP_QUANTS:
        raise ExportError(f"quantization {quant!r}: llama.cpp's quantizer is used here for {', '.join(LLAMA_CPP_QUANTS)}")
    check_quant(quant)
    import ctypes

    import llama_cpp

    out_file = Path(out_file)
    with _atomic_path(out_file) as work:
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(llama_cpp, LLAMA_CPP_QUANTS[quant])
        params.nthread = threads
        status = llama_cpp.llama_model_quantize(str(source).encode(), str(work).encode(), ctypes.byref(params))
        if status != 0:
            raise RuntimeError(f"llama.cpp could not quantize {source} to {quant} (status {status})")
    return out_file


# Ollama chat templates (Go templates) for the chat formats of the supported tokenizers, chosen by the markers in
# the model's own Jinja chat template
_OLLAMA_TEMPLATES = {
    "<|im_start|>": (  # ChatML: SmolLM2
        '{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}'
        '{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n',
        "<|im_end|>",
    ),
    "<|start_header_id|>": (  # Llama 3
        '{{- if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}'
        '{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>{{ end }}'
        '<|start_header_id|>assistant<|end_header_id|>\n\n',
        "<|eot_id|>",
    ),
}


def _modelfile_value(text: str) -> str:
    """A Modelfile value: in quotes, or in triple quotes when it holds a newline or a quote."""
    if '"""' in text:
        raise ExportError(f'a Modelfile value cannot hold """: {text!r}')
    return f'"""{text}"""' if "\n" in text or '"' in text else f'"{text}"'


def ollama_modelfile(gguf_name: str, chat_template: str | None, system: str | None = None,
                     stop_strings: tuple[str, ...] = (), max_new_tokens: int | None = None,
                     context_length: int | None = None) -> str:  # fmt: skip
    """An Ollama ``Modelfile`` for a GGUF file beside it: its chat template in Ollama's Go syntax (ChatML or
    Llama 3, from the markers in the model's Jinja template; otherwise Ollama reads the template stored in the
    GGUF), the task's system prompt, greedy decoding, the end-of-turn token and the task's stop strings.

    Format: https://github.com/ollama/ollama/blob/main/docs/modelfile.md
    """
    lines = ["# written by gamesense export; ollama create NAME -f <this file>", f"FROM ./{gguf_name}"]
    end_of_turn = None
    for marker, (template, end) in _OLLAMA_TEMPLATES.items():
        if chat_template and marker in chat_template:
            lines.append(f"TEMPLATE {_modelfile_value(template)}")
            end_of_turn = end
            break
    if system:
        lines.append(f"SYSTEM {_modelfile_value(system)}")
    lines.append("PARAMETER temperature 0")
    for stop in (end_of_turn, *stop_strings):
        if stop:
            lines.append(f"PARAMETER stop {_modelfile_value(stop)}")
    if max_new_tokens:
        lines.append(f"PARAMETER num_predict {max_new_tokens}")
    if context_length:
        lines.append(f"PARAMETER num_ctx {context_length}")
    return "\n".join(lines) + "\n"
