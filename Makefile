# flightdeck — `make run` serves the example app, `make test` runs the whole suite.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYENV_ROOT ?= $(HOME)/.pyenv
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: memcheck
.PHONY: format-c run test test-all test-versions lint typecheck pytest pytest-pure soak bench bench-native bench-http bench-instr bench-capture clean

# One line after each install: which recording core the install has (pip -q hides setup.py's).
export CORE_LINE := from flightdeck.core.cores import CORE; print("flightdeck: native core built" if CORE == "native" else "flightdeck: native extension not built (no working C compiler, or FLIGHTDECK_NO_EXTENSIONS set): using the pure-Python core")

$(STAMP): pyproject.toml setup.py $(wildcard flightdeck/*/*.c flightdeck/*/*.h flightdeck/core/native/*.h)
	@test -n "$(PYTHON)" && command -v $(PYTHON) >/dev/null 2>&1 || { echo "python3.11 not found; set PYTHON=/path/to/python3.11+"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@$(PY) -c "$$CORE_LINE"
	touch $(STAMP)

# `make run` installs only what serving the example needs (the `example` extra); `make test`
# adds the development tools to the same venv.
RUN_STAMP := $(VENV)/.installed-run

$(RUN_STAMP): pyproject.toml setup.py $(wildcard flightdeck/*/*.c flightdeck/*/*.h flightdeck/core/native/*.h)
	@test -n "$(PYTHON)" && command -v $(PYTHON) >/dev/null 2>&1 || { echo "python3.11 not found; set PYTHON=/path/to/python3.11+"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[example]'
	@$(PY) -c "$$CORE_LINE"
	touch $(RUN_STAMP)

run: $(RUN_STAMP)
	@echo "the CLI: $(VENV)/bin/flightdeck (or: source $(VENV)/bin/activate)"
	$(VENV)/bin/uvicorn --app-dir examples/fastapi_app app:app --host $(HOST) --port $(PORT)

lint: $(STAMP)
	$(VENV)/bin/ruff check flightdeck tests examples benchmarks tools
	$(VENV)/bin/ruff format --check flightdeck tests examples benchmarks tools
	$(VENV)/bin/lint-imports
	$(VENV)/bin/clang-format --dry-run --Werror $(C_SOURCES)

# The C sources in the one style of .clang-format.
C_SOURCES := flightdeck/core/_native.c $(wildcard flightdeck/core/native/*.h) flightdeck/asgi/_casgi.c
format-c: $(STAMP)
	$(VENV)/bin/clang-format -i $(C_SOURCES)

typecheck: $(STAMP)
	$(VENV)/bin/mypy flightdeck

# The native run: EXPECT_NATIVE=1 makes a test skipped because the extension is not built
# fail instead (tests/conftest.py); EXPECT_NATIVE=0 runs it on whatever core there is. On by
# default where there is a working C compiler (one that compiles a one-line program: a build
# that fails there is a bug); without one (or with CC=false) the extension is skipped by
# design and the suite runs on the pure core.
EXPECT_NATIVE ?= $(shell printf 'int main(void){return 0;}' | $${CC:-cc} -x c - -o /dev/null >/dev/null 2>&1 && echo 1 || echo 0)
pytest: $(STAMP)
	FLIGHTDECK_EXPECT_NATIVE=$(EXPECT_NATIVE) $(PY) -m pytest -q

test: lint typecheck pytest

# The native tests under valgrind memcheck (PYTHONMALLOC=malloc): fails on any invalid access
# or definite leak whose stack goes through _casgi (the request path) or _native (the core).
memcheck: $(STAMP)
	@command -v valgrind >/dev/null 2>&1 || { echo "valgrind not found: apt-get install valgrind"; exit 1; }
	$(PY) tests/memcheck.py _casgi tests/asgi/test_casgi.py tests/system/test_middleware_contract.py
	FLIGHTDECK_HYPOTHESIS_EXAMPLES=25 $(PY) tests/memcheck.py _native tests/native tests/snapshot/test_native_builder.py

# The suite with the extension ignored at import: the pure-Python core.
pytest-pure: $(STAMP)
	FLIGHTDECK_NO_EXTENSIONS=1 FLIGHTDECK_EXPECT_NATIVE=0 $(PY) -m pytest -q

# The suite on every supported interpreter (each in its own venv; a missing one is
# skipped), then once more on the pure-Python core.
test-all: test test-versions pytest-pure

# The native suite on Python 3.12 and 3.13 (each in its own venv; a missing one is skipped).
test-versions:
	@for v in 3.12 3.13; do \
	  exe=$$(ls -d $(PYENV_ROOT)/versions/$$v.*/bin/python 2>/dev/null | tail -1); \
	  [ -z "$$exe" ] && exe=$$(command -v python$$v || true); \
	  if [ -z "$$exe" ]; then echo "== Python $$v not found: skipped"; continue; fi; \
	  echo "== Python $$v ($$exe)"; \
	  $(MAKE) --no-print-directory pytest PYTHON=$$exe VENV=.venv-$$v || exit 1; \
	done

soak: $(STAMP)
	$(PY) -m pytest -q -m soak -p no:cacheprovider -o addopts=""

bench: $(STAMP)
	$(PY) benchmarks/bench_recorder.py
	$(PY) benchmarks/bench_loop.py

# The native core's figures: ns per event (from C), bytes per event, decoding rate, memory bound.
bench-native: $(STAMP)
	$(PY) benchmarks/bench_native.py

bench-capture: $(STAMP)
	$(PY) benchmarks/bench_capture.py

bench-http: $(STAMP)
	@command -v wrk >/dev/null 2>&1 || { echo "installing wrk (Debian package) for the load runs"; \
	  (apt-get update -qq && apt-get install -y -qq wrk >/dev/null) || \
	  { echo "wrk not found and could not be installed: apt-get install wrk"; exit 1; }; }
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) benchmarks/bench_http.py

# Instructions per request under callgrind (load-independent): flightdeck vs bare.
bench-instr: $(STAMP)
	@command -v valgrind >/dev/null 2>&1 || { echo "valgrind not found: apt-get install valgrind"; exit 1; }
	$(PY) benchmarks/bench_instr.py --layouts 3

clean:
	rm -rf .venv .venv-3.12 .venv-3.13 .mypy_cache .ruff_cache .pytest_cache
