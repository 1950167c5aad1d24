# Two entry points: `make demo` (the main job) and `make test`. Both build .venv on first use.
PY      := .venv/bin/python
PIP     := .venv/bin/pip
STAMP   := .venv/.installed
export HF_HUB_OFFLINE := 1
export WANDB_MODE ?= offline

.PHONY: venv test demo bench clean

venv: $(STAMP)

# torch is pinned first so pip never pulls the multi-GB CUDA build on CPU machines.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile tests

demo: $(STAMP)
	$(PY) scripts/demo.py

bench: $(STAMP)
	$(PY) scripts/bench_envs.py

clean:
	rm -rf outputs .pytest_cache
