# The two commands of the README: `make demo` (set up, then a small real search) and `make test` (set up, then the tests)
export MUJOCO_GL := egl
export OMP_NUM_THREADS ?= 2

.PHONY: setup test test-quick test-compiled demo lint

setup:
	bash scripts/setup.sh

test: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/python -m pytest -q -p no:cacheprovider

test-quick: setup
	.venv/bin/python -m pytest -q -p no:cacheprovider -m "not slow"

test-compiled: setup
	.venv/bin/python -m pytest -q -p no:cacheprovider -m compile

demo: setup
	bash scripts/demo.sh

lint: setup
	.venv/bin/ruff check . && .venv/bin/ruff format --check .
