# ganforge — the user's door. `make help` lists the targets.
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIPELINE ?= dcgan
PROFILE ?= local
PARAMS ?=
# Config overrides for run/submit/schedule, space-separated: SET="train.epochs=2 eval.n_samples=200"
SET ?=
SET_ARGS = $(foreach s,$(SET),--set $(s))
# How `make run` runs the DAG's tasks: subprocess (this venv) or docker (local images + local stack).
RUNNER ?= subprocess
RUNNERS := subprocess docker
export GANFORGE_HOME ?= $(CURDIR)/.ganforge
STAMP := $(VENV)/.ganforge-installed
APT_PACKAGES := dataset-fashion-mnist espeak-ng sox
IMAGE_REGISTRY ?= localhost:5001/ganforge
TAG ?= 0.1.0
# The image every pipeline task runs in, fixed at compile time (images/: targets gpu and cpu).
export GANFORGE_IMAGE ?= $(IMAGE_REGISTRY)/ganforge-gpu:$(TAG)

.DEFAULT_GOAL := help
.PHONY: help setup system-deps weights run test test-fast compile submit schedule unschedule promote registry \
        generate bench docs gpu-check gpu-bundle quality quality-data quality-docs ablation ablation-name images lint lint-images k8s-check k8s-secrets-init \
        k8s-apply checkov clean \
        images-local images-deps runner-check stack-deps stack-up stack-down

help: ## List the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

setup: system-deps $(STAMP) weights checkov ## Everything a fresh machine needs: apt packages, venvs with pinned deps, Inception weights

# $(call apt_install,PACKAGES): install the missing ones as root, else say what to run.
define apt_install
missing=$$(for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
if [ -n "$$missing" ]; then \
  if [ "$$(id -u)" = 0 ]; then DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
  else echo "missing Debian packages: $$missing — run: sudo apt-get install $$missing" >&2; exit 1; fi; \
fi
endef

system-deps: ## Debian packages: Fashion-MNIST IDX files, espeak-ng, sox (installed when missing and root)
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "missing Debian packages: $$missing — run: sudo apt-get install $$missing" >&2; exit 1; fi; \
	fi
	@command -v kubectl >/dev/null || { [ "$$(id -u)" = 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kubernetes-client >/dev/null; } || true

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[platform,dev]'
	touch $@

weights: $(STAMP) ## Fetch and sha1-check the offline FID Inception weights into the cache
	@$(BIN)/python -m ganforge.weights

run: runner-check setup $(if $(filter docker,$(RUNNER)),images-local stack-deps) ## Run the whole DAG locally (kfp.local): make run PIPELINE=dcgan [PROFILE=local] [RUNNER=subprocess|docker] [SET="train.epochs=2"]
	$(BIN)/python -m pipelines run $(PIPELINE) --profile $(PROFILE) --runner $(RUNNER) $(PARAMS) $(SET_ARGS)

runner-check:
	@[ -n "$(filter $(RUNNER),$(RUNNERS))" ] && [ "$(words $(RUNNER))" = 1 ] || \
	  { echo "RUNNER='$(RUNNER)': give one of $(RUNNERS), e.g. make run PIPELINE=dcgan RUNNER=docker" >&2; exit 2; }

# Two pytest workers (pytest-xdist), each taking whole files (--dist loadfile) so a file's module fixtures (its
# shared tiny DAG) run once. Many tests wait on subprocesses and servers that run one thread (a DAG step, a
# server start), so a second worker fills the second core: the suite takes about two thirds of the time.
TEST_WORKERS ?= 2

test: setup ## Run the whole test suite [TEST_WORKERS=2]
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-fast: setup ## Run the tests not marked slow (nor docker) [TEST_WORKERS=2]
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow and not docker"

compile: setup ## Compile a pipeline to KFP IR: build/$(PIPELINE).yaml (PIPELINE=all for every one)
	$(BIN)/python -m pipelines compile $(PIPELINE) --profile $(or $(filter-out local,$(PROFILE)),full) --out-dir build

submit: setup ## Start one run on a KFP cluster: make submit PIPELINE=dcgan [PROFILE=full] KFP_HOST=https://… IMAGE_REGISTRY=… [SET="train.epochs=5"] [FORCE_IMAGE=1]
	$(BIN)/python -m pipelines submit $(PIPELINE) --profile $(or $(filter-out local,$(PROFILE)),full) $(if $(FORCE_IMAGE),--force-image) $(PARAMS) $(SET_ARGS)

schedule: setup ## Scheduled retraining as a KFP recurring run: make schedule PIPELINE=dcgan CRON='0 0 3 * * 0'
	$(BIN)/python -m pipelines schedule $(PIPELINE) --profile $(or $(filter-out local,$(PROFILE)),full) --cron "$(CRON)" $(if $(FORCE_IMAGE),--force-image) $(PARAMS) $(SET_ARGS)

unschedule: setup ## Pause the recurring run of PIPELINE (DELETE=1 removes it)
	$(BIN)/python -m pipelines unschedule $(PIPELINE) $(if $(DELETE),--delete)

promote: setup ## Make VERSION the champion of PIPELINE's registered model (a human decision; FORCE=1 for no FID)
	$(STACK_ENV) $(BIN)/ganforge promote $(PIPELINE) $(VERSION) $(if $(FORCE),--force)

registry: setup ## Show registered versions of PIPELINE's model with FID/KID and aliases
	$(STACK_ENV) $(BIN)/ganforge registry show $(PIPELINE)

generate: setup ## Samples from the champion: make generate PIPELINE=dcgan [N=64] [SEED=0]
	$(STACK_ENV) $(BIN)/ganforge generate --model models:/$(PIPELINE)@champion -n $(or $(N),64) --seed $(or $(SEED),0) \
	  --interpolate 8 --out build/generated/$(PIPELINE)

# The FID-10k protocol outside KFP, for long CPU runs: resumable (re-run the same command after
# an interruption), MLflow-tracked, with the FID curve. PROFILE defaults to quality here.
# wavegan: the synthesised spoken digits (espeak:sc09, 2,000 train clips), scored on 1,000 clips by the
# SC09 classifier of its reference split (train), whose held-out clips give the real data's own IS and FD.
QUALITY_PROFILE = $(if $(filter-out file default undefined,$(origin PROFILE)),$(PROFILE),quality)
QUALITY_DATA_wavegan = $(GANFORGE_HOME)/data/sc09
QUALITY_DATA = $(or $(QUALITY_DATA_$(PIPELINE)),$(GANFORGE_HOME)/data/fashion-mnist)
QUALITY_PREP = $(if $(QUALITY_DATA_$(PIPELINE)),$(PIPELINE),dcgan)
QUALITY_SPLITS = $(if $(filter wavegan,$(PIPELINE)),train,train test)
QUALITY_EVAL_SPLIT = $(if $(filter wavegan,$(PIPELINE)),train,test)
QUALITY_N = $(if $(filter wavegan,$(PIPELINE)),1000,10000)
QUALITY_RUN ?= $(GANFORGE_HOME)/quality/$(PIPELINE)-$(QUALITY_PROFILE)
quality: quality-data ## FID-10k vs the test split + FID curve, resumable: make quality PIPELINE=sngan [PROFILE=quality] [CURVE=0] [SET="train.seed=1" QUALITY_RUN=…]
	$(BIN)/ganforge train --preset $(PIPELINE) --profile $(QUALITY_PROFILE) --data $(QUALITY_DATA)/train \
	  --out $(QUALITY_RUN) --resume --mlflow $(SET_ARGS)
	$(BIN)/ganforge evaluate --run $(QUALITY_RUN) --data $(QUALITY_DATA)/$(QUALITY_EVAL_SPLIT) --n $(QUALITY_N) \
	  $(if $(filter 0,$(CURVE)),--no-curve) --train-data $(QUALITY_DATA)/train

# The wavegan rows of docs/quality.md, from the MLflow runs of `make quality PIPELINE=wavegan` (GANFORGE_HOME's store).
quality-docs: $(STAMP) ## Render the wavegan quality runs recorded in MLflow into docs/quality.md's table
	$(BIN)/python benchmarks/render_quality.py --doc docs/quality.md

quality-data: setup
	@for split in $(QUALITY_SPLITS); do [ -f $(QUALITY_DATA)/$$split/manifest.json ] || \
	  $(BIN)/ganforge prep --preset $(QUALITY_PREP) --split $$split --out $(QUALITY_DATA)/$$split >/dev/null || exit 1; done

# One switch at a time on a preset's `quality` run, trained to its first snapshot (dcgan: epoch 4,
# stylegan: epoch 3) and scored by the FID-2k of that snapshot's EMA generator vs the 10,000 test images
# (docs/ablations.md). `baseline` changes nothing; `seed1` only the seed: the noise to read a switch against.
ABLATIONS_dcgan := baseline ema-off sn-hinge ttur diffaugment r1 seed1
ABLATIONS_stylegan := baseline seed1 mixing-off r1-off r1-10x mapping-8 width-20 width-20-seed1
ABL_EPOCHS_dcgan := 4
ABL_EPOCHS_stylegan := 3
ABL_dcgan_baseline :=
ABL_dcgan_ema-off := --set train.ema_decay=0
ABL_dcgan_sn-hinge := --set model.d_norm=spectral --set train.loss=hinge
ABL_dcgan_ttur := --set train.lr_d=4e-4
ABL_dcgan_diffaugment := --set train.diffaugment=color,translation,cutout
ABL_dcgan_r1 := --set train.r1_gamma=0.01
ABL_dcgan_seed1 := --set train.seed=1
ABL_stylegan_baseline :=
ABL_stylegan_seed1 := --set train.seed=1
ABL_stylegan_mixing-off := --set train.style_mixing=0
ABL_stylegan_r1-off := --set train.r1_gamma=0
ABL_stylegan_r1-10x := --set train.r1_gamma=0.1
ABL_stylegan_mapping-8 := --set model.mapping_layers=8
ABL_stylegan_width-20 := --set model.ngf=20 --set model.ndf=20
ABL_stylegan_width-20-seed1 := $(ABL_stylegan_width-20) --set train.seed=1
# dcgan's runs keep their old place (ablation/ttur); other presets' are prefixed (ablation/stylegan-r1-off)
ABL_DIR = $(GANFORGE_HOME)/ablation/$(if $(filter-out dcgan,$(PIPELINE)),$(PIPELINE)-)$(ABL)
ablation: ablation-name quality-data ## One switch on dcgan/quality (4 epochs) or stylegan/quality (3), FID-2k: make ablation [PIPELINE=stylegan] ABL=r1-off
	$(BIN)/ganforge train --preset $(PIPELINE) --profile quality --set train.epochs=$(ABL_EPOCHS_$(PIPELINE)) \
	  $(ABL_$(PIPELINE)_$(ABL)) --data $(QUALITY_DATA)/train --out $(ABL_DIR) --resume --mlflow
	$(BIN)/ganforge curve --run $(ABL_DIR) --data $(QUALITY_DATA)/test

ablation-name:
	@[ -n "$(ABLATIONS_$(PIPELINE))" ] || { echo "PIPELINE='$(PIPELINE)': ablations are defined for dcgan and stylegan, e.g. make ablation PIPELINE=stylegan ABL=r1-off" >&2; exit 2; }
	@[ -n "$(filter $(ABL),$(ABLATIONS_$(PIPELINE)))" ] || { echo "ABL='$(ABL)': for PIPELINE=$(PIPELINE) give one of $(ABLATIONS_$(PIPELINE)), e.g. make ablation PIPELINE=$(PIPELINE) ABL=$(word 2,$(ABLATIONS_$(PIPELINE)))" >&2; exit 2; }

bench: setup ## Benchmarks (ratios measured in one run) → build/bench.json
	$(BIN)/python benchmarks/run.py --out build/bench.json

docs: $(STAMP) ## Render build/bench.json (make bench writes it) into docs/benchmarks.md's table
	$(BIN)/python benchmarks/render_docs.py --bench build/bench.json --doc docs/benchmarks.md

# The GPU path on a CUDA machine, in <= 9 minutes: no venv, no network (README, "GPU check"). BUNDLE: the carried
# folders of `make gpu-bundle`, joined first; QUALITY=1 adds the quality row (~7 min a seed).
gpu-check: ## On a CUDA machine: every preset at full, FID on CUDA, GPU bench → build/gpu-check.json [BUNDLE="dirs"] [QUALITY=1]
	PYTHONPATH=src $(PY) benchmarks/gpu_check.py $(if $(BUNDLE),--bundle $(BUNDLE)) $(if $(QUALITY),--quality) $(GPU_CHECK_ARGS)

gpu-bundle: setup ## What gpu-check needs beside the checkout, as three carry folders of <= 60 MiB: build/gpu-bundle/{1,2,3}
	$(BIN)/python benchmarks/gpu_check.py --make-bundle build/gpu-bundle

# While the local stack of GANFORGE_HOME runs (make run RUNNER=docker), generate/registry/promote use
# its MLflow server; otherwise MLFLOW_TRACKING_URI or the sqlite store, as always.
STACK_ENV = env $$($(BIN)/python -m pipelines stack env)

images-deps: ## Debian packages for images-local: docker.io, mmdebstrap (installed when missing and root)
	@$(call apt_install,docker.io mmdebstrap)

stack-deps: ## Debian packages for the local stack: postgresql (installed when missing and root)
	@$(call apt_install,postgresql)

images-local: images-deps setup ## Build localhost/ganforge-{cpu,mlflow-server}:dev here (local base, dockerd started when none answers)
	$(BIN)/python -m pipelines images-local

stack-up: stack-deps setup ## Start the local MLflow server image + PostgreSQL + S3 stack (make run RUNNER=docker does it)
	$(BIN)/python -m pipelines stack up

stack-down: setup ## Stop the local stack and discard its registry and artifacts
	$(BIN)/python -m pipelines stack down

images: ## Build and push the gpu, cpu and mlflow-server images (needs Docker with buildx)
	@for target in gpu cpu mlflow-server; do \
	  docker buildx build --file images/Dockerfile --target $$target \
	    --tag $(IMAGE_REGISTRY)/ganforge-$$target:$(TAG) --push . || exit 1; \
	done

lint: $(STAMP) ## Lint the Python code: ruff check and ruff format --check (settings in pyproject.toml)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

lint-images: $(STAMP) ## Lint images/Dockerfile with hadolint
	PATH=$(CURDIR)/$(BIN):$$PATH scripts/lint_dockerfiles.sh

# checkov (the manifest scanner of k8s-check) in a venv of its own: its dependencies clash with kfp's pins.
CHECKOV_VERSION := 3.3.30
CHECKOV_VENV := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.checkov-$(CHECKOV_VERSION)

checkov: $(CHECKOV_STAMP) ## Install checkov $(CHECKOV_VERSION) into $(CHECKOV_VENV) (used by k8s-check)

$(CHECKOV_STAMP):
	$(PY) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install -q 'checkov==$(CHECKOV_VERSION)'
	touch $@

k8s-check: $(STAMP) $(CHECKOV_STAMP) ## Render every kustomize overlay and validate it offline (schemas, policies, checkov)
	$(BIN)/python scripts/k8s_check.py

k8s-secrets-init: $(STAMP) ## Write k8s/base/secrets/*.env from the examples, generating every placeholder value
	$(BIN)/python scripts/k8s_deploy.py secrets-init

OVERLAY ?= local-kind
k8s-apply: $(STAMP) ## Render OVERLAY with the real secrets (placeholders refused but on local-kind) and kubectl apply it
	@manifest=$$($(BIN)/python scripts/k8s_deploy.py render $(OVERLAY)) && printf '%s\n' "$$manifest" | kubectl apply -f -

clean: ## Remove build outputs and local run state (.ganforge); keeps the venv and caches
	rm -rf build .ganforge
