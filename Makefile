# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
ALLRAY := $(VENV)/bin/allray
STAMP := $(VENV)/.installed
DEMO := demo-out

.PHONY: install demo test test-fast bench clean

install: $(STAMP)

# pip (not uv/poetry): torch==2.14.1 and torchvision==0.29.1 install from this machine's disk.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(ALLRAY) synth $(DEMO)/synthetic --patients 8 --images-per-patient 6 --seed 7
	$(ALLRAY) ingest $(DEMO)/synthetic/slides --out $(DEMO)/cells --labels $(DEMO)/synthetic/truth/cells.csv
	@echo
	@echo "demo outputs: $(DEMO)/synthetic (slides + truth), $(DEMO)/cells (Parquet cells, quarantine, summary.json)"

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	$(PY) benchmarks/detect_quality.py
	$(PY) benchmarks/ingest_speed.py

clean:
	rm -rf $(DEMO) .pytest_cache
