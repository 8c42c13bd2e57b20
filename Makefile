# The two commands of the README: `make demo` (set up, then a small real search) and `make test` (set up, then the tests)
export MUJOCO_GL := egl
export OMP_NUM_THREADS ?= 2
# pytest workers of `make test`, each given whole files in collection order, the longest first (tests/conftest.py;
# a module's fixtures are made once): two keep both cores of the CI machine busy while a test waits on its processes
PYTEST_WORKERS ?= 2

.PHONY: setup test test-quick test-compiled demo lint

setup:
	bash scripts/setup.sh

test: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/python -m pytest -q -p no:cacheprovider -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder

test-quick: setup
	.venv/bin/python -m pytest -q -p no:cacheprovider -m "not slow"

test-compiled: setup
	.venv/bin/python -m pytest -q -p no:cacheprovider -m compile

demo: setup
	bash scripts/demo.sh

lint: setup
	.venv/bin/ruff check . && .venv/bin/ruff format --check .
