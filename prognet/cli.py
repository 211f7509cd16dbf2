"""The `prognet` command.

    prognet dev          Temporal + Web UI, PostgreSQL, Redis, SMTP sink, worker and API on this machine
                         (--api-replicas N behind a round-robin front, --workers M)
    prognet worker       the Temporal worker (workers.main.run_worker)
    prognet consume      the event stream consumers: read-model projector and cache invalidator
    prognet events replay --projection NAME   rebuild a read model from domain_events;  prognet events parked
    prognet api          the HTTP API (uvicorn, api.app:create_served_app)
    prognet relay        the outbox relay: domain_events → Redis Streams (relay.relay)
    prognet webhooks-dispatcher  tenant events → webhook delivery workflows (webhooks.dispatcher)
    prognet webhook-receiver --port P --secret whsec_…  a local receiver that verifies and prints deliveries
    prognet events tail  print the event stream live;  prognet events catalogue  the event types (Markdown)
    prognet traces       the last traces kept under the data dir;  prognet traces TRACE_ID  one as a waterfall
    prognet migrate      apply database migrations (Alembic, upgrade head)
    prognet healthcheck api|worker|relay   a container healthcheck (exit 0 healthy)
    prognet smtp-sink    the development SMTP sink on its own
    prognet stripe-sandbox  the development Stripe sandbox on its own
    prognet mail list    messages the SMTP sink received;  prognet mail show N
    prognet admin grant EMAIL / revoke EMAIL   make a user a platform operator (or stop)
    prognet bench        the benchmark
    prognet chaos        2 API replicas + 3 workers under load while processes are killed; checks nothing was lost
    prognet screenshots  the README's pictures of the Temporal UI (docs/screenshots/, needs Chromium)

The development commands (dev, smtp-sink, stripe-sandbox, mail, bench, screenshots, and migrate/admin without
DATABASE_URL) use the development harness, package `prognet_dev`, which needs the dev extra; the runtime never
imports it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from prognet.settings import Settings

_COLORS = ["36", "35", "33", "32", "34", "31", "96", "95"]
EXIT_NO_DEV_EXTRA = 2
LogSink = Callable[[str, str], None]  # (component, line), as prognet_dev.process.LogSink (not imported here)


class DevExtraMissing(Exception):
    """The development harness (or one of its dependencies) is not installed."""


def run_service(main: Coroutine[Any, Any, object]) -> None:
    """Run a long-lived process's main coroutine on uvloop's event loop (libuv, the loop uvicorn gives the API):
    the worker, the consumers, the relay and the webhook dispatcher spend much of their CPU in the loop itself
    (readiness polling, socket writes), which libuv does in C."""
    import uvloop

    uvloop.run(main)


def _dev_harness():
    """The `prognet_dev` package, imported on first use: a runtime install (`pip install prognet`) lacks it."""
    try:
        import prognet_dev
    except ModuleNotFoundError as exc:
        raise DevExtraMissing(exc.name) from exc
    return prognet_dev


def _settings(args: argparse.Namespace) -> Settings:
    data_dir = getattr(args, "data_dir", None)
    if data_dir:
        os.environ["PROGNET_DATA_DIR"] = str(Path(data_dir).resolve())
    return Settings()


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr, flush=True)
    return 1


def _make_log_sink() -> LogSink:
    color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    assigned: dict[str, str] = {}

    def sink(name: str, line: str) -> None:
        prefix = f"{name:>9} |"
        if color:
            code = assigned.setdefault(name, _COLORS[len(assigned) % len(_COLORS)])
            prefix = f"\033[{code}m{prefix}\033[0m"
        sys.stdout.write(f"{prefix} {line}\n")
        sys.stdout.flush()

    return sink


class _SinkHandler(logging.Handler):
    """Routes the supervisor's own log records (e.g. the in-process SMTP sink) through the prefixed log stream."""

    def __init__(self, sink: LogSink) -> None:
        super().__init__()
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        name = "smtp" if record.name.startswith("prognet.smtp_sink") else record.name.rsplit(".", 1)[-1]
        self.sink(name, self.format(record))


# --- prognet dev --------------------------------------------------------------------------------------------


def cmd_dev(args: argparse.Namespace) -> int:
    dev = _dev_harness()
    try:
        settings = _settings(args)
    except Exception as exc:
        return _error(f"invalid settings: {exc}")
    sink = _make_log_sink()
    handler = _SinkHandler(sink)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logging.basicConfig(level="WARNING", handlers=[handler], force=True)
    for name in ("prognet", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(settings.log_level.upper())
    try:
        return asyncio.run(
            _dev(dev, settings, sink, with_app=not args.no_app, workers=args.workers, api_replicas=args.api_replicas)
        )
    except KeyboardInterrupt:
        return 130


async def _dev(dev, settings: Settings, sink, *, with_app: bool, workers: int = 1, api_replicas: int = 1) -> int:
    stack = dev.EmbeddedStack(settings, app=with_app, log=sink, workers=workers, api_replicas=api_replicas)
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    assert main_task is not None
    stop_requested = asyncio.Event()
    started = False

    def on_signal(signame: str) -> None:
        if stop_requested.is_set():
            sink("devstack", f"{signame} again: already stopping, please wait")
            return
        stop_requested.set()
        sink("devstack", f"{signame} received: stopping")
        if not started:
            main_task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig.name)

    try:
        await stack.start()
    except dev.StackError as exc:
        return _error(str(exc))
    except asyncio.CancelledError:
        return 130
    started = True

    print("\nProgNetwork is running:\n", flush=True)
    print(stack.table(), flush=True)
    print("\nCtrl-C stops everything. Logs follow.\n", flush=True)

    # a crashed component is restarted (and the log says so); only a crash loop or Ctrl-C/SIGTERM stops everything
    supervisor = asyncio.create_task(stack.supervise())
    stop_waiter = asyncio.create_task(stop_requested.wait())
    code = 0
    try:
        done, _ = await asyncio.wait({supervisor, stop_waiter}, return_when=asyncio.FIRST_COMPLETED)
        if supervisor in done:
            print(f"error: {supervisor.result()}", file=sys.stderr, flush=True)
            code = 1
    finally:
        supervisor.cancel()
        stop_waiter.cancel()
        await stack.stop()
        sink("devstack", "stopped")
    return code


# --- app processes --------------------------------------------------------------------------------------------


def cmd_worker(args: argparse.Namespace) -> int:
    _settings(args)
    try:
        from workers.main import ALL_TASK_QUEUES, run_worker
    except ImportError as exc:
        return _error(f"cannot import workers.main.run_worker: {exc}")
    queues = [q.strip() for q in (args.task_queues or ",".join(ALL_TASK_QUEUES)).split(",") if q.strip()]
    unknown = sorted(set(queues) - set(ALL_TASK_QUEUES))
    if unknown or not queues:
        return _error(f"unknown task queues {unknown}; known: {', '.join(ALL_TASK_QUEUES)}")
    with contextlib.suppress(KeyboardInterrupt):  # run_worker configures logging (prognet.logs)
        run_service(run_worker(task_queues=queues))
    return 0


def cmd_consume(args: argparse.Namespace) -> int:
    """The projector and the cache invalidator on `events:all`, until SIGTERM (the current entry finishes)."""
    settings = _settings(args)
    from workers.consumers import run_consumers

    run_service(run_consumers(settings))
    return 0


# --- prognet events ---------------------------------------------------------------------------------------------


def _database_url(settings: Settings) -> str | None:
    url = settings.database_url
    if url and url.startswith(("postgresql://", "postgres://")):
        url = "postgresql+asyncpg://" + url.partition("://")[2]
    return url


def _embedded_database_url(settings: Settings) -> str | None:
    """DATABASE_URL, else the running embedded database of the data dir (as the application role)."""
    if settings.database_url:
        return _database_url(settings)
    stack = _dev_harness().EmbeddedStack(settings, services={"postgres"}, log=lambda name, line: None)
    return stack.database_url


def cmd_events_replay(args: argparse.Namespace) -> int:
    from datetime import datetime

    settings = _settings(args)
    url = _embedded_database_url(settings)
    if not url:
        return _error("DATABASE_URL is not set and there is no embedded database")
    from workers.replay import replay

    def progress(done: int, total: int) -> None:
        percent = 100 * done // total if total else 100
        bar = "#" * (percent // 4)
        sys.stderr.write(f"\r{args.projection}: [{bar:<25}] {percent:3d}% ({done}/{total} events)")
        sys.stderr.flush()

    try:
        since = datetime.fromisoformat(args.since) if args.since else None
        done = asyncio.run(replay(url, args.projection, tenant_id=args.tenant, since=since, progress=progress))
    except Exception as exc:
        sys.stderr.write("\n")
        return _error(f"replay failed: {type(exc).__name__}: {exc}")
    sys.stderr.write("\n")
    print(f"{args.projection} rebuilt from {done} events and swapped in")
    return 0


def cmd_events_parked(args: argparse.Namespace) -> int:
    """Entries a consumer gave up on (retry limit, unknown event version), newest first."""
    settings = _settings(args)
    from redis.asyncio import Redis

    from workers.consumer import parked

    async def run() -> list[dict[str, str]]:
        redis = Redis.from_url(settings.redis_target, decode_responses=True, socket_connect_timeout=3)
        try:
            return await parked(redis, args.limit)
        finally:
            await redis.aclose()

    try:
        rows = asyncio.run(run())
    except Exception as exc:
        return _error(f"cannot read the parked entries: {type(exc).__name__}: {exc}")
    for row in rows:
        print(
            f"{row['parked_id']}  {row.get('consumer', '?'):<18} {row.get('type', '?'):<28} "
            f"seq={row.get('seq', '?')} attempts={row.get('attempts', '?')}  {row.get('reason', '')}"
        )
    if not rows:
        print("no parked entries")
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    settings = _settings(args)
    import uvicorn

    from api.http_protocol import HttpProtocol

    host = args.host or settings.api_host
    port = args.port or settings.api_port
    uvicorn.run(
        "api.app:create_served_app",
        factory=True,
        host=host,
        port=port,
        http=HttpProtocol,  # httptools, a response's head and body in one write
        log_level=settings.log_level.lower(),
        log_config=None,  # uvicorn's own records go through the app's handler (prognet.logs), JSON or text
        access_log=False,  # the app writes its own access line (api/request_log.py), with the trace id
        proxy_headers=True,
    )
    return 0


def cmd_relay(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from relay.relay import run_relay

    if settings.relay_metrics_port:  # Prometheus sees the relay up (its lag is the API's series, from Redis)
        from prometheus_client import start_http_server

        start_http_server(settings.relay_metrics_port, addr=settings.metrics_host)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)  # finish the batch in hand, release the lock, exit
        await run_relay(settings, stop)

    run_service(run())
    return 0


def cmd_webhooks_dispatcher(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from webhooks.dispatcher import run_dispatcher

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)  # finish the entry in hand, then exit
        await run_dispatcher(settings, stop)

    run_service(run())
    return 0


def cmd_webhook_receiver(args: argparse.Namespace) -> int:
    from webhooks.receiver import WebhookReceiver, serving

    receiver = WebhookReceiver(secrets=args.secret, fail=args.fail, out=lambda line: print(line, flush=True))

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with serving(receiver, args.host, args.port) as url:
            print(f"webhook receiver on {url}/ (failing the first {args.fail})", flush=True)
            await stop.wait()

    asyncio.run(run())
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if settings.database_url:
        return _run_upgrade(settings.migration_database_url or settings.database_url)
    # no DATABASE_URL: migrate the embedded database in the data dir (start it just for this)
    dev = _dev_harness()

    async def run() -> int:
        stack = dev.EmbeddedStack(settings, services={"postgres"}, log=_make_log_sink())
        try:
            async with stack:
                print(f"migrated {stack.migration_database_url}")
        except dev.StackError as exc:
            return _error(str(exc))
        return 0

    return asyncio.run(run())


def _run_upgrade(url: str) -> int:
    from models.migrate import upgrade

    try:
        asyncio.run(upgrade(url))
    except Exception as exc:
        return _error(f"migrations failed: {type(exc).__name__}: {exc}")
    print("database is at the latest revision")
    return 0


def cmd_healthcheck(args: argparse.Namespace) -> int:
    from models.names import EMAIL_SEND_TASK_QUEUE, EMAIL_TASK_QUEUE, TASK_QUEUE
    from prognet.healthcheck import check

    every = (TASK_QUEUE, EMAIL_TASK_QUEUE, EMAIL_SEND_TASK_QUEUE)  # as workers.main, without importing the worker
    queues = [q.strip() for q in (args.task_queues or ",".join(every)).split(",") if q.strip()]
    healthy = check(args.component, _settings(args), queues)
    print(f"{args.component}: {'healthy' if healthy else 'unhealthy'}")
    return 0 if healthy else 1


# --- platform operators -------------------------------------------------------------------------------------


def cmd_admin(args: argparse.Namespace) -> int:
    """`prognet admin grant|revoke EMAIL`: set or clear users.is_platform_admin, recorded as a domain event."""
    try:
        settings = _settings(args)
    except Exception as exc:
        return _error(f"invalid settings: {exc}")
    grant = args.admin_command == "grant"
    url = settings.migration_database_url or settings.database_url
    if url:
        return asyncio.run(_set_platform_admin(url, args.email, grant))
    # no DATABASE_URL: the embedded database of the data dir, the running one (prognet dev) or started for this
    dev = _dev_harness()

    async def run() -> int:
        stack = dev.EmbeddedStack(settings, services={"postgres"}, log=lambda name, line: None)
        assert stack.migration_database_url and stack.postgres_dsn
        if await _postgres_answers(stack.postgres_dsn):
            return await _set_platform_admin(stack.migration_database_url, args.email, grant)
        try:
            async with stack:
                return await _set_platform_admin(stack.migration_database_url, args.email, grant)
        except dev.StackError as exc:
            return _error(str(exc))

    return asyncio.run(run())


async def _postgres_answers(dsn: str) -> bool:
    import asyncpg

    try:
        conn = await asyncpg.connect(dsn, timeout=3)
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return False
    await conn.close()
    return True


async def _set_platform_admin(database_url: str, email: str, grant: bool) -> int:
    from sqlalchemy import func
    from sqlmodel import select

    from models.db import make_engine, transaction
    from models.events import record_event
    from models.tables import User

    if database_url.startswith(("postgresql://", "postgres://")):
        database_url = "postgresql+asyncpg://" + database_url.partition("://")[2]
    engine = make_engine(database_url)
    try:
        async with transaction(engine) as session:
            user = (
                await session.exec(
                    select(User).where(func.lower(User.email) == email.strip().lower()).with_for_update()
                )
            ).first()
            if user is None:
                return _error(f"no user with that email: {email}")
            if user.is_platform_admin == grant:
                print(f"{user.email} {'is already' if grant else 'was not'} a platform admin")
                return 0
            user.is_platform_admin = grant
            session.add(user)
            record_event(
                session,
                "user.platform_admin_granted" if grant else "user.platform_admin_revoked",
                "user",
                user.id,
                {"via": "prognet admin"},
            )
        print(f"{user.email} {'is now' if grant else 'is no longer'} a platform admin")
        return 0
    except Exception as exc:
        return _error(f"database error: {type(exc).__name__}: {exc}")
    finally:
        await engine.dispose()


# --- SMTP sink and mail -------------------------------------------------------------------------------------


def _maildir(args: argparse.Namespace, settings: Settings) -> Path:
    return Path(args.maildir) if getattr(args, "maildir", None) else settings.data_dir / "mail"


def cmd_smtp_sink(args: argparse.Namespace) -> int:
    settings = _settings(args)
    dev = _dev_harness()

    port = args.port or settings.smtp_port
    maildir = _maildir(args, settings).resolve()
    if not dev.port_is_free(args.host, port):
        return _error(f"SMTP sink port {args.host}:{port} is busy")
    logging.basicConfig(level="INFO", format="%(asctime)s smtp | %(message)s")
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd's per-command chatter

    sink = dev.SmtpSink(maildir, host=args.host, port=port, slow_seconds=args.slow_seconds)
    return _serve_until_signal(
        sink,
        lambda: (
            f"SMTP sink listening on {args.host}:{sink.port}, storing messages in {maildir} "
            f"(test tags: +fail421, +fail550, +slow = {args.slow_seconds:g}s)"
        ),
    )


def _serve_until_signal(service, banner) -> int:
    """Start an in-process service (start()/stop()), print its banner, run until SIGINT/SIGTERM."""

    async def run() -> None:
        await service.start()
        print(banner(), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await service.stop()

    asyncio.run(run())
    return 0


def cmd_stripe_sandbox(args: argparse.Namespace) -> int:
    settings = _settings(args)
    dev = _dev_harness()

    port = args.port or settings.stripe_sandbox_port
    state_file = (
        None if args.in_memory else Path(args.state_file or settings.data_dir / "stripe" / "state.json").resolve()
    )
    if not dev.port_is_free(args.host, port):
        return _error(f"Stripe sandbox port {args.host}:{port} is busy")
    logging.basicConfig(level="INFO", format="%(asctime)s stripe | %(message)s")
    from models.names import STRIPE_WEBHOOK_EVENTS

    secret = settings.stripe_webhook_secret.get_secret_value() if settings.stripe_webhook_secret else None
    sandbox = dev.StripeSandbox(
        state_file=state_file,
        host=args.host,
        port=port,
        webhook_url=settings.stripe_webhook_url,
        webhook_secret=secret,
        webhook_events=STRIPE_WEBHOOK_EVENTS,  # what the API acts on, as its endpoint at Stripe is subscribed
    )
    return _serve_until_signal(
        sandbox,
        lambda: (
            f"Stripe sandbox (development only) on {sandbox.api_base}, state in {state_file or 'memory'}\n"
            f"  STRIPE_API_BASE={sandbox.api_base} STRIPE_SECRET_KEY=sk_test_…"
            f"  admin: {sandbox.api_base}/_sandbox/docs\n"
            f"  webhooks: {settings.stripe_webhook_url or 'recorded only (set STRIPE_WEBHOOK_URL to send them)'}"
        ),
    )


def _messages(args: argparse.Namespace, settings) -> list:
    """The sink's messages, oldest first, narrowed by --to (address) and --subject (substring)."""
    return [
        m
        for m in _dev_harness().read_messages(_maildir(args, settings))
        if (not args.to or str(m.get("To", "")).lower() == args.to.lower())
        and (not args.subject or args.subject.lower() in str(m.get("Subject", "")).lower())
    ]


def _mail_filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir")
    p.add_argument("--maildir")
    p.add_argument("--to", help="only messages to this address")
    p.add_argument("--subject", help="only messages whose subject contains this")


def cmd_mail_list(args: argparse.Namespace) -> int:
    settings = _settings(args)
    delivery_date = _dev_harness().delivery_date
    maildir = _maildir(args, settings)
    messages = _messages(args, settings)
    if not messages:
        print(f"no messages in {maildir}")
        return 0
    for i, msg in enumerate(messages, 1):
        print(f"{i:>4}  {delivery_date(msg)[:31]:<31}  {str(msg.get('To', ''))[:40]:<40}  {msg.get('Subject', '')}")
    return 0


def cmd_mail_show(args: argparse.Namespace) -> int:
    settings = _settings(args)
    messages = _messages(args, settings)
    index = args.number - 1 if args.number > 0 else args.number
    try:
        msg = messages[index]
    except IndexError:
        return _error(f"no message number {args.number} (there are {len(messages)})")
    if args.raw:
        sys.stdout.write(msg.as_string())
        return 0
    print(f"Date: {_dev_harness().delivery_date(msg)}")
    for header in ("From", "To", "Subject"):
        print(f"{header}: {msg.get(header, '')}")
    print()
    part = msg.get_body(preferencelist=("html",) if args.html else ("plain", "html"))
    print(part.get_content() if part is not None else "(no body)")
    return 0


# --- events ---------------------------------------------------------------------------------------------------


def cmd_events_tail(args: argparse.Namespace) -> int:
    settings = _settings(args)  # REDIS_URL, else the embedded Redis of `prognet dev` on this machine (REDIS_PORT)
    from redis.asyncio import Redis

    from relay.tail import tail

    async def run() -> None:
        redis = Redis.from_url(settings.redis_target, socket_connect_timeout=5)
        try:
            await tail(redis, tenant=args.tenant, user=args.user, types=args.type, count=args.count)
        finally:
            await redis.aclose()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
    return 0


def cmd_events_catalogue(args: argparse.Namespace) -> int:
    from models.event_catalogue import markdown

    print(markdown())
    return 0


def _add_events_commands(sub) -> None:
    """`prognet events ACTION`: one subparser per action."""
    events = sub.add_parser("events", help="the domain event stream: tail it, list its types, rebuild read models")
    actions = events.add_subparsers(dest="events_command", metavar="ACTION", required=True)
    p = actions.add_parser("tail", help="print events live from the stream (from now on), one line each")
    p.add_argument("--data-dir", help="data directory (default: $PROGNET_DATA_DIR or .prognet)")
    p.add_argument("--tenant", help="only this tenant's events (its own stream)")
    p.add_argument("--user", help="only events concerning this user (their own stream)")
    p.add_argument("--type", action="append", help="only this event type; a glob such as 'user.*'; repeatable")
    p.add_argument("--count", type=int, help="exit after printing this many events")
    p.set_defaults(func=cmd_events_tail)
    p = actions.add_parser("catalogue", help="every event type with its version and payload, as a Markdown table")
    p.set_defaults(func=cmd_events_catalogue)
    p = actions.add_parser(
        "replay",
        help="rebuild a read model from domain_events into a fresh table and swap it in (the projector may run)",
    )
    p.add_argument("--projection", required=True, choices=["tenant_overview", "user_profile"])
    p.add_argument("--tenant", type=uuid.UUID, help="only the rows this tenant's events touch")
    p.add_argument("--since", help="only the rows touched by events since this ISO time (rebuilt from all events)")
    p.add_argument("--data-dir", help="data directory (default: $PROGNET_DATA_DIR or .prognet)")
    p.set_defaults(func=cmd_events_replay)
    p = actions.add_parser("parked", help="entries a consumer parked (retry limit, unknown version), newest first")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--data-dir", help="data directory (default: $PROGNET_DATA_DIR or .prognet)")
    p.set_defaults(func=cmd_events_parked)


# --- bench ----------------------------------------------------------------------------------------------------


def cmd_traces(args: argparse.Namespace) -> int:
    from prognet import telemetry, trace_view

    settings = _settings(args)
    directory = telemetry.traces_dir(settings)
    spans = trace_view.load_spans(directory) if directory.is_dir() else []
    if args.trace_id:
        found = trace_view.find_trace(spans, args.trace_id)
        if not found:
            return _error(f"no trace {args.trace_id} in {directory}")
        print(trace_view.render_waterfall(found, width=args.width, fold_sql=args.fold_sql))
    else:
        print(trace_view.render_list(spans, args.last))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    _dev_harness()
    from prognet_dev.bench import main as bench

    return int(bench(args.bench_args) or 0)


def cmd_chaos(args: argparse.Namespace) -> int:
    _dev_harness()
    from prognet_dev.chaos import main as chaos

    return chaos(args.chaos_args)


def cmd_screenshots(args: argparse.Namespace) -> int:
    _dev_harness()
    from prognet_dev.screenshots import main as screenshots

    return screenshots(args.out, keep=args.keep)


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


# --- parser ------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prognet", description="ProgNetwork: a Temporal saga engine with an HTTP API."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, func, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--data-dir", help="data directory (default: $PROGNET_DATA_DIR or .prognet)")
        p.set_defaults(func=func)
        return p

    p = add("dev", cmd_dev, "start the whole system on this machine (no Docker, no network)")
    p.add_argument("--no-app", action="store_true", help="start only the services, not the worker and the API")
    p.add_argument(
        "--api-replicas",
        type=_at_least_one,
        default=1,
        metavar="N",
        help="API processes (default 1); with more, each has a port of its own behind a round-robin front on API_PORT",
    )
    p.add_argument("--workers", type=_at_least_one, default=1, metavar="M", help="worker processes (default 1)")
    p = add("worker", cmd_worker, "run the Temporal worker")
    p.add_argument(
        "--task-queues",
        help="comma-separated task queues to poll (default: all; e.g. prognet-email-send for a sender of its own)",
    )
    add("consume", cmd_consume, "run the event stream consumers (read-model projector, cache invalidator)")
    p = add("api", cmd_api, "run the HTTP API")
    p.add_argument("--host", help="bind address (default: API_HOST)")
    p.add_argument("--port", type=int, help="port (default: API_PORT)")
    add("relay", cmd_relay, "run the outbox relay (domain_events → Redis Streams; one leads, others stand by)")
    add(
        "webhooks-dispatcher",
        cmd_webhooks_dispatcher,
        "run the webhook dispatcher (tenant events on events:all → webhook-{delivery} workflows)",
    )
    p = sub.add_parser(
        "webhook-receiver",
        help="a local webhook receiver: verifies signatures, prints one line per delivery (development only)",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument(
        "--secret", action="append", required=True, help="the endpoint's whsec_… secret (repeat during a rotation)"
    )
    p.add_argument("--fail", type=int, default=0, metavar="N", help="answer 500 to the first N deliveries")
    p.set_defaults(func=cmd_webhook_receiver)
    p = add("healthcheck", cmd_healthcheck, "exit 0 when this container's api, worker or relay is healthy")
    p.add_argument("component", choices=["api", "worker", "relay"])
    p.add_argument("--task-queues", help="worker: the task queues it serves (default: all)")
    add("migrate", cmd_migrate, "apply database migrations (DATABASE_URL, or the embedded database)")
    p = add("smtp-sink", cmd_smtp_sink, "run the development SMTP sink on its own")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, help="port (default: SMTP_PORT, 1025)")
    p.add_argument("--maildir", help="Maildir to store into (default: <data dir>/mail)")
    p.add_argument(
        "--slow-seconds",
        type=float,
        default=15.0,
        help="how long a +slow recipient's DATA reply is held (default: 15, above the send timeout)",
    )
    p = add("stripe-sandbox", cmd_stripe_sandbox, "run the development Stripe sandbox on its own")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, help="port (default: STRIPE_SANDBOX_PORT, 12111)")
    p.add_argument("--state-file", help="JSON state file (default: <data dir>/stripe/state.json)")
    p.add_argument("--in-memory", action="store_true", help="keep no state between runs")

    admin = sub.add_parser("admin", help="platform operators (users who may act on every tenant's dead letters)")
    admin_sub = admin.add_subparsers(dest="admin_command", metavar="ACTION", required=True)
    for action, help_text in (
        ("grant", "make the user with this email a platform admin"),
        ("revoke", "clear the platform-admin flag of the user with this email"),
    ):
        p = admin_sub.add_parser(
            action,
            help=help_text,
            description=help_text + " (MIGRATION_DATABASE_URL or "
            "DATABASE_URL, else the embedded database of the data dir)",
        )
        p.add_argument("email", help="the user's email (case-insensitive)")
        p.add_argument("--data-dir", help="data directory (default: $PROGNET_DATA_DIR or .prognet)")
        p.set_defaults(func=cmd_admin)

    _add_events_commands(sub)

    p = add(
        "traces",
        cmd_traces,
        "the traces kept under the data dir (development, no OTLP exporter): the last ones, or one as a waterfall",
    )
    p.add_argument("trace_id", nargs="?", help="draw this trace (its id, or an unambiguous prefix)")
    p.add_argument("--last", type=int, default=10, metavar="N", help="list the last N traces (default: 10)")
    p.add_argument("--width", type=int, default=40, help="width of the duration bars (default: 40)")
    p.add_argument("--fold-sql", action="store_true", help="one line for each step's SQL statements (`sql ×N`)")

    mail = sub.add_parser("mail", help="read the messages the SMTP sink received")
    mail_sub = mail.add_subparsers(dest="mail_command", metavar="ACTION", required=True)
    p = mail_sub.add_parser("list", help="list messages, oldest first")
    _mail_filters(p)
    p.set_defaults(func=cmd_mail_list)
    p = mail_sub.add_parser("show", help="show message N (1 = oldest, -1 = newest) of those listed")
    p.add_argument("number", type=int)
    _mail_filters(p)
    p.add_argument("--html", action="store_true", help="show the HTML part")
    p.add_argument("--raw", action="store_true", help="print the raw message")
    p.set_defaults(func=cmd_mail_show)

    p = sub.add_parser("bench", help="run the benchmark", add_help=False)
    p.add_argument("bench_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser(
        "chaos",
        help="2 API replicas + 3 workers under a saga load while processes are killed; checks nothing was lost",
        add_help=False,
    )
    p.add_argument("chaos_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_chaos)

    p = sub.add_parser(
        "screenshots",
        help="regenerate the README's screenshots of the Temporal UI (a stack of its own, demo data, Chromium)",
    )
    p.add_argument("--out", type=Path, help="where the PNGs go (default: docs/screenshots)")
    p.add_argument("--keep", action="store_true", help="keep the stack's temporary data directory")
    p.set_defaults(func=cmd_screenshots)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["bench"]:  # everything after `bench` (options included) belongs to the benchmark
            return cmd_bench(argparse.Namespace(bench_args=argv[1:]))
        if argv[:1] == ["chaos"]:  # the same for the chaos test
            return cmd_chaos(argparse.Namespace(chaos_args=argv[1:]))
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except DevExtraMissing as exc:
        print(
            f"error: this command needs the development extra (module {exc} is missing): pip install 'prognet[dev]'",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_NO_DEV_EXTRA


if __name__ == "__main__":
    sys.exit(main())
