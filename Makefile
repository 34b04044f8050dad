# progress-stream: every target uses the virtual environment that `make install` creates in .venv/.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PROGRESS := $(BIN)/progress
ANNOTATIONS ?= ../shared/data/egoprocel.json
SPARSE_STRIDE ?= 8
DENSE_STRIDE ?= 3
VARIANTS := default relative none

.PHONY: install test lint data train eval report model verify bench-step serve bench-serve loadtest \
	images compose-up compose-up-gpu compose-config cluster-smoke loadtest-proxy clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[train,dev]'
	touch $@

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: install lint
	$(BIN)/pytest

# --- training ---------------------------------------------------------------------------
data/synth-s%/annotations.json: | install
	$(PROGRESS) synth --annotations $(ANNOTATIONS) --out data/synth-s$* --stride $*

data: data/synth-s$(SPARSE_STRIDE)/annotations.json data/synth-s$(DENSE_STRIDE)/annotations.json

runs/s%/best.pt:
	$(MAKE) data/synth-s$(firstword $(subst -, ,$*))/annotations.json
	$(PROGRESS) train --annotations data/synth-s$(firstword $(subst -, ,$*))/annotations.json \
		--features data/synth-s$(firstword $(subst -, ,$*))/features \
		--config configs/$(word 2,$(subst -, ,$*)).toml --out runs/s$*

train: runs/s$(SPARSE_STRIDE)-default/best.pt

# eval-8, eval-3: every variant and the baselines on one stride's held-out videos
eval-%: $(foreach v,$(VARIANTS),runs/s%-$(v)/best.pt)
	$(PROGRESS) eval --checkpoint runs/s$*-default/best.pt \
		--compare relative=runs/s$*-relative/best.pt --compare none=runs/s$*-none/best.pt \
		--annotations data/synth-s$*/annotations.json --features data/synth-s$*/features --out reports/s$*

eval: eval-$(SPARSE_STRIDE)

report: eval-$(SPARSE_STRIDE) eval-$(DENSE_STRIDE)

# --- export -----------------------------------------------------------------------------
DEFAULT_RUN := runs/s$(SPARSE_STRIDE)-default
MODEL := models/progress_head.onnx

$(MODEL): $(DEFAULT_RUN)/best.pt
	$(PROGRESS) export --checkpoint $< --out $@ --triton models/triton

model: $(MODEL)

verify: $(MODEL)
	$(PROGRESS) verify-export $(MODEL) --checkpoint $(DEFAULT_RUN)/best.pt

bench-step: $(MODEL)
	$(BIN)/python benchmarks/step_throughput.py --model $(MODEL) --checkpoint $(DEFAULT_RUN)/best.pt

# --- serving ----------------------------------------------------------------------------
serve: $(MODEL)
	$(PROGRESS) serve --model $(MODEL)

bench-serve: $(MODEL)
	$(BIN)/python benchmarks/serve_throughput.py --model $(MODEL)

LOADTEST_URL ?= ws://127.0.0.1:8000
loadtest: install
	$(PROGRESS) loadtest --url $(LOADTEST_URL) --streams 100 --frames-per-message 16 $(LOADTEST_ARGS)

# --- deployment (Docker targets need a Docker engine; the rest runs here) ----------------
ANNOTATIONS_DIR ?= ../shared/data

images:
	docker build --target train -t progress-stream:train .
	docker build --target service -t progress-stream:service .
	docker build --build-context annotations=$(ANNOTATIONS_DIR) --target bundled -t progress-stream:bundled .

compose-up:
	ANNOTATIONS_DIR=$(ANNOTATIONS_DIR) docker compose up --build -d

compose-up-gpu:
	ANNOTATIONS_DIR=$(ANNOTATIONS_DIR) docker compose -f docker-compose.yml -f docker-compose.gpu.yml up --build -d

compose-config:
	docker-compose config -q && docker-compose -f docker-compose.yml -f docker-compose.gpu.yml config -q
	$(BIN)/hadolint Dockerfile

cluster-smoke: $(MODEL)
	$(BIN)/python scripts/cluster_smoke.py --model $(MODEL)

PROXY_URL ?= ws://127.0.0.1:8000
loadtest-proxy: install
	$(PROGRESS) loadtest --url $(PROXY_URL) --streams 100 --frames-per-message 16 $(LOADTEST_ARGS)

clean:
	rm -rf data runs reports models
