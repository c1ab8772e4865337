# One entry point for people and CI. `make test` builds .venv on first use, then lints and tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Users get the torch build PyPI picks for their machine; .ci/run pins the build this CI host has.
TORCH_SPEC ?= torch>=2.4 torchvision>=0.19
SOURCE ?= ../shared/data/petimages-180.zip
# Image names as docker-compose.yml spells them: $(CATSDOGS_IMAGE)-serve:$(CATSDOGS_TAG) ...
CATSDOGS_IMAGE ?= catsdogs
CATSDOGS_TAG ?= latest

.PHONY: venv test test-fast lint demo demo-loop prepare bench images clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(foreach spec,$(TORCH_SPEC),'$(spec)')
	$(PY) -m pip install --quiet -e '.[dev,pretrained,onnx,oip]'
	rm -rf *.egg-info  # the build's leftover: the installed metadata is in .venv
	touch $@

# Python style, then the deployment files statically (no Docker engine, no cluster needed):
# hadolint, docker compose's own validation (every profile), actionlint on the workflows, and the
# Kubernetes overlays rendered by kubectl and schema-checked by kubernetes-validate (skipped,
# saying so, without kubectl).
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/hadolint Dockerfile
	$(VENV)/bin/docker-compose --profile train --profile kserve config --quiet
	$(VENV)/bin/docker-compose -f docker-compose.yml -f tests/stack/compose.host.yml --profile train --profile kserve config --quiet
	$(VENV)/bin/actionlint
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash k8s/validate.sh

test: lint
	$(PY) -m pytest

# The unit tier: no training, no TorchServe or MLflow server, no Docker; under a minute on 2 cores.
# `make test` (CI) runs every tier. The markers are declared in pyproject.toml.
test-fast: venv
	$(PY) -m pytest -m "not slow and not integration and not stack"

# The main job end to end on synthetic data (`make demo SEED=3`: another training seed); its state
# (MLflow store, model store, TorchServe logs and token) stays in .demo/ so it never mixes with real
# trainings in ~/.catsdogs.
demo: venv
	CATSDOGS_HOME=$(CURDIR)/.demo $(PY) -m catsdogs_pl.demo $(if $(SEED),--seed $(SEED))

# Users' labels back into training: serve v1 with capture on, label its answers on pictures it never
# saw (taken at night; POST /feedback), watch the labelled accuracy, export, prepare, fit v2, gate and
# deploy; prints the accuracy before and after. State in .demo-loop/.
demo-loop: venv
	CATSDOGS_HOME=$(CURDIR)/.demo-loop $(PY) -m catsdogs_pl.demo_loop

prepare: venv
	$(PY) -m catsdogs_pl.data prepare --source $(SOURCE)

bench: venv
	$(PY) bench/data_prep.py
	$(PY) bench/train_throughput.py

# The serve, train and mlflow images. The defaults build production images (the upstream Python
# base image, PyTorch's CPU wheels); DOCKER_BUILD_ARGS passes other --build-arg values through
# (docker-here.sh sets a local base image and wheel index on machines without registry access).
images:
	for target in serve train mlflow; do \
		docker build $(DOCKER_BUILD_ARGS) --target $$target \
			--tag $(CATSDOGS_IMAGE)-$$target:$(CATSDOGS_TAG) . || exit 1; \
	done

clean:
	rm -rf $(VENV) .demo .pytest_cache .ruff_cache *.egg-info
