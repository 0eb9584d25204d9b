# The two commands of the README: `make demo` (the main job) and `make test`.
# Each creates .venv and installs what it needs; torch is pinned to 2.13.0 here
# (pyproject.toml keeps a range for users who bring their own).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SPEC   ?= specs/resnet152.yaml
TORCH  ?= torch==2.13.0

.PHONY: demo test test-all lint bench clean cpp-deps

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e '.[dev]'
	if $(BIN)/python -c 'import platform, sys; sys.exit(not (sys.platform == "linux" and platform.machine() == "x86_64" and sys.version_info[:2] == (3, 11)))'; then \
	  for v in 10.0.1 10.16.1.11; do \
	    $(BIN)/python -m pip install -q --no-deps --upgrade --target $(VENV)/trt-bindings/$$v "tensorrt_cu12_bindings==$$v" || exit 1; \
	  done; \
	fi
	$(MAKE) --no-print-directory cpp-deps
	touch $@

# examples/cpp reads manifest.json with nlohmann/json and hashes files with OpenSSL: their headers come from the
# system's packages. Installed with apt-get where this runs as root on Debian/Ubuntu; otherwise a note (the C++
# test then skips, saying what to install).
cpp-deps:
	@if [ -f /usr/include/nlohmann/json.hpp ] && [ -f /usr/include/openssl/evp.h ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  apt-get install -y -q --no-install-recommends nlohmann-json3-dev libssl-dev >/dev/null || \
	  { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends nlohmann-json3-dev libssl-dev >/dev/null; }; \
	else echo "note: examples/cpp needs nlohmann-json3-dev and libssl-dev (sudo apt-get install nlohmann-json3-dev libssl-dev)"; fi

# Main job: validate every spec, reproduce Table 1, then compile SPEC to ONNX, verify it, and check it again.
demo: $(VENV)/.installed
	$(BIN)/resdsl check -q $$(find specs -name "*.yaml" -not -path "specs/invalid/*" | sort)
	$(BIN)/resdsl table specs/resnet18.yaml specs/resnet34.yaml specs/resnet50.yaml specs/resnet101.yaml specs/resnet152.yaml
	$(BIN)/resdsl flops $(SPEC)
	$(BIN)/resdsl compile $(SPEC) --target onnx -o build/demo --force
	$(BIN)/resdsl verify build/demo

# The suite on both cores (pytest-xdist). Tests marked slow run with `make test-all` only: ResNet-1202/1001
# through ONNX, the full-size ONNX sweep of the specs whose configuration a smaller spec checks in `make test`
# (tests/test_onnx_target.py: COVERED_BY), fp16 ONNX on ResNet-56.
test: $(VENV)/.installed
	$(BIN)/python -m pytest -q -n 2 -m "not slow"

test-all: $(VENV)/.installed
	$(BIN)/python -m pytest -q -n 2

lint: $(VENV)/.installed
	$(BIN)/ruff check resdsl tests bench cli.py
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: $(VENV)/.installed
	$(BIN)/python bench/flops.py
	$(BIN)/python bench/ort_vs_torch.py
	$(BIN)/python bench/robustness.py

clean:
	rm -rf $(VENV) build
