#!/usr/bin/env bash
# valkey-server under valgrind's memcheck, for `make valgrind`: the test
# harnesses start it in place of valkey-server (VTASKS_SERVER). Each
# server's report goes to $VALGRIND_LOGS/<pid>.log; the make target reads
# them afterwards (servers are killed at the end of a test, so the reports
# list errors as they happen rather than a final summary).
set -euo pipefail
logs=${VALGRIND_LOGS:-/tmp/vtasks-valgrind}
mkdir -p "$logs"
exec valgrind --tool=memcheck --error-limit=no --track-origins=no \
    --log-file="$logs/%p.log" valkey-server "$@"
