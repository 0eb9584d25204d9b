# The two commands of the README: `make demo` (the main job) and `make test`.
# Each creates .venv and installs what it needs; torch is pinned to 2.13.0 here
# (pyproject.toml keeps a range for users who bring their own).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SPEC   ?= specs/resnet152.yaml
TORCH  ?= torch==2.13.0

.PHONY: demo test test-all lint docs bench clean system-deps

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
	$(MAKE) --no-print-directory system-deps
	touch $@

# From the system's packages: examples/cpp reads manifest.json with nlohmann/json and hashes files with OpenSSL,
# and the accuracy tests read Fashion-MNIST (70,000 labelled images, MIT licence) from dataset-fashion-mnist.
# Installed with apt-get where this runs as root on Debian/Ubuntu; otherwise a note (the tests that need them then
# skip, saying what to install).
SYSTEM_PACKAGES := nlohmann-json3-dev libssl-dev dataset-fashion-mnist
system-deps:
	@if [ -f /usr/include/nlohmann/json.hpp ] && [ -f /usr/include/openssl/evp.h ] && \
	    [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  apt-get install -y -q --no-install-recommends $(SYSTEM_PACKAGES) >/dev/null || \
	  { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $(SYSTEM_PACKAGES) >/dev/null; }; \
	else echo "note: examples/cpp and the Fashion-MNIST tests need $(SYSTEM_PACKAGES) (sudo apt-get install $(SYSTEM_PACKAGES))"; fi

# Main job: validate every spec, reproduce Table 1, then compile SPEC to ONNX, verify it, and check it again.
demo: $(VENV)/.installed
	$(BIN)/resdsl check -q $$(find specs -name "*.yaml" -not -path "specs/invalid/*" | sort)
	$(BIN)/resdsl table specs/resnet18.yaml specs/resnet34.yaml specs/resnet50.yaml specs/resnet101.yaml specs/resnet152.yaml
	$(BIN)/resdsl flops $(SPEC)
	$(BIN)/resdsl compile $(SPEC) --target onnx -o build/demo --force
	$(BIN)/resdsl verify build/demo

# The suite on both cores (pytest-xdist; worksteal hands a waiting worker queued tests, so the longest ones,
# AOTInductor and C++ builds and int8 compiles, do not leave a core idle at the end). Tests marked slow run with
# `make test-all` only: ResNet-1202/1001 through ONNX, the full-size ONNX sweep of the specs whose configuration a
# smaller spec checks in `make test` (tests/test_onnx_target.py: COVERED_BY; the backbones at full size), fp16
# ONNX on ResNet-56, the Fashion-MNIST int8 checks and the full 10,000-image ones (tests/test_fashion.py), and 7 of
# the 10 torchvision/timm backbone cases (tests/test_backbones.py).
test: $(VENV)/.installed
	$(BIN)/python -m pytest -q -n 2 --dist worksteal -m "not slow"

test-all: $(VENV)/.installed
	$(BIN)/python -m pytest -q -n 2 --dist worksteal

lint: $(VENV)/.installed
	$(BIN)/ruff check resdsl tests bench cli.py
	$(BIN)/mypy
	$(BIN)/lint-imports

# The documentation site (docs/, mkdocs.yml) into build/site; --strict turns every warning (a broken link or
# anchor, a page missing from the navigation) into a failure.
docs: $(VENV)/.installed
	$(BIN)/mkdocs build --strict -d build/site

bench: $(VENV)/.installed
	$(BIN)/python bench/flops.py
	$(BIN)/python bench/ort_vs_torch.py
	$(BIN)/python bench/robustness.py

clean:
	rm -rf $(VENV) build
