#!/usr/bin/env bash
# Builds what a release publishes, into dist/:
#
#   vtasks-<version>-cp312-abi3-manylinux_2_17_x86_64.whl
#       the Python package with its compiled extension: one wheel for every
#       CPython >= 3.12 (abi3) on any x86_64 Linux with glibc >= 2.17, so
#       `pip install` needs no Rust toolchain and compiles nothing
#   libvtasks.so
#       the Valkey module (`loadmodule /path/to/libvtasks.so`), glibc >= 2.17
#   SHA256SUMS
#       their checksums (`sha256sum -c SHA256SUMS` in dist/)
#
# Both are optimised and stripped (the `release` profile; `profiling` keeps
# symbols). They are linked through zig (ziglang from PyPI) against glibc
# 2.17's symbol versions; a plain build here would need the glibc of the
# build machine (2.34 symbols on Debian 12). Runs after `make setup`.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
venv=$root/.venv
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements-dist.txt
# maturin finds zig as `python -m ziglang` through the virtualenv's python.
export VIRTUAL_ENV=$venv PATH=$venv/bin:$PATH
glibc=2.17
host=$(rustc -vV | sed -n 's/^host: //p')
case "$host" in
    x86_64-unknown-linux-gnu) zig_target=x86_64-linux-gnu.$glibc ;;
    aarch64-unknown-linux-gnu) zig_target=aarch64-linux-gnu.$glibc ;;
    *) echo "dist: no release build for $host" >&2; exit 1 ;;
esac

rm -rf dist
mkdir -p dist

maturin build --release --locked --zig --compatibility "manylinux_${glibc/./_}" \
    -m python/Cargo.toml --out dist

# The module through the same zig wrapper maturin uses for the wheel, as C
# compiler (the module API shim) and as linker.
zigcc=$root/target/zigcc-$zig_target.sh
mkdir -p target
printf '#!/bin/sh\nexec "%s" zig cc -- -fno-sanitize=all -target %s "$@"\n' "$venv/bin/maturin" "$zig_target" >"$zigcc"
chmod +x "$zigcc"
triple_env=$(echo "$host" | tr 'a-z-' 'A-Z_')
env "CC_${host//-/_}=$zigcc" "CARGO_TARGET_${triple_env}_LINKER=$zigcc" \
    cargo build --release --locked --target "$host" -p vtasks-module
cp "target/$host/release/libvtasks.so" dist/libvtasks.so

# What ships is stripped and asks for no glibc newer than the one targeted.
wheel_lib=$(mktemp -d)
trap 'rm -rf "$wheel_lib"' EXIT
"$venv/bin/python" -m zipfile -e dist/vtasks-*.whl "$wheel_lib"
for lib in dist/libvtasks.so "$wheel_lib"/vtasks/_native.abi3.so; do
    newest=$(objdump -T "$lib" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -1)
    if [ "$(printf '%s\n%s\n' "$newest" "$glibc" | sort -V | tail -1)" != "$glibc" ]; then
        echo "dist: $(basename "$lib") needs glibc $newest, more than $glibc" >&2; exit 1
    fi
    if readelf -S --wide "$lib" | grep -qE '\.debug_|\.symtab'; then
        echo "dist: $(basename "$lib") is not stripped" >&2; exit 1
    fi
done

(cd dist && sha256sum -- *.whl libvtasks.so >SHA256SUMS)
ls -l dist
cat dist/SHA256SUMS
