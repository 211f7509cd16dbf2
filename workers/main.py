"""The worker process: the sagas on `prognet-main`, email delivery on `prognet-email` and `prognet-email-send`,
webhook deliveries on `prognet-webhooks`."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Collection
from contextlib import AsyncExitStack
from datetime import timedelta

from prometheus_client import start_http_server
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import Worker

from activities.alerting import AlertingActivities, ensure_alert_schedule
from activities.billing import BillingActivities
from activities.circuits import SMTP, STRIPE, Circuits
from activities.email_change import EmailChangeActivities
from activities.email_delivery import EmailDeliveryActivities
from activities.email_handoff import EmailHandoff
from activities.invitations import InvitationActivities
from activities.invoices import InvoiceActivities
from activities.schedules import ScheduleActivities
from activities.subscriptions import SubscriptionActivities
from activities.tenants import TenantActivities
from activities.users import UserActivities
from activities.webhooks import WebhookActivities
from models.alerting import AlertConfigError, load_alerting_config
from models.db import make_engine
from models.names import EMAIL_SEND_TASK_QUEUE, EMAIL_TASK_QUEUE, TASK_QUEUE, WEBHOOK_TASK_QUEUE
from models.retry_interceptor import RetryPoliciesInterceptor
from models.retry_policies import SagaRetryPolicies
from prognet import telemetry
from prognet.payload_codec import data_converter
from prognet.send_rate import SendRateLimiter
from prognet.settings import Settings, get_settings
from workers.interceptors import ObservabilityInterceptor
from workflows.alert_evaluator import AlertEvaluatorWorkflow
from workflows.billing_cycle import BillingCycleWorkflow
from workflows.billing_trigger import BillingTriggerWorkflow
from workflows.email_change import EmailChangeWorkflow
from workflows.email_delivery import EmailDeliveryWorkflow
from workflows.incident import IncidentWorkflow
from workflows.invitation import InvitationWorkflow
from workflows.paid_signup import PaidSignupWorkflow
from workflows.registration import RegistrationWorkflow
from workflows.subscription import SubscriptionWorkflow
from workflows.tenant_provisioning import TenantProvisioningWorkflow
from workflows.webhook_delivery import WebhookDeliveryWorkflow

log = logging.getLogger(__name__)

# How long a stopping worker lets running activities finish before cancelling them
GRACEFUL_SHUTDOWN = timedelta(seconds=10)

WORKFLOWS = [
    RegistrationWorkflow,
    TenantProvisioningWorkflow,
    InvitationWorkflow,
    SubscriptionWorkflow,
    BillingCycleWorkflow,
    BillingTriggerWorkflow,
    PaidSignupWorkflow,
    EmailChangeWorkflow,
    AlertEvaluatorWorkflow,
    IncidentWorkflow,
]
ALL_WORKFLOWS = [*WORKFLOWS, EmailDeliveryWorkflow, WebhookDeliveryWorkflow]


def activities_for(engine: AsyncEngine, settings: Settings, circuits: Circuits | None = None) -> list:
    circuits = circuits or Circuits(engine, settings)
    token_key = settings.derived_key("tokens")
    users = UserActivities(engine, token_key)
    email_changes = EmailChangeActivities(engine, token_key)
    tenants = TenantActivities(engine)
    invitations = InvitationActivities(engine, token_key)
    billing = BillingActivities(settings, breaker=circuits.breaker(STRIPE), redis=circuits.redis)
    invoices = InvoiceActivities(engine)
    subscriptions = SubscriptionActivities(engine)
    return [
        users.create_pending_user,
        users.delete_pending_user,
        users.issue_verification_token,
        users.revoke_verification_token,
        users.activate_user,
        email_changes.reserve,
        email_changes.issue_token,
        email_changes.release,
        email_changes.swap_email,
        tenants.create_tenant,
        tenants.mark_tenant_failed,
        tenants.add_membership,
        tenants.remove_membership,
        tenants.create_billing_config,
        tenants.delete_billing_config,
        tenants.apply_default_settings,
        tenants.remove_default_settings,
        tenants.activate_tenant,
        tenants.discard_tenant,
        invitations.issue_invitation,
        invitations.complete_invitation,
        invitations.close_invitation,
        billing.create_stripe_customer,
        billing.delete_stripe_customer,
        billing.create_payment_intent,
        billing.retrieve_payment_intent,
        billing.refund_payment,
        invoices.issue_invoice,
        invoices.void_invoice,
        invoices.mark_invoice_paid,
        invoices.mark_invoice_uncollectible,
        invoices.record_declined_attempt,
        subscriptions.create,
        subscriptions.set_status,
        tenants.suspend_tenant,
    ]


async def connect_client(settings: Settings, runtime: Runtime | None = None) -> Client:
    retry_policies = SagaRetryPolicies.model_validate(settings.saga_retry_policies())
    return await Client.connect(
        settings.temporal_target,
        namespace=settings.temporal_namespace,
        data_converter=data_converter(settings),
        runtime=runtime,
        # the workers built on this client inherit them; sagas its activities start record the retry settings
        interceptors=[
            *([] if settings.bench_telemetry_off else [TracingInterceptor()]),
            RetryPoliciesInterceptor(retry_policies),
        ],
    )


def tracing_interceptors(client: Client) -> list[TracingInterceptor]:
    """A TracingInterceptor for workers whose client lacks one (a worker also runs its client's interceptors:
    two would record every span twice)."""
    if any(isinstance(i, TracingInterceptor) for i in client.config()["interceptors"]):
        return []
    return [TracingInterceptor()]


def with_interceptors(client: Client, interceptors: list[TracingInterceptor]) -> Client:
    """`client` (same connection, namespace and codec) with `interceptors` added to its own."""
    config = client.config()
    config["interceptors"] = [*config["interceptors"], *interceptors]
    return Client(**config)


def sdk_runtime(settings: Settings) -> Runtime | None:
    """A Temporal runtime whose SDK metrics (task latencies, schedule-to-start, failures) the SDK serves itself
    on WORKER_SDK_METRICS_PORT; None (the default runtime, no endpoint) when that port is 0."""
    if not settings.worker_sdk_metrics_port or settings.bench_telemetry_off:
        return None
    address = f"{settings.metrics_host}:{settings.worker_sdk_metrics_port}"
    return Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=address)))


ALL_TASK_QUEUES = (TASK_QUEUE, EMAIL_TASK_QUEUE, EMAIL_SEND_TASK_QUEUE, WEBHOOK_TASK_QUEUE)


def build_workers(
    client: Client, engine: AsyncEngine, settings: Settings, task_queues: Collection[str] = ALL_TASK_QUEUES
) -> Workers:
    """The sagas on `prognet-main`; email delivery on `prognet-email`; SMTP sends alone on
    `prognet-email-send`, whose task-queue rate limit is the system's send rate (EMAIL_MAX_PER_SECOND; each send
    also takes a token from the same rate's bucket in Redis right before SMTP: prognet.send_rate);
    outbound webhook deliveries on `prognet-webhooks`.

    `task_queues` picks a subset: a deployment can run the rate-limited sender as its own scaled service
    (the limit is enforced by the server per task queue, so it holds whatever the number of senders)."""
    unknown = set(task_queues) - set(ALL_TASK_QUEUES)
    if unknown or not task_queues:
        raise ValueError(f"unknown task queues {sorted(unknown)}; known: {', '.join(ALL_TASK_QUEUES)}")
    circuits = Circuits(engine, settings)
    send_redis = Redis.from_url(redis_url(settings), socket_connect_timeout=2, socket_timeout=5)
    send_rate = SendRateLimiter(send_redis, settings.email_max_per_second)
    delivery = EmailDeliveryActivities(engine, settings, breaker=circuits.breaker(SMTP), send_rate=send_rate)
    schedules = ScheduleActivities(client)
    tracing = [] if settings.bench_telemetry_off else tracing_interceptors(client)
    interceptors = [ObservabilityInterceptor(), *tracing]
    # emails handed off by a saga's local activity start on a client that traces, so the trace goes on into them
    handoff = EmailHandoff(with_interceptors(client, tracing) if tracing else client)
    alerting = alerting_activities(client, engine, settings)
    # built only for the queues asked for: a worker is registered with the client as soon as it exists
    factories = {
        TASK_QUEUE: lambda: Worker(
            client,
            task_queue=TASK_QUEUE,
            workflows=WORKFLOWS,
            activities=[
                *activities_for(engine, settings, circuits),
                handoff.start_delivery,
                schedules.ensure_billing_schedule,
                schedules.delete_billing_schedule,
                alerting.collect_signals,
                alerting.apply_verdicts,
                alerting.post_webhook,
            ],
            graceful_shutdown_timeout=GRACEFUL_SHUTDOWN,
            interceptors=interceptors,
        ),
        EMAIL_TASK_QUEUE: lambda: Worker(
            client,
            task_queue=EMAIL_TASK_QUEUE,
            workflows=[EmailDeliveryWorkflow],
            activities=[delivery.queue, delivery.mark, delivery.suppress],
            graceful_shutdown_timeout=GRACEFUL_SHUTDOWN,
            interceptors=interceptors,
        ),
        EMAIL_SEND_TASK_QUEUE: lambda: Worker(
            client,
            task_queue=EMAIL_SEND_TASK_QUEUE,
            activities=[delivery.send],
            max_task_queue_activities_per_second=settings.email_max_per_second,
            graceful_shutdown_timeout=GRACEFUL_SHUTDOWN,
            interceptors=interceptors,
        ),
        WEBHOOK_TASK_QUEUE: lambda: webhook_worker(
            client, webhook_activities(), interceptors=interceptors, handoff=handoff
        ),
    }
    hooks: list[WebhookActivities] = []  # made only with their worker; closed (their HTTP client) with the workers

    def webhook_activities() -> WebhookActivities:
        hooks.append(WebhookActivities(engine, settings))
        return hooks[-1]

    workers = [factories[queue]() for queue in ALL_TASK_QUEUES if queue in task_queues]

    async def close() -> None:
        try:
            for made in hooks:
                await made.aclose()
        finally:
            await circuits.aclose()
            await send_redis.aclose()

    return Workers(workers, on_close=close)


def redis_url(settings: Settings) -> str:
    return settings.redis_url or f"redis://127.0.0.1:{settings.redis_port}/0"


def alerting_activities(client: Client, engine: AsyncEngine, settings: Settings) -> AlertingActivities:
    """The evaluator's activities; the rule file is read and validated here (a bad one stops the worker)."""
    redis = Redis.from_url(redis_url(settings), socket_timeout=5)
    config = load_alerting_config(settings.alerting_config)
    return AlertingActivities(engine, redis, client, config, settings.alert_escalation_seconds)


def webhook_worker(
    client: Client,
    hooks: WebhookActivities,
    task_queue: str = WEBHOOK_TASK_QUEUE,
    interceptors: list | None = None,
    handoff: EmailHandoff | None = None,
) -> Worker:
    """Webhook deliveries on their own queue: slow receivers hold only these slots. The caller closes `hooks`
    (its shared HTTP client) after the worker has stopped. `handoff` starts the owners' notice of a disabled
    endpoint (a local activity: it runs on this worker); default: through this worker's client."""
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[WebhookDeliveryWorkflow],
        activities=[
            hooks.policy,
            hooks.record,
            hooks.attempt,
            hooks.mark,
            hooks.disable_endpoint,
            (handoff or EmailHandoff()).start_delivery,
        ],
        graceful_shutdown_timeout=GRACEFUL_SHUTDOWN,
        interceptors=interceptors or [],
    )


class Workers:
    """Several workers started and stopped together (`async with build_workers(...)`)."""

    def __init__(self, workers: list[Worker], on_close: Callable[[], Awaitable[None]] | None = None) -> None:
        self.workers = workers
        self._stack = AsyncExitStack()
        if on_close is not None:
            self._stack.push_async_callback(on_close)

    async def __aenter__(self) -> Workers:
        for worker in self.workers:
            await self._stack.enter_async_context(worker)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()


async def run_worker(settings: Settings | None = None, task_queues: Collection[str] = ALL_TASK_QUEUES) -> None:
    settings = settings or get_settings()
    if not settings.database_url:
        raise SystemExit("DATABASE_URL is not set (run the worker under `prognet dev` or set it)")
    # The workflow sandbox imports a workflow's module afresh for every workflow instance it creates: with
    # PYTHONDONTWRITEBYTECODE set (this project's machines, many images) and no bytecode cached beside the source,
    # that compiled the module again each time (2-4 ms of CPU per workflow). Let the first import cache it.
    sys.dont_write_bytecode = False
    telemetry.configure_process(telemetry.WORKER, settings)
    try:
        load_alerting_config(settings.alerting_config)
    except AlertConfigError as exc:
        raise SystemExit(str(exc)) from None
    engine = make_engine(settings.database_url)
    client = await connect_client(settings, sdk_runtime(settings))
    serve_metrics(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    workers = build_workers(client, engine, settings, task_queues)
    log.info("worker polling %s on %s", ", ".join(task_queues), settings.temporal_target)
    async with workers:
        if TASK_QUEUE in task_queues:  # the worker that runs the evaluator's workflow makes sure its Schedule exists
            await ensure_alert_schedule(client)
        await stop.wait()
    await engine.dispose()


def serve_metrics(settings: Settings) -> int | None:
    """Our business metrics (prognet.metrics) on WORKER_METRICS_PORT, apart from the SDK's endpoint: the SDK
    serves its own registry from Rust, and two endpoints keep each scrape cheap and each source obvious."""
    if not settings.worker_metrics_port or settings.bench_telemetry_off:
        return None
    start_http_server(settings.worker_metrics_port, addr=settings.metrics_host)
    log.info("worker metrics on http://%s:%d/metrics", settings.metrics_host, settings.worker_metrics_port)
    return settings.worker_metrics_port
