# `make demo` and `make test` work on a fresh clone: they build .venv first
# (again only when pyproject.toml changes).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint chromium bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m spermhead.demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

# Debian's Chromium for the browser test; where it cannot be installed the test skips and says why.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
	  || echo "chromium could not be installed: the browser test will be skipped"; }

# Two workers, one training thread each (tests/test_training.py: quick_config): the suite's
# training runs are single-threaded, so a 2-core machine runs two at once.
test: $(STAMP) chromium lint
	$(BIN)/python -m pytest -q -n 2

# Speed benchmarks (results go into benchmarks/RESULTS.md by hand, with the date and machine).
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_preprocess.py
	$(BIN)/python benchmarks/bench_models.py
	$(BIN)/python benchmarks/bench_predict.py
	$(BIN)/python benchmarks/bench_http.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
