"""Record registration histories for the replay tests.

Run only to add histories of new workflows, or when a workflow change is *meant* to be incompatible and is guarded (workflow.patched or a new
workflow name): `.venv/bin/python -m tests.replay.record`. Old histories stay; new ones get a new name.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path

from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from models.contracts import OperatorDecision, RegistrationInput, VerifyEmail
from tests.unit.fake_activities import FakeUsers
from workflows import activity_names as act
from workflows.names import SIGNAL_OPERATOR_DECISION, SIGNAL_VERIFY_EMAIL
from workflows.registration import RegistrationWorkflow

HERE = Path(__file__).parent / "histories"


def _keep(path: Path, history_json: str) -> None:
    """Write a new history; an existing one is what older code recorded, and is the point of the test."""
    if path.exists() and "--overwrite" not in sys.argv:
        print("kept", path.name)
        return
    path.write_text(history_json)
    print("recorded", path.name)


async def record(env: WorkflowEnvironment, name: str, fake: FakeUsers, drive) -> None:
    tq = f"record-{uuid.uuid4()}"
    params = RegistrationInput(user_id=uuid.UUID(int=len(name)), email="replay@example.com",
                               password_hash="$argon2id$v=19$m=65536,t=3,p=4$fake$fake")
    async with Worker(env.client, task_queue=tq, workflows=[RegistrationWorkflow], activities=fake.activities()):
        handle = await env.client.start_workflow(RegistrationWorkflow.run, params, id=f"registration-{name}",
                                                 task_queue=tq)
        await drive(handle, fake)
        try:
            await handle.result()
        except Exception:
            pass
        history = await handle.fetch_history()
    _keep(HERE / f"registration_{name}.json", history.to_json())


async def main() -> None:
    sys.path.insert(0, str(Path(__file__).parents[2]))
    from tests.conftest import BIN_DIR
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=pydantic_data_converter, test_server_existing_path=str(BIN_DIR / "temporal-test-server"))
    from tests.conftest import custom_search_attributes
    from temporalio.api.enums.v1 import IndexedValueType
    from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
    await env.client.operator_service.add_search_attributes(AddSearchAttributesRequest(
        namespace="default",
        search_attributes={k.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD for k in custom_search_attributes()}))

    async def verify(handle, fake):
        while not fake.token_ids or fake.calls[-1] != act.SEND_VERIFICATION_EMAIL:
            await asyncio.sleep(0.05)
        await handle.signal(SIGNAL_VERIFY_EMAIL, VerifyEmail(token_id=fake.token_ids[0]))

    async def nothing(handle, fake):
        pass

    async def cancel_then_operator_retry(handle, fake):
        while act.SEND_VERIFICATION_EMAIL not in fake.calls:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        await handle.cancel()
        while fake.calls.count(act.DELETE_PENDING_USER) < 1:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        fake.healed = True
        await handle.signal(SIGNAL_OPERATOR_DECISION, OperatorDecision(action="retry"))

    await record(env, "verified", FakeUsers(), verify)
    await record(env, "expired", FakeUsers(), nothing)
    await record(env, "operator_retry", FakeUsers(broken_compensation=act.DELETE_PENDING_USER),
                 cancel_then_operator_retry)
    await record_tenant_sagas(env)
    await env.shutdown()


async def record_tenant_sagas(env: WorkflowEnvironment) -> None:
    from models.contracts import AcceptInvitation, InvitationInput, TenantProvisioningInput
    from tests.unit.fake_tenant_activities import FakeTenantWorld
    from workflows.invitation import InvitationWorkflow
    from workflows.names import SIGNAL_ACCEPT_INVITATION
    from workflows.tenant_provisioning import TenantProvisioningWorkflow

    async def run(name: str, world: FakeTenantWorld, workflow, params, drive=None) -> None:
        tq = f"record-{uuid.uuid4()}"
        async with Worker(env.client, task_queue=tq, workflows=[workflow], activities=world.activities()):
            handle = await env.client.start_workflow(workflow.run, params, id=f"{name}-replay", task_queue=tq)
            if drive:
                await drive(handle, world)
            try:
                await handle.result()
            except Exception:
                pass
            history = await handle.fetch_history()
        _keep(HERE / f"{name}.json", history.to_json())

    def tenant() -> TenantProvisioningInput:
        return TenantProvisioningInput(tenant_id=uuid.UUID(int=7), name="Replay", slug="replay",
                                       owner_user_id=uuid.UUID(int=8), billing_email="billing@replay.test")

    def invitation() -> InvitationInput:
        return InvitationInput(invitation_id=uuid.UUID(int=9), tenant_id=uuid.UUID(int=7), email="x@replay.test",
                               role="member", invited_by=uuid.UUID(int=8))

    async def accept(handle, world):
        while act.SEND_INVITATION_EMAIL not in world.calls:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        await handle.signal(SIGNAL_ACCEPT_INVITATION, AcceptInvitation(user_id=uuid.UUID(int=10)))

    await run("tenant_provisioning_active", FakeTenantWorld(), TenantProvisioningWorkflow, tenant())
    await run("tenant_provisioning_stripe_failed", FakeTenantWorld(fail_step=act.CREATE_STRIPE_CUSTOMER),
              TenantProvisioningWorkflow, tenant())
    await run("invitation_accepted", FakeTenantWorld(), InvitationWorkflow, invitation(), accept)
    await run("invitation_expired", FakeTenantWorld(), InvitationWorkflow, invitation())


if __name__ == "__main__":
    asyncio.run(main())
