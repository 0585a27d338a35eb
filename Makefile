# cbir_lightning: `make demo` trains and evaluates the Koch net on Omniglot; `make test` runs the tests.
# Both create .venv (Python 3.11) if it is missing. Data comes from ../shared/data when present,
# otherwise from the official release.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
SHARED := ../shared/data

.PHONY: demo test venv data lint bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[dev]"
	@touch $@

data: data/omniglot/.ready

data/omniglot/.ready: | venv
	@mkdir -p data/omniglot
	@if [ -d $(SHARED)/omniglot ]; then \
		cp $(SHARED)/omniglot/images_background_small*.zip data/omniglot/; \
	else \
		$(BIN)/cbir-lightning download --dataset omniglot --root data/omniglot; \
	fi
	@touch $@

demo: venv data
	$(BIN)/cbir-lightning fit --config configs/omniglot_koch.yaml

test: venv
	@$(BIN)/python -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: that is a failure"; exit 1; fi; exit $$rc

lint: venv
	$(BIN)/ruff check .

bench: venv
	$(BIN)/python benchmarks/lightning_overhead.py

clean:
	rm -rf runs wandb lightning_logs .pytest_cache
