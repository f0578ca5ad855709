"""``valkeys://`` and ``rediss://`` URLs: the client and a worker (both of
its connections) over TLS, against the target's server (Valkey with the
module, Valkey or Redis with the scripts engine) serving TLS with a
certificate from a CA made for the test. The server's certificate is
verified unless the URL ends in ``#insecure``."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import vtasks

from tests import sample_tasks
from tests.conftest import TARGET, ValkeyServer, free_port


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[ValkeyServer, int]]:
    """A server with a TLS port besides its plain one; its certificate,
    for 127.0.0.1, is signed by a CA that only this test knows."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "1", "-subj", "/CN=vtasks test CA", cwd=tmp_path)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=127.0.0.1", cwd=tmp_path)
    (tmp_path / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "1", "-extfile", "san.ext", cwd=tmp_path)
    port = free_port()
    server = ValkeyServer([
        "--tls-port", str(port),
        "--tls-cert-file", str(tmp_path / "server.pem"),
        "--tls-key-file", str(tmp_path / "server.key"),
        "--tls-ca-cert-file", str(tmp_path / "ca.pem"),
        "--tls-auth-clients", "no",
    ])
    yield server, port
    server.close()


@pytest.mark.parametrize("scheme", ["valkeys", "rediss"])
def test_a_client_and_a_worker_run_tasks_over_tls(tls_server, scheme, runs):
    server, port = tls_server
    client = vtasks.Client(f"{scheme}://127.0.0.1:{port}/#insecure")
    assert client.engine == ("module" if TARGET == "module" else "scripts")
    ids = [client.enqueue_sync(sample_tasks.add, n, 1) for n in range(20)]
    worker = vtasks.Worker(client, burst=True, handle_signals=False, block=0.2)
    asyncio.run(worker.run())
    assert [client.get_sync("default", task_id).result for task_id in ids] == [n + 1 for n in range(20)]
    assert worker.succeeded == 20


def test_the_server_certificate_is_verified_unless_the_url_says_insecure(tls_server):
    server, port = tls_server
    # Signed by a CA the client does not trust: refused, not silently used.
    with pytest.raises(vtasks.ConnectionFailed, match="(?i)certificate"):
        vtasks.Client(f"valkeys://127.0.0.1:{port}").stats_sync("default")
    # A TLS URL on the plain port fails: the scheme really means TLS.
    with pytest.raises(vtasks.ConnectionFailed):
        vtasks.Client(f"valkeys://127.0.0.1:{server.port}/#insecure", connect_timeout=2.0).stats_sync("default")


@pytest.fixture
def runs(tmp_path, monkeypatch):
    path = tmp_path / "runs.txt"
    path.touch()
    monkeypatch.setenv("VTASKS_TEST_RUNS", str(path))
    return path
