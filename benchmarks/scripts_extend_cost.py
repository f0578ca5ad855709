"""Server time of one scripts-engine lease renewal (``EXTEND``) of N leases.

    python -m benchmarks.scripts_extend_cost

Starts a valkey-server without the module, enqueues and fetches N tasks
through the scripts engine, then pipelines 2,000 ``FCALL ... EXTEND`` of all
of them after ``CONFIG RESETSTAT`` and prints ``usec_per_call`` of
``cmdstat_fcall`` from ``INFO commandstats``. docs/DECISIONS.md ("The
scripts engine: short leases instead of a cut") quotes the figures.
"""

from __future__ import annotations

import subprocess
import tempfile
import time

import vtasks

from tests.chaos.harness import command, command_pipeline, info
from tests.conftest import free_port, server_binary

CALLS = 2000
SUFFIXES = (":ready", ":delayed", ":leased", ":dead", ":done", ":wake", ":waiting")


def main() -> None:
    port = free_port()
    server = subprocess.Popen(
        [server_binary(), "--port", str(port), "--save", "", "--dir", tempfile.mkdtemp()],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                command(port, "PING")
                break
            except OSError:
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.05)
        client = vtasks.Client(f"valkey://127.0.0.1:{port}", engine="scripts")
        for n in (1, 10, 50, 200):
            name = f"q{n}"
            queue = "{" + name + "}"
            keys = [queue] + [queue + s for s in SUFFIXES]
            client.native.enqueue(None, name, [(f"t{i}", b"{}", 0, None, None, None) for i in range(n)])
            function = command(port, "FUNCTION", "LIST")[0][1]  # type: ignore[index]
            got = command(port, "FCALL", function, 8, *keys, "FETCHN", 1, queue, "CONSUMER", "w",
                          "COUNT", n, "LEASE", 600000)
            leases = [(task[1], task[2]) for task in got[0]]  # type: ignore[index]
            task_keys = [f"{queue}:t:{id}" for id, _ in leases]
            items = [word for lease in leases for word in lease]
            extend = ("FCALL", function, 8 + len(task_keys), *keys, *task_keys, "EXTEND", queue, 5000,
                      len(leases), *items)
            command(port, "CONFIG", "RESETSTAT")
            command_pipeline(port, [extend] * CALLS)
            stats = dict(kv.split("=") for kv in info(port, "commandstats")["cmdstat_fcall"].split(","))
            print(f"EXTEND of {n} leases: {float(stats['usec_per_call']):.1f} us of server time per call")
    finally:
        server.kill()
        server.wait()


if __name__ == "__main__":
    main()
