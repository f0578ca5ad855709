#!/usr/bin/env bash
# Runs the module's integration tests (module/tests/*.rs) once with every
# valkey-server they start running under valgrind memcheck, then scans the
# valgrind logs. Exits 1 if any valgrind error or definite leak has a stack
# frame in the module (libvtasks.so) or if a test failed, 0 otherwise (tests
# whose leases and sleeps must outlast a server step scale them by
# VTASKS_TEST_TIME_SCALE, below, so they hold under valgrind's slowdown).
#
#   bash scripts/memcheck.sh                      every suite
#   bash scripts/memcheck.sh commands blocking    only these suites
#
# Environment:
#   MEMCHECK_DIR           logs and helpers (default /tmp/memcheck; emptied)
#   MEMCHECK_SERVER        the valkey-server to run (default: on PATH)
#   MEMCHECK_TRACK_ORIGINS yes|no (default yes; no is about 2x faster)
#   MEMCHECK_ERROR_EXITCODE valgrind --error-exitcode for the servers
#                          (default none; see below)
#   VTASKS_FUZZ_COMMANDS   commands of bad_input's fuzz test (default 2000)
#   VTASKS_TEST_TIME_SCALE leases and sleeps of timing-bound tests are
#                          multiplied by it (default 20: the server runs
#                          many times slower under valgrind)
#
# Debian's valkey-server (bookworm-backports) is linked with the system
# libjemalloc.so.2. Under plain valgrind it crashes in jemalloc at startup:
# valgrind replaces malloc/free but not jemalloc's sized free `sdallocx`,
# which Valkey 8 calls (zfree_with_size), so jemalloc is handed a block it
# never allocated. So the server runs with
#   --soname-synonyms=somalloc=libjemalloc.so.2   malloc, free, ... of
#                        libjemalloc are replaced by valgrind's, and
#   LD_PRELOAD=jemalloc-shim.so   sdallocx -> free, nallocx -> size
#                        (built here), so every block goes through valgrind.
# A server built with MALLOC=libc needs neither; one with jemalloc linked in
# statically cannot run under valgrind (build it with `make MALLOC=libc`).
#
# The test harness (testkit) kills a server with SIGKILL when a test drops it
# without stop(); valgrind then writes no leak report. The wrapper that
# stands in for valkey-server (VTASKS_SERVER) therefore runs valgrind as its
# child and, if it is killed itself, shuts the server down (SHUTDOWN NOSAVE,
# then SIGTERM, then SIGKILL) so the report is written.
#
# No --error-exitcode by default: valgrind applies it to fork children too,
# and Valkey reads their exit status. A BGSAVE or diskless-sync child with
# any error (even a definite leak inherited from its parent) then exits 99,
# Valkey logs "BGSAVE child returned an error" and drops the replica, which
# changes what the tests exercise. The verdict comes from the logs instead.
# lzf_compress's by-design uninitialised hash table is suppressed, as in
# Valkey's own src/valgrind.sup.
#
# testkit waits 10 s for a new server to answer PING (wait_ready in
# testkit/src/lib.rs, `Duration::from_secs(10)`, no environment override);
# under valgrind the server answers in about 2 s on an idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

out=${MEMCHECK_DIR:-/tmp/memcheck}
server=$(command -v "${MEMCHECK_SERVER:-valkey-server}" || true)
track_origins=${MEMCHECK_TRACK_ORIGINS:-yes}
export VTASKS_FUZZ_COMMANDS=${VTASKS_FUZZ_COMMANDS:-2000}
export VTASKS_TEST_TIME_SCALE=${VTASKS_TEST_TIME_SCALE:-20}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# --- tools ------------------------------------------------------------------
if ! command -v valgrind >/dev/null; then
    echo "memcheck: installing valgrind"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends valgrind >/dev/null
fi
[ -n "$server" ] || { echo "memcheck: ${MEMCHECK_SERVER:-valkey-server} not found (run make setup)" >&2; exit 2; }
command -v valkey-cli >/dev/null || { echo "memcheck: valkey-cli not found" >&2; exit 2; }
command -v python3 >/dev/null || { echo "memcheck: python3 not found" >&2; exit 2; }

rm -rf "$out"
mkdir -p "$out"

# --- how valgrind must run this server ---------------------------------------
vg_opts=(
    --tool=memcheck
    --leak-check=full
    --show-leak-kinds=definite
    --errors-for-leak-kinds=definite
    --track-origins="$track_origins"
    --num-callers=50
    --fullpath-after=
    --vgdb=no
    --suppressions="$out/valkey.supp"
)
if [ -n "${MEMCHECK_ERROR_EXITCODE:-}" ]; then
    vg_opts+=(--error-exitcode="$MEMCHECK_ERROR_EXITCODE")
fi
cat >"$out/valkey.supp" <<'EOF'
{
   lzf_uninitialised_hash_table_cond
   Memcheck:Cond
   fun:lzf_compress
}
{
   lzf_uninitialised_hash_table_value8
   Memcheck:Value8
   fun:lzf_compress
}
{
   lzf_uninitialised_hash_table_value4
   Memcheck:Value4
   fun:lzf_compress
}
EOF
preload=""
malloc_kind=$("$server" --version | sed -n 's/.*malloc=\([a-z]*\).*/\1/p')
if [ "$malloc_kind" = jemalloc ]; then
    jemalloc_lib=$(ldd "$server" | awk '/libjemalloc/ {print $1; exit}')
    if [ -z "$jemalloc_lib" ]; then
        echo "memcheck: $server has jemalloc linked in statically; valgrind cannot" \
            "replace its allocator. Build Valkey with 'make MALLOC=libc' and set MEMCHECK_SERVER." >&2
        exit 2
    fi
    vg_opts+=(--soname-synonyms=somalloc="$jemalloc_lib")
    cat >"$out/jemalloc-shim.c" <<'EOF'
/* jemalloc's non-standard entry points, for a server whose malloc/free are
 * valgrind's: sized free and the size a request would get. */
#include <stddef.h>
#include <stdlib.h>
void sdallocx(void *ptr, size_t size, int flags) { (void)size; (void)flags; free(ptr); }
size_t nallocx(size_t size, int flags) { (void)flags; return size; }
EOF
    ${CC:-cc} -shared -fPIC -O2 -o "$out/jemalloc-shim.so" "$out/jemalloc-shim.c"
    preload="$out/jemalloc-shim.so"
fi

# --- the wrapper the tests start as valkey-server -----------------------------
wrapper="$out/valkey-server-memcheck"
{
    echo '#!/usr/bin/env bash'
    echo '# valkey-server under valgrind memcheck; written by scripts/memcheck.sh'
    printf 'server=%q\npreload=%q\npids=%q\n' "$server" "$preload" "$out/pids"
    printf 'vg_opts=(' ; printf '%q ' "${vg_opts[@]}" ; echo ')'
    cat <<'EOF'
log_dir=${MEMCHECK_LOG_DIR:?}
mkdir -p "$log_dir"
port=""
prev=""
for arg in "$@"; do
    [ "$prev" = "--port" ] && port=$arg
    prev=$arg
done
if [ -n "$preload" ]; then
    export LD_PRELOAD="$preload${LD_PRELOAD:+:$LD_PRELOAD}"
fi
valgrind "${vg_opts[@]}" --log-file="$log_dir/vg.%p.log" "$server" "$@" &
vg=$!
unset LD_PRELOAD
echo "$vg" >>"$pids"
me=$$
running() { local s; s=$(ps -o stat= -p "$1" 2>/dev/null) && [ "${s:0:1}" != Z ]; }
# Watchdog: if this wrapper is killed (the harness's SIGKILL on drop), end the
# server in a way that lets valgrind write its leak report.
(
    while running "$me" && running "$vg"; do sleep 0.2; done
    running "$vg" || exit 0
    if [ -n "$port" ]; then
        timeout 20 valkey-cli -p "$port" SHUTDOWN NOSAVE >/dev/null 2>&1 || true
    fi
    for _ in $(seq 600); do running "$vg" || exit 0; sleep 0.1; done
    kill -TERM "$vg" 2>/dev/null || true
    for _ in $(seq 300); do running "$vg" || exit 0; sleep 0.1; done
    kill -KILL "$vg" 2>/dev/null || true
) </dev/null >/dev/null 2>&1 &
wait "$vg"
EOF
} >"$wrapper"
chmod +x "$wrapper"

# --- build ----------------------------------------------------------------------
echo "memcheck: building the module (debug)"
cargo build -p vtasks-module
module="$repo/target/debug/libvtasks.so"

# --- run the suites -----------------------------------------------------------
if [ $# -gt 0 ]; then
    suites=("$@")
else
    suites=()
    for f in module/tests/*.rs; do suites+=("$(basename "$f" .rs)"); done
fi

echo "memcheck: server $server (malloc=$malloc_kind)${preload:+, LD_PRELOAD $preload}"
echo "memcheck: valgrind ${vg_opts[*]}"
echo "memcheck: suites ${suites[*]}; logs in $out"
start_all=$(date +%s)
declare -A results
tests_failed=0
for suite in "${suites[@]}"; do
    mkdir -p "$out/$suite"
    echo
    echo "=== $suite ==="
    t0=$(date +%s)
    set +e
    MEMCHECK_LOG_DIR="$out/$suite" VTASKS_SERVER="$wrapper" VTASKS_MODULE="$module" VTASKS_TARGET=module \
        cargo nextest run -p vtasks-module --test "$suite" -j 1 --no-fail-fast --no-tests=warn \
        2>&1 | tee "$out/$suite/nextest.log"
    status=${PIPESTATUS[0]}
    set -e
    [ "$status" -eq 0 ] || tests_failed=1
    summary=$(grep -E '^ *Summary ' "$out/$suite/nextest.log" | tail -1 | sed 's/^ *//')
    results[$suite]="exit $status, $(($(date +%s) - t0)) s: ${summary:-no summary}"
done

# Servers a test dropped are still writing their reports: wait for them.
if [ -s "$out/pids" ]; then
    deadline=$(($(date +%s) + 180))
    while [ "$(date +%s)" -lt "$deadline" ]; do
        alive=0
        while read -r pid; do
            s=$(ps -o stat= -p "$pid" 2>/dev/null) && [ "${s:0:1}" != Z ] && alive=1
        done <"$out/pids"
        [ $alive -eq 0 ] && break
        sleep 1
    done
    while read -r pid; do
        s=$(ps -o stat= -p "$pid" 2>/dev/null) && [ "${s:0:1}" != Z ] &&
            { echo "memcheck: killing leftover server $pid"; kill -KILL "$pid" 2>/dev/null || true; }
    done <"$out/pids"
fi

echo
echo "=== tests (server under valgrind; $(($(date +%s) - start_all)) s) ==="
for suite in "${suites[@]}"; do
    printf '  %-14s %s\n' "$suite" "${results[$suite]}"
done

# --- scan the logs ------------------------------------------------------------
echo
echo "=== valgrind ==="
set +e
python3 - "$out" "${suites[@]}" <<'EOF'
import collections, os, re, sys

out, suites = sys.argv[1], sys.argv[2:]
prefix = re.compile(r"^==\d+== ?")
frame = re.compile(r"^\s+(at|by) 0x[0-9A-Fa-f]+: (.*)$")


def in_module(line):
    # Valkey and the system libraries have no debug info here, so a frame
    # with a Rust source location can only be in libvtasks.so.
    return "libvtasks.so" in line or re.search(r"\.rs(:\d+)?\)\s*$", line) is not None


module_findings = []
other = collections.Counter()
other_example = {}
logs = crashed = incomplete = 0
for suite in suites:
    d = os.path.join(out, suite)
    if not os.path.isdir(d):
        continue
    for name in sorted(os.listdir(d)):
        if not (name.startswith("vg.") and name.endswith(".log")):
            continue
        logs += 1
        path = os.path.join(d, name)
        with open(path, errors="replace") as f:
            lines = [prefix.sub("", l.rstrip("\n")) for l in f]
        text = "\n".join(lines)
        if "ERROR SUMMARY" not in text:
            incomplete += 1
        if "Process terminating with default action" in text:
            crashed += 1
            other["process terminated by a signal"] += 1
            other_example.setdefault("process terminated by a signal", path)
        # Blocks are separated by blank lines; an error block is a headline
        # followed by stack frames.
        block = []
        for line in lines + [""]:
            if line.strip():
                block.append(line)
                continue
            if block and any(frame.match(l) for l in block):
                head = block[0]
                if head.startswith(("HEAP SUMMARY", "LEAK SUMMARY", "Memcheck,")) or \
                        "possibly lost" in head or "still reachable" in head or "indirectly lost" in head:
                    pass
                else:
                    if any(in_module(l) for l in block if frame.match(l)):
                        module_findings.append((suite, path, block))
                    else:
                        first = next((frame.match(l).group(2) for l in block if frame.match(l)), "")
                        key = re.sub(r"\d[\d,]* bytes in [\d,]+ blocks", "N bytes", head) + " @ " + first
                        key = re.sub(r"loss record [\d,]+ of [\d,]+", "", key)
                        other[key] += 1
                        other_example.setdefault(key, path)
            block = []

print(f"  server processes logged: {logs} (no final report, i.e. SIGKILLed: {incomplete})")
print(f"  errors / definite leaks with a frame in the module: {len(module_findings)}")
for suite, path, block in module_findings:
    print(f"\n  [{suite}] {path}")
    for l in block:
        print("    " + l)
if other:
    print("\n  outside the module (count, kind @ first frame, example log):")
    for key, n in other.most_common():
        print(f"    {n:4d}  {key}\n          {other_example[key]}")
else:
    print("  outside the module: none")
sys.exit(1 if module_findings else 0)
EOF
findings=$?
set -e
if [ "$tests_failed" -ne 0 ]; then
    echo "memcheck: a test failed under valgrind (see above)"
fi
[ "$findings" -eq 0 ] && [ "$tests_failed" -eq 0 ]
