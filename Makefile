# make demo                set up .venv from nothing and run the main job (the harness, smoke preset, cifar10-mini)
# make test                set up .venv and run the whole test suite (what CI runs)
# make test PKG=nas-common the tests of one package and of every package that depends on it (its dependents)
# make release PKG=ista-nas   release check of one package: sdist + wheel, twine check, install in a fresh venv
#                          beside the nas-common wheel at the lowest version its range allows, its tests there
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  := torch==2.14.1 torchvision==0.29.1
PKGS   := packages/nas-common packages/nat packages/bsn packages/tas packages/ista-nas packages/posterior-nas
DEV    := pytest matplotlib scipy onnx poetry ray submitit ruff twine
STAMP  := $(VENV)/.installed
OUT    ?= runs/demo

.PHONY: demo test check wheels bench release setup clean

$(STAMP): Makefile $(foreach p,$(PKGS),$(p)/pyproject.toml)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q $(foreach p,$(PKGS),-e $(p)) $(DEV) $(TORCH)
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m tools.bench --preset smoke --methods all --seeds 0 --out $(OUT)

# The whole suite re-runs every method package's tests after any change, a change under packages/nas-common
# included; with PKG it runs that package and its dependents (tools/release.py dependents PKG).
test: $(STAMP) check
ifdef PKG
	$(BIN)/python -m pytest -q $$($(BIN)/python tools/release.py dependents $(PKG) | sed 's|[^ ]*|&/tests|g')
else
	$(BIN)/python -m pytest -q
endif

check: $(STAMP)
	@for p in $(PKGS); do (cd $$p && ../../$(BIN)/poetry check --quiet) || exit 1; done
	@echo "poetry check: ok in $(words $(PKGS)) packages"
	$(BIN)/ruff check --quiet .
	@echo "ruff check: ok"

wheels: $(STAMP)
	@mkdir -p dist
	@for p in $(PKGS); do (cd $$p && ../../$(BIN)/poetry build -q -o ../../dist) || exit 1; done
	@ls dist

release: $(STAMP)
ifndef PKG
	$(error name the package: make release PKG=ista-nas)
endif
	$(BIN)/python tools/release.py $(PKG)

bench: $(STAMP)
	$(BIN)/python tools/run_benchmarks.py

# make bench-gpu   the prepared GPU run: one table in under 8 minutes on one GPU (tools/bench/README.md)
.PHONY: bench-gpu
bench-gpu: $(STAMP)
	$(BIN)/python -m tools.bench.gpu

clean:
	rm -rf dist runs/demo
