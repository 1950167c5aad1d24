# Two entry points: `make demo` (the main job) and `make test`. Both build .venv on first use.
PY      := .venv/bin/python
PIP     := .venv/bin/pip
STAMP   := .venv/.installed
export HF_HUB_OFFLINE := 1
export WANDB_MODE ?= offline

.PHONY: venv test demo bench clean constraints

venv: $(STAMP)

# torch is pinned first so pip never pulls the multi-GB CUDA build on CPU machines.
# Every other version comes from constraints.txt (exact pins of every direct and transitive
# dependency), so two installs get the same packages; tests/test_packaging.py checks the
# venv against it. Changing constraints.txt or pyproject.toml reinstalls.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

# Move the pins on purpose (new upstream versions, a new dependency in pyproject.toml):
# resolve from scratch in a throwaway venv, without the old pins, and write its freeze
# (--all: setuptools too, torch requires it; minus pip and the editable wmplan; torch's local
# "+cpu" tag dropped so the pin matches any build of it).
# Then review `git diff constraints.txt`, run `make venv test` and commit it.
CVENV := /tmp/wmplan-constraints-venv
constraints:
	rm -rf $(CVENV)
	python3 -m venv $(CVENV)
	$(CVENV)/bin/pip install -q --upgrade pip
	$(CVENV)/bin/pip install -q torch==2.13.0
	$(CVENV)/bin/pip install -q -e ".[dev]"
	{ echo "# Exact versions of every package wmplan[dev] installs. Regenerate with \`make constraints\`."; \
	  $(CVENV)/bin/pip freeze --all --exclude pip --exclude-editable | sed -E 's/^(torch==[^+]+)\+.*/\1/'; } > constraints.txt
	rm -rf $(CVENV)

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=20 tests

demo: $(STAMP)
	$(PY) scripts/demo.py

bench: $(STAMP)
	$(PY) scripts/bench_envs.py

clean:
	rm -rf outputs .pytest_cache
