"""The worker process: the sagas on `prognet-main`, email delivery on `prognet-email` and `prognet-email-send`,
webhook deliveries on `prognet-webhooks`."""

from __future__ import annotations

import asyncio
import logging
import signal
from contextlib import AsyncExitStack
from datetime import timedelta

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Worker

from activities.alerting import AlertingActivities, ensure_alert_schedule
from activities.billing import BillingActivities
from activities.email_change import EmailChangeActivities
from activities.email_delivery import EmailDeliveryActivities
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
from prognet.settings import Settings, get_settings
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


def activities_for(engine: AsyncEngine, settings: Settings) -> list:
    token_key = settings.derived_key("tokens")
    users = UserActivities(engine, token_key)
    email_changes = EmailChangeActivities(engine, token_key)
    tenants = TenantActivities(engine)
    invitations = InvitationActivities(engine, token_key)
    billing = BillingActivities(settings)
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
        invoices.publish_invoice_event,
        subscriptions.create,
        subscriptions.set_status,
        tenants.suspend_tenant,
    ]


async def connect_client(settings: Settings) -> Client:
    return await Client.connect(
        settings.temporal_target, namespace=settings.temporal_namespace, data_converter=pydantic_data_converter
    )


def build_workers(client: Client, engine: AsyncEngine, settings: Settings) -> Workers:
    """The sagas on `prognet-main`; email delivery on `prognet-email`; SMTP sends alone on
    `prognet-email-send`, whose task-queue rate limit is the system's send rate (EMAIL_MAX_PER_SECOND)."""
    delivery = EmailDeliveryActivities(engine, settings)
    schedules = ScheduleActivities(client)
    alerting = alerting_activities(client, engine, settings)
    return Workers(
        [
            Worker(
                client,
                task_queue=TASK_QUEUE,
                workflows=WORKFLOWS,
                activities=[
                    *activities_for(engine, settings),
                    schedules.ensure_billing_schedule,
                    schedules.delete_billing_schedule,
                    alerting.collect_signals,
                    alerting.apply_verdicts,
                    alerting.post_webhook,
                ],
                graceful_shutdown_timeout=GRACEFUL_SHUTDOWN,
            ),
            Worker(
                client,
                task_queue=EMAIL_TASK_QUEUE,
                workflows=[EmailDeliveryWorkflow],
                activities=[delivery.policy, delivery.queue, delivery.mark, delivery.suppress],
                graceful_shutdown_timeout=GRACEFUL_SHUTDOWN,
            ),
            webhook_worker(client, engine, settings),
            Worker(
                client,
                task_queue=EMAIL_SEND_TASK_QUEUE,
                activities=[delivery.send],
                max_task_queue_activities_per_second=settings.email_max_per_second,
                graceful_shutdown_timeout=GRACEFUL_SHUTDOWN,
            ),
        ]
    )


def alerting_activities(client: Client, engine: AsyncEngine, settings: Settings) -> AlertingActivities:
    """The evaluator's activities; the rule file is read and validated here (a bad one stops the worker)."""
    redis = Redis.from_url(settings.redis_url or f"redis://127.0.0.1:{settings.redis_port}/0", socket_timeout=5)
    config = load_alerting_config(settings.alerting_config)
    return AlertingActivities(engine, redis, client, config, settings.alert_escalation_seconds)


def webhook_worker(
    client: Client, engine: AsyncEngine, settings: Settings, task_queue: str = WEBHOOK_TASK_QUEUE
) -> Worker:
    """Webhook deliveries on their own queue: slow receivers hold only these slots."""
    hooks = WebhookActivities(engine, settings)
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[WebhookDeliveryWorkflow],
        activities=[hooks.policy, hooks.record, hooks.attempt, hooks.mark, hooks.disable_endpoint],
        graceful_shutdown_timeout=GRACEFUL_SHUTDOWN,
    )


class Workers:
    """Several workers started and stopped together (`async with build_workers(...)`)."""

    def __init__(self, workers: list[Worker]) -> None:
        self.workers = workers
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> Workers:
        for worker in self.workers:
            await self._stack.enter_async_context(worker)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()


async def run_worker(settings: Settings | None = None) -> None:
    settings = settings or get_settings()
    if not settings.database_url:
        raise SystemExit("DATABASE_URL is not set (run the worker under `prognet dev` or set it)")
    try:
        load_alerting_config(settings.alerting_config)
    except AlertConfigError as exc:
        raise SystemExit(str(exc)) from None
    engine = make_engine(settings.database_url)
    client = await connect_client(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "worker polling %s, %s, %s and %s on %s",
        TASK_QUEUE,
        EMAIL_TASK_QUEUE,
        EMAIL_SEND_TASK_QUEUE,
        WEBHOOK_TASK_QUEUE,
        settings.temporal_target,
    )
    async with build_workers(client, engine, settings):
        await ensure_alert_schedule(client)
        await stop.wait()
    await engine.dispose()
