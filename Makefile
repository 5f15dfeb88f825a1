# Entry points. `make bench` needs Rust, Python 3 (with venv) and the PostgreSQL server
# binaries; it installs the Python peer drivers into benches/compare/.venv and PgBouncer from
# Debian when missing. Pass options with BENCH_ARGS, e.g. `make bench BENCH_ARGS=--quick`.

PYTHON ?= python3
BENCH_ARGS ?=

.PHONY: bench bench-quick demo test

bench:
	$(PYTHON) benches/compare/run.py $(BENCH_ARGS)

bench-quick:
	$(PYTHON) benches/compare/run.py --quick $(BENCH_ARGS)

demo:
	scripts/demo.sh

test:
	scripts/test-all.sh
