# The two commands a newcomer runs: `make test` and `make demo`. Each sets itself up.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: gpu-check install test lint typecheck demo bench bench-reduced clean browser lungs-weights

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,dali,ray,openvino]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check sdfn_bench tests

# mypy ([tool.mypy] in pyproject.toml) on the statistics, scoring, engines, CAMs and the notebook API.
TYPECHECKED := sdfn_bench/stats sdfn_bench/score sdfn_bench/engines sdfn_bench/cam sdfn_bench/api.py sdfn_bench/core
typecheck: $(STAMP)
	$(BIN)/mypy $(TYPECHECKED)

# Debian's Chromium for the browser test of the report pages (tests/test_gallery_browser.py); installed
# only when missing. Where it cannot be installed (no root, no apt) that test skips and says why.
browser:
	@test -x /usr/bin/chromium || { apt-get update -qq && apt-get install -y -qq chromium; } \
		|| echo "chromium could not be installed: tests/test_gallery_browser.py will skip"

test: $(STAMP) lint typecheck browser
	$(BIN)/pytest -q

demo: $(STAMP)
	$(BIN)/sdfn-bench demo

bench: $(STAMP)
	$(BIN)/sdfn-bench bench

# Reduced precision behind the accuracy gate at the paper's geometry (docs/performance.md). The gate's
# lung-box agreement needs a trained segmenter (a random U-Net's boxes move under any rounding), so
# this first trains one with the paper preset on 320 synthetic images (seed 7: not the bench's
# images, seed 0, nor its int8 calibration images, seed 1); 9 epochs, ~60 min on 2 cores, kept in
# build/paper-segmenter and reused (an interrupted training resumes; a finished one is a no-op).
# Then one bench run with --precision auto (~5 min on an idle 2-core CPU).
PAPER_SEG := build/paper-segmenter
PAPER_SEG_EPOCHS ?= 9
bench-reduced: $(STAMP)
	test -f $(PAPER_SEG)/cohort/seg_val.csv || $(BIN)/sdfn-bench synth --out $(PAPER_SEG)/cohort --n 320 --size 1024 --seed 7 --overwrite
	$(BIN)/sdfn-bench train segmenter --manifest $(PAPER_SEG)/cohort/seg_train.csv \
		--val $(PAPER_SEG)/cohort/seg_val.csv --out $(PAPER_SEG)/ckpt --preset paper \
		--epochs $(PAPER_SEG_EPOCHS) --device cpu --resume
	$(BIN)/sdfn-bench bench --precision auto --images 24 --segmenter $(PAPER_SEG)/ckpt/segmenter

# Retrain the shipped real-film lung segmenter builtin:lungs (docs/models/lungs.md): JSRT + Shenzhen
# lung masks (../shared/data/real-lungs, or REAL_LUNGS=...), the lungs preset, fp16 storage into the
# package; prints the sha256 to record in sdfn_bench/weights/__init__.py. ~30 min on 2 idle Zen 4 cores.
REAL_LUNGS ?= ../shared/data/real-lungs
LUNGS := build/lungs
LUNGS_ROOT := $(abspath $(REAL_LUNGS)/../../..)
lungs-weights: $(STAMP)
	$(BIN)/sdfn-bench manifest seg --images $(REAL_LUNGS)/jsrt/images --masks $(REAL_LUNGS)/jsrt/masks \
		--images $(REAL_LUNGS)/shenzhen/images --masks $(REAL_LUNGS)/shenzhen/masks \
		-o $(LUNGS)/all.csv --root $(LUNGS_ROOT)
	$(BIN)/sdfn-bench train segmenter --manifest $(LUNGS)/all.csv --image-root $(LUNGS_ROOT) --preset lungs \
		--device cpu --out $(LUNGS)/final --resume
	$(BIN)/python -c "from sdfn_bench.weights import pack_checkpoint; \
		print('sha256', pack_checkpoint('$(LUNGS)/final/segmenter', 'sdfn_bench/weights/lungs'))"

# One call on a GPU machine (target: < 8 min on one H100; never run yet, no GPU has been lent): gpu tests, torch-CUDA (+TensorRT) engines in
# fp32/fp16, synthetic images through `score`, reports/bench/gpu-<UTC>.json and a summary table.
# No install step: the GPU machine has no network, so it runs from the source tree (the venv's
# python when there is one). Exit status 2 = refused, no CUDA GPU (nothing run or written).
GPU_PYTHON ?= $(shell test -x $(BIN)/python && echo $(BIN)/python || echo $(PYTHON))
gpu-check:
	PYTHONPATH=$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} $(GPU_PYTHON) -m sdfn_bench.cli.gpu_check

clean:
	rm -rf $(VENV) build *.egg-info
