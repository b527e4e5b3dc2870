# Every target bootstraps what it needs: a fresh clone needs only Python 3.11+ and make.
PYTHON ?= python3
VENV := .venv
SAMVENV := .venv-sam
BIN := $(VENV)/bin
ARGS ?=
# No telemetry from the SAM CLI: builds and validation need no network.
export SAM_CLI_TELEMETRY := 0

.PHONY: demo test lint build bench bench-burst bench-planner bench-plan-cache clean

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

$(SAMVENV)/.installed: requirements-sam.txt
	$(PYTHON) -m venv $(SAMVENV)
	$(SAMVENV)/bin/pip install --quiet --upgrade pip
	$(SAMVENV)/bin/pip install --quiet -r requirements-sam.txt
	touch $@

demo: $(VENV)/.installed
	$(BIN)/spotctl demo $(ARGS)

test: $(VENV)/.installed
	$(BIN)/python -m pytest $(ARGS)

lint: $(VENV)/.installed $(SAMVENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy layers/shared/python/spot_hpc functions spotctl jobs/runtime/spot_checkpoint
	$(BIN)/mypy jobs/preprocess/preprocess.py jobs/hpc/hpc.py jobs/postprocess/postprocess.py
	$(BIN)/cfn-lint template.yaml
	$(SAMVENV)/bin/sam validate --lint --region us-east-1

build: $(SAMVENV)/.installed
	LAYER_PYTHON=$(abspath $(SAMVENV))/bin/python $(SAMVENV)/bin/sam build

bench: $(VENV)/.installed
	$(BIN)/spotctl bench policy --scenarios benchmarks/scenarios.json --json benchmarks/results.json \
		--plot benchmarks/policy_cost.png

bench-burst: $(VENV)/.installed
	$(BIN)/python benchmarks/interruption_burst.py --jobs 1000 --json benchmarks/interruption_burst.json

bench-planner: $(VENV)/.installed
	$(BIN)/spotctl bench planner $(ARGS)

bench-plan-cache: $(VENV)/.installed
	$(BIN)/python benchmarks/guard_plan_cache.py --json benchmarks/guard_plan_cache.json

clean:
	rm -rf $(VENV) $(SAMVENV) .aws-sam .pytest_cache .mypy_cache .ruff_cache
