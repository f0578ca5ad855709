# Targets mirror CI: `.ci/run` calls `make test`.
#
#   make test    install what is missing, check formatting and lints, build,
#                run every test (Rust, then Python) against real valkey-server
#                processes, then the conformance suite on servers without
#                the module (scripts engine on Valkey and on Redis)
#   make demo    the example Django project: 20,000 tasks enqueued from async
#                views, run by `manage.py runworker`, every result checked
#   make module-demo  10,000 tasks through the module with a Rust program
#   make bench   every benchmark benchmarks/RESULTS.md cites, as it cites
#                it: each rewrites its own section of RESULTS.md (about an
#                hour and a half; the comparison below is part of it)
#   make compare vtasks against django-vtasks, Celery and RQ, sync and async
#                tasks, on localhost and at 2 ms RTT; writes RESULTS.md's
#                `compare` section (about 40 minutes)
#   make dist    what a release publishes, into dist/: the manylinux abi3
#                wheel, the module libvtasks.so, SHA256SUMS (scripts/dist.sh)
#   make dist-test  make dist, then install the wheel into a fresh
#                virtualenv without Rust and run tasks end to end

CARGO ?= cargo
export RUST_BACKTRACE ?= 0

VENV := .venv
PY := $(VENV)/bin/python
BENCH_VENV := .bench-venv

.PHONY: schedules-long memory-limits module-demo setup fmt-check clippy ruff mypy build build-release build-profiling python test dist dist-test wheel-test unit-test rust-test py-test conformance chaos chaos-ci python-release fuzz memcheck demo bench bench-venv compare clean

setup:
	@bash scripts/setup.sh

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

ruff: setup
	$(VENV)/bin/ruff check python/python tests example benchmarks

# Types of the Python package, and the hand-written stub of the extension
# checked against the built module.
mypy: python
	$(VENV)/bin/mypy python/python/vtasks
	$(PY) -m mypy.stubtest vtasks._native

# The integration tests load target/debug/libvtasks.so; `cargo test` does not
# rebuild the cdylib by itself, so build it first.
build: setup
	$(CARGO) build -p vtasks-module

build-release: setup
	bash scripts/build-module.sh
	$(CARGO) build --release -p vtasks-benchmarks

# The release build with symbols and line tables (target/profiling/), for
# callgrind or perf; the release profile ships stripped.
build-profiling: setup
	$(CARGO) build --profile profiling -p vtasks-module -p vtasks-benchmarks

unit-test:
	$(CARGO) nextest run -p vtasks-module --lib

# The Python package, built in place into .venv (`vtasks` importable there).
python: setup
	VIRTUAL_ENV=$(CURDIR)/$(VENV) PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/maturin develop --quiet -m python/Cargo.toml

python-release: setup
	VIRTUAL_ENV=$(CURDIR)/$(VENV) PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/maturin develop --release --quiet -m python/Cargo.toml

rust-test: build
	$(CARGO) nextest run --workspace --no-tests=warn

py-test: build python
	$(PY) -m pytest

# The module's behavioural tests, the client's and the Python/Django tests
# again, on servers without the module: the scripts engine on Valkey, and on
# Redis. Tests of
# what only the module does (server timers, COMMAND metadata, replication of
# module commands) carry `module_only` in their names or live in files not
# listed here.
CONFORMANCE_TESTS := -p vtasks-module -p vtasks-client --test commands --test blocking --test bad_input --test schedules --test persistence --test client --test worker --test memory
# A server at its maxmemory, with noeviction and with allkeys-lru, on each
# target: the figures of docs/RELIABILITY.md's "Memory limits".
memory-limits: build python
	VTASKS_TARGET=module $(PY) scripts/memory_limits.py
	VTASKS_TARGET=scripts-valkey $(PY) scripts/memory_limits.py
	VTASKS_TARGET=scripts-redis $(PY) scripts/memory_limits.py

conformance: build python
	VTASKS_TARGET=scripts-valkey $(CARGO) nextest run $(CONFORMANCE_TESTS) -E 'not test(/module_only/)'
	VTASKS_TARGET=scripts-redis $(CARGO) nextest run $(CONFORMANCE_TESTS) -E 'not test(/module_only/)'
	VTASKS_TARGET=scripts-valkey $(PY) -m pytest -q
	VTASKS_TARGET=scripts-redis $(PY) -m pytest -q

test: setup fmt-check clippy ruff mypy rust-test py-test wheel-test conformance chaos-ci

# The release artifacts (scripts/dist.sh) and their test: the wheel in a
# fresh virtualenv with no Rust toolchain on PATH, tasks run end to end
# against valkey-server loading dist/libvtasks.so; then both artifacts'
# stripping, glibc floor and checksums. Release builds of both take a few
# minutes, so CI runs the cheaper wheel-test instead.
dist: setup
	bash scripts/dist.sh

dist-test: dist
	VTASKS_WHEEL=$$(ls dist/vtasks-*.whl) VTASKS_MODULE=$(CURDIR)/dist/libvtasks.so $(PY) -m pytest tests/dist -q

# The same install-and-run test on a wheel of the development build (it
# reuses `make python`'s compiled extension, so it costs seconds): the
# package's layout, metadata and dependencies as pip installs them.
WHEEL_DEV := target/wheel-dev
wheel-test: build python
	rm -rf $(WHEEL_DEV)
	VIRTUAL_ENV=$(CURDIR)/$(VENV) PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/maturin build --quiet --compatibility linux -m python/Cargo.toml --out $(WHEEL_DEV)
	VTASKS_WHEEL=$$(ls $(WHEEL_DEV)/vtasks-*.whl) $(PY) -m pytest tests/dist/test_wheel.py -q

# The fault suite (tests/chaos): workers killed, Valkey killed (and its
# unsynced AOF writes dropped, as by a power cut) and restarted,
# failover to a replica, network cuts and latency spikes, a task that kills
# its worker, a million tasks for memory. `chaos` runs it at full scale on
# the module (release build, as deployed) and on the scripts engine, on
# Valkey and on Redis (reports: target/chaos-report*.md; each pass in which
# every test passed rewrites its table in docs/RELIABILITY.md); `chaos-ci` the
# same tests smaller, on the module and on Redis, as part of `make test`.
CHAOS_PYTEST := $(PY) -m pytest tests/chaos -q -p no:cacheprovider
chaos: build-release python-release
	VTASKS_CHAOS=full VTASKS_CHAOS_DOC=docs/RELIABILITY.md VTASKS_MODULE=$(CURDIR)/target/release/libvtasks.so VTASKS_CHAOS_REPORT=target/chaos-report.md $(CHAOS_PYTEST) --timeout 1800
	VTASKS_CHAOS=full VTASKS_CHAOS_DOC=docs/RELIABILITY.md VTASKS_TARGET=scripts-valkey VTASKS_CHAOS_REPORT=target/chaos-report-scripts.md $(CHAOS_PYTEST) --timeout 1800
	VTASKS_CHAOS=full VTASKS_CHAOS_DOC=docs/RELIABILITY.md VTASKS_TARGET=scripts-redis VTASKS_CHAOS_REPORT=target/chaos-report-redis.md $(CHAOS_PYTEST) --timeout 1800
	$(MAKE) schedules-long
	$(MAKE) cluster

# The Valkey Cluster and Sentinel workloads of tests/test_cluster.py and
# tests/test_sentinel.py at full size (20,000 tasks through a primary's
# failover, through a reshard, through a sentinel failover) on every target.
CLUSTER_TESTS := tests/test_cluster.py tests/test_sentinel.py
cluster: build python
	VTASKS_CLUSTER=full $(PY) -m pytest -q $(CLUSTER_TESTS) --timeout 1800
	VTASKS_CLUSTER=full VTASKS_TARGET=scripts-valkey $(PY) -m pytest -q $(CLUSTER_TESTS) --timeout 1800
	VTASKS_CLUSTER=full VTASKS_TARGET=scripts-redis $(PY) -m pytest -q $(CLUSTER_TESTS) --timeout 1800

# Three runworker processes on a per-second schedule for 10 s (CI runs the
# same tests for 4 s), with a restart, an edit and a removal, on the module
# and on the scripts engine.
schedules-long: build python
	VTASKS_SCHEDULE_SECONDS=10 $(PY) -m pytest -q tests/test_schedules.py
	VTASKS_SCHEDULE_SECONDS=10 VTASKS_TARGET=scripts-valkey $(PY) -m pytest -q tests/test_schedules.py

chaos-ci: build python
	VTASKS_CHAOS=ci $(CHAOS_PYTEST) --timeout 300
	VTASKS_CHAOS=ci VTASKS_TARGET=scripts-redis VTASKS_CHAOS_REPORT=target/chaos-report-redis.md $(CHAOS_PYTEST) --timeout 300

# 10,000,000 random and mutated argument lists through the module's parsers
# (no server); 20,000 random command sequences through the module's queue
# type and the keyspace-layout core side by side (no server); 50,000
# random valid and invalid commands at the module and at the scripts engine
# on a second server, every reply compared; then 1,000,000 random and
# mutated VTASKS.* commands at a live server, with the module (debug build:
# overflow checks on) and with the scripts engine. CI runs the same tests
# smaller.
FUZZ := -p vtasks-module --test bad_input -E 'test(random_and_mutated)'
fuzz: build
	VTASKS_PARSE_FUZZ_CASES=10000000 $(CARGO) nextest run -p vtasks-module --lib -E 'test(parse_fuzz)'
	VTASKS_NATIVE_DIFF_CASES=20000 $(CARGO) nextest run -p vtasks-module --lib -E 'test(random_sequences_match_the_keyspace_layout)'
	VTASKS_DIFF_SEQUENCES=100 VTASKS_DIFF_STEPS=500 $(CARGO) nextest run -p vtasks-module --test differential
	VTASKS_FUZZ_COMMANDS=1000000 $(CARGO) nextest run $(FUZZ)
	VTASKS_FUZZ_COMMANDS=1000000 VTASKS_TARGET=scripts-valkey $(CARGO) nextest run $(FUZZ)

# The module's integration tests with every valkey-server under valgrind
# memcheck (about 3 minutes); fails on any error or definite leak in the
# module's code, or on a failing test. Not part of CI (it triples the run).
memcheck: build
	bash scripts/memcheck.sh

demo: build-release python-release
	$(PY) example/demo.py

module-demo: build-release
	$(CARGO) run --quiet --release -p vtasks-benchmarks --bin demo

# The release builds of the module and the extension, as deployed; the
# latency benchmark picks its module from VTASKS_MODULE.
bench: build-release bench-venv
	$(CARGO) run --quiet --release -p vtasks-benchmarks --bin module_bench -- --results benchmarks/RESULTS.md
	$(CARGO) run --quiet --release -p vtasks-benchmarks --bin module_bench -- --goals benchmarks/RESULTS.md --tasks 100000 --runs 5 --big 10000000
	$(CARGO) run --quiet --release -p vtasks-benchmarks --bin cluster_bench -- --results benchmarks/RESULTS.md
	VIRTUAL_ENV=$(CURDIR)/$(VENV) PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/maturin develop --release --quiet -m python/Cargo.toml
	$(PY) -m benchmarks.python_bench
	$(PY) -m benchmarks.startup
	$(PY) -m benchmarks.worker_processes
	VTASKS_MODULE=$(CURDIR)/target/release/libvtasks.so $(PY) -m benchmarks.latency --waves 100 --seed 1
	$(BENCH_VENV)/bin/python -m benchmarks.compare
	$(BENCH_VENV)/bin/python -m benchmarks.defaults

# The comparison's own virtualenv: the other systems from PyPI (pinned in
# benchmarks/requirements.txt) and vtasks built from this checkout.
bench-venv: setup
	test -x $(BENCH_VENV)/bin/python || $(PY) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet -r benchmarks/requirements.txt
	VIRTUAL_ENV=$(CURDIR)/$(BENCH_VENV) PATH=$(CURDIR)/$(BENCH_VENV)/bin:$$PATH $(BENCH_VENV)/bin/maturin develop --release --quiet -m python/Cargo.toml

compare: build-release bench-venv
	$(BENCH_VENV)/bin/python -m benchmarks.compare

clean:
	$(CARGO) clean
