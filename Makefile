# Two entry points for people: `make demo` and `make test`. Both create the
# virtualenv on first use and re-install when pyproject.toml or constraints.txt change.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo_out
DEMO_SEED ?= 0
DEMO_IMAGES ?= 600

.PHONY: demo test lint bench clean venv bazel-test

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) tools/demo.py --out $(DEMO_OUT) --seed $(DEMO_SEED) --images $(DEMO_IMAGES)

test: $(STAMP)
	$(PY) -m pytest -n 2 --durations=15

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) benchmarks/bench_labels.py
	$(PY) benchmarks/bench_records.py
	$(PY) benchmarks/bench_metric.py
	$(PY) benchmarks/bench_submission.py

# Bazel (Debian's offline bazel-bootstrap) over the same tests; pytest via
# `make test` stays what CI runs. See third_party/bazel/README.md.
BAZEL_DEBS := bazel-bootstrap bazel-rules-java bazel-platforms
bazel-test: $(STAMP)
	dpkg -s $(BAZEL_DEBS) >/dev/null 2>&1 || { apt-get update && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y $(BAZEL_DEBS); }
	bazel test //...

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
