# ctrip developer commands. `make run` and `make test` work from a clean clone on Debian
# as root: they install missing system packages and set up PostgreSQL themselves.

SHELL := /bin/bash
.DEFAULT_GOAL := help

.PHONY: help deps run test bench bench-backup stop certs clean-db build lint

help:
	@echo "make run       set up certs, a local TLS-only PostgreSQL and ctrip, then serve on 127.0.0.1:8080"
	@echo "make test      run every test against a throw-away TLS PostgreSQL cluster"
	@echo "make bench     benchmark the API and pgbench on a throw-away cluster (about 14 min), rewrite BENCHMARKS.md"
	@echo "make stop      stop the make run PostgreSQL cluster"
	@echo "make certs     create development certificates in certs/ (kept if present)"
	@echo "make clean-db  stop and delete the make run cluster and its secrets (certs/ is kept)"
	@echo "make lint      cargo fmt --check and cargo clippy -D warnings"
	@echo "make bench-backup  time ctrip backup create against pg_dump on a 1 GiB database"

deps:
	@scripts/deps.sh

build: deps
	cargo build

run: deps
	scripts/dev-run.sh

test: deps
	scripts/test.sh

bench: deps
	scripts/bench.sh

stop:
	scripts/pg-cluster.sh stop .dev/pgdata

certs: deps
	scripts/certs.sh certs

clean-db: stop
	rm -rf .dev

bench-backup: deps
	scripts/bench-backup.sh

lint:
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
