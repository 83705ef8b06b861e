# Strata: `make run` trains the embedded default job; `make test` runs the test suite.
# Both create .venv and install Strata into it first, with the exact versions in constraints.txt.
#
# TORCH_SPEC chooses the PyTorch build. The default is the CPU build these machines install
# from local disk in seconds; on a GPU machine use e.g.
#   make run TORCH_SPEC="torch==2.13.0 --extra-index-url https://download.pytorch.org/whl/cu128"
# The lock pins the torch release (2.13.0), not the build: any +cpu/+cuXXX build of it satisfies it.
#
# make lock         re-resolve the newest releases pyproject.toml allows and rewrite constraints.txt
# make test-latest  run the suite on the newest releases, ignoring the lock, in .venv-latest
# make test-floor   run the suite on the lowest releases pyproject.toml allows, in .venv-floor (uv)
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
LOCK ?= constraints.txt
EXTRAS ?= dev,quant
BIN := $(VENV)/bin
STAMP := $(VENV)/.strata-installed
PIP_QUIET := --quiet --disable-pip-version-check

.PHONY: setup run test lint bench compare lock test-latest test-floor clean

# The lock pins pip, setuptools and wheel too, and the editable install builds without isolation,
# so no step of the install resolves a version on its own.
$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install $(PIP_QUIET) -c $(LOCK) pip setuptools wheel
	$(BIN)/python -m pip install $(PIP_QUIET) -c $(LOCK) $(TORCH_SPEC)
	$(BIN)/python -m pip install $(PIP_QUIET) -c $(LOCK) --no-build-isolation -e ".[$(EXTRAS)]"
	$(BIN)/python tools/lock.py check $(LOCK)
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/strata train

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest tests

lint: $(STAMP)
	$(BIN)/ruff check .

# The stratified comparison of docs/results/ (issue 16): ~70-90 minutes on 2 CPU cores, resumable.
COMPARE_DIR ?= runs/compare_multidomain
compare: $(STAMP)
	HF_HUB_OFFLINE=1 STRATA_HUB_MIRROR=$${STRATA_HUB_MIRROR:-../shared/hub} $(BIN)/strata compare \
	  --mixture multidomain --holdout takala/financial_phrasebank \
	  --variants none,attention,routing,layers,moe --controls dense_matched,flops_matched,hash --seeds 5 \
	  --model_size tiny --lr_sweep 1e-3,2e-3,4e-3 --train_tokenizer bpe:2048 --use_packing --mixture_size 80000 \
	  --max_length 128 --per_device_train_batch_size 16 --max_steps 1000 --max_eval_examples 3000 \
	  --eval_steps 0 --logging_steps 20 --precision fp32 --device cpu --diagnostics --jobs 2 \
	  --output_dir $(COMPARE_DIR) --report_dir docs/results

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_packing.py
	$(BIN)/python benchmarks/bench_ttt.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/bench_sft.py

# A fresh venv with no constraints: pip takes the newest release of everything pyproject.toml allows
# (torch stays TORCH_SPEC: the newest torch on PyPI is a multi-GB CUDA build).
define unlocked-venv
	rm -rf $(1)
	$(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install $(PIP_QUIET) --upgrade pip setuptools wheel
	$(1)/bin/python -m pip install $(PIP_QUIET) $(TORCH_SPEC)
endef

lock:
	$(call unlocked-venv,.venv-lock)
	.venv-lock/bin/python -m pip install $(PIP_QUIET) -e ".[dev,quant]"
	.venv-lock/bin/python tools/lock.py write $(LOCK)
	rm -rf .venv-lock
	@echo "now run: make clean test   (the suite must pass on the new lock before you commit it)"

test-latest:
	$(call unlocked-venv,.venv-latest)
	.venv-latest/bin/python -m pip install $(PIP_QUIET) -e ".[$(EXTRAS)]"
	.venv-latest/bin/python tools/lock.py diff $(LOCK)
	HF_HUB_OFFLINE=1 .venv-latest/bin/python -m pytest tests

# uv's lowest-direct resolution: each direct dependency at its floor, the rest as it resolves.
# torch is held at TORCH_SPEC (installed by pip, which finds the local CPU build; uv would not).
test-floor:
	rm -rf .venv-floor
	$(PYTHON) -m venv .venv-floor
	.venv-floor/bin/python -m pip install $(PIP_QUIET) $(TORCH_SPEC) uv
	.venv-floor/bin/python -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > .venv-floor/torch.txt
	.venv-floor/bin/uv pip install --quiet --python .venv-floor/bin/python --resolution lowest-direct \
		-c .venv-floor/torch.txt -e ".[$(EXTRAS)]"
	.venv-floor/bin/python tools/lock.py diff $(LOCK)
	HF_HUB_OFFLINE=1 .venv-floor/bin/python -m pytest tests

clean:
	rm -rf $(VENV) .venv-lock .venv-latest .venv-floor build *.egg-info src/*.egg-info .pytest_cache .ruff_cache
