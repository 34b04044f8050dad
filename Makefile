# progress-stream: every target uses the virtual environment that `make install` creates in .venv/.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PROGRESS := $(BIN)/progress
# GTCC annotations the synthetic data rides on; empty: the EgoProceL timings shipped in the package
ANNOTATIONS ?=
SPARSE_STRIDE ?= 8
DENSE_STRIDE ?= 3

.PHONY: install test lint docs data train eval report sweep model verify bench-step serve bench-serve loadtest \
	images compose-up compose-up-gpu compose-config cluster-smoke failover-smoke loadtest-proxy clean

# the extras installed: everything a developer runs (the train image installs EXTRAS=train,serve)
EXTRAS ?= dev

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[$(EXTRAS)]'
	touch $@

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

test: install lint docs
	$(BIN)/pytest

docs: install
	$(BIN)/mkdocs build --strict --site-dir build/site

# --- training ---------------------------------------------------------------------------
# Data folders are FAMILY-sSTRIDE (progress synth --family FAMILY --stride STRIDE); run folders
# FAMILY-sSTRIDE-VARIANT, where VARIANT is default (TrainConfig's defaults, no --config), a file of
# configs/, or phase (the default trained on the family's content phase: the phase-oracle bound).
FAMILIES ?= smooth substeps cyclic shifted
STRIDES ?= $(SPARSE_STRIDE) $(DENSE_STRIDE)
VARIANTS := relative none
family = $(word 1,$(subst -, ,$(1)))
stride = $(patsubst s%,%,$(word 2,$(subst -, ,$(1))))
variant = $(word 3,$(subst -, ,$(1)))
dataset = $(call family,$(1))-s$(call stride,$(1))

data/%/annotations.json: | install
	$(PROGRESS) synth $(if $(ANNOTATIONS),--annotations $(ANNOTATIONS)) --family $(call family,$*) --stride $(call stride,$*) --out data/$*

data: $(foreach f,$(FAMILIES),$(foreach s,$(STRIDES),data/$(f)-s$(s)/annotations.json))

.SECONDEXPANSION:
runs/%/best.pt: data/$$(call dataset,$$*)/annotations.json
	$(PROGRESS) train --annotations data/$(call dataset,$*)/annotations.json \
		--features data/$(call dataset,$*)/$(if $(filter phase,$(call variant,$*)),phase,features) \
		$(if $(filter default phase,$(call variant,$*)),,--config configs/$(call variant,$*).toml) --out runs/$*

train: runs/smooth-s$(SPARSE_STRIDE)-default/best.pt

# reports/FAMILY-sSTRIDE: the default, every variant, the phase oracle and the baselines on held-out videos
reports/%/metrics.json: runs/%-default/best.pt $(foreach v,$(VARIANTS) phase,runs/%-$(v)/best.pt)
	$(PROGRESS) eval --checkpoint runs/$*-default/best.pt \
		$(foreach v,$(VARIANTS),--compare $(v)=runs/$*-$(v)/best.pt) \
		--compare phase-oracle=runs/$*-phase/best.pt@data/$*/phase \
		--annotations data/$*/annotations.json --features data/$*/features --out reports/$*

REPORTS := $(foreach f,$(FAMILIES),$(foreach s,$(STRIDES),reports/$(f)-s$(s)/metrics.json))

eval: reports/smooth-s$(SPARSE_STRIDE)/metrics.json

# every family at both strides, then the one table the README shows (make -j N report runs N at a time)
report: $(REPORTS)
	$(PROGRESS) summary $(dir $(REPORTS)) | tee reports/summary.md

# the recipe sweep that chose the default (validation videos only; slow: every recipe on every family)
sweep: $(foreach f,$(FAMILIES),data/$(f)-s$(SPARSE_STRIDE)/annotations.json)
	$(PROGRESS) sweep $(foreach f,$(FAMILIES),--data data/$(f)-s$(SPARSE_STRIDE)) --out reports/sweep $(SWEEP_ARGS)

# --- export -----------------------------------------------------------------------------
DEFAULT_RUN := runs/smooth-s$(SPARSE_STRIDE)-default
MODEL := models/progress_head.onnx

$(MODEL): $(DEFAULT_RUN)/best.pt
	$(PROGRESS) export --checkpoint $< --out $@ --triton models/triton

model: $(MODEL)

verify: $(MODEL)
	$(PROGRESS) verify-export $(MODEL) --checkpoint $(DEFAULT_RUN)/best.pt

# the cell against the three-member recipe's, in the same run
bench-step: $(MODEL)
	$(BIN)/python benchmarks/step_throughput.py --model $(MODEL) --checkpoint $(DEFAULT_RUN)/best.pt \
		--compare-config configs/ensemble.toml

# --- serving ----------------------------------------------------------------------------
# the web page's demo pack: held-out actions of the data the default model was trained on
DEMO := models/demo/index.json

$(DEMO): data/smooth-s$(SPARSE_STRIDE)/annotations.json
	$(PROGRESS) demo-pack --annotations $< --features data/smooth-s$(SPARSE_STRIDE)/features --out $(dir $@)

serve: $(MODEL) $(DEMO)
	$(PROGRESS) serve --model $(MODEL)

bench-serve: $(MODEL)
	$(BIN)/python benchmarks/serve_throughput.py --model $(MODEL)

LOADTEST_URL ?= ws://127.0.0.1:8000
loadtest: install
	$(PROGRESS) loadtest --url $(LOADTEST_URL) --streams 100 --frames-per-message 16 $(LOADTEST_ARGS)

# --- deployment (Docker targets need a Docker engine; the rest runs here) ----------------
images:
	docker build --target train -t progress-stream:train .
	docker build --target service -t progress-stream:service .
	docker build --target bundled -t progress-stream:bundled .

compose-up:
	docker compose up --build -d

compose-up-gpu:
	docker compose -f docker-compose.yml -f docker-compose.gpu.yml up --build -d

compose-config:
	docker-compose config -q && docker-compose -f docker-compose.yml -f docker-compose.gpu.yml config -q
	$(BIN)/hadolint Dockerfile

cluster-smoke: $(MODEL)
	$(BIN)/python scripts/cluster_smoke.py --model $(MODEL)

# three replicas sharing state through redis-server behind nginx, no Docker: kill -9, restart, rolling restart
failover-smoke: $(MODEL)
	$(BIN)/python -m scripts.failover_smoke --model $(MODEL)

PROXY_URL ?= ws://127.0.0.1:8000
loadtest-proxy: install
	$(PROGRESS) loadtest --url $(PROXY_URL) --streams 100 --frames-per-message 16 $(LOADTEST_ARGS)

clean:
	rm -rf data runs reports models
