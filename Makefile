# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
ALLRAY := $(VENV)/bin/allray
STAMP := $(VENV)/.installed
DEMO := demo-out

.PHONY: install demo test test-fast test-multinode bench bench-pbc clean browser lint

install: $(STAMP)

# pip (not uv/poetry): torch==2.14.1 and torchvision==0.29.1 install from this machine's disk.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The whole pipeline on synthetic data: a training cohort with truth labels, a separate cohort of
# "new" slides, ingest -> train -> infer, each step timed (jobs/demo.py; sizes measured in the README).
demo: $(STAMP)
	$(ALLRAY) demo $(DEMO)

# The report test opens report.html in headless Chromium (Debian's package); install it if we can.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ; } || \
	  echo "note: chromium could not be installed; the browser check of report.html will be skipped"

# Two pytest sessions: the multi-node fault tests start Ray clusters of their own (a head and a
# second node on this machine, killed part-way), which cannot share a process with the local Ray
# the other tests use.
test: $(STAMP) browser lint
	$(PY) -m pytest -q -m "not multinode"
	$(PY) -m pytest -q -m multinode

# ruff: the lint rules and the formatting of pyproject.toml ([tool.ruff]); `ruff format .` fixes the latter.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test-multinode: $(STAMP)
	$(PY) -m pytest -q -s -m multinode

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# Every figure of the README's table; train, infer and pipeline quality use the demo's outputs.
bench: $(STAMP)
	$(PY) benchmarks/detect_quality.py --all-seeds 1,2,3 --all-fields 3
	$(PY) benchmarks/detect_pbc.py
	$(PY) benchmarks/detect_pbc.py --um-per-pixel 0.1142
	$(PY) benchmarks/single_cell_scale.py
	$(PY) benchmarks/review_speed.py
	$(PY) benchmarks/ingest_speed.py
	test -d $(DEMO)/run || $(MAKE) demo
	$(PY) benchmarks/pipeline_quality.py $(DEMO)
	$(PY) benchmarks/train_speed.py $(DEMO)/cells --epochs 6 --seeds 2
	$(PY) benchmarks/infer_speed.py $(DEMO)/cells $(DEMO)/run
	bash benchmarks/class_quality.sh $(DEMO)/class-quality

# 5-fold cross-validation on the shared PBC cells (hours on 2 cores: LeNet and ResNet-18; a GPU helps).
bench-pbc: $(STAMP)
	$(ALLRAY) ingest ../shared/data/pbc --out $(DEMO)/pbc-cells
	$(PY) benchmarks/pbc_cv.py $(DEMO)/pbc-cells --arch lenet
	$(PY) benchmarks/pbc_cv.py $(DEMO)/pbc-cells --arch resnet18
	$(PY) benchmarks/pbc_holdout.py $(DEMO)/pbc-holdout

clean:
	rm -rf $(DEMO) .pytest_cache
