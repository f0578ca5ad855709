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


def key_slot(key: str | bytes) -> int:
    """The cluster slot of a key, as ``CLUSTER KEYSLOT`` computes it
    (CRC16/XMODEM of its hash tag, or of the whole key)."""
    data = key.encode() if isinstance(key, str) else key
    start = data.find(b"{")
    if start >= 0:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1 : end]
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc % 16384


def server_command(port: int, *args: str | int) -> object:
    """One command to the server on ``port``; its reply decoded (an error
    reply raises ``RuntimeError``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        parts = [str(a).encode() for a in args]
        s.sendall(b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts))
        return _read_reply(s.makefile("rb"))


def _read_reply(f) -> object:  # type: ignore[no-untyped-def]
    line = f.readline()
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        return None if n < 0 else f.read(n + 2)[:-2].decode(errors="replace")
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_read_reply(f) for _ in range(n)]
    raise RuntimeError(f"unexpected reply {line!r}")


# The node timeout while a cluster's nodes join (see ValkeyCluster).
JOIN_NODE_TIMEOUT_MS = 15_000


class ValkeyCluster:
    """A Valkey Cluster of the current target's servers on free ports, each
    from the project's config with cluster mode on, joined by ``valkey-cli
    --cluster create`` (the primaries take the slots in equal ranges, each
    with its replicas), and ready once every node agrees on a full slot
    map. ``cluster-node-timeout`` is 1 s, so a primary's death is noticed
    and a replica takes over within a few seconds."""

    def __init__(self, primaries: int = 3, replicas: int = 0, extra: list[str] | None = None) -> None:
        args = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "1000",
                *(extra or [])]
        self.primaries = primaries
        self.nodes: list[ValkeyServer] = []
        try:
            for _ in range(primaries * (1 + replicas)):
                # The bus port is the data port + 10000 unless given: a
                # free port of the high range leaves it none.
                self.nodes.append(ValkeyServer([*args, "--cluster-port", str(free_port())]))
            # A node drops a handshake it has not completed within the node
            # timeout (1 s at least), and Valkey 8.0 never redoes one that
            # only one side dropped (valkey-io/valkey#1251): a node held up
            # for a second while joining (a busy machine) left the cluster
            # split for good. The nodes join with a long timeout and get
            # the configured one back once the cluster is up.
            timeouts = []
            for node in self.nodes:
                reply = server_command(node.port, "CONFIG", "GET", "cluster-node-timeout")
                assert isinstance(reply, list)
                timeouts.append(str(reply[1]))
                server_command(node.port, "CONFIG", "SET", "cluster-node-timeout", str(JOIN_NODE_TIMEOUT_MS))
            create = subprocess.run(
                ["valkey-cli", "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
                 "--cluster-replicas", str(replicas), "--cluster-yes"],
                capture_output=True, text=True, timeout=60,
            )
            if create.returncode != 0:
                raise RuntimeError(f"valkey-cli --cluster create failed:\n{create.stdout}{create.stderr}")
            self.wait_ready()
            for node, timeout in zip(self.nodes, timeouts, strict=True):
                server_command(node.port, "CONFIG", "SET", "cluster-node-timeout", timeout)
        except BaseException:
            self.close()
            raise

    @property
    def url(self) -> str:
        """A URL naming every node, as a client is seeded with."""
        return "valkey://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def alive(self) -> list[ValkeyServer]:
        return [n for n in self.nodes if n.process is not None and n.process.poll() is None]

    def slot_owners(self) -> list[tuple[int, int, int]]:
        """(first slot, last slot, primary's port) of every range, as the
        first live node sees it."""
        reply = server_command(self.alive()[0].port, "CLUSTER", "SLOTS")
        assert isinstance(reply, list)
        return sorted((int(r[0]), int(r[1]), int(r[2][1])) for r in reply)

    def primary_of(self, slot: int) -> ValkeyServer:
        port = next(p for a, b, p in self.slot_owners() if a <= slot <= b)
        return next(n for n in self.nodes if n.port == port)

    def wait_ready(self, timeout: float = 30) -> None:
        """Until the live nodes agree on a full slot map with as many
        primaries as it started with, each reporting ``cluster_state:ok``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                views = [server_command(n.port, "CLUSTER", "SLOTS") for n in self.alive()]
                states = [server_command(n.port, "CLUSTER", "INFO") for n in self.alive()]
                links = [server_command(n.port, "INFO", "replication") for n in self.alive()]
                owners = self.slot_owners()
            except (OSError, RuntimeError):
                views, states, links, owners = [None, 1], [], [], []
            covered = sum(b - a + 1 for a, b, _ in owners)
            # Replicas are linked to their primaries (a write can be WAITed for).
            linked = all("role:slave" not in str(r) or "master_link_status:up" in str(r) for r in links)
            if (all(v == views[0] for v in views) and all("cluster_state:ok" in str(s) for s in states)
                    and covered == 16384 and len({p for *_, p in owners}) == self.primaries and linked):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster never settled: {owners}")
            time.sleep(0.05)

    def node_id(self, node: ValkeyServer) -> str:
        reply = server_command(node.port, "CLUSTER", "MYID")
        assert isinstance(reply, str)
        return reply

    def reshard(self, source: ValkeyServer, target: ValkeyServer, slots: int) -> None:
        """Moves ``slots`` slots of ``source`` (the first of its ranges) to
        ``target`` with ``valkey-cli --cluster reshard``, keys and all."""
        done = subprocess.run(
            ["valkey-cli", "--cluster", "reshard", f"127.0.0.1:{source.port}",
             "--cluster-from", self.node_id(source), "--cluster-to", self.node_id(target),
             "--cluster-slots", str(slots), "--cluster-yes"],
            capture_output=True, text=True, timeout=300,
        )
        if done.returncode != 0:
            raise RuntimeError(f"valkey-cli --cluster reshard failed:\n{done.stdout}{done.stderr}")

    def close(self) -> None:
        for node in self.nodes:
            node.close()


@pytest.fixture
def valkey_cluster() -> Iterator[ValkeyCluster]:
    cluster = ValkeyCluster(3, 1)
    yield cluster
    cluster.close()


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"(unreadable: {e})"


class SentinelSet:
    """Three sentinels (``valkey-server --sentinel``, ``redis-server`` for
    the Redis target) watching ``primary`` as service ``mymaster``, quorum
    2, a primary unreachable for 1 s counted down: the URL a client is
    given names all three."""

    SERVICE = "mymaster"

    def __init__(self, primary: ValkeyServer, count: int = 3) -> None:
        self.primary = primary
        self.ports: list[int] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        self.dir = Path(tempfile.mkdtemp(prefix="vtasks-sentinel-"))
        binary = "redis-server" if TARGET == "scripts-redis" else os.environ.get("VTASKS_SERVER", "valkey-server")
        try:
            for i in range(count):
                port = free_port()
                conf = self.dir / f"sentinel-{i}.conf"
                conf.write_text(
                    f"port {port}\nbind 127.0.0.1\ndir {self.dir}\n"
                    f"sentinel monitor {self.SERVICE} 127.0.0.1 {primary.port} 2\n"
                    f"sentinel down-after-milliseconds {self.SERVICE} 1000\n"
                    f"sentinel failover-timeout {self.SERVICE} 5000\n"
                )
                log = open(self.dir / f"sentinel-{i}.log", "ab")
                self.processes.append(subprocess.Popen(
                    [binary, str(conf), "--sentinel"], stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                ))
                self.ports.append(port)
            for port in self.ports:
                self.wait_for(lambda p=port: server_command(p, "PING") == "PONG", "a sentinel to start")
            # Every sentinel knows the others (quorum) before a test kills anything.
            self.wait_for(lambda: all(self.others_known(p) == count - 1 for p in self.ports),
                          "the sentinels to find each other")
        except BaseException:
            self.close()
            raise

    def others_known(self, port: int) -> int:
        """How many other sentinels the one on ``port`` knows."""
        reply = server_command(port, "SENTINEL", "MASTER", self.SERVICE)
        assert isinstance(reply, list)
        fields = dict(zip(reply[::2], reply[1::2], strict=True))
        return int(fields["num-other-sentinels"])

    @property
    def url(self) -> str:
        return "valkey+sentinel://" + ",".join(f"127.0.0.1:{p}" for p in self.ports) + f"/{self.SERVICE}"

    def primary_port(self) -> int:
        """The primary's port as the first sentinel reports it."""
        reply = server_command(self.ports[0], "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.SERVICE)
        assert isinstance(reply, list)
        return int(reply[1])

    def wait_for(self, condition, what: str, timeout: float = 30,  # type: ignore[no-untyped-def]
                 servers: tuple[ValkeyServer, ...] = ()) -> None:
        """Waits for ``condition``; on timeout the error carries the end of
        every sentinel's log and of ``servers``' logs (they are deleted with
        their directories), which is what tells why."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if condition():
                    return
            except (OSError, RuntimeError, KeyError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}{self.log_tails(servers)}")
            time.sleep(0.05)

    def log_tails(self, servers: tuple[ValkeyServer, ...] = (), others: tuple[Path, ...] = ()) -> str:
        """The end of every sentinel's log, of ``servers``' logs and of
        ``others``: what tells why a failover went wrong, kept in a
        failure's message because the logs are deleted with their
        directories."""
        logs = [*sorted(self.dir.glob("sentinel-*.log")), *(s.dir / "server.log" for s in servers), *others]
        return "".join(f"\n--- {log}\n{tail(log)}" for log in logs)

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def workers() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Worker processes a test starts: stopped gracefully at its end, or
    killed if they do not stop."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.terminate()
    for process in started:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
