# `make demo` and `make test` do all the set-up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
TEST_STAMP := $(VENV)/.test-installed-stamp
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt

.PHONY: install browser demo test test-fast lint format bench clean

install: $(TEST_STAMP)

# torch is installed first and pinned, so that nothing pulls a CUDA build. The demo needs
# only the package; the tests, linters and benchmarks add the `test` extras. Python
# compiles each module when it is first imported rather than pip compiling all of them
# (--no-compile): the installation takes half the time.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --no-compile torch==2.13.0
	$(BIN)/python -m pip install --quiet --no-compile -e .
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --no-compile -e '.[test]'
	touch $(TEST_STAMP)

demo: $(STAMP)
	$(BIN)/weaklesion demo

# The report's test renders the page in headless Chromium: install Debian's package where
# this runs as root with apt-get; elsewhere the test says it was skipped and why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1; } \
		|| echo "chromium is not installed here: the report's browser test will be skipped"

test: $(TEST_STAMP) browser
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/python -m pytest src tests

# The same without the tests marked slow (training, end-to-end commands): seconds, not minutes.
test-fast: $(TEST_STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/python -m pytest src tests -m "not slow"

lint: $(TEST_STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(TEST_STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

bench: $(TEST_STAMP)
	$(BIN)/python -m benchmarks.run_all

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .ruff_cache
