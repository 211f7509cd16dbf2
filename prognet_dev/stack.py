"""EmbeddedStack: Temporal, PostgreSQL, Redis, the SMTP sink and the Stripe sandbox (plus, for `prognet dev`, the
worker, the relay and the API) started together on one machine, with no Docker and no network.

    async with EmbeddedStack(stack_settings(tmp_path / "data")) as stack:     # every service on a free port
        stack.database_url, stack.redis_url, stack.temporal_address, stack.maildir, ...

The stack follows a Settings object: a service the settings give an external address for (DATABASE_URL, REDIS_URL,
TEMPORAL_ADDRESS, SMTP_HOST, STRIPE_API_BASE) is not started; the stack just reports (and for the database,
migrates) it. The others are started on the settings' ports.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Collection
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from prognet.settings import DEV_STRIPE_SECRET_KEY, DEV_STRIPE_WEBHOOK_SECRET, Settings

from .components import (
    REPO_ROOT,
    ApiFrontComponent,
    AppProcess,
    Component,
    EmbeddedPostgres,
    EmbeddedRedis,
    SmtpSinkComponent,
    StackError,
    StripeSandboxComponent,
    TemporalServer,
)
from .ports import free_port, port_is_free
from .process import LogSink
from .supervisor import RestartPolicy, supervise

HOST = "127.0.0.1"
SERVICES = frozenset({"temporal", "postgres", "redis", "smtp", "stripe"})


def print_log(name: str, line: str) -> None:
    """Default log sink: `name | line` on stdout."""
    sys.stdout.write(f"{name:>9} | {line}\n")
    sys.stdout.flush()


def stack_settings(data_dir: Path | str, **values: Any) -> Settings:
    """Settings for a stack of its own (tests, the benchmark): every service embedded, each on a free port.

    The service addresses are cleared so that a DATABASE_URL (or REDIS_URL, ...) in the environment never points a
    throwaway stack at a real service; `values` override anything (e.g. smtp_host=... for an external SMTP relay).
    """
    defaults: dict[str, Any] = {  # Any: Settings validates and converts each value
        "data_dir": Path(data_dir),
        "database_url": None,
        "migration_database_url": None,
        "redis_url": None,
        "temporal_address": None,
        "smtp_host": None,
        "stripe_api_base": None,
        "stripe_webhook_url": None,
        "temporal_port": free_port(HOST),
        "temporal_ui_port": free_port(HOST),
        "redis_port": free_port(HOST),
        "smtp_port": free_port(HOST),
        "stripe_sandbox_port": free_port(HOST),
        "api_port": free_port(HOST),
        "temporal_metrics_port": free_port(HOST),
        "worker_metrics_port": free_port(HOST),
        "worker_sdk_metrics_port": free_port(HOST),
    }
    return Settings(**(defaults | values))


class EmbeddedStack:
    """The embedded services, started in dependency order and stopped in reverse.

    `services` names the embedded services this stack may start (a service with an external address in the
    settings is never started); `app` adds the worker, the relay, the webhook dispatcher and the API as child
    processes (`prognet dev`): `workers` worker processes and `api_replicas` API processes, several of them on ports
    of their own behind a round-robin front on the API port (`front`; `api_url` is always the API port).
    After `start()` the resolved addresses are attributes: `database_url` (SQLAlchemy/asyncpg), `postgres_dsn`
    (plain asyncpg/libpq), `redis_url`, `temporal_address`, `temporal_namespace`, `temporal_ui_url`, `smtp_host`,
    `smtp_port`, `maildir`, `stripe_api_base`, `stripe_secret_key`, `stripe` (the sandbox component, whose
    `.sandbox` injects faults), `stripe_webhook_url`/`stripe_webhook_secret` (where the sandbox POSTs its events,
    by default the API's /v1/webhooks/stripe), `api_url` (None unless the API is started).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        services: Collection[str] = SERVICES,
        app: bool = False,
        run_migrations: bool = True,
        smtp_slow_seconds: float | None = None,
        extra_env: dict[str, str] | None = None,
        log: LogSink | None = None,
        workers: int = 1,
        api_replicas: int = 1,
    ) -> None:
        if workers < 1 or api_replicas < 1:
            raise ValueError("workers and api_replicas must be at least 1")
        unknown = set(services) - SERVICES
        if unknown:
            raise ValueError(f"unknown services {sorted(unknown)}; known: {sorted(SERVICES)}")
        host = HOST
        self.data_dir = Path(settings.data_dir).resolve()
        self.worker_metrics_port, self.worker_sdk_metrics_port = (
            settings.worker_metrics_port,
            settings.worker_sdk_metrics_port,
        )
        self.host = host
        self.log = log or print_log
        self.run_migrations = run_migrations
        self.extra_env = dict(extra_env or {})
        self.temporal_namespace = settings.temporal_namespace
        self.components: list[Component] = []
        self._started: list[Component] = []
        self.migrations_applied = False
        self._lock_fd: int | None = None  # the flock on <data dir>/.lock while started
        self._supervisor: asyncio.Task | None = None  # the task running supervise(), if any

        # Temporal
        self.temporal: TemporalServer | None = None
        self.temporal_ui_url: str | None = None
        if settings.temporal_address:
            self.temporal_address: str | None = settings.temporal_address
        elif "temporal" in services:
            self.temporal = TemporalServer(
                self.data_dir / "temporal",
                log=self.log,
                host=host,
                port=settings.temporal_port,
                ui_port=settings.temporal_ui_port,
                metrics_port=settings.temporal_metrics_port,
                namespace=self.temporal_namespace,
                # with the API started, the UI decodes payloads through its codec server
                codec_endpoint=f"http://{host}:{settings.api_port}/codec" if app else None,
            )
            self.temporal_address = self.temporal.address
            self.temporal_ui_url = self.temporal.ui_url
            self.components.append(self.temporal)
        else:
            self.temporal_address = None

        # PostgreSQL
        self.postgres: EmbeddedPostgres | None = None
        # database_url: what the app uses (the RLS-bound application role); migration_database_url: the owner.
        if settings.database_url:
            self.database_url: str | None = settings.database_url
            self.migration_database_url: str | None = settings.migration_database_url or settings.database_url
            self.postgres_dsn: str | None = _plain_dsn(self.migration_database_url)
        elif "postgres" in services:
            self.postgres = EmbeddedPostgres(self.data_dir / "postgres", log=self.log)
            self.database_url = self.postgres.app_database_url
            self.migration_database_url = self.postgres.database_url
            self.postgres_dsn = self.postgres.dsn
            self.components.append(self.postgres)
        else:
            self.database_url = self.migration_database_url = self.postgres_dsn = None

        # Redis
        self.redis: EmbeddedRedis | None = None
        if settings.redis_url:
            self.redis_url: str | None = settings.redis_url
        elif "redis" in services:
            self.redis = EmbeddedRedis(self.data_dir / "redis", log=self.log, host=host, port=settings.redis_port)
            self.redis_url = self.redis.url
            self.components.append(self.redis)
        else:
            self.redis_url = None

        # SMTP
        self.maildir = self.data_dir / "mail"
        self.smtp: SmtpSinkComponent | None = None
        if settings.smtp_host:
            self.smtp_host: str | None = settings.smtp_host
            self.smtp_port: int | None = settings.smtp_port
        elif "smtp" in services:
            self.smtp = SmtpSinkComponent(
                self.maildir, host=host, port=settings.smtp_port, slow_seconds=smtp_slow_seconds
            )
            self.smtp_host, self.smtp_port = host, self.smtp.sink.port
            self.components.append(self.smtp)
        else:
            self.smtp_host = self.smtp_port = None

        # Stripe: the sandbox unless an API base (api.stripe.com or another sandbox) is given
        self.stripe: StripeSandboxComponent | None = None
        self.stripe_secret_key = _secret(settings.stripe_secret_key)
        if settings.stripe_api_base:
            self.stripe_api_base: str | None = settings.stripe_api_base
        elif "stripe" in services:
            self.stripe = StripeSandboxComponent(
                self.data_dir / "stripe" / "state.json", host=host, port=settings.stripe_sandbox_port
            )
            self.stripe_api_base = self.stripe.api_base
            self.stripe_secret_key = self.stripe_secret_key or DEV_STRIPE_SECRET_KEY
            self.components.append(self.stripe)
        else:
            self.stripe_api_base = None

        self._infra = list(self.components)

        # the app itself (prognet dev)
        self.api_port = settings.api_port if app else None
        self.api_url = f"http://{host}:{self.api_port}" if app else None

        # The sandbox's webhooks go where STRIPE_WEBHOOK_URL says, else to the API's route; with neither, nowhere.
        self.stripe_webhook_url: str | None = None
        self.stripe_webhook_secret = _secret(settings.stripe_webhook_secret)
        if self.stripe is not None:
            self.stripe_webhook_url = settings.stripe_webhook_url or (
                f"{self.api_url}/v1/webhooks/stripe" if self.api_url else None
            )
            self.stripe_webhook_secret = self.stripe_webhook_secret or DEV_STRIPE_WEBHOOK_SECRET
            self.stripe.configure_webhooks(self.stripe_webhook_url, self.stripe_webhook_secret)

        self.metrics_rows: list[tuple[str, str, str]] = []  # where each /metrics is (prognet dev's banner)
        self.worker: AppProcess | None = None  # the first worker (of `workers`)
        self.workers: list[AppProcess] = []
        self.relay: AppProcess | None = None
        self.webhooks: AppProcess | None = None
        self.api: AppProcess | None = None  # the first replica (of `apis`)
        self.apis: list[AppProcess] = []
        self.front: ApiFrontComponent | None = None  # only with several replicas: they sit behind it
        self.consumers: AppProcess | None = None
        if app:
            self._add_app(settings, workers=workers, api_replicas=api_replicas)

    def _add_app(self, settings: Settings, *, workers: int, api_replicas: int) -> None:
        """The app's processes: `workers` workers, the relay, the webhook dispatcher and the API. One API replica
        listens on the API port itself; several listen on ports of their own behind a round-robin front there."""
        host = self.host
        for i in range(workers):
            name = "Worker" if workers == 1 else f"Worker {i + 1}"
            # each worker serves its own /metrics: the first on the configured ports, the others on free ones
            # (a second process on the same port would fail to start); 0 stays 0 (not served)
            metrics_ports = {
                "WORKER_METRICS_PORT": self.worker_metrics_port,
                "WORKER_SDK_METRICS_PORT": self.worker_sdk_metrics_port,
            }
            if i > 0:
                metrics_ports = {
                    key: free_port(settings.metrics_host) if port else 0 for key, port in metrics_ports.items()
                }
            self.workers.append(
                AppProcess(
                    name,
                    "worker",
                    log=self.log,
                    env=self.env() | {key: str(port) for key, port in metrics_ports.items()},
                    cwd=REPO_ROOT,
                    address=f"polls {self.temporal_address or '?'} ({self.temporal_namespace})",
                    log_name="worker" if workers == 1 else f"worker-{i + 1}",
                )
            )
            self.metrics_rows += [
                (f"Metrics: {label}", f"http://{settings.metrics_host}:{port}/metrics", "")
                for label, port in (
                    (name.lower(), metrics_ports["WORKER_METRICS_PORT"]),
                    (
                        f"Temporal SDK ({name.lower()})" if workers > 1 else "Temporal SDK",
                        metrics_ports["WORKER_SDK_METRICS_PORT"],
                    ),
                )
                if port
            ]
        self.relay = AppProcess(
            "Relay",
            "relay",
            log=self.log,
            env=self.env(),
            cwd=REPO_ROOT,
            address=f"domain_events → {_redact(self.redis_url or '?')} (events:*)",
        )
        self.webhooks = AppProcess(
            "Webhooks",
            "webhooks-dispatcher",
            log=self.log,
            env=self.env(),
            cwd=REPO_ROOT,
            address="events:all → webhook-{delivery} workflows",
        )
        ports = [settings.api_port] if api_replicas == 1 else [free_port(host) for _ in range(api_replicas)]
        for i, port in enumerate(ports):
            replica = f" (replica {i + 1} of {api_replicas})" if api_replicas > 1 else ""
            self.apis.append(
                AppProcess(
                    "API" if api_replicas == 1 else f"API {i + 1}",
                    "api",
                    log=self.log,
                    env=self.env() | {"API_PORT": str(port)},
                    cwd=REPO_ROOT,
                    listen=(host, port),
                    address=f"http://{host}:{port}/docs{replica}",
                    log_name="api" if api_replicas == 1 else f"api-{i + 1}",
                )
            )
            # per process, so each replica's own (the front would alternate between them)
            self.metrics_rows.append((f"Metrics: {self.apis[-1].name}", f"http://{host}:{port}/metrics", ""))
        if api_replicas > 1:
            self.front = ApiFrontComponent(host, settings.api_port, [(host, port) for port in ports])
        self.worker, self.api = self.workers[0], self.apis[0]
        front = [self.front] if self.front is not None else []
        self.components += [*self.workers, self.relay, self.webhooks, *self.apis, *front]
        # the event stream's projector and cache invalidator (prognet consume)
        self.consumers = AppProcess(
            "Consumers", "consume", log=self.log, env=self.env(), cwd=REPO_ROOT, address="reads events:all"
        )
        self.components.append(self.consumers)

    # --- what children and tests need ---------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        """The environment for a process that should use this stack (worker, API)."""
        env = dict(os.environ)
        env.update(self.service_env())
        env.update(self.extra_env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        # readable lines under the console's "Worker |" prefixes; JSON (the default) is for a log pipeline
        env.setdefault("LOG_FORMAT", "text")
        # incidents escalate level by level every 30 s, so an escalation can be watched (config/alerting.toml)
        env.setdefault("ALERT_ESCALATION_SECONDS", "30")
        # a failing webhook endpoint's deliveries retry at 0, 2 and 5 s, then dead-letter, so that can be watched
        env.setdefault("WEBHOOK_RETRY_SCHEDULE_SECONDS", "[0,2,5]")
        return env

    def service_env(self) -> dict[str, str]:
        """Only the variables that point at this stack's services."""
        values: dict[str, str | int | None] = {
            "PROGNET_DATA_DIR": str(self.data_dir),
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "TEMPORAL_ADDRESS": self.temporal_address,
            "TEMPORAL_NAMESPACE": self.temporal_namespace,
            "SMTP_HOST": self.smtp_host,
            "SMTP_PORT": self.smtp_port,
            "STRIPE_API_BASE": self.stripe_api_base,
            "WORKER_METRICS_PORT": self.worker_metrics_port,
            "WORKER_SDK_METRICS_PORT": self.worker_sdk_metrics_port,
        }
        if self.temporal is not None:  # the API lets the embedded UI's origin call /codec
            values["TEMPORAL_UI_PORT"] = self.temporal.ui_port
        if self.stripe is not None:  # the sandbox's key; a real key stays in the environment it came from
            values["STRIPE_SECRET_KEY"] = self.stripe_secret_key
            values["STRIPE_WEBHOOK_SECRET"] = self.stripe_webhook_secret
        if self.api_url:
            values["API_HOST"] = self.host
            values["API_PORT"] = self.api_port
            if "PUBLIC_BASE_URL" not in os.environ:
                values["PUBLIC_BASE_URL"] = self.api_url
        return {k: str(v) for k, v in values.items() if v is not None}

    def settings(self, **overrides: Any) -> Settings:
        """A Settings object pointing at this stack (for tests running the worker/API in-process)."""
        values: dict[str, Any] = {  # Any: Settings validates and converts each value
            "data_dir": self.data_dir,
            "database_url": self.database_url,
            "redis_url": self.redis_url,
            "temporal_address": self.temporal_address,
            "temporal_namespace": self.temporal_namespace,
            "smtp_host": self.smtp_host,
        }
        if self.smtp_port is not None:
            values["smtp_port"] = self.smtp_port
        if self.temporal is not None:
            values["temporal_ui_port"] = self.temporal.ui_port
        if self.stripe_api_base:
            values["stripe_api_base"] = self.stripe_api_base
        # the sandbox's keys, or those the stack was given for an external Stripe (the bench's sandbox process)
        if self.stripe_secret_key:
            values["stripe_secret_key"] = self.stripe_secret_key
        if self.stripe_webhook_secret:
            values["stripe_webhook_secret"] = self.stripe_webhook_secret
        if self.api_url:
            values.update(api_host=self.host, api_port=self.api_port, public_base_url=self.api_url)
        values.update(overrides)
        return Settings(**values)

    def processes(self) -> list:
        return [c.process for c in self._started if c.process is not None]

    def rows(self) -> list[tuple[str, str, str]]:
        rows: list[tuple[str, str, str]] = []
        if self.temporal is None and self.temporal_address:
            rows.append(("Temporal", f"{self.temporal_address} (external)", ""))
        if self.postgres is None and self.database_url:
            rows.append(("PostgreSQL", f"{_redact(self.database_url)} (external)", ""))
        if self.redis is None and self.redis_url:
            rows.append(("Redis", f"{_redact(self.redis_url)} (external)", ""))
        if self.smtp is None and self.smtp_host:
            rows.append(("SMTP", f"smtp://{self.smtp_host}:{self.smtp_port} (external)", ""))
        if self.stripe is None and self.stripe_api_base:
            rows.append(("Stripe", f"{self.stripe_api_base} (external)", ""))
        for component in self.components:
            rows.extend(component.rows())
        if self.api is not None:  # where the app's spans go (prognet.telemetry decides the same way)
            endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
                "OTEL_EXPORTER_OTLP_ENDPOINT"
            )
            if endpoint:
                rows.append(("Traces", f"OTLP to {endpoint}", ""))
            else:
                rows.append(("Traces", "prognet traces [--last N | TRACE_ID]", str(self.data_dir / "traces")))
        return rows + self.metrics_rows

    def table(self) -> str:
        rows = [("component", "address", "data"), *self.rows()]
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = [" | ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
        lines.insert(1, "-+-".join("-" * w for w in widths))
        return "\n".join(lines)

    # --- lifecycle ---------------------------------------------------------------------------------------
    def check_ports(self) -> None:
        """Raise StackError naming the first component whose port is taken."""
        for component in self.components:
            for label, host, port in component.ports():
                if not port_is_free(host, port):
                    raise StackError(component.name, f"{label} port {host}:{port} is busy")

    def _lock_data_dir(self) -> None:
        """Hold an exclusive flock on <data dir>/.lock so two stacks never share one Temporal/PostgreSQL/Redis state.

        The kernel drops the lock when this process dies, so a crash leaves nothing that blocks the next run.
        """
        import fcntl

        path = self.data_dir / ".lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StackError(
                "data dir", f"data dir {self.data_dir} is in use by another prognet process (pid {holder})"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def _unlock_data_dir(self) -> None:
        fd = self._lock_fd
        if fd is None:
            return
        (self.data_dir / ".lock").unlink(missing_ok=True)
        os.close(fd)
        self._lock_fd = None

    async def start(self) -> None:
        self.check_ports()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock_data_dir()
        try:
            # infrastructure in parallel (each is independent), then migrations, then the app
            results = await asyncio.gather(*(self._start_one(c) for c in self._infra), return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    raise result
            if self.run_migrations and self.database_url:
                await self.migrate()
            # then the app's processes, also in parallel: each copes with the others not being up yet
            app = self.components[len(self._infra) :]
            results = await asyncio.gather(*(self._start_one(c) for c in app), return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    raise result
        except BaseException:
            await self.stop()
            raise

    async def _start_one(self, component: Component) -> None:
        try:
            await component.start()
        except StackError:
            self._started.append(component)  # its process may still need reaping
            raise
        except asyncio.CancelledError:
            self._started.append(component)
            raise
        except Exception as exc:
            self._started.append(component)
            raise StackError(component.name, f"{component.name} failed to start: {exc}") from exc
        self._started.append(component)

    async def migrate(self) -> None:
        """Apply the Alembic migrations as the owner; on the embedded server, let the app role log in."""
        from models.migrate import upgrade

        if self.migration_database_url is None:
            raise StackError(
                "migrations", "no database to migrate: DATABASE_URL is unset and PostgreSQL is not embedded"
            )
        self.log("devstack", "applying migrations")
        try:
            await upgrade(self.migration_database_url)
            if self.postgres is not None:
                await self.postgres.allow_app_login()
        except Exception as exc:
            raise StackError("migrations", f"database migrations failed: {type(exc).__name__}: {exc}") from exc
        self.migrations_applied = True

    async def stop(self) -> None:
        """Stop everything that was started, in reverse order. Idempotent; never raises for one component."""
        supervisor = self._supervisor
        if supervisor is not None and supervisor is not asyncio.current_task():
            supervisor.cancel()  # a restart in progress must not race the shutdown
            await asyncio.wait({supervisor})
        # the app's processes together (a worker may take seconds to drain), then the services in reverse of the
        # declared order (SMTP, Redis, PostgreSQL, Temporal), whatever order they came up in
        app = [c for c in self._started if c not in self._infra]
        self._started = [c for c in self._started if c in self._infra]
        results = await asyncio.gather(*(c.stop() for c in app), return_exceptions=True)
        for component, result in zip(app, results, strict=True):
            if isinstance(result, Exception):
                self.log("devstack", f"error while stopping {component.name}: {result}")
        self._started.sort(key=lambda c: self.components.index(c) if c in self.components else -1)
        while self._started:
            component = self._started.pop()
            try:
                await component.stop()
            except Exception as exc:  # keep stopping the rest
                self.log("devstack", f"error while stopping {component.name}: {exc}")
        self._unlock_data_dir()

    async def supervise(self, policy: RestartPolicy | None = None) -> str:
        """Restart every started component that crashes, with backoff, until one crash-loops (see supervisor.py).

        Returns that one-line reason; the caller then stops the stack. stop() cancels a running supervision first.
        """
        self._supervisor = asyncio.current_task()
        try:
            return await supervise(list(self._started), self.log, policy)
        finally:
            self._supervisor = None

    async def __aenter__(self) -> EmbeddedStack:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


def _plain_dsn(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    return f"{scheme.split('+', 1)[0]}{sep}{rest}" if sep else url


def _redact(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    creds, at, hostpart = rest.rpartition("@")
    if not at or ":" not in creds:
        return url
    user = creds.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{hostpart}"
