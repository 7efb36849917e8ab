# Two commands do all the set-up on a fresh machine:
#   make run   - create .venv, install, then run the main job (the demo: ingest + search)
#   make test  - create .venv, install, then lint, type-check and run the default test suite
# The venv is (re)built only when pyproject.toml changes.

PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch first, so pip takes the local wheels where a machine has them (docs/architecture.md, "Tests and the environment").
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP  := $(VENV)/.installed

.PHONY: run test lint bench bench-gpu install clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[dev,distributed]'
	touch $(STAMP)

# The reference Visualized BGE implementation (FlagEmbedding 1.2.11's Python files), used only
# by the equivalence test; PyPI's sdist is the last release that ships it.
FE_SDIST := .cache/FlagEmbedding-1.2.11.tar.gz
$(FE_SDIST): | $(STAMP)
	$(PY) -m pip download -q --no-deps --no-binary :all: FlagEmbedding==1.2.11 -d .cache

# A real C++ Milvus for the server-path tests (tests/cpp_milvus.py): the engine milvus-lite 2.5.1
# ships, installed next to the project's environment (which keeps milvus-lite 3.x). Where pip has
# no wheel for this platform, those tests are skipped and say why.
CPP_MILVUS := .cache/milvus-lite-2.5.1/milvus_lite/lib/milvus
$(CPP_MILVUS): | $(STAMP)
	$(PY) -m pip install -q --no-deps --target .cache/milvus-lite-2.5.1 milvus-lite==2.5.1 \
		|| echo "milvus-lite 2.5.1 not installable here: the server-path tests will be skipped"

install: $(STAMP) $(FE_SDIST) $(CPP_MILVUS)

run: $(STAMP)
	$(VENV)/bin/mmsearch demo

lint: $(STAMP)
	$(PY) -m ruff check rag ingestion prompts tests benchmarks scripts
	$(PY) -m mypy

test: lint $(FE_SDIST) $(CPP_MILVUS)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) -m benchmarks

# The GPU numbers in one command (on a machine without CUDA it says so and exits 0).
bench-gpu: $(STAMP)
	$(PY) -m benchmarks gpu

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
