#!/usr/bin/env bash
# Installs what building and testing vtasks needs on Debian 12 (as root), and
# nothing that is already there: a second run takes well under a second.
#
#   valkey-server      from bookworm-backports (Debian 12 main has none)
#   redis-server       from Debian 12 main, for compatibility checks
#   libclang1-14,      for bindgen, which generates the module API bindings
#   libclang-common-14-dev
#   openssl            makes the certificates of the TLS tests
#   chromium           the headless browser of the admin's browser test
#                      (driven by Playwright from requirements-dev.txt, with
#                      this executable: Playwright never downloads one)
#   cargo-nextest      the test runner (from crates.io, if missing)
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

missing=()
for pkg in redis-server libclang1-14 libclang-common-14-dev openssl chromium; do
    installed "$pkg" || missing+=("$pkg")
done
need_valkey=0
installed valkey-server || need_valkey=1

if [ ${#missing[@]} -gt 0 ] || [ $need_valkey -eq 1 ]; then
    export DEBIAN_FRONTEND=noninteractive
    # Packages install without starting their services: tests start their own
    # servers on free ports.
    policy=/usr/sbin/policy-rc.d
    added_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
        as_root chmod +x "$policy"
        added_policy=1
    fi
    if [ $need_valkey -eq 1 ] && ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
        echo "deb http://deb.debian.org/debian bookworm-backports main" |
            as_root tee /etc/apt/sources.list.d/bookworm-backports.list >/dev/null
    fi
    as_root apt-get update -qq
    if [ ${#missing[@]} -gt 0 ]; then
        as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    if [ $need_valkey -eq 1 ]; then
        as_root apt-get install -y -qq --no-install-recommends -t bookworm-backports valkey-server >/dev/null
    fi
    [ $added_policy -eq 1 ] && as_root rm -f "$policy"
fi

for tool in valkey-server redis-server cargo; do
    command -v "$tool" >/dev/null || { echo "setup: $tool is still missing" >&2; exit 1; }
done
cargo nextest --version >/dev/null 2>&1 || cargo install cargo-nextest --locked
for component in fmt clippy; do
    cargo "$component" --version >/dev/null 2>&1 ||
        { echo "setup: cargo $component is missing: rustup component add ${component/fmt/rustfmt}" >&2; exit 1; }
done

# A Python >= 3.12 virtualenv in .venv with the tools from requirements-dev.txt.
find_python() {
    for candidate in "${VTASKS_PYTHON:-}" python3.13 python3.12 python3 \
        /root/.pyenv/versions/3.13*/bin/python3 /root/.pyenv/versions/3.12*/bin/python3 \
        /usr/local/bin/python3.13 /usr/local/bin/python3.12; do
        [ -n "$candidate" ] || continue
        command -v "$candidate" >/dev/null 2>&1 || [ -x "$candidate" ] || continue
        if PYENV_VERSION= "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

venv=.venv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 12))'; then
    python=$(find_python) || { echo "setup: no Python >= 3.12 found (set VTASKS_PYTHON)" >&2; exit 1; }
    rm -rf "$venv"
    "$python" -m venv "$venv"
fi
stamp="$venv/.requirements-installed"
if [ ! -f "$stamp" ] || ! cmp -s requirements-dev.txt "$stamp"; then
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
    cp requirements-dev.txt "$stamp"
fi
