#!/usr/bin/env bash
# Builds the Valkey module (target/release/libvtasks.so). Used by `make` and
# by Dockerfile.valkey, so the image ships what the tests and benchmarks load.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p vtasks-module "$@"
