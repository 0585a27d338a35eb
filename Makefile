# cbir_lightning: `make demo` trains and evaluates the Koch net on Omniglot; `make test` runs the tests and
# builds the documentation site strictly (`make test-unit`: only the fast unit tier; `make docs`: only the site).
# Both create .venv (Python 3.11) if it is missing. Data comes from ../shared/data when present,
# otherwise from the official release.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
SHARED := ../shared/data

.PHONY: demo oneshot test test-unit docs venv data lint bench clean chromium

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[dev]"
	@touch $@

data: data/omniglot/.ready data/cifar10/.ready data/stanford_dogs/.ready data/wikiart_pd/.ready data/landmarks/.ready

data/omniglot/.ready: | venv
	@mkdir -p data/omniglot
	@if [ -d $(SHARED)/omniglot ]; then \
		cp $(SHARED)/omniglot/images_background_small*.zip data/omniglot/; \
	else \
		$(BIN)/cbir-lightning download --dataset omniglot --root data/omniglot; \
	fi
	@touch $@

# CIFAR-10 subset (configs/cifar10_*.yaml) when the shared copy exists; otherwise those configs can fetch
# torchvision's CIFAR-10 with --data.init_args.download true. The demo needs only Omniglot.
data/cifar10/.ready:
	@if [ -d $(SHARED)/cifar10 ]; then \
		mkdir -p data/cifar10 && cp -r $(SHARED)/cifar10/train $(SHARED)/cifar10/test data/cifar10/ && touch $@; \
	else \
		echo "no $(SHARED)/cifar10: CIFAR-10 configs need --data.init_args.download true"; \
	fi

# Stanford Dogs in the release layout (Images/, Annotation/, lists/): the shared 60-breed subset, or the
# official release (about 780 MB) through `cbir-lightning download`.
data/stanford_dogs/.ready: | venv
	@if [ -d $(SHARED)/stanford_dogs ]; then \
		mkdir -p data/stanford_dogs && cp -r $(SHARED)/stanford_dogs/. data/stanford_dogs/; \
	else \
		$(BIN)/cbir-lightning download --dataset stanford_dogs --root data/stanford_dogs; \
	fi
	@touch $@

# Public-domain paintings (<artist>/<file>.jpg + labels.tsv: path, style, artist) for configs/wikiart_*.yaml.
# WikiArt has no small official release: elsewhere, put any such folder (or your own collection) there.
data/wikiart_pd/.ready:
	@if [ -d $(SHARED)/wikiart_pd ]; then \
		mkdir -p data/wikiart_pd && cp -r $(SHARED)/wikiart_pd/. data/wikiart_pd/ && touch $@; \
	else \
		echo "no $(SHARED)/wikiart_pd: put <artist>/<file>.jpg and labels.tsv (path, style, artist) in data/wikiart_pd"; \
	fi

# Landmark photos (10 Oxford5k photos, 10 Sacre Coeur distractors, the Oxford/Paris ground-truth pickles) for
# configs/landmarks_efficientnet_rmac.yaml and notebooks/landmarks.ipynb. The full sets: `cbir-lightning download
# --dataset roxford5k --root data/landmarks`.
data/landmarks/.ready:
	@if [ -d $(SHARED)/landmarks ]; then \
		mkdir -p data/landmarks && cp -r $(SHARED)/landmarks/. data/landmarks/ && touch $@; \
	else \
		echo "no $(SHARED)/landmarks: get the full sets with cbir-lightning download --dataset roxford5k --root data/landmarks"; \
	fi

# The demo (docs/experiments/omniglot.md): configs/omniglot_best.yaml, the Koch net on every character of the
# small background sets, trained with seeds 0 and 1 at once (one thread each; logs in runs/omniglot_best-seed*.log),
# packed into one ensemble checkpoint (runs/omniglot_best/ensemble.ckpt: the two nets' mean score) and evaluated
# on the held-out drawers. `make oneshot RUNS=all_runs.zip` scores that checkpoint on Lake's official runs
# (github.com/brendenlake/omniglot, python/one-shot-classification/all_runs.zip). SEEDS="0 1 2" trains three
# members (two or more; a third added nothing on the leave-one-alphabet-out folds, docs/experiments/omniglot.md).
DEMO := runs/omniglot_best
SEEDS := 0 1
ENSEMBLE := $(DEMO)/ensemble.ckpt
comma := ,
demo: venv data/omniglot/.ready
	@mkdir -p $(DEMO); echo "training seeds $(SEEDS) of configs/omniglot_best.yaml at once (logs: $(DEMO)-seed*.log)"; \
	for s in $(SEEDS); do \
		OMP_NUM_THREADS=1 $(BIN)/cbir-lightning fit --config configs/omniglot_best.yaml --seed_everything $$s \
			--trainer.default_root_dir $(DEMO)/seed$$s > $(DEMO)-seed$$s.log 2>&1 & pids="$$pids $$!"; \
	done; ok=0; for pid in $$pids; do wait $$pid || ok=1; done; \
	for s in $(SEEDS); do echo "seed $$s: $$(tail -n 1 $(DEMO)-seed$$s.log)"; done; \
	if [ $$ok -ne 0 ]; then echo "a fit failed: see $(DEMO)-seed*.log"; exit 1; fi
	$(BIN)/cbir-lightning ensemble --overwrite true --out $(ENSEMBLE) \
		--ckpt "[$(subst $() ,$(comma) ,$(foreach s,$(SEEDS),$(DEMO)/seed$(s)/checkpoints/last.ckpt))]"
	$(BIN)/cbir-lightning evaluate --config configs/omniglot_best.yaml --ckpt $(ENSEMBLE) --trainer.logger false
	@echo "score it on Lake's official runs: make oneshot RUNS=all_runs.zip"

oneshot: venv
	@test -n "$(RUNS)" || { echo "set RUNS to Lake's all_runs folder or zip: make oneshot RUNS=all_runs.zip"; exit 2; }
	$(BIN)/cbir-lightning oneshot --runs $(RUNS) --ckpt $(ENSEMBLE)

# Two pytest workers (pytest-xdist): most integration tests wait on one CLI subprocess, so one worker alone
# leaves a core idle; each worker and the processes it starts use one thread (tests/conftest.py).
TEST_WORKERS ?= 2

test: venv chromium docs
	@$(BIN)/lint-imports --no-cache > .lint-imports.log 2>&1 || { cat .lint-imports.log; echo "lint-imports: a layer contract is broken (pyproject.toml [tool.importlinter])"; exit 1; }
	@echo "lint-imports: $$(grep -c KEPT .lint-imports.log) layer contracts kept"; rm -f .lint-imports.log
	@$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal -m "not slow" --durations=15; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: that is a failure"; exit 1; fi; exit $$rc

# The fast tier: every test outside tests/integration/ (no CLI subprocesses, fits, DDP, notebook, benchmarks).
test-unit: venv
	@$(BIN)/python -m pytest -q -m "not integration" --durations=10; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: that is a failure"; exit 1; fi; exit $$rc

# The documentation site (mkdocs.yml, docs/) into the git-ignored site/, strictly: a broken link or anchor, a page
# missing from the nav or a nav entry without its page fails. (mkdocs's -q would hide those warnings from --strict,
# so the output is shown only on failure.)
docs: venv
	@out=$$(NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -d site 2>&1) || \
		{ echo "$$out"; echo "docs: mkdocs build --strict failed"; exit 1; }; echo "docs: site/ built strictly"

# Headless Chromium for the web page's end-to-end test (tests/integration/test_web.py skips without it):
# installed from Debian when missing and we are root; otherwise skipped quietly.
chromium:
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
		|| echo "could not install chromium: tests/integration/test_web.py will skip its browser test"; \
	fi

lint: venv
	$(BIN)/ruff check .

bench: venv data
	$(BIN)/python -m pytest -q -m slow  # the benchmark scripts' slow end-to-end checks (kept out of make test)
	$(BIN)/python benchmarks/lightning_overhead.py

clean:
	rm -rf runs wandb lightning_logs .pytest_cache site
