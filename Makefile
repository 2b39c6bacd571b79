# Every target is self-sufficient on a fresh machine: it creates .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: test demo bench install clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev,lmeval]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -n 2 --dist loadfile -q

clean:
	rm -rf $(VENV) build *.egg-info

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m polyalign demo --out runs/demo

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/run_all.py --size report

.PHONY: bench-quick
bench-quick: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/run_all.py --size quick
