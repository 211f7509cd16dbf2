"""The main worker: the registration, tenant provisioning and invitation sagas and their activities on the
`prognet-main` task queue."""

from __future__ import annotations

import asyncio
from datetime import timedelta
import logging
import signal

from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Worker

from activities.billing import BillingActivities
from activities.email import EmailActivities
from activities.invitations import InvitationActivities
from activities.tenants import TenantActivities
from activities.users import UserActivities
from models.db import make_engine
from prognet.settings import Settings, get_settings
from workflows.invitation import InvitationWorkflow
from workflows.names import TASK_QUEUE
from workflows.registration import RegistrationWorkflow
from workflows.tenant_provisioning import TenantProvisioningWorkflow

log = logging.getLogger(__name__)

WORKFLOWS = [RegistrationWorkflow, TenantProvisioningWorkflow, InvitationWorkflow]


def activities_for(engine: AsyncEngine, settings: Settings) -> list:
    token_key = settings.derived_key("tokens")
    users = UserActivities(engine, token_key)
    tenants = TenantActivities(engine)
    invitations = InvitationActivities(engine, token_key)
    billing = BillingActivities(settings)
    email = EmailActivities(engine, settings)
    return [
        users.create_pending_user, users.delete_pending_user, users.issue_verification_token,
        users.revoke_verification_token, users.activate_user,
        tenants.create_tenant, tenants.mark_tenant_failed, tenants.add_membership, tenants.remove_membership,
        tenants.create_billing_config, tenants.delete_billing_config, tenants.apply_default_settings,
        tenants.remove_default_settings, tenants.activate_tenant,
        invitations.issue_invitation, invitations.complete_invitation, invitations.close_invitation,
        billing.create_stripe_customer, billing.delete_stripe_customer,
        email.send_verification_email, email.send_welcome_email, email.send_invitation_email,
    ]


async def connect_client(settings: Settings) -> Client:
    return await Client.connect(settings.temporal_target, namespace=settings.temporal_namespace,
                                data_converter=pydantic_data_converter)


def build_worker(client: Client, engine: AsyncEngine, settings: Settings, task_queue: str = TASK_QUEUE) -> Worker:
    return Worker(client, task_queue=task_queue, workflows=WORKFLOWS, activities=activities_for(engine, settings),
                  graceful_shutdown_timeout=timedelta(seconds=10))


async def run_worker(settings: Settings | None = None) -> None:
    settings = settings or get_settings()
    if not settings.database_url:
        raise SystemExit("DATABASE_URL is not set (run the worker under `prognet dev` or set it)")
    engine = make_engine(settings.database_url)
    client = await connect_client(settings)
    worker = build_worker(client, engine, settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("worker polling task queue %s on %s", TASK_QUEUE, settings.temporal_target)
    async with worker:
        await stop.wait()
    await engine.dispose()
