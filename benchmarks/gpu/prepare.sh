#!/usr/bin/env bash
# Prepare, on this machine (registry access, the built-in model cached), what benchmarks/gpu/run.sh needs on a GPU
# machine without network: the wheels its image lacks (whl/), the SmolLM2 tokenizer and config (tok/; models are
# random-initialised from it there) and the ViGGO files (data/viggo/). All three are git-ignored: name them in
# the device run's `carry` (benchmarks/gpu/whl, benchmarks/gpu/tok, benchmarks/gpu/data).
set -euo pipefail
G=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$G/../.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
[ -d "$G/whl/core" ] || bash "$G/fetch_wheels.sh" "$G/whl"
# bitsandbytes carries a binary per CUDA version: keep the CUDA 13.0 one (the image's torch is cu130)
for w in "$G"/whl/qlora/bitsandbytes-*.whl; do
  [ -f "$w" ] || continue
  tmp=$(mktemp -d) && (cd "$tmp" && unzip -q "$w" && find . -name 'libbitsandbytes_cuda*.so' ! -name '*cuda130*' -delete \
    && rm -f "$w" && zip -qr "$w" .) && rm -rf "$tmp"
done
mkdir -p "$G/tok" "$G/data"
"$PY" - "$G/tok" <<'PY'
import shutil, sys
from pathlib import Path
from gamesense.models.base import resolve_base_model
src = Path(resolve_base_model("HuggingFaceTB/SmolLM2-135M-Instruct"))
for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
    if (src / name).is_file():
        shutil.copy(src / name, Path(sys.argv[1]) / name)
print("tokenizer and config from", src)
PY
rm -rf "$G/data/viggo" && cp -r "$ROOT/../shared/datasets/viggo" "$G/data/viggo"
du -sh "$G/whl" "$G/tok" "$G/data"
