# Two commands: `make demo` and `make test`. Both set up .venv first when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Real data shipped beside this checkout (never committed); users elsewhere set their own.
SHARED_DATA := $(abspath $(wildcard ../shared/data))
ifneq ($(SHARED_DATA),)
export SMALLMED_DATA_DIR ?= $(SHARED_DATA)
endif
# Two CPU cores are the target machine: don't oversubscribe them.
export OMP_NUM_THREADS ?= 2

.PHONY: setup demo test clean

# what the demo needs (the package and PEFT for LoRA); the tests add every optional extra on top
$(VENV)/.core: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned: this machine's pip takes these two from local disk (~90 s).
	$(BIN)/pip install torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -e '.[peft]'
	touch $@

setup: $(VENV)/.installed

$(VENV)/.installed: $(VENV)/.core
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.core
	$(BIN)/smallmed demo

# one pytest worker per core (pytest-xdist, idle workers steal queued tests), one torch thread per worker:
# tiny models scale badly over threads
test: setup
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -n auto --dist worksteal

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache
