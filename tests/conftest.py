"""The server harness for the Python tests: each test gets its own
valkey-server on a free port, in its own directory, started from the
project's module/valkey.conf with the module under test loaded.

``VTASKS_TARGET`` runs the same tests against a server without the module
(``scripts-valkey``) or against Redis (``scripts-redis``); clients then pick
the scripts engine by themselves (``engine="auto"``)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# The fault suite runs on its own: `make chaos` (VTASKS_CHAOS=full) or, at a
# smaller scale, `make chaos-ci` (VTASKS_CHAOS=ci).
collect_ignore = [] if os.environ.get("VTASKS_CHAOS") else ["chaos"]
# The installed-wheel tests need a built wheel: `make wheel-test` (part of
# `make test`) and `make dist-test` give it in VTASKS_WHEEL.
if not os.environ.get("VTASKS_WHEEL"):
    collect_ignore.append("dist")


def module_path() -> Path:
    env = os.environ.get("VTASKS_MODULE")
    if env:
        return Path(env)
    for profile in ("debug", "release"):
        candidate = ROOT / "target" / profile / "libvtasks.so"
        if candidate.exists():
            return candidate
    raise RuntimeError("libvtasks.so not built: run `make build`")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TARGET = os.environ.get("VTASKS_TARGET") or "module"
if TARGET not in ("module", "scripts-valkey", "scripts-redis"):
    raise RuntimeError(f"VTASKS_TARGET={TARGET!r}: expected module, scripts-valkey or scripts-redis")


def server_binary() -> str:
    if TARGET == "scripts-redis":
        return "redis-server"
    return os.environ.get("VTASKS_SERVER", "valkey-server")


class ValkeyServer:
    def __init__(
        self, extra: list[str] | None = None, with_module: bool | None = None, env: dict[str, str] | None = None
    ) -> None:
        """``with_module``: None follows ``VTASKS_TARGET``; ``env``: added to
        the server's environment."""
        self.env = {**os.environ, **(env or {})}
        if with_module is None:
            with_module = TARGET == "module"
        self.binary = server_binary() if not with_module else os.environ.get("VTASKS_SERVER", "valkey-server")
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="vtasks-pytest-"))
        self.extra = extra or []
        lines = []
        for line in (ROOT / "module" / "valkey.conf").read_text().splitlines():
            if line.strip().startswith("loadmodule "):
                if with_module:
                    lines.append(f"loadmodule {module_path()}")
            else:
                lines.append(line)
        (self.dir / "valkey.conf").write_text("\n".join(lines) + "\n")
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"valkey://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = open(self.dir / "server.log", "ab")
        self.process = subprocess.Popen(
            [self.binary, str(self.dir / "valkey.conf"),
             "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir), *self.extra],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=self.env,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        raise RuntimeError(f"{self.binary} did not start:\n{(self.dir / 'server.log').read_text()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL: no shutdown, nothing flushed beyond what the server
        already wrote."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def clients(self) -> list[dict[str, str]]:
        """``CLIENT LIST`` of every connection but the one asking, one dict
        of fields (``id``, ``flags``, ``cmd``, ...) per connection."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(b"*2\r\n$6\r\nCLIENT\r\n$4\r\nLIST\r\n")
            reply = s.makefile("rb")
            header = reply.readline()
            assert header.startswith(b"$"), header
            body = reply.read(int(header[1:]) + 2)[:-2].decode()
        listed = [dict(f.split("=", 1) for f in line.split(" ") if "=" in f) for line in body.splitlines()]
        return [c for c in listed if c.get("cmd") != "client|list"]

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def valkey() -> Iterator[ValkeyServer]:
    server = ValkeyServer()
    yield server
    server.close()


@pytest.fixture
def valkey_aof() -> Iterator[ValkeyServer]:
    server = ValkeyServer(["--appendonly", "yes", "--appendfsync", "always"])
    yield server
    server.close()
