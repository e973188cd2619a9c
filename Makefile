# mclip_hbt — the two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch/torchvision releases that this project is tested with (CPU machines take them from a
# local wheel cache); pyproject.toml itself only declares ranges.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=
# Test processes: two overlap one test's waits (subprocess start-up, stall timeouts) with another's work on 2 cores;
# a file's tests stay in one worker, so its module fixtures are built once.
TEST_WORKERS ?= 2
DEMO_ARGS ?=

.PHONY: venv test lint demo sweep search clean

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e '.[test,offline,search]'
	@touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# ruff with the settings in pyproject.toml (line length, rule set); CI runs it before the tests.
lint: venv
	$(VENV)/bin/ruff check .

# The main job on the embedded default (the emoji world + the bundled offline encoder), runs/demo/;
# DEMO_ARGS="--world synth" runs it on synth_scenes.
demo: venv
	HF_HUB_OFFLINE=1 $(PY) demo.py run $(DEMO_ARGS)

# alpha in {0, 0.25, 0.5, 0.75, 1} x 3 seeds on the emoji world, same data and budget, every language scored,
# then eval.report with the language x alpha heat map and the gain scatter (runs/sweep/).
SWEEP_ARGS ?=
sweep: venv
	HF_HUB_OFFLINE=1 $(PY) demo.py sweep $(SWEEP_ARGS)

# The search page on the demo's model (trained first if absent) over the emoji world's test_seen pictures:
# index them (again: only what changed), then serve http://127.0.0.1:8000 (SEARCH_ARGS="--port 8080" for another).
SEARCH_ARGS ?=
search: demo
	HF_HUB_OFFLINE=1 $(PY) -m mclip_hbt.search index runs/data/emoji/test_seen/images --model runs/demo/model \
		--out runs/search/emoji-test_seen
	HF_HUB_OFFLINE=1 $(PY) -m mclip_hbt.search serve runs/search/emoji-test_seen $(SEARCH_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
